"""`make bench`: run every benchmark, print a table, write bench/results.json."""

import json
import platform
import time
from pathlib import Path

from bench.curation import bench_lid, bench_stages

RESULTS = Path(__file__).with_name("results.json")


def main() -> None:
    started = time.time()
    results = [bench_lid(), *bench_stages()]
    print(f"{'benchmark':<34} {'value':>12} {'baseline':>12} {'ratio':>7}  notes")
    for r in results:
        baseline = f"{r['baseline']:,.0f}" if "baseline" in r else ""
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
        notes = r.get("baseline_name", "") or (f"{r['mb_per_s']:.2f} MB/s" if "mb_per_s" in r else "")
        print(f"{r['name']:<34} {r['value']:>12,.0f} {baseline:>12} {ratio:>7}  {notes}")
    RESULTS.write_text(json.dumps(dict(machine=platform.processor() or platform.machine(), results=results,
                                       seconds=time.time() - started), indent=2))
    print(f"\nwritten {RESULTS} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
