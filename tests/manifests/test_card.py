"""The dataset card every build writes: Hugging Face `datasets` loads the phase folder as the shards, and the
card carries the terms, the schema, the languages by name, what curation removed, examples and the citation."""

import pyarrow.parquet as pq
import pytest
import yaml

from manifests.card import language_name, size_category


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
    assert front["configs"][0]["data_files"] == [{"split": "train", "path": "shards/*.parquet"}]
    assert {"deu", "eng", "cmn"} <= set(front["language"]) and front["task_categories"] == ["fill-mask"]
    assert front["license"] == "other" and front["size_categories"] == ["n<1K"]
    for heading in ("## Loading", "## Shard schema", "## Sources and terms", "## Languages",
                    "## What curation removed", "## Examples", "## Intended use", "## Limitations", "## Citation"):
        assert heading in text, heading
    assert "| deu_Latn | German (Latn) |" in text and "ODC-By 1.0" in text and "Gemma Terms of Use" in text
    assert "| minhash | 2 |" in text  # the planted near-duplicate clusters of the samples, by size


def test_names_and_sizes():
    assert language_name("khm_Khmr") == "Khmer (Khmr)" and language_name("code_python") == "python (code)"
    assert language_name("qqq_Latn") == "qqq_Latn"
    assert size_category(855) == "n<1K" and size_category(2_000_000) == "1M<n<10M"
