"""What the test modules share: build settings, the samples' texts, an output's shards and queries, inputs edited
behind a build's back, and real Ray processes started (and stopped) on loopback."""

import bz2
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline.build import BuildSettings
from pipeline.cli import main
from pipeline.config import load_recipe
from stages.paths import SAMPLES_DIR as SAMPLES

GERMAN = "fineweb2/data/deu_Latn/train"  # the folder of the samples' German FineWeb2 file


def settings_for(out: Path | str, phase: int = 1, variant: str | None = None, sources: Path | None = None,
                 overrides: tuple[str, ...] = (), **kwargs: object) -> BuildSettings:
    """Build settings from the default recipe, with the sources, a phase or a value changed."""
    recipe = load_recipe(sections={"sources": sources} if sources else None, overrides=overrides)
    return BuildSettings(out=str(out), phase=recipe.phases.phase(phase, variant), recipe=recipe, **kwargs)


def shard_hashes(out: Path, phase: str = "phase1") -> dict[str, str]:
    """{shard path: sha256} from the phase's manifest: two builds are the same when these are."""
    table = pq.read_table(out / phase / "manifest" / "shards.parquet", columns=["path", "sha256"])
    return {row["path"]: row["sha256"] for row in table.to_pylist()}


def run_query(out: Path, sql: str, capsys: pytest.CaptureFixture) -> tuple[int, str, list[str]]:
    """`mmcorpus query --format json`: (exit status, stdout, stderr's lines)."""
    capsys.readouterr()
    code = main(["query", "--out", str(out), "--format", "json", sql])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def query(out: Path, sql: str, capsys: pytest.CaptureFixture) -> list[dict]:
    """The rows of a query that must succeed."""
    code, text, err = run_query(out, sql, capsys)
    assert code == 0, err
    return json.loads(text)


def fineweb2_texts(lang: str) -> list[str]:
    """The eleven documents of a language in the FineWeb2 samples."""
    path = SAMPLES / "fineweb2" / "data" / lang / "train" / "000_00000.parquet"
    return pq.read_table(path, columns=["text"]).column("text").to_pylist()


def udhr(lang: str) -> str:
    """Text of the FineWeb2 samples in that language: the first nine UDHR articles."""
    return "\n\n".join(fineweb2_texts(lang)[1:4])


def write_lines(path: Path, records: list) -> None:
    """JSON lines, compressed by the file's suffix; a str record is written as it is (a broken line)."""
    data = b"".join((r if isinstance(r, str) else json.dumps(r)).encode() + b"\n" for r in records)
    compress = {".gz": gzip.compress, ".zst": zstandard.ZstdCompressor().compress, ".bz2": bz2.compress}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(compress.get(path.suffix, bytes)(data))


def copies_of_german(path: Path) -> None:
    """A new FineWeb2 file: every German document again (exact duplicates) under new ids."""
    table = pq.read_table(SAMPLES / GERMAN / "000_00000.parquet")
    ids = pa.array([f"copy-{i}" for i in range(table.num_rows)])
    pq.write_table(table.set_column(table.schema.get_field_index("id"), "id", ids), path)


def edit_keeping_size_and_mtime(path: Path, old: bytes, new: bytes) -> None:
    """Replace the first `old` with `new` (as long) and put the modification time back: a change that size and
    mtime cannot see."""
    assert len(old) == len(new)
    data, stat = path.read_bytes(), path.stat()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


_given_ports: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before in this session (the OS may offer a just-released one again)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _given_ports:
            _given_ports.add(port)
            return port


def wait_for_port(port: int, process: subprocess.Popen) -> None:
    """Until something answers on the loopback port; fails if `process` ends first or after 90 s."""
    deadline = time.monotonic() + 90
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, f"nothing answers on port {port}"
            time.sleep(0.5)


def ray_env() -> tuple[str, dict]:
    """The virtualenv's bin folder and an environment whose `python` is this one (jobs run `python`), with Ray's
    auth token generated on this machine (a no-op when it has one: Ray 2.60's heads require it)."""
    bin_dir = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    subprocess.run([os.path.join(bin_dir, "ray"), "get-auth-token", "--generate"], env=env, capture_output=True,
                   check=True)
    return bin_dir, env


def stop(process: subprocess.Popen) -> None:
    """Stop a `ray start --block` process group this test started (never `ray stop`: it ends others' runs)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
