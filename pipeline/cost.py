"""`mmcorpus plan --cost`: what the full recipe costs, from the per-core rates `make bench` measured.

The model (README, "Cost model"):
    pool tokens U   = Σ over languages of the largest per-phase availability in mmBERT's counts (the pool must
                      hold every language's biggest phase; curation runs once for all phases)
    raw input R     = U / (pool tokens per input byte), the yield bench measured: what LID, quality and dedup
                      keep of upstream text, in Gemma 2 tokens per byte
    curation        = R / (end-to-end MB/s per core)               core-hours
    mixing          = Σ phase tokens out / (mixing tokens/s per core)  core-hours
    wall time       = core-hours / (workers x scale-out efficiency), efficiency = measured 2-worker speed-up / 2
"""

import csv
import json
from pathlib import Path

from pipeline.config import COUNTS_FILE, ConfigError, PhasesConfig

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results.json"


def measured_rates(path: Path = RESULTS) -> dict[str, float]:
    try:
        results = json.loads(path.read_text())["results"]
    except FileNotFoundError:
        raise ConfigError(f"{path}: no benchmark results: run `make bench` first") from None
    rates = {row["name"]: float(row["value"]) for row in results}
    needed = ["e2e_mb_per_s_per_core", "mix_shard_tokens_per_s", "scale_out_2_workers", "pool_tokens_per_input_mb"]
    missing = [name for name in needed if name not in rates]
    if missing:
        raise ConfigError(f"{path}: lacks {', '.join(missing)}: run `make bench` again")
    return rates


def full_recipe(rates: dict[str, float], workers: int, phases: PhasesConfig,
                counts: Path = COUNTS_FILE) -> dict:
    loaded = [phases.phase(number) for number in phases.numbers()]
    with open(counts, newline="") as f:
        rows = list(csv.DictReader(f))
    pool_tokens = sum(max(float(row[phase.languages.column] or 0) for phase in loaded) for row in rows)
    tokens_out = sum(phase.budget_tokens for phase in loaded)
    raw_mb = pool_tokens / rates["pool_tokens_per_input_mb"]
    curation = raw_mb / rates["e2e_mb_per_s_per_core"] / 3600
    mixing = tokens_out / rates["mix_shard_tokens_per_s"] / 3600
    efficiency = min(1.0, rates["scale_out_2_workers"] / 2)
    return dict(phases=[phase.id for phase in loaded], tokens_out=tokens_out, pool_tokens=pool_tokens,
                raw_input_tb=raw_mb / 1e6, curation_core_hours=curation, mixing_core_hours=mixing,
                workers=workers, scale_out_efficiency=efficiency,
                wall_hours=(curation + mixing) / (workers * efficiency))


def describe(cost: dict) -> str:
    return (f"full recipe ({' + '.join(cost['phases'])}): {cost['tokens_out'] / 1e12:.2f}T tokens out from a pool of "
            f"{cost['pool_tokens'] / 1e12:.2f}T tokens, about {cost['raw_input_tb']:.1f} TB of upstream text\n"
            f"curation {cost['curation_core_hours']:,.0f} core-hours + mixing {cost['mixing_core_hours']:,.0f} "
            f"core-hours; on {cost['workers']} Ray workers at {cost['scale_out_efficiency']:.0%} scale-out "
            f"efficiency: {cost['wall_hours']:,.1f} hours ({cost['wall_hours'] / 24:,.1f} days)")
