"""Kill a real `mmcorpus build` with SIGKILL part-way, run it again: it skips what was done (the tasks its
markers recorded before the kill) and writes the same shards, byte for byte, as an uninterrupted run, with 1
worker and with 2."""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from manifests.layout import Layout
from pipeline.markers import recorded
from stages.paths import PROJECT_ROOT as ROOT
from tests.helpers import shard_hashes

pytestmark = pytest.mark.slow  # kills builds in other processes


def start_build(out, workers: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "build", "--phase", "1", "--workers", str(workers), "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def kill_when(process: subprocess.Popen, ready, timeout: float = 120) -> float:
    start = time.monotonic()
    while not ready():
        assert process.poll() is None, "the build ended before the kill point"
        assert time.monotonic() - start < timeout, "kill point never reached"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and the embedded Ray it started
    process.wait()
    return time.monotonic() - start


def markers(out, stage: str) -> int:
    """The stage's tasks recorded as done in the tree."""
    return len(recorded(Layout(out), stage))


KILL_POINTS = {
    "curation": lambda out: 3 <= markers(out, "curate"),
    "mixing": lambda out: markers(out, "phase1-threshold") > 0,
}


@pytest.mark.parametrize("workers, point", [(2, "curation"), (2, "mixing"), (1, "curation")])
def test_killed_build_resumes_to_identical_shards(sample_build, tmp_path, workers, point):
    reference = shard_hashes(sample_build[0])
    out = tmp_path / "out"
    killed_after = kill_when(start_build(out, workers), lambda: KILL_POINTS[point](out))
    assert not (out / "catalog.duckdb").exists(), "killed too late: the build had finished"
    done_before = markers(out, "curate")
    start = time.monotonic()
    rerun = start_build(out, workers)
    assert rerun.wait(timeout=240) == 0
    resumed_in = time.monotonic() - start
    assert shard_hashes(out) == reference
    ran = json.loads(pq.read_table(sorted(out.glob(Layout.run_records_glob("phase1")))[-1]).column("ran")[0].as_py())
    assert ran.get("curate", 0) == markers(out, "curate") - done_before  # the tasks done before the kill reused
    print(
        f"workers {workers}, killed during {point} after {killed_after:.1f} s with {done_before} curate "
        f"tasks done; resumed in {resumed_in:.1f} s"
    )
