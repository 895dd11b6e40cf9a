"""`make bench`: run every benchmark, print a table, write bench/results.json."""

import json
import platform
import tempfile
import time
from pathlib import Path

from bench.curation import bench_lid, bench_stages
from bench.dedup import bench_dedup
from bench.pipeline import bench_pipeline
from bench.scaling import bench_scaling

RESULTS = Path(__file__).with_name("results.json")


def number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if abs(value) >= 10 else f"{value:.4f}"


def main() -> None:
    started = time.time()
    with tempfile.TemporaryDirectory() as work:
        results = [bench_lid(), *bench_stages(), *bench_dedup(), *bench_pipeline(Path(work)),
                   *bench_scaling(Path(work))]
    print(f"{'benchmark':<34} {'value':>12} {'baseline':>12} {'ratio':>7}  notes")
    for r in results:
        if "runs" in r:
            continue  # the scaling runs' raw figures: results.json only
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
        notes = r.get("baseline_name") or r.get("notes") or (f"{r['mb_per_s']:.2f} MB/s" if "mb_per_s" in r else "")
        print(f"{r['name']:<34} {number(r['value']):>12} {number(r.get('baseline')):>12} {ratio:>7}  {notes}")
    RESULTS.write_text(json.dumps(dict(machine=platform.processor() or platform.machine(), results=results,
                                       seconds=time.time() - started), indent=2))
    print(f"\nwritten {RESULTS} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
