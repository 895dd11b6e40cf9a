"""--out on an object store: the phase-1 build of the samples to s3:// on a real S3-protocol server (moto's
standalone server on loopback) gives the local build's shards byte for byte; killed part-way it resumes; check,
query, report, export-mds and the encoder reference's reader work on it."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from manifests.catalog import check
from manifests.layout import Layout
from pipeline.cli import main
from pipeline.markers import recorded
from stages.paths import PROJECT_ROOT as ROOT
from tests.helpers import shard_hashes

pytestmark = pytest.mark.slow  # builds on an S3 server in other processes


def build_process(out: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "build", "--phase", "1", "--out", out], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def remote_hashes(url: str) -> dict[str, str]:
    import pyarrow.parquet as pq

    layout = Layout(url)
    with layout.open(Layout.manifest("phase1", "shards")) as f:
        return {row["path"]: row["sha256"] for row in pq.read_table(f).to_pylist()}


@pytest.fixture(scope="module")
def s3_build(s3, sample_build):
    url = "s3://corpus/phase-one"
    started = time.monotonic()
    process = build_process(url, s3)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    seconds = time.monotonic() - started
    print(f"object-store build {seconds:.1f} s; local build {sample_build[1]['seconds']:.1f} s (in-process)")
    return url, seconds


def test_the_object_store_build_gives_the_local_shards(s3_build, sample_build):
    url, _ = s3_build
    assert remote_hashes(url) == shard_hashes(sample_build[0])
    layout = Layout(url)
    assert check(layout, "phase1") == []
    assert layout.exists(Layout.CATALOG) and not layout.glob(f"{Layout.placed_dir('phase1')}/*")


def test_query_check_report_and_export_on_the_object_store(s3, s3_build, sample_build, capsys):
    url, _ = s3_build
    capsys.readouterr()
    assert main(["query", "--out", url, "--format", "json", "SELECT sum(tokens) AS tokens FROM shards"]) == 0
    tokens = json.loads(capsys.readouterr().out)[0]["tokens"]
    assert tokens == sum(_local_tokens(sample_build[0]))
    assert main(["query", "--out", url, "SELECT * FROM read_text('/etc/passwd')"]) == 2
    assert main(["check", "--phase", "1", "--out", url]) == 0
    assert main(["report", "--phase", "1", "--out", url]) == 0
    assert Layout(url).exists(Layout.report("phase1", "index.html"))
    # export-mds runs Ray tasks: in a process of its own, whose workers get the credentials (the session's
    # Ray started before the S3 server existed)
    exported = subprocess.run([sys.executable, "-m", "pipeline.cli", "export-mds", "--phase", "1", "--out", url,
                               "s3://corpus/phase-one-mds"], cwd=ROOT, env=s3, capture_output=True, text=True)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert Layout("s3://corpus/phase-one-mds").exists("index.json")


def _local_tokens(out) -> list[int]:
    import pyarrow.parquet as pq

    return [row["tokens"] for row in pq.read_table(out / "phase1" / "manifest" / "shards.parquet").to_pylist()]


def test_the_encoder_reference_reads_shards_from_the_object_store(s3_build):
    pytest.importorskip("torch")
    from reference.data import read_chunks

    url, _ = s3_build
    chunks = list(read_chunks(Layout(Layout(url).url_of(Layout.shards_dir("phase1")))))
    assert chunks and all(chunk[0] == 2 and chunk[-1] == 1 for chunk in chunks)


def test_a_killed_object_store_build_resumes(s3, s3_build, sample_build):
    url = "s3://corpus/killed"
    layout = Layout(url)
    process = build_process(url, s3)
    deadline = time.monotonic() + 120
    while len(recorded(layout, "curate")) < 3:
        assert process.poll() is None and time.monotonic() < deadline, "the build ended before the kill"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not layout.exists(Layout.CATALOG)
    resumed = build_process(url, s3)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    assert "already done" in stderr and remote_hashes(url) == shard_hashes(sample_build[0])
