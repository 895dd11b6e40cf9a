"""Scaling: the same generated corpus at 1x, 4x and 16x (16 -> 256 MB), the number of input files and of shards
growing with it, and a fixed share of planted duplicates (so that clustering has work in proportion), built end
to end on 2 Ray workers. Per Ray stage and size: wall time, the largest peak RSS of a task (and the most a task
grew its worker's RSS), and read amplification (bytes of the files the stage's tasks open / bytes of the
distinct files each step reads: 1 when every input byte is read once), as the runner records them in the manifest's
run row; and the exponent log(time ratio) / log(size ratio) between 1x and 16x (1 is linear).

    python -m bench.scaling [--sizes 16 64 256]
"""

import argparse
import tempfile
from pathlib import Path

from bench import say
from bench.pipeline import build, generate_input
from pipeline.cost import scaling_exponent

SIZES = (16, 64, 256)  # MB of upstream text
FILE_MB = 0.5  # an input file holds about this much: the number of files grows with the corpus
SHARD_TOKENS = 1 << 16  # fixed shard size: the number of shards grows with the corpus
DUPLICATES = 0.2  # a fixed share of exact and near duplicates: dedup's clusters grow with the corpus
MIN_SECONDS = 0.5  # below this a stage's time is task overhead, not work: no exponent from it


def scaling_corpus(root: Path, size: float, seed: int | None = None) -> dict:
    """The scaling corpus of `size` MB under `root` (its sources.yaml beside the files), seeded by its size."""
    say(f"generating {size} MB")
    return generate_input(root, size, files=round(size / FILE_MB), seed=size if seed is None else seed,
                          shard_tokens=SHARD_TOKENS, independent=True, duplicates=DUPLICATES)


def measure(work: Path, sizes: tuple[int, ...] = SIZES) -> dict[int, dict]:
    """size -> {megabytes, files, shards, stages: {stage: costs}}."""
    runs = {}
    for size in sizes:
        root = work / f"scale-{size}"
        generated = scaling_corpus(root, size)
        info = build(root, root / "out", workers=2)
        runs[size] = dict(megabytes=generated["megabytes"], files=generated["files"], shards=info["n_shards"],
                          tokens_out=info["budget_tokens"], stages=info["stages"])
    return runs


def bench_scaling(work: Path, sizes: tuple[int, ...] = SIZES) -> list[dict]:
    runs = measure(work, sizes)
    smallest, largest = min(runs), max(runs)
    results = []
    for stage in sorted(runs[largest]["stages"]):
        costs = [runs[size]["stages"].get(stage, {}) for size in sorted(runs)]
        times = " / ".join(f"{c.get('seconds', 0):.1f}" for c in costs)
        amplification = " / ".join(f"{c.get('read_amplification') or 0:.2f}" for c in costs)
        rss = [runs[size]["stages"].get(stage, {}).get("peak_rss_mb") or 0.0 for size in (smallest, largest)]
        growth = [runs[size]["stages"].get(stage, {}).get("rss_growth_mb") or 0.0 for size in (smallest, largest)]
        results.append(dict(
            name=f"scaling_exponent_{stage}", value=scaling_exponent(runs, stage, floor=MIN_SECONDS), baseline=1.0,
            notes=f"seconds {times}; read amplification {amplification}; peak RSS {rss[0]:.0f} -> {rss[1]:.0f} MB "
                  f"({rss[1] / rss[0] if rss[0] else 0:.2f}x), of it the task's own {growth[0]:.0f} -> "
                  f"{growth[1]:.0f} MB; tasks {costs[-1].get('tasks', 0)}"))
    for size in sorted(runs):  # dedup after its signatures: steps' overhead at small sizes (the goal: <= 1.3)
        stages = runs[size]["stages"]
        signatures = stages["dedup-signatures"]["seconds"]
        dedup = sum(costs["seconds"] for stage, costs in stages.items() if stage.startswith("dedup-"))
        results.append(dict(name=f"scaling_dedup_over_signatures_{size}mb", value=dedup / signatures, baseline=1.3,
                            notes=f"dedup {dedup:.1f} s, of it signatures {signatures:.1f} s"))
    sizes_note = ", ".join(f"{runs[s]['megabytes']:.0f} MB / {runs[s]['files']} files / {runs[s]['shards']} shards"
                           for s in sorted(runs))
    results.append(dict(name="scaling_sizes", value=float(len(runs)), notes=sizes_note))
    results.append(dict(name="scaling_runs", value=None, notes="per size and Ray stage costs (for plan --cost)",
                        runs={str(size): run for size, run in runs.items()}))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="MB of input (default: 16 64 256)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        for row in bench_scaling(Path(work), tuple(args.sizes)):
            if row["name"] != "scaling_runs":
                value = "" if row["value"] is None else f"{row['value']:.2f}"
                print(f"{row['name']:<36} {value:>6}  {row['notes']}")


if __name__ == "__main__":
    main()
