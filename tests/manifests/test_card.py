"""The dataset card every build writes: Hugging Face `datasets` loads the phase folder as the shards, and the
card carries the terms, the schema, the languages by name, what curation removed, examples and the citation."""

import re

import pyarrow.parquet as pq
import pytest
import yaml

from manifests.card import hub_features, language_name, markdown_table, size_category
from manifests.catalog import connect
from manifests.languages import coverage, phase_coverage
from manifests.layout import Layout
from manifests.schemas import SHARD
from manifests.summary import build_summary
from pipeline.cli import main


@pytest.mark.slow  # builds the samples
def test_datasets_loads_the_phase_folder_as_its_shards(sample_build, tmp_path):
    from datasets import load_dataset

    out, _ = sample_build
    shards = pq.read_table(out / "phase1" / "shards")
    chunks = load_dataset(str(out / "phase1"), split="train", cache_dir=str(tmp_path / "cache"))
    assert chunks.num_rows == shards.num_rows
    assert chunks.column_names == ["input_ids", "doc_id", "chunk", "source", "lang", "epoch"]
    tokens = sum(len(ids) for ids in shards.column("input_ids").to_pylist())
    assert sum(len(ids) for ids in chunks["input_ids"]) == tokens


@pytest.mark.slow  # builds the samples
def test_the_card_says_what_a_user_needs(sample_build):
    out, _ = sample_build
    text = (out / "phase1" / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["configs"][0]["data_files"] == [{"split": "train", "path": "shards/shard-*.parquet"}]
    assert {"deu", "eng", "cmn"} <= set(front["language"]) and front["task_categories"] == ["fill-mask"]
    assert front["license"] == "other" and front["size_categories"] == ["n<1K"]
    for heading in ("## Loading", "## Shard schema", "## Sources and terms", "## Languages",
                    "## What curation removed", "## Examples", "## Intended use", "## Limitations", "## Citation"):
        assert heading in text, heading
    assert "| deu_Latn | German (Latn) |" in text and "ODC-By 1.0" in text and "Gemma Terms of Use" in text
    assert "| minhash | 2 |" in text  # the planted near-duplicate clusters of the samples, by size
    # code spans as they are (the Hub shows `&lt;` inside backticks literally); `<` outside them escaped
    assert "`<source>/<upstream id>`" in text and "`list<item: uint32>`" in text
    assert not [span for span in re.findall(r"`[^`\n]*`", text) if "&lt;" in span or "&gt;" in span]
    info = front["dataset_info"]
    assert info["features"] == hub_features(SHARD) and info["splits"][0]["name"] == "train"
    assert info["splits"][0]["num_examples"] == pq.read_table(out / "phase1" / "shards").num_rows == 845
    assert info["download_size"] == sum(f.stat().st_size for f in (out / "phase1" / "shards").glob("*.parquet"))


@pytest.mark.slow  # builds the samples
def test_the_quality_table_counts_the_phases_documents(sample_build):
    out, _ = sample_build
    text = (out / "phase1" / "README.md").read_text()
    table = text.split("by source:\n\n")[1].split("\n\n")[0].splitlines()[2:]
    documents = sum(int(row.split("|")[2].strip().replace(",", "")) for row in table)
    phase_docs = pq.read_table(out / "phase1" / "shards", columns=["doc_id"]).column(0).unique()
    assert documents == len(phase_docs) == 272  # not the pool's documents


@pytest.mark.slow  # builds the samples
def test_the_output_card_loads_each_phase_by_its_config(sample_build, tmp_path, monkeypatch):
    """`<out>/README.md` names phase1's shards as the config `phase1`: nothing else of the output (dedup's
    relations, the manifest) is read, offline."""
    import datasets
    from datasets import load_dataset

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    out, _ = sample_build
    front = yaml.safe_load((out / "README.md").read_text().split("---\n")[1])
    assert front["configs"] == [{"config_name": "phase1",
                                 "data_files": [{"split": "train", "path": "phase1/shards/shard-*.parquet"}]}]
    assert front["dataset_info"][0]["config_name"] == "phase1"
    assert front["dataset_info"][0]["splits"][0]["num_examples"] == 845
    chunks = load_dataset(str(out), "phase1", split="train", cache_dir=str(tmp_path / "cache"))
    assert chunks.num_rows == pq.read_table(out / "phase1" / "shards").num_rows == 845


@pytest.mark.slow  # builds the samples
def test_languages_without_data_are_listed_with_one_count_everywhere(sample_build, capsys):
    """plan, the build's summary and both cards say the same sentence: 22 of phase 1's 60 languages (and code)
    have data in the samples, and name the 38 that have none by their lang_Script label."""
    out, _ = sample_build
    with connect(Layout(out)) as con:
        sentence = phase_coverage(con, "phase1").sentence()
    assert sentence.startswith("22 of 60 languages + code have data; 38 have none: afr_Latn, azj_Latn, ben_Beng")
    assert main(["plan", "--phase", "1", "--out", str(out)]) == 0
    plan = capsys.readouterr().out
    assert f"languages: {sentence}" in plan and " eng " not in plan and "eng_Latn" in plan
    assert sentence in build_summary(Layout(out), "phase1", 1.0, 0, str(out))
    assert sentence in (out / "phase1" / "README.md").read_text()
    assert "| phase1 | pre-training | 845 | 22 of 60 languages + code |" in (out / "README.md").read_text()


def test_markdown_cells_escape_html_outside_code_spans_only():
    table = markdown_table(["a"], [("`<x>` <y> | `a|b`",)])
    assert table.splitlines()[2] == "| `<x>` &lt;y&gt; \\| `a\\|b` |"


def test_features_as_datasets_writes_them():
    from datasets import Features

    assert hub_features(SHARD) == Features.from_arrow_schema(SHARD)._to_yaml_list()


def test_coverage_counts_code_apart_and_names_the_missing():
    recipe = ["deu_Latn", "eng_Latn", "srp_Cyrl", "code"]
    found = coverage(recipe, {"deu_Latn": 10, "srp_Latn": 5, "code_python": 3, "code_c": 2, "eng_Latn": 0})
    assert found.sentence() == "2 of 3 languages + code have data; 1 has none: eng_Latn"
    assert coverage(recipe, {"deu_Latn": 1}).sentence() == "1 of 3 languages have data; 3 have none: eng_Latn, " \
                                                           "srp_Cyrl, code"
    assert coverage(recipe[:1], {"deu_Latn": 1}).sentence() == "1 of 1 languages have data: all of them"
    assert coverage(None, {"deu_Latn": 1, "code_c": 1}).count() == "1 languages + code"
    assert coverage(recipe, {}).sentence(limit=2) == "0 of 3 languages have data; 4 have none: deu_Latn, eng_Latn, " \
                                                     "and 2 more"


def test_the_recipes_languages_are_labels():
    from stages.languages import usual_label

    assert [usual_label(code) for code in ("eng", "cmn", "aai", "code", "deu_Latn", "qqq")] == [
        "eng_Latn", "cmn_Hani", "aai_Latn", "code", "deu_Latn", "qqq"]  # languages.csv, then FineWeb2's labels


def test_names_and_sizes():
    assert language_name("khm_Khmr") == "Khmer (Khmr)" and language_name("code_python") == "python (code)"
    assert language_name("qqq_Latn") == "qqq_Latn"
    assert size_category(855) == "n<1K" and size_category(2_000_000) == "1M<n<10M"
