"""Ctrl-C and SIGTERM stop a build with one line and the conventional exit status (130, 143), Ray shut down; the
same command then resumes."""

import os
import signal
import subprocess
import sys
import time

import pytest

from manifests.layout import Layout
from pipeline.markers import recorded
from stages.paths import PROJECT_ROOT as ROOT
from tests.helpers import shard_hashes

pytestmark = pytest.mark.slow  # signals builds in other processes


def stop_during_curation(out, how: str) -> subprocess.CompletedProcess:
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "build", "--phase", "1", "--out", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while len(recorded(Layout(out), "curate")) < 2:
        assert process.poll() is None and time.monotonic() < deadline, "the build ended before the signal"
        time.sleep(0.05)
    if how == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)  # a terminal sends it to the whole foreground group
    else:
        os.kill(process.pid, signal.SIGTERM)  # a scheduler or `kill` sends it to the driver
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.parametrize("how, code, word", [("ctrl-c", 130, "interrupted"), ("sigterm", 143, "terminated")])
def test_a_signal_stops_the_build_with_one_line(sample_build, tmp_path, how, code, word):
    out = tmp_path / "out"
    stopped = stop_during_curation(out, how)
    assert stopped.returncode == code, stopped.stderr[-2000:]
    assert stopped.stderr.strip().splitlines()[-1] == \
        f"mmcorpus: build {word}; run the same command again to resume"
    assert "Traceback" not in stopped.stderr and "*** SIGTERM" not in stopped.stderr
    assert not (out / "catalog.duckdb").exists()
    resumed = subprocess.run([sys.executable, "-m", "pipeline.cli", "build", "--phase", "1", "--out", str(out)],
                             cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert shard_hashes(out) == shard_hashes(sample_build[0])
