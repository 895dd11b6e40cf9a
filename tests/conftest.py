"""Shared fixtures: the real tokenizers (from `make setup`), one embedded Ray, one phase-1 build of the samples."""

import logging
import shutil
from pathlib import Path

import pytest

from pipeline.config import SAMPLES_DIR as SAMPLES
from pipeline.config import load_tokenizers
from tests.helpers import settings_for


@pytest.fixture(scope="session")
def tokenizers():
    specs = load_tokenizers()
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
def sample_build(tmp_path_factory, ray_session, tokenizers):
    """Phase 1 built once from the bundled samples: (out directory, run info)."""
    from pipeline.build import build

    out = tmp_path_factory.mktemp("build") / "out"
    settings = settings_for(out)
    return out, build(settings)


@pytest.fixture
def copy_samples(tmp_path):
    """Copy one source's samples into a temporary folder the test may damage."""

    def copy(source: str) -> Path:
        target = tmp_path / source
        shutil.copytree(SAMPLES / source, target)
        return target

    return copy
