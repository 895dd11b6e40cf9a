"""The shard shuffle: each shard task reads only the chunks placed in it; one level or two, the same shards."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from manifests.layout import Layout
from manifests.writer import PartitionedSink
from pipeline import mixing
from pipeline.build import build
from pipeline.markers import recorded
from pipeline.mixing import shards_per_group
from tests.helpers import settings_for, shard_hashes


def summaries(out, stage: str) -> list[dict]:
    return [record["summary"] for _, record in sorted(recorded(Layout(out), stage).items())]



def test_group_sizes():
    assert shards_per_group(6, 64) == 1 and shards_per_group(64, 64) == 1
    assert shards_per_group(65, 64) == 8  # 9 groups of at most 8
    assert shards_per_group(137_000, 64) == 370  # the full recipe: 371 groups of 370, two reads per byte


@pytest.mark.slow  # builds the samples
def test_two_level_shuffle_writes_the_same_shards(sample_build_copy, monkeypatch):
    out, first = sample_build_copy
    one_level = shard_hashes(out)
    assert first["stages"]["phase1-shard"]["read_amplification"] == 1.0  # each shard task: its own files only
    shard_reads = first["stages"]["phase1-shard"]["read_bytes"]  # the placed chunks, once
    monkeypatch.setattr(mixing, "SHUFFLE_FANOUT", 2)  # 6 shards: 3 groups of 2
    info = build(settings_for(out))
    assert info["ran"]["phase1-split"] == 3 and info["ran"]["phase1-shard"] == len(one_level)
    assert shard_hashes(out) == one_level
    assert sum(s["shards"] for s in summaries(out, "phase1-split")) == len(one_level)
    for stage in ("phase1-split", "phase1-shard"):  # each level reads the placed chunks once
        assert info["stages"][stage]["read_amplification"] == 1.0
        assert 0.5 * shard_reads < info["stages"][stage]["read_bytes"] < 1.5 * shard_reads  # footers differ


def test_partitioned_sink_bounds_its_buffer(tmp_path):
    layout = Layout(str(tmp_path))
    sink = PartitionedSink(layout, lambda p: f"part-{p}.parquet", pa.schema([("x", pa.int64())]), max_bytes=100)
    for n in range(50):
        sink.write(n % 5, {"x": n}, 10)
        assert sink.buffered < 100
    assert sink.close() == {p: 10 for p in range(5)}
    assert [pq.read_table(tmp_path / f"part-{p}.parquet").column("x").to_pylist() for p in (0, 4)] == [
        list(range(0, 50, 5)), list(range(4, 50, 5))]



def test_pool_batches_join_small_files(tmp_path):
    """Rows of small pool files come in batches of MIX_BATCH_ROWS across files, in file order."""
    layout = Layout(tmp_path)
    names = []
    for number, rows in enumerate([3, 500, 1, 700, 20]):
        names.append(f"pool/p{number}.parquet")
        (tmp_path / "pool").mkdir(exist_ok=True)
        pq.write_table(pa.table({"id": [f"{number}-{i}" for i in range(rows)]}), tmp_path / names[-1])
    batches = list(mixing._pool_batches(layout, names))
    assert [b.num_rows for b in batches] == [1016, 208]  # 3 + 500 + 1 + 512 (of 700), then 188 + 20
    assert [i for b in batches for i in b.column("id").to_pylist()] == [
        f"{number}-{i}" for number, rows in enumerate([3, 500, 1, 700, 20]) for i in range(rows)]
