"""`check` catches what it promises to: changed shard bytes, missing or extra shards."""

import shutil

import pytest

from manifests.catalog import check
from manifests.layout import Layout


@pytest.mark.slow  # builds the samples
def test_check_reports_tampered_missing_and_extra_shards(sample_build, tmp_path):
    out, _ = sample_build
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    shards = sorted((copy / "phase1" / "shards").glob("*.parquet"))
    shards[0].write_bytes(shards[0].read_bytes()[:-10] + b"0123456789")
    shards[1].unlink()
    shutil.copy(shards[2], shards[2].with_name("shard-99999.parquet"))
    problems = check(Layout(copy), "phase1")
    assert any(f"{shards[0].name}: sha256 differs" in p for p in problems)
    assert any(f"{shards[1].name}: missing" in p for p in problems)
    assert any("shard-99999.parquet: on disk but not in the manifest" in p for p in problems)


def test_check_on_an_unbuilt_phase(tmp_path):
    assert check(Layout(tmp_path), "phase2") == [
        f"{tmp_path / 'phase2' / 'manifest' / 'shards.parquet'} is missing: phase not built"]
