"""`plan --cost`: the full recipe's core-hours from the scaling runs, each stage at its measured exponent."""

import json

import pytest

from pipeline.cli import main
from pipeline.config import load_recipe
from pipeline.cost import full_recipe, measured_rates, scaling_exponent

RUNS = {
    "16": dict(megabytes=16.0, tokens_out=4e6, stages={
        "curate": dict(seconds=4.0, task_seconds=8.0), "dedup-clusters": dict(seconds=1.0, task_seconds=1.0),
        "phase1-shard": dict(seconds=0.2, task_seconds=0.3)}),
    "256": dict(megabytes=256.0, tokens_out=6.4e7, stages={
        "curate": dict(seconds=64.0, task_seconds=128.0), "dedup-clusters": dict(seconds=64.0, task_seconds=64.0),
        "phase1-shard": dict(seconds=0.4, task_seconds=2.4)}),
}


def write_results(path):
    rows = [dict(name="pool_tokens_per_input_mb", value=250_000.0), dict(name="scale_out_2_workers", value=1.8),
            dict(name="scaling_runs", value=None, runs=RUNS)]
    path.write_text(json.dumps({"results": rows}))
    return path


def test_exponents_from_the_scaling_runs():
    assert scaling_exponent(RUNS, "curate") == pytest.approx(1.0)
    assert scaling_exponent(RUNS, "dedup-clusters") == pytest.approx(1.5)
    assert scaling_exponent(RUNS, "phase1-shard", floor=0.5) is None  # too short to say
    assert scaling_exponent(RUNS, "phase1-shard", "task_seconds") == pytest.approx(0.75)


def test_full_recipe_scales_each_stage_by_its_exponent(tmp_path, capsys):
    rates = measured_rates(write_results(tmp_path / "results.json"))
    cost = full_recipe(rates, 64, load_recipe().phases)
    raw_mb = cost["pool_tokens"] / 250_000
    assert cost["stages"]["curate"]["core_hours"] == pytest.approx(128 * raw_mb / 256 / 3600)
    assert cost["stages"]["dedup-clusters"]["core_hours"] == pytest.approx(64 * (raw_mb / 256) ** 1.5 / 3600)
    assert cost["stages"]["phase1-shard"]["exponent"] == 1.0  # a smaller measured exponent counts as linear
    assert cost["stages"]["phase1-shard"]["core_hours"] == pytest.approx(2.4 * cost["tokens_out"] / 6.4e7 / 3600)
    assert main(["plan", "--phase", "1", "--scale", "full", "--counts", "configs/mmbert-language-counts.csv",
                 "--cost", "--rates", str(tmp_path / "results.json")]) == 0
    assert "dedup-clusters" in capsys.readouterr().out


def test_cost_prints_its_rates_and_doubts_a_low_scale_out(tmp_path, capsys):
    path = write_results(tmp_path / "results.json")
    rows = json.loads(path.read_text())
    rows["results"][1]["value"] = 1.2  # 60% efficiency: a busy machine
    path.write_text(json.dumps(rows))
    assert main(["plan", "--phase", "1", "--scale", "full", "--counts", "configs/mmbert-language-counts.csv",
                 "--cost", "--rates", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"rates from {path}: 250,000 pool tokens per MB of input, 2-worker scale-out 1.20x" in out
    assert "doubtful: the measured scale-out efficiency (60%)" in out and "rerun `make bench`" in out
