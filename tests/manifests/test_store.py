"""manifests/store.py: a local tree's requests counted by kind, and S3's retry policy set unless the options set
their own (no server: s3fs connects only when asked something), and files of known size read without a HEAD."""

import pickle

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from manifests.layout import FOOTER_READ_BYTES, Layout, known_sizes, recording
from manifests.store import COUNTS, S3_ATTEMPTS, S3_CONNECT_TIMEOUT_S, S3_RETRY_MODE, S3FS_RETRIES, describe, requests


def test_a_local_tree_counts_each_request_by_kind(tmp_path):
    layout = Layout(tmp_path)
    before = COUNTS.snapshot()
    layout.write_bytes("a/b.bin", b"12345")
    assert layout.read_bytes("a/b.bin") == b"12345"
    assert layout.glob("a/*.bin") == ["a/b.bin"]
    layout.delete("a/b.bin")
    counts = COUNTS.snapshot() - before
    assert counts["put"] == 1 and counts["objects_written"] == 1 and counts["bytes_written"] == 5
    assert counts["get"] == 1 and counts["delete"] == 1 and counts["list"] >= 1
    assert requests(counts) == sum(counts[kind] for kind in ("put", "get", "delete", "list", "head"))
    assert describe(counts).startswith(f"{requests(counts)} requests (list ")


def test_s3_gets_the_retry_policy_unless_the_options_set_their_own():
    layout = Layout("s3://bucket/out")
    config = layout.fs.config_kwargs
    assert config["retries"] == {"mode": S3_RETRY_MODE, "total_max_attempts": S3_ATTEMPTS}
    assert config["connect_timeout"] == S3_CONNECT_TIMEOUT_S and layout.fs.retries == S3FS_RETRIES
    own = Layout("s3://bucket/out", config_kwargs={"retries": {"mode": "adaptive", "max_attempts": 2}})
    assert own.fs.config_kwargs["retries"] == {"mode": "adaptive", "max_attempts": 2}
    assert pickle.loads(pickle.dumps(layout)).fs.config_kwargs == config  # as a Ray task gets it
    assert type(pickle.loads(pickle.dumps(layout.fs))) is type(layout.fs)


@pytest.mark.slow  # moto's S3 server
def test_files_of_known_size_are_read_without_a_head(s3):
    """What the runner gives a task (`known_sizes`) spares a HEAD per file opened: a file read whole is one GET,
    row groups read through Arrow one GET per range asked (no read-ahead to the file's end)."""
    layout = Layout("s3://corpus/known-sizes")
    table = pa.table({"x": pa.array(range(200_000), pa.int64())})
    with recording() as written:
        for name, rows in (("small.parquet", 1_000), ("large.parquet", 200_000)):
            with layout.writing(name) as spool:
                pq.write_table(table.slice(0, rows), spool.local, row_group_size=20_000, compression="none")
    assert written.sizes["large.parquet"] > 2 * FOOTER_READ_BYTES  # read in ranges, not whole
    before = COUNTS.snapshot()
    with known_sizes({layout.path(name): size for name, size in written.sizes.items()}):
        with layout.open("small.parquet") as f:
            assert pq.read_table(f).num_rows == 1_000
        whole = ds.dataset(layout.path("small.parquet"), table.schema, format="parquet",
                           filesystem=layout.arrow_filesystem())
        assert whole.count_rows() == 1_000
        parquet = ds.ParquetFileFormat()
        filesystem = layout.arrow_filesystem(ranges=True)
        fragment = parquet.make_fragment(layout.path("large.parquet"), filesystem, row_groups=[3])
        assert ds.FileSystemDataset([fragment], table.schema, parquet, filesystem).to_table()["x"][0].as_py() == 60_000
    counts = COUNTS.snapshot() - before
    assert counts["head"] == 0 and counts["get"] == 4, counts  # 1 + 1 + footer and row group
    assert counts["bytes_read"] < written.sizes["large.parquet"] // 2 + 2 * written.sizes["small.parquet"], counts
    before = COUNTS.snapshot()
    with known_sizes({layout.path(name): size for name, size in written.sizes.items()}):
        for _ in range(2):  # the driver's scans (`Layout.dataset`, as the pool summary's two): one GET, kept
            assert layout.dataset(["small.parquet"], table.schema).to_table().num_rows == 1_000
    counts = COUNTS.snapshot() - before
    assert counts["head"] == 0 and counts["get"] == 1, counts
