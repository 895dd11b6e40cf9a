"""The object store: phase-1 builds on moto's S3 server (started here on loopback, stopped by its process group).
Requests and objects written per input GB for the scaling corpus at 1x, 4x and 16x (bench/scaling.py's), with
the exponent log(ratio) / log(size ratio) between the smallest and the largest (1 is linear; the goal is
<= 1.05); the S3 build's wall time over the local build's for the samples and a 64 MB generated corpus, both
measured here in the same run (goal <= 1.5); and the samples' build through the fault proxy (bench/
fault_proxy.py) with 5% of requests answered 503 SlowDown or dropped, against the same build without faults.

    python -m bench.store [--sizes 16 64 256] [--corpus-mb 64]
"""

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import say
from bench.fault_proxy import fault_proxy, moto_server
from bench.scaling import SIZES, scaling_corpus
from pipeline.cost import scaling_exponent
from stages.paths import PROJECT_ROOT as ROOT

CORPUS_MB = 64
FAULT_RATE = 0.05
GOAL_EXPONENT, GOAL_RATIO = 1.05, 1.5


def build(out: str, env: dict | None = None, sources: Path | None = None) -> tuple[float, dict[str, int]]:
    """A phase-1 build in its own process: (wall seconds, {requests, objects} of the whole build, from its last
    line)."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "pipeline.cli", "build", "--phase", "1", "--workers", "2", "--out", out]
    built = subprocess.run(command + (["--sources", str(sources)] if sources else []), cwd=ROOT, env=env,
                           check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    found = re.search(r"store: ([\d,]+) requests .*?([\d,]+) objects written", built.stderr)
    total = dict(requests=int(found[1].replace(",", "")), objects=int(found[2].replace(",", "")))
    say(f"built {out} in {seconds:.0f} s: {total['requests']:,} requests, {total['objects']:,} objects written")
    return seconds, total


def bench_store(work: Path, sizes: tuple[int, ...] = SIZES, corpus_mb: float = CORPUS_MB) -> list[dict]:
    results = []
    with moto_server() as (port, env):
        runs = {}
        for size in sizes:
            root = work / f"store-{size}"
            generated = scaling_corpus(root, size)
            _, total = build(f"s3://corpus/scale-{size}", env, root / "sources.yaml")
            runs[size] = dict(megabytes=generated["megabytes"], stages={"store": total})
        for measure, unit in (("requests", "requests"), ("objects", "objects written")):
            per_gb = " / ".join(f"{runs[s]['stages']['store'][measure] / (runs[s]['megabytes'] / 1e3):,.0f}"
                                for s in sorted(runs))
            at = " / ".join(f"{size} MB" for size in sorted(runs))
            results.append(dict(name=f"store_{measure}_exponent", value=scaling_exponent(runs, "store", measure),
                                baseline=GOAL_EXPONENT, notes=f"{unit} per input GB at {at}: {per_gb}"))
        results.append(dict(name="store_scaling_runs", value=None, notes="requests and objects per size",
                            runs={str(size): run for size, run in runs.items()}))
        samples_local, _ = build(str(work / "samples-local"))
        samples_s3, samples_total = build("s3://corpus/samples", env)
        corpus = work / "store-corpus"
        scaling_corpus(corpus, corpus_mb, seed=7)
        corpus_local, _ = build(str(corpus / "out"), sources=corpus / "sources.yaml")
        corpus_s3, _ = build("s3://corpus/corpus", env, corpus / "sources.yaml")
        for name, local, remote in (("samples", samples_local, samples_s3),
                                    (f"{corpus_mb:.0f}mb", corpus_local, corpus_s3)):
            results.append(dict(name=f"s3_over_local_{name}", value=remote / local, baseline=GOAL_RATIO,
                                notes=f"S3 (moto on loopback) {remote:.1f} s, local {local:.1f} s, same run"))
        with fault_proxy(port, FAULT_RATE) as proxy:
            faulty, _ = build("s3://corpus/samples-faults", dict(env, AWS_ENDPOINT_URL=proxy.url))
        results.append(dict(name="s3_samples_5pct_faults_s", value=faulty, baseline=samples_s3,
                            ratio=faulty / samples_s3,
                            notes=f"{proxy.faults:,} of {proxy.requests:,} requests 503 or dropped; baseline: no "
                                  f"faults ({samples_total['requests']:,} requests)"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="MB of input (default: 16 64 256)")
    parser.add_argument("--corpus-mb", type=float, default=CORPUS_MB, help="the generated corpus timed on S3 and "
                                                                           "locally (default: 64)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        for row in bench_store(Path(work), tuple(args.sizes), args.corpus_mb):
            if "runs" not in row:
                value = "" if row["value"] is None else f"{row['value']:.2f}"
                print(f"{row['name']:<28} {value:>8}  {row['notes']}")


if __name__ == "__main__":
    main()
