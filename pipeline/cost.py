"""`mmcorpus plan --cost`: what the full recipe costs, from what `make bench` measured.

The model (README, "Benchmarks and the cost model"):
    pool tokens U   = Σ over languages of the largest per-phase availability in mmBERT's counts (the pool must
                      hold every language's biggest phase; curation runs once for all phases)
    raw input R     = U / (pool tokens per input byte), the yield bench measured: what LID, quality and dedup
                      keep of upstream text, in Gemma 2 tokens per byte
    each stage s    = its tasks' core-seconds at the bench's largest size x (full size / that size)^e_s, with
                      e_s the exponent the scaling section measured (never below 1: a smaller measured exponent
                      is fixed costs the bench amortized); curation stages scale with R, mixing stages with
                      the tokens out
    wall time       = core-hours / (workers x scale-out efficiency), efficiency = measured 2-worker speed-up / 2
"""

import csv
import json
import math
from pathlib import Path

from pipeline.config import ConfigError
from pipeline.phases import PhasesConfig
from stages.paths import BENCH_RESULTS, COUNTS_FILE


def measured_rates(path: Path = BENCH_RESULTS, required: bool = True) -> dict | None:
    """The figures the model needs from bench/results.json: yield, scale-out and the scaling runs; None where
    the file is missing and not `required` (bench/results.json is not shipped: `make bench` writes it)."""
    try:
        results = json.loads(path.read_text())["results"]
    except FileNotFoundError:
        if not required:
            return None
        raise ConfigError(f"{path}: no benchmark results: run `make bench` first") from None
    rows = {row["name"]: row for row in results}
    needed = ["pool_tokens_per_input_mb", "scale_out_2_workers", "scaling_runs"]
    missing = [name for name in needed if name not in rows]
    if missing:
        raise ConfigError(f"{path}: lacks {', '.join(missing)}: run `make bench` again")
    return dict(pool_tokens_per_input_mb=float(rows["pool_tokens_per_input_mb"]["value"]),
                scale_out_2_workers=float(rows["scale_out_2_workers"]["value"]),
                scaling=rows["scaling_runs"]["runs"])


def scaling_exponent(runs: dict, stage: str, measure: str = "seconds", floor: float = 0.0) -> float | None:
    """log(ratio of `measure`) / log(size ratio) between the smallest and the largest scaling run (1: linear);
    None when the stage took no measurable time (under `floor` seconds) at both ends."""
    sizes = sorted(runs, key=lambda size: runs[size]["megabytes"])
    small, large = runs[sizes[0]], runs[sizes[-1]]
    before, after = (float(run["stages"].get(stage, {}).get(measure) or 0.0) for run in (small, large))
    if before <= 0 or after <= 0 or max(before, after) < floor:
        return None
    return math.log(after / before) / math.log(large["megabytes"] / small["megabytes"])


def full_recipe(rates: dict, workers: int, phases: PhasesConfig, counts: Path = COUNTS_FILE) -> dict:
    loaded = [phases.phase(number) for number in phases.numbers()]
    with open(counts, newline="") as f:
        rows = list(csv.DictReader(f))
    pool_tokens = sum(max(float(row[phase.languages.column] or 0) for phase in loaded) for row in rows)
    tokens_out = sum(phase.budget_tokens for phase in loaded)
    raw_mb = pool_tokens / rates["pool_tokens_per_input_mb"]
    runs = rates["scaling"]
    largest = max(runs.values(), key=lambda run: run["megabytes"])
    stages = {}
    for stage, cost in sorted(largest["stages"].items()):
        mixing = stage.startswith("phase")
        scale = tokens_out / largest["tokens_out"] if mixing else raw_mb / largest["megabytes"]
        exponent = max(1.0, scaling_exponent(runs, stage, "task_seconds") or 1.0)
        stages[stage] = dict(exponent=exponent, mixing=mixing,
                             core_hours=cost.get("task_seconds", 0.0) * scale ** exponent / 3600)
    curation = sum(s["core_hours"] for s in stages.values() if not s["mixing"])
    mixing = sum(s["core_hours"] for s in stages.values() if s["mixing"])
    efficiency = min(1.0, rates["scale_out_2_workers"] / 2)
    return dict(phases=[phase.id for phase in loaded], tokens_out=tokens_out, pool_tokens=pool_tokens,
                raw_input_tb=raw_mb / 1e6, curation_core_hours=curation, mixing_core_hours=mixing, stages=stages,
                workers=workers, scale_out_efficiency=efficiency,
                wall_hours=(curation + mixing) / (workers * efficiency))


def cost_section(rates: dict | None, source: Path, workers: int, phases: PhasesConfig) -> str:
    """What `plan --cost` prints after the plan: the estimate, or one line saying how to measure its rates."""
    if rates is None:
        return (f"cost: no benchmark results in {source} (not shipped): `make bench` measures them in about 8 "
                "minutes on 2 cores and writes that file; then plan --cost again")
    return describe(full_recipe(rates, workers, phases), rates, source)


DOUBTFUL_EFFICIENCY = 0.8  # a 2-worker scale-out below this was measured on a busy machine, most likely


def describe(cost: dict, rates: dict, source: Path) -> str:
    doubt = ""
    if cost["scale_out_efficiency"] < DOUBTFUL_EFFICIENCY:
        doubt = (f"\ndoubtful: the measured scale-out efficiency ({cost['scale_out_efficiency']:.0%}) is below "
                 f"{DOUBTFUL_EFFICIENCY:.0%}, so the machine was probably busy: rerun `make bench` on an idle one")
    largest = max(rates["scaling"].values(), key=lambda run: run["megabytes"])
    rates_line = (f"rates from {source}: {rates['pool_tokens_per_input_mb']:,.0f} pool tokens per MB of input, "
                  f"2-worker scale-out {rates['scale_out_2_workers']:.2f}x, stage costs at "
                  f"{largest['megabytes']:.0f} MB with exponents from {len(rates['scaling'])} sizes")
    per_stage = ", ".join(f"{stage} {s['core_hours']:,.0f} (x^{s['exponent']:.2f})"
                          for stage, s in sorted(cost["stages"].items(), key=lambda kv: -kv[1]["core_hours"]))
    return (f"full recipe ({' + '.join(cost['phases'])}): {cost['tokens_out'] / 1e12:.2f}T tokens out from a pool of "
            f"{cost['pool_tokens'] / 1e12:.2f}T tokens, about {cost['raw_input_tb']:.1f} TB of upstream text\n"
            f"curation {cost['curation_core_hours']:,.0f} core-hours + mixing {cost['mixing_core_hours']:,.0f} "
            f"core-hours; on {cost['workers']} Ray workers at {cost['scale_out_efficiency']:.0%} scale-out "
            f"efficiency: {cost['wall_hours']:,.1f} hours ({cost['wall_hours'] / 24:,.1f} days)\n"
            f"core-hours by stage (measured scaling exponent): {per_stage}\n{rates_line}{doubt}")
