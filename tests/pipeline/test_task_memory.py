"""--task-memory: parsed, checked against the cluster, passed to Ray and held by DuckDB inside tasks."""

import argparse

import pytest

from manifests.layout import TASK_MEMORY, Layout
from pipeline.cli import byte_size
from pipeline.progress import MIN_TASK_MEMORY, fit_task_memory
from pipeline.runner import Runner


def test_sizes_parse():
    assert byte_size("512MiB") == 512 << 20 and byte_size("2GiB") == 2 << 30 and byte_size("1.5G") == 3 << 29
    assert byte_size("300000000") == 300_000_000 and byte_size("2 GB") == 2 * 10**9
    with pytest.raises(argparse.ArgumentTypeError, match="512MiB"):
        byte_size("lots")
    with pytest.raises(argparse.ArgumentTypeError, match="at least 256 MiB"):
        byte_size("1000000")


@pytest.mark.slow  # starts Ray
def test_task_memory_fits_the_cluster(ray_session):
    default = fit_task_memory(None)
    assert MIN_TASK_MEMORY <= default <= 8 << 30
    assert fit_task_memory(512 << 20) == 512 << 20
    with pytest.raises(ValueError, match="exceeds the largest node"):
        fit_task_memory(1 << 50)
    with pytest.raises(ValueError, match="at least|>= 256 MiB"):
        Runner(Layout("memory://x"), task_memory=1 << 20)


def test_duckdb_in_a_task_holds_half_its_memory(tmp_path):
    token = TASK_MEMORY.set(512 << 20)
    try:
        with Layout(str(tmp_path)).duckdb() as con:
            limit = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    finally:
        TASK_MEMORY.reset(token)
    assert limit.replace(" ", "") in ("256.0MiB", "268.4MB", "256MiB")
