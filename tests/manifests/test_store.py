"""manifests/store.py: a local tree's requests counted by kind, and S3's retry policy set unless the options set
their own (no server: s3fs connects only when asked something)."""

import pickle

from manifests.layout import Layout
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
