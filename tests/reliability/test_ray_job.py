"""The build as a Ray job on a real Ray head started here (loopback), with its logs streamed back."""

import os
import subprocess
import sys

import pytest

from manifests.catalog import check
from manifests.layout import Layout
from stages.paths import PROJECT_ROOT as ROOT
from tests.helpers import free_port, ray_env, shard_hashes, stop, wait_for_port

pytestmark = pytest.mark.slow  # starts a Ray head and submits a build


@pytest.fixture
def ray_head(tmp_path):
    """`ray start --head --block` on loopback; stopping that process stops the cluster it started."""
    bin_dir, env = ray_env()
    dashboard = free_port()
    # Every port explicit: the session's embedded Ray runs beside it and holds the defaults.
    ports = [f"--{name}={free_port()}" for name in ("port", "ray-client-server-port", "dashboard-agent-listen-port",
                                                     "dashboard-agent-grpc-port", "metrics-export-port",
                                                     "runtime-env-agent-port", "node-manager-port",
                                                     "object-manager-port")]
    head = subprocess.Popen(
        [os.path.join(bin_dir, "ray"), "start", "--head", "--block", "--num-cpus=2", "--disable-usage-stats",
         "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", *ports],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    wait_for_port(dashboard, head)
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        stop(head)


def test_build_submitted_as_a_ray_job(ray_head, sample_build, tmp_path):
    address, env = ray_head
    out = tmp_path / "job-out"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "build", "--phase", "1", "--out", str(out), "--ray-address", address],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "phase1-shard:" in result.stdout  # the job's own log lines, streamed back
    assert "SUCCEEDED" in result.stderr
    assert check(Layout(out), "phase1") == []
    assert shard_hashes(out) == shard_hashes(sample_build[0])  # same bytes as the embedded build
