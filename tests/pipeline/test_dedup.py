"""Dedup end to end on Ray: planted duplicates across two sources and two files, boilerplate, languages."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.build import build
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
