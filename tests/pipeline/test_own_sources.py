"""Sources of one's own in the recipe and in a real build: a few lines of YAML each, checked before any work,
listed by `mmcorpus sources`, deduplicated against the named sources, mixed at the phase's shares, and on both
data cards with their own terms."""

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from manifests.catalog import check
from manifests.layout import Layout
from manifests.report import build_report
from pipeline.build import BuildSettings, build
from pipeline.cli import main
from pipeline.config import ConfigError, load_recipe
from stages.paths import CONFIG_DIR, SAMPLES_DIR
from stages.paths import PROJECT_ROOT as ROOT
from tests.helpers import fineweb2_texts, free_port, query, write_lines

pytestmark = pytest.mark.slow  # builds the samples

OWN = ("mycorpus", "webpq", "hub")
SHARES = {"fineweb2": 0.6, "dolma": 0.1, "mycorpus": 0.1, "webpq": 0.1, "hub": 0.1}  # 0.6, then 1:1:1:1
SOURCES_YAML = """\
sources:
  fineweb2: {path: fineweb2}
  dolma: {path: dolma, subsets: {cc_en_head: eng_Latn}}
  mycorpus:                        # JSON lines, plain, gzip and zstd, nested fields
    reader: jsonl
    path: mycorpus
    text: body.content
    id: meta.id
    url: meta.url
    lang_field: meta.lang
    lang_map: {vietnamese: vie_Latn}
    license: cc-by-4.0
    description: "Acme's forum archive: CC BY 4.0"
    homepage: https://example.org/acme
    citation: "@misc{acme2026, title={Acme forums}, year={2026}}"
  webpq:                           # Parquet, the language in the path
    reader: parquet
    path: webpq/*/part-*.parquet
    text: content
    lang_from_path: "{lang}/"
    license: apache-2.0
  hub:                             # a local copy of a Hugging Face dataset
    reader: hf
    path: hub
    lang: detect
shard_tokens: 8192
"""


def own_inputs(root):
    """FineWeb2 (German, French) and Dolma as they come, and three sources of one's own from the samples' other
    languages; one of them holds an exact copy of a FineWeb2 document, a record without text and one in a
    language nobody knows."""
    for lang in ("deu_Latn", "fra_Latn"):
        folder = root / "fineweb2" / "data" / lang / "train"
        folder.mkdir(parents=True)
        (folder / "000_00000.parquet").write_bytes((SAMPLES_DIR / "fineweb2/data" / lang / "train/000_00000.parquet")
                                                   .read_bytes())
    (root / "dolma" / "cc_en_head").mkdir(parents=True)
    (root / "dolma" / "cc_en_head" / "cc_en_head-0000.json.gz").write_bytes(
        (SAMPLES_DIR / "dolma/cc_en_head/cc_en_head-0000.json.gz").read_bytes())

    def records(lang, code):
        return [{"body": {"content": text}, "meta": {"id": f"{lang}-{i}", "lang": code,
                                                     "url": f"https://example.org/{lang}/{i}"}}
                for i, text in enumerate(fineweb2_texts(lang))]

    german = fineweb2_texts("deu_Latn")[5]
    write_lines(root / "mycorpus" / "pl.jsonl", records("pol_Latn", "pl") + [
        {"body": {"content": german}, "meta": {"id": "planted", "lang": "de"}},
        {"body": {}, "meta": {"id": "empty", "lang": "pl"}},
        {"body": {"content": "Qapla'"}, "meta": {"id": "klingon", "lang": "tlh-Klingon"}}])
    write_lines(root / "mycorpus" / "tr.jsonl.gz", records("tur_Latn", "tur"))
    write_lines(root / "mycorpus" / "more" / "vi.jsonl.zst", records("vie_Latn", "vietnamese"))
    for lang in ("rus_Cyrl", "ukr_Cyrl"):
        (root / "webpq" / lang).mkdir(parents=True)
        pq.write_table(pa.table({"content": fineweb2_texts(lang)}), root / "webpq" / lang / "part-0.parquet")
    hub = root / "hub" / "data"
    hub.mkdir(parents=True)
    pq.write_table(pa.table({"text": fineweb2_texts("spa_Latn")}), hub / "train-00000-of-00001.parquet")
    (root / "sources.yaml").write_text(SOURCES_YAML)
    phases = (CONFIG_DIR / "phases.yaml").read_text()
    old = "other_sources: {dolma: 681.3, starcoder: 100.6, megawika: 4.7, prolong: 4.3}"
    assert old in phases
    (root / "phases.yaml").write_text(phases.replace(old, "other_sources: {dolma: 1, mycorpus: 1, webpq: 1, hub: 1}"))
    return root


@pytest.fixture(scope="module")
def own_build(tmp_path_factory, ray_session, tokenizers):
    root = own_inputs(tmp_path_factory.mktemp("own"))
    recipe = load_recipe(sections={"sources": root / "sources.yaml", "phases": root / "phases.yaml"})
    out = root / "out"
    info = build(BuildSettings(out=str(out), phase=recipe.phase(1), recipe=recipe))
    return root, out, info


def test_own_sources_reach_the_shards_at_the_phases_shares(own_build, capsys):
    root, out, info = own_build
    assert check(Layout(out), "phase1") == []  # read = kept + rejected for every stage and source
    mixture = query(out, "SELECT source, sum(target_tokens) AS target, sum(tokens) AS tokens FROM mixture "
                         "GROUP BY 1", capsys)
    budget = info["budget_tokens"]
    written = sum(row["tokens"] for row in mixture)
    for row in mixture:
        assert row["target"] == pytest.approx(SHARES[row["source"]] * budget, rel=1e-3), row
        assert row["tokens"] / written == pytest.approx(SHARES[row["source"]], abs=0.02), row
    shards = query(out, f"SELECT source, lang, count(DISTINCT doc_id) AS docs FROM read_parquet("
                        f"'{out}/phase1/shards/*.parquet') GROUP BY ALL", capsys)
    langs = {(row["source"], row["lang"]) for row in shards}
    assert {("mycorpus", "pol_Latn"), ("mycorpus", "tur_Latn"), ("mycorpus", "vie_Latn"), ("webpq", "rus_Cyrl"),
            ("webpq", "ukr_Cyrl"), ("hub", "spa_Latn")} <= langs
    assert main(["plan", "--phase", "1", "--out", str(out), "--sources", str(root / "sources.yaml"),
                 "--phases", str(root / "phases.yaml"), "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert {row["source"] for row in plan if row["target"] > 0} == set(SHARES)


def test_an_exact_copy_of_a_fineweb2_document_is_removed_and_bad_records_counted(own_build, capsys):
    _, out, _ = own_build
    rows = query(out, "SELECT id, stage, reason, detail FROM rejects WHERE source = 'mycorpus' AND stage IN "
                      "('read', 'dedup') ORDER BY id", capsys)
    kept = query(out, "SELECT kept_id FROM dedup_clusters WHERE id = 'mycorpus/planted'", capsys)[0]["kept_id"]
    assert kept.startswith("fineweb2/")
    assert [(r["id"], r["stage"], r["reason"]) for r in rows] == [
        ("mycorpus/pl.jsonl:12", "read", "read:bad_record"), ("mycorpus/pl.jsonl:13", "read", "read:unknown_language"),
        ("mycorpus/planted", "dedup", "dedup:exact")]
    assert rows[0]["detail"] == "row 12: no body.content field" and "'tlh-Klingon'" in rows[1]["detail"]


def test_both_cards_give_each_source_its_own_terms(own_build):
    _, out, _ = own_build
    text = (out / "phase1" / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["license"] == "other" and front["license_name"] == "mixed-per-source"
    assert "mycorpus: cc-by-4.0" in front["license_details"] and "webpq: apache-2.0" in front["license_details"]
    assert "hub: not given" in front["license_details"] and "fineweb2: odc-by" in front["license_details"]
    assert "| mycorpus | cc-by-4.0 | Acme's forum archive: CC BY 4.0 | https://example.org/acme |" in text
    assert "| fineweb2 | odc-by | HuggingFaceFW/fineweb-2: ODC-By 1.0, and Common Crawl's terms of use |" in text
    assert "@misc{acme2026, title={Acme forums}, year={2026}}" in text.split("## Citation")[1]
    build_report(Layout(out), "phase1")
    html = (out / "phase1" / "report" / "index.html").read_text()
    assert "Acme&#x27;s forum archive: CC BY 4.0" in html and "acme2026" in html
    terms = (out / "phase1" / "report" / "terms.csv").read_text()
    assert "webpq,apache-2.0,,," in terms


def test_sources_lists_files_a_sample_and_the_mapping(own_build, capsys):
    root, _, _ = own_build
    assert main(["sources", "--sources", str(root / "sources.yaml")]) == 0
    out = capsys.readouterr().out
    assert "mycorpus: reader jsonl, 3 file(s) under" in out
    assert "  sample   more/vi.jsonl.zst:0  id mycorpus/vie_Latn-0  lang vie_Latn" in out
    assert "lang  <- meta.lang: 'vietnamese' -> vie_Latn (lang_map)" in out
    assert "text  <- body.content (" in out and "url   <- meta.url (https://example.org/vie_Latn/0)" in out
    assert "webpq: reader parquet, 2 file(s) under" in out and "lang  <- the path ({lang}/): 'rus_Cyrl'" in out
    assert "id    <- file and row (rus_Cyrl/part-0.parquet:0: the record has no id)" in out
    assert "hub: reader hf, 1 file(s) under" in out and "lang  <- detected by the LID stage" in out
    assert "fineweb2's own reader" in out


@pytest.mark.parametrize("entry, message", [
    ("    reader: jsonl\n    text: txt\n    lang_feild: lang\n", "sources.mycorpus.lang_feild: unknown key (did you "
                                                                  "mean 'lang_field'?)"),
    ("    reader: jsonl\n    text: txt\n", "sources.mycorpus: give the language one way: lang (a label, or detect), "
                                            "lang_field or lang_from_path"),
    ("    reader: csv\n    lang: eng_Latn\n", "sources.mycorpus.reader: must be one of 'jsonl', 'parquet', 'dolma', "
                                              "'hf', got 'csv'"),
    ("    reader: jsonl\n    lang: eng_Latn\n    licence: mit\n",
     "sources.mycorpus.licence: unknown key (did you mean 'license'?)"),
    ("    reader: jsonl\n    lang_field: lang\n", "sources.mycorpus: no document in the first 100 records of "
                                                   "en/a.jsonl: en/a.jsonl:0: read:bad_record no text field (its "
                                                   "fields: id, txt, lang)"),
    ("    reader: jsonl\n    text: txt\n    lang_from_path: 'data/{lang}/'\n",
     "sources.mycorpus.lang_from_path: 'data/{lang}/' finds no language in the path of en/a.jsonl"),
    ("    reader: jsonl\n    lang: eng_Latn\n", "data/*.parquet matches no data file"),
])
def test_a_bad_source_of_ones_own_stops_the_build_before_any_work(tmp_path, capsys, entry, message):
    write_lines(tmp_path / "data" / "en" / "a.jsonl", [{"id": "1", "txt": "Some words.", "lang": "en"}])
    folder = "data/*.parquet" if "matches no data file" in message else "data"
    path = str(tmp_path / "sources.yaml")
    open(path, "w").write(f"sources:\n  mycorpus:\n    path: {folder}\n{entry}")
    out = tmp_path / "out"
    assert main(["build", "--phase", "1", "--sources", path, "--out", str(out), "--dry-run"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and path in lines[0] and message in lines[0], lines
    assert not out.exists()


def test_a_source_named_as_no_folder_may_be_is_refused(tmp_path, capsys):
    path = tmp_path / "sources.yaml"
    path.write_text(f"sources:\n  My/Corpus: {{reader: jsonl, path: {tmp_path}, lang: eng_Latn}}\n")
    assert main(["config", "show", "--sources", str(path)]) == 2
    assert "'My/Corpus': a source's name is a folder name" in capsys.readouterr().err


def test_the_hf_reader_goes_to_the_hub_through_fsspec(tmp_path):
    """`hf://` is huggingface_hub's file system at $HF_ENDPOINT: here a closed port, so the command fails in one
    line naming the source and the URL, having tried (nothing leaves the machine)."""
    path = tmp_path / "sources.yaml"
    path.write_text("sources:\n  hub: {reader: hf, path: 'hf://datasets/acme/corpus', lang: detect}\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "sources", "--sources", str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("mmcorpus: sources failed: source hub: cannot reach hf://datasets/acme/corpus: ")
    assert "Connection refused" in lines[0]


def test_terms_keep_the_named_defaults_and_change_no_curation(tmp_path):
    path = tmp_path / "sources.yaml"
    path.write_text(f"sources:\n  fineweb2: {{path: {SAMPLES_DIR / 'fineweb2'}, description: our copy}}\n")
    recipe = load_recipe(sections={"sources": path})
    terms = recipe.sources.terms["fineweb2"]
    assert (terms.license, terms.description) == ("odc-by", "our copy")
    assert recipe.to_dict()["sources"]["sources"]["fineweb2"]["license"] == "odc-by"
    assert not hasattr(recipe.sources.sources["fineweb2"], "description")  # the task's options: no terms
    with pytest.raises(ConfigError, match=r"--set phases.1.other_sources.mycorpsu=1: .* unknown source 'mycorpsu'"):
        load_recipe(sections={"sources": path}, overrides=("phases.1.other_sources.mycorpsu=1",)).phase(1)
