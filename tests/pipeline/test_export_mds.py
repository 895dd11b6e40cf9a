"""`mmcorpus export-mds`: the export mmBERT's trainer reads, loaded by mosaicml-streaming itself (in `.venv-mds`),
its folders and statistics, checksums, and a rerun that gives the same bytes."""

import csv
import hashlib
import json
import subprocess
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from manifests.layout import Layout
from pipeline.cli import main
from pipeline.sections import PHASES
from stages.mds import MDSError
from stages.paths import PROJECT_ROOT
from stages.shards import read_mds

pytestmark = pytest.mark.slow  # builds the samples

MDS_VENV = PROJECT_ROOT / ".venv-mds"  # built by `make setup` (Makefile), from tests/mmbert/requirements.txt
LOADER = PROJECT_ROOT / "tests" / "mmbert" / "load_export.py"


@pytest.fixture(scope="module")
def exports(later_phases, tmp_path_factory):
    """Phases 1 and 2 of the samples (phase 2 mixed again from phase 1's pool), each exported: {phase: folder}."""
    out, _ = later_phases
    folders = {}
    for number in (1, 2):
        folders[number] = tmp_path_factory.mktemp("mds") / f"phase{number}"
        assert main(["export-mds", "--phase", str(number), "--out", str(out), str(folders[number])]) == 0
    return out, folders


def parquet_rows(out: Path, number: int) -> dict[str, list[int]]:
    """The phase's shard rows by their MDS id, `<doc_id>#<chunk>@<epoch>`."""
    table = pq.read_table(out / f"phase{number}" / "shards", columns=["doc_id", "chunk", "epoch", "input_ids"])
    rows = {f"{r['doc_id']}#{r['chunk']}@{r['epoch']}": r["input_ids"] for r in table.to_pylist()}
    assert len(rows) == table.num_rows  # ids are unique
    return rows


def digests(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("number", [1, 2])
def test_mmberts_trainer_loads_every_sample(exports, number, tmp_path):
    """mosaicml-streaming 0.13 reads the export as ModernBERT's NoStreamingDataset does (reader_from_json, the raw
    file present, validate, Spanner) and as StreamingDataset(local=...): every sample is its Parquet row."""
    if not (MDS_VENV / "installed").exists():
        pytest.skip(f"{MDS_VENV.name}, mosaicml-streaming's environment, is missing or incomplete: run `make setup`")
    out, folders = exports
    samples = tmp_path / "samples.jsonl"
    seq_len = PHASES.load().phase(number).seq_len
    loaded = subprocess.run([str(MDS_VENV / "bin" / "python"), str(LOADER), str(folders[number]), str(seq_len),
                             str(samples)], capture_output=True, text=True, timeout=600)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    counts = json.loads(loaded.stdout.strip().splitlines()[-1])
    rows = parquet_rows(out, number)
    read = [json.loads(line) for line in samples.read_text().splitlines()]
    sources = sum(path.is_dir() for path in folders[number].iterdir())
    assert counts == {"samples": len(rows), "folders": sources, "folder_samples": len(rows),
                      "streaming_samples": len(rows)}
    assert sorted(sample["id"] for sample in read) == sorted(rows)
    assert all(sample["input_ids"] == rows[sample["id"]] for sample in read)
    assert all(ids[0] == 2 and ids[-1] == 1 and len(ids) <= seq_len for ids in rows.values())


def test_the_export_is_laid_out_as_mmberts_data(exports):
    out, folders = exports
    export, rules = folders[1], PHASES.load().phase(1).chunking
    names = sorted(path.name for path in export.iterdir() if path.is_dir())
    sources = ["dolma", "fineweb2", "megawika", "prolong", "starcoder"]
    assert names == [f"{source}-tokenized-chunked-1024-512-128-backfill-nodups" for source in sources]
    root = json.loads((export / "index.json").read_text())
    entry = root["shards"][0]
    assert entry["raw_data"]["basename"] == f"{names[0]}/shard.00000.000.mds"
    assert entry["compression"] is None and entry["zip_data"] is None and entry["format"] == "mds"
    assert entry["column_names"] == ["epoch", "id", "input_ids", "lang", "len", "source"]
    assert entry["column_encodings"] == ["int", "str", "ndarray:uint32", "str", "int", "str"]
    raw = export / entry["raw_data"]["basename"]
    assert hashlib.sha256(raw.read_bytes()).hexdigest() == entry["raw_data"]["hashes"]["sha256"]
    rows = parquet_rows(out, 1)
    assert read_mds(Layout(export)) == (len(rows), sum(map(len, rows.values())))
    stats = {name: json.loads((export / name / "stats.json").read_text()) for name in names}
    assert list(stats[names[0]]) == ["total_duplicated_tokens", "total_tokens_written", "total_tokens_skipped",
                                     "percentiles", "total_tokens_moved"]
    assert sum(s["total_tokens_written"] for s in stats.values()) == sum(map(len, rows.values()))
    assert all(s["total_duplicated_tokens"] == 0 and s["percentiles"]["100th"] <= rules.seq_len
               for s in stats.values())
    notes: Counter = Counter()
    for row in pq.read_table(out / "phase1" / "manifest" / "notes.parquet").to_pylist():
        notes[(row["note"], row["source"])] += row["tokens"] if row["stage"] == "mix" else 0
    for source, name in zip(sources, names, strict=True):
        assert stats[name]["total_tokens_skipped"] == notes.get(("mix:tail_skipped", source), 0)
        assert stats[name]["total_tokens_moved"] == notes.get(("mix:tail_backfilled", source), 0)
    assert sum(s["total_tokens_moved"] for s in stats.values()) > 0
    deciles = json.loads((export / names[1] / "token_decile.json").read_text())
    assert list(deciles) == [f"{k}k" for k in range(9)]
    folder_index = json.loads((export / names[1] / "index.json").read_text())
    assert sorted(i for indices in deciles.values() for i in indices) == list(
        range(sum(e["samples"] for e in folder_index["shards"])))
    assert json.loads((export / "num_tokens.json").read_text())["num_tokens"] == sum(map(len, rows.values()))
    with open(export / "dataset_stats.csv") as f:
        table = list(csv.DictReader(f))
    assert [row["folder"] for row in table] == names and sum(int(row["samples"]) for row in table) == len(rows)


def test_a_rerun_is_byte_identical_and_compression_writes_both_forms(exports, tmp_path):
    out, folders = exports
    before = digests(folders[1])
    assert main(["export-mds", "--phase", "1", "--out", str(out), str(folders[1])]) == 0
    assert digests(folders[1]) == before
    zipped = tmp_path / "zstd"
    assert main(["export-mds", "--phase", "1", "--compression", "zstd", "--out", str(out), str(zipped)]) == 0
    entry = json.loads((zipped / "index.json").read_text())["shards"][0]
    assert entry["compression"] == "zstd" and (zipped / entry["raw_data"]["basename"]).exists()
    zip_file = zipped / entry["zip_data"]["basename"]
    assert hashlib.sha256(zip_file.read_bytes()).hexdigest() == entry["zip_data"]["hashes"]["sha256"]
    assert {name: digest for name, digest in digests(zipped).items() if not name.endswith(".zstd")
            and "index.json" not in name} == {name: digest for name, digest in before.items()
                                               if "index.json" not in name}
    raw_file = zipped / entry["raw_data"]["basename"]  # the file the trainer reads is checked beside the zstd one
    data = bytearray(raw_file.read_bytes())
    data[len(data) // 2] ^= 1
    raw_file.write_bytes(bytes(data))
    with pytest.raises(MDSError, match="sha256 differs"):
        read_mds(Layout(zipped))
    # exported again without compression into the same folder: the compressed files go, the damaged one is
    # written again, and the folder is as a fresh export
    assert main(["export-mds", "--phase", "1", "--out", str(out), str(zipped)]) == 0
    assert digests(zipped) == before
