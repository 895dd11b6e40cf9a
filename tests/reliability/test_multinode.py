"""A Ray cluster of three nodes on this machine (a head and two workers, separate `ray start` processes with
explicit ports, one CPU each), the build submitted as a Ray job, one worker node killed during curation: the job
finishes on the nodes left and writes the embedded build's shards, byte for byte."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from manifests.layout import Layout
from pipeline.markers import recorded
from stages.paths import PROJECT_ROOT as ROOT
from tests.helpers import free_port, ray_env, shard_hashes, stop, wait_for_port

pytestmark = pytest.mark.slow  # starts a Ray cluster of three nodes


def node(bin_dir: str, env: dict, log, *args: str) -> subprocess.Popen:
    """One `ray start --block` node in its own process group, every port explicit (the test session's embedded
    Ray holds the defaults)."""
    ports = [f"--{name}={free_port()}" for name in ("node-manager-port", "object-manager-port", "metrics-export-port",
                                                     "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                     "runtime-env-agent-port")]
    return subprocess.Popen([os.path.join(bin_dir, "ray"), "start", "--block", "--num-cpus=1",
                             "--disable-usage-stats", "--node-ip-address=127.0.0.1", *ports, *args],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_losing_a_worker_node_during_curation(sample_build, tmp_path):
    bin_dir, env = ray_env()
    gcs, dashboard = free_port(), free_port()
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("head", "a", "b")}  # noqa: SIM115
    head = node(bin_dir, env, logs["head"], "--head", f"--port={gcs}", f"--ray-client-server-port={free_port()}",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", '--resources={"head": 1}')
    workers: list[subprocess.Popen] = []
    folders: list[str] = []
    try:
        wait_for_port(dashboard, head)
        def worker(name: str) -> subprocess.Popen:
            # nodes of one machine share a session folder and its socket names unless given their own: two
            # starting together could both take the object store's socket (`bind: Address already in use`)
            folders.append(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: sockets' paths are limited
            return node(bin_dir, env, logs[name], f"--address=127.0.0.1:{gcs}", f'--resources={{"worker_{name}": 1}}',
                        f"--temp-dir={folders[-1]}")

        workers = [worker(name) for name in ("a", "b")]
        for _ in range(3):  # a node whose port was taken in the meantime (ports picked here are ephemeral) exits
            if wait_for_nodes(bin_dir, env, gcs, 3, workers):
                break
            workers = [process if process.poll() is None else worker(name)
                       for name, process in zip(("a", "b"), workers, strict=True)]
        else:
            logs_text = " | ".join(path.read_text()[-1500:] for path in sorted(tmp_path.glob("*.log")))
            pytest.fail(f"the cluster did not reach 3 nodes: {logs_text}")
        out = tmp_path / "out"
        job = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "build", "--phase", "1", "--out", str(out), "--ray-address",
             f"http://127.0.0.1:{dashboard}"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        deadline = time.monotonic() + 240
        while len(recorded(Layout(out), "curate")) < 4:
            assert job.poll() is None and time.monotonic() < deadline, "the job ended before the node was lost"
            time.sleep(0.1)
        started = time.monotonic()
        os.killpg(workers[0].pid, signal.SIGKILL)  # worker node a: its raylet and its workers, mid-task
        workers[0].wait()
        stdout, stderr = job.communicate(timeout=400)
        print(f"job finished {time.monotonic() - started:.1f} s after the node was killed")
        print("\n".join(line for line in (stdout + stderr).splitlines()
                        if any(word in line for word in ("lost", "died", "Died", "retr", "curate:"))))
        assert job.returncode == 0, stdout[-3000:] + stderr[-3000:]
        assert shard_hashes(out) == shard_hashes(sample_build[0])
    finally:
        for process in [*workers, head]:
            stop(process)
        for log in logs.values():
            log.close()
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def wait_for_nodes(bin_dir: str, env: dict, gcs: int, count: int, workers: list[subprocess.Popen]) -> bool:
    """True once `count` nodes are alive; False as soon as a worker node's process has ended."""
    code = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
            "print('alive', sum(n['Alive'] for n in ray.nodes()))")
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in workers):
            return False
        result = subprocess.run([os.path.join(bin_dir, "python"), "-c", code, f"127.0.0.1:{gcs}"], env=env,
                                capture_output=True, text=True, timeout=60)
        alive = [int(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("alive ")]
        if result.returncode == 0 and alive and alive[-1] >= count:
            return True
        time.sleep(1)
    return False
