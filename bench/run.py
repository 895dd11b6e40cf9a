"""`make bench`: run every benchmark, print each row as it is measured, write bench/results.json.
`python -m bench.run --only WORD` runs only the sections whose title holds WORD, and writes nothing."""

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.curation import bench_lid, bench_stages
from bench.dedup import bench_dedup
from bench.pipeline import bench_pipeline
from bench.profile import bench_profile
from bench.scaling import bench_scaling
from bench.store import bench_store

RESULTS = Path(__file__).with_name("results.json")


def number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if abs(value) >= 10 else f"{value:.4f}"


def print_row(r: dict) -> None:
    if "runs" in r:
        return  # the scaling runs' raw figures: results.json only
    ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
    notes = r.get("baseline_name") or r.get("notes") or (f"{r['mb_per_s']:.2f} MB/s" if "mb_per_s" in r else "")
    print(f"{r['name']:<34} {number(r['value']):>12} {number(r.get('baseline')):>12} {ratio:>7}  {notes}", flush=True)


def tokenizer_limit(results: list[dict]) -> dict:
    """End to end against its physical limit: every document is tokenized, so curation can not pass the rate
    of tokenizing alone (the profile's tokenizer step, one core)."""
    by_name = {row["name"]: row for row in results}
    limit = 1 / by_name["profile_tokenizer_s_per_mb"]["value"]
    reached = by_name["e2e_mb_per_s_per_core"]["value"]
    return dict(name="e2e_fraction_of_tokenizer_limit", value=reached / limit,
                notes=f"{reached:.2f} of {limit:.2f} MB/s per core: tokenizing alone, the most curation can reach")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", help="run only the sections whose title holds this word (e.g. store)")
    only = parser.parse_args().only
    started = time.time()
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as work:
        sections: list[tuple[str, Callable[[], list[dict]]]] = [
            ("LID batching", lambda: [bench_lid()]), ("curation stages", bench_stages),
            ("profile: seconds per MB of each curation step", bench_profile), ("dedup", bench_dedup),
            ("end to end, tokenizer, mixing, scale-out", lambda: bench_pipeline(Path(work))),
            ("scaling at 16, 64 and 256 MB", lambda: bench_scaling(Path(work))),
            ("object store: requests per GB, S3 over local, 5% faults", lambda: bench_store(Path(work)))]
        if only:
            sections = [section for section in sections if only in section[0]]
        print(f"{'benchmark':<34} {'value':>12} {'baseline':>12} {'ratio':>7}  notes", flush=True)
        for number_, (title, run) in enumerate(sections, 1):
            print(f"-- [{number_}/{len(sections)}] {title} ({time.time() - started:.0f} s so far)", flush=True)
            for row in run():
                results.append(row)
                print_row(row)
        if only:
            return
        results.append(tokenizer_limit(results))
        print_row(results[-1])
    RESULTS.write_text(json.dumps(dict(machine=platform.processor() or platform.machine(), results=results,
                                       seconds=time.time() - started), indent=2))
    print(f"\nwritten {RESULTS} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
