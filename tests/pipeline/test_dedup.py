"""Dedup end to end on Ray: planted duplicates across two sources and two files, boilerplate, languages."""

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from manifests.layout import Layout
from manifests.schemas import CURATED
from manifests.writer import write_parquet
from pipeline import dedup
from pipeline.build import build
from pipeline.dedup import run_dedup
from pipeline.runner import Runner, Task
from stages.dedup import DedupConfig
from stages.paths import SAMPLES_DIR as SAMPLES
from tests.helpers import query, settings_for, udhr

pytestmark = pytest.mark.slow  # builds the samples

FINEWEB2_COLUMNS = ["text", "id", "url", "language", "language_script", "language_score"]


def fineweb2_file(path, docs):
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        dict(
            text=text,
            id=doc_id,
            url=url,
            language=lang.split("_")[0],
            language_script=lang.split("_")[1],
            language_score=0.99,
        )
        for doc_id, lang, text, url in docs
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.fixture(scope="module")
def dedup_build(tmp_path_factory, ray_session, tokenizers):
    root = tmp_path_factory.mktemp("dedup")
    german, french = udhr("deu_Latn"), udhr("fra_Latn")
    articles = [" ".join(article.split()) for article in german.split("\n\n")]  # one line each
    near = german.replace("Menschen", "Personen", 1).replace("Rechte", "Rechten", 1)
    boilerplate = "Startseite | Impressum | Kontakt | Datenschutz | Über uns | Hilfe | Anmelden\n\n"
    fineweb2_file(
        root / "fineweb2/data/deu_Latn/train/000_00000.parquet",
        [
            ("de-1", "deu_Latn", german, "https://a.example/1"),
            ("de-boiler-1", "deu_Latn", boilerplate + "\n\n".join(articles[:4]), "https://b.example/x"),
        ],
    )
    fineweb2_file(
        root / "fineweb2/data/deu_Latn/train/000_00001.parquet",
        [
            ("de-exact", "deu_Latn", german.upper(), "https://c.example/2"),  # exact after case folding
            ("de-boiler-2", "deu_Latn", boilerplate + "\n\n".join(articles[4:]), "https://d.example/y"),
            ("de-url", "deu_Latn", "\n\n".join(articles[2:6]), "http://www.b.example/x/"),  # same page, other day
        ],
    )
    fineweb2_file(
        root / "fineweb2/data/fra_Latn/train/000_00000.parquet",
        [
            ("fr-1", "fra_Latn", french, "https://e.example/3"),
        ],
    )
    (root / "megawika/de").mkdir(parents=True)
    (root / "megawika/de/de-00000.jsonl").write_text(json.dumps({"title": "Erklärung", "text": near}) + "\n")
    # the same file under two programming languages: different languages never dedup against each other
    code = SAMPLES / "starcoder/python/train-00000-of-00001.parquet"
    for language in ("python", "javascript"):
        (root / "starcoder" / language).mkdir(parents=True)
        pq.write_table(pq.read_table(code).slice(0, 3), root / "starcoder" / language / "train-00000-of-00001.parquet")
    config = root / "sources.yaml"
    config.write_text(
        "sources:\n"
        + "".join(f"  {s}:\n    path: {root / s}\n" for s in ("fineweb2", "megawika", "starcoder"))
        + "shard_tokens: 4096\n"
    )
    out = root / "out"
    build(settings_for(out, sources=config))
    return out


def test_planted_duplicates_are_removed_and_name_the_kept_document(dedup_build, capsys):
    rows = query(dedup_build, "SELECT id, reason, detail FROM rejects WHERE stage = 'dedup' ORDER BY id", capsys)
    removed = {r["id"]: (r["reason"], r["detail"]) for r in rows}
    assert removed["fineweb2/de-exact"] == ("dedup:exact", "kept fineweb2/de-1")
    # same URL: the page without navigation boilerplate scores higher and is kept
    assert removed["fineweb2/de-boiler-1"] == ("dedup:url", "kept fineweb2/de-url")
    near = [doc_id for doc_id in removed if doc_id.startswith("megawika/de/")]
    assert len(near) == 1 and removed[near[0]] == ("dedup:minhash", "kept fineweb2/de-1")
    assert len(removed) == 3


def test_boilerplate_sharing_documents_and_other_languages_are_kept(dedup_build, capsys):
    pool = {r["id"] for r in query(dedup_build, "SELECT id FROM pool", capsys)}
    assert {"fineweb2/de-1", "fineweb2/de-url", "fineweb2/de-boiler-2", "fineweb2/fr-1"} <= pool
    code = query(dedup_build, "SELECT lang, count(*) AS docs FROM pool WHERE source = 'starcoder' GROUP BY 1", capsys)
    assert sorted((r["lang"], r["docs"]) for r in code) == [("code_javascript", 3), ("code_python", 3)]


def test_cluster_sizes_are_recorded(dedup_build):
    rows = [row for name in sorted((dedup_build / "dedup").glob("*/clusters/*.parquet"))
            for row in pq.read_table(name).to_pylist()]
    exact = [r for r in rows if r["kind"] == "exact"]
    assert {r["id"] for r in exact} == {"fineweb2/de-1", "fineweb2/de-exact"}
    assert all(r["cluster_size"] == 2 and r["kept_id"] == "fineweb2/de-1" for r in exact)


def write_curated(layout, part, docs):
    rows = [dict(id=doc_id, text=text, source="test", lang=lang, lang_score=1.0, url=None, quality=quality,
                 origin="", extra="{}") for doc_id, lang, text, quality in docs]
    write_parquet(layout, Layout.curated("test", part), rows, CURATED)
    return {"docs": len(rows)}


def planted_docs(files: int = 3) -> list[list[tuple]]:
    """Distinct documents, exact copies (case changed), near copies (a word changed) and shared ids, over files."""
    rng = random.Random(7)
    words = [f"w{n}" for n in range(400)]
    docs = []
    for n in range(90):
        lang = ("deu_Latn", "fra_Latn")[n % 2]
        text = " ".join(rng.choices(words, k=120))
        docs.append((f"d{n}", lang, text, rng.random()))
        if n % 5 == 0:
            docs.append((f"exact{n}", lang, text.upper(), rng.random()))
        if n % 7 == 0:
            docs.append((f"near{n}", lang, text.replace(text.split()[60], "changed", 1), rng.random()))
        if n % 11 == 0:
            docs.append((f"d{n}", lang, " ".join(rng.choices(words, k=120)), rng.random()))  # a shared upstream id
    rng.shuffle(docs)
    return [docs[n::files] for n in range(files)]


def dedup_tree(layout, parts, by_file) -> tuple[dict, dict]:
    with Runner(layout, workers=2, task_memory=256 << 20) as runner:
        runner.run("test-curated", [Task(part, write_curated, dict(layout=layout, part=part, docs=docs))
                                    for (_, part), docs in zip(parts, by_file, strict=True)])
        summary, removals = run_dedup(runner, layout, parts, DedupConfig())
        steps = sorted(stage for stage in runner.ledger.asked if stage.startswith("dedup-"))
    root = Path(layout.root)
    files = {name: (root / name).read_bytes() for name in removals.values()}
    clusters = sorted(tuple(row.values()) for path in sorted(root.glob("dedup/*/clusters/*.parquet"))
                      for row in pq.read_table(path).to_pylist())
    tree = sorted(str(path.relative_to(root)) for path in root.glob("dedup/**/*.parquet"))
    markers = sorted(path.parent.name for path in root.glob("_done/*/*.json"))
    return dict(summary=summary, removals=files, clusters=clusters, steps=steps, tree=tree, markers=markers), removals


def test_one_task_clustering_writes_what_the_partitioned_steps_write(ray_session, tmp_path, monkeypatch):
    """A small corpus clusters in one task (stage dedup-steps), its relations in memory: the same summary,
    clusters and removal files, byte for byte, as the partitioned steps on 3 partitions; builds switching between the two on one tree keep each
    other's files."""
    parts = [("test", f"part-{n}") for n in range(3)]
    by_file = planted_docs(len(parts))
    layout = Layout(tmp_path / "out")
    one, removals = dedup_tree(layout, parts, by_file)
    assert one["steps"] == ["dedup-signatures", "dedup-steps"]
    assert one["summary"]["exact_removed"] >= 18 and one["summary"]["minhash_removed"] >= 12
    assert one["summary"]["exact_id_renamed"] >= 9 and len(removals) == 3
    assert not [name for name in one["tree"] if "/steps/" in name]  # its relations held in memory
    monkeypatch.setattr(dedup, "ONE_TASK_BYTES", 0)
    monkeypatch.setattr(dedup, "partitions_for", lambda *_: 3)
    partitioned, _ = dedup_tree(layout, parts, by_file)
    assert "dedup-minhash-keepers" in partitioned["steps"] and "dedup-steps" not in partitioned["steps"]
    assert partitioned["summary"] == one["summary"] | {"partitions": 3}
    assert partitioned["removals"] == one["removals"] and partitioned["clusters"] == one["clusters"]
    monkeypatch.undo()
    assert len(partitioned["tree"]) > len(one["tree"]) and "dedup-minhash-keepers" in partitioned["markers"]
    assert dedup_tree(layout, parts, by_file)[0] == one  # the partitioned steps' files and markers gone
