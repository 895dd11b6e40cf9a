"""Shared fixtures: the real tokenizers (from `make setup`), one embedded Ray, the builds of the samples (read
only: a test that changes an output works on a copy), an S3-protocol server (moto's) on loopback."""

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.sections import TOKENIZERS
from stages.paths import SAMPLES_DIR as SAMPLES
from tests.helpers import free_port, settings_for, wait_for_port

SLOW_FIXTURES = {"ray_session", "s3"}  # a build needs Ray; the S3 server is a process


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep `make test-fast` fast: a test that asks, even through another fixture, for Ray or the S3 server must
    be marked slow."""
    unmarked = [item.nodeid for item in items
                if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("slow")]
    if unmarked:
        raise pytest.UsageError(f"mark these tests slow (pytest.mark.slow), they start Ray or a server: {unmarked}")


@pytest.fixture(scope="session")
def tokenizers():
    specs = TOKENIZERS.load()
    missing = [spec.path for spec in specs.values() if spec.local is None]
    if missing:
        pytest.fail(f"tokenizer files missing ({missing}): run `make setup`")
    return specs


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20,
             logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_build(tmp_path_factory, ray_session, tokenizers) -> tuple[Path, dict]:
    """Phase 1 built once from the bundled samples, for every test to read: (out directory, run info)."""
    from pipeline.build import build

    out = tmp_path_factory.mktemp("build") / "out"
    settings = settings_for(out)
    return out, build(settings)


@pytest.fixture
def sample_build_copy(sample_build, tmp_path) -> tuple[Path, dict]:
    """A copy of `sample_build` (modification times kept) that the test may build again, change or damage."""
    out, info = sample_build
    shutil.copytree(out, tmp_path / "out")
    return tmp_path / "out", info


@pytest.fixture(scope="session")
def later_phases(sample_build, tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    """Phases 2, 3 and 3-eng mixed again from a copy of `sample_build`'s pool: (out directory, the runner's log
    lines by phase id)."""
    from pipeline.build import build

    out = tmp_path_factory.mktemp("later") / "out"
    shutil.copytree(sample_build[0], out)
    runner_log, runs = logging.getLogger("pipeline.runner"), {}
    for number, variant in ((2, None), (3, None), (3, "eng")):
        settings = settings_for(out, number, variant)
        handler = logging.Handler(logging.INFO)
        messages: list[str] = []
        handler.emit = lambda record, messages=messages: messages.append(record.getMessage())
        runner_log.addHandler(handler)
        runner_log.setLevel(logging.INFO)
        try:
            build(settings)
        finally:
            runner_log.removeHandler(handler)
        runs[settings.phase.id] = messages
    return out, runs


@pytest.fixture
def copy_samples(tmp_path):
    """Copy one source's samples into a temporary folder the test may damage."""

    def copy(source: str) -> Path:
        target = tmp_path / source
        shutil.copytree(SAMPLES / source, target)
        return target

    return copy


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 and a bucket; credentials and endpoint through the usual variables."""
    pytest.importorskip("moto")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    env = dict(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
               AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        wait_for_port(port, server)
        import fsspec

        fsspec.filesystem("s3", skip_instance_cache=True).mkdir("corpus")
        yield dict(os.environ)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
