"""`mmcorpus`: build a phase, query and check its manifest, fetch the tokenizer assets.

Exit codes: 0 success, 1 the run failed, 2 bad usage or configuration (one line naming the file or option).
"""

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from pipeline.config import (
    DEDUP_FILE,
    LID_FILE,
    PHASES_FILE,
    QUALITY_FILE,
    SOURCES_FILE,
    TOKENIZERS_FILE,
    ConfigError,
    load_phase,
    load_sources,
    load_tokenizers,
)
from stages.languages import base_language

log = logging.getLogger("mmcorpus")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="mmcorpus", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = root.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="curate the sources into the pool, then mix and shard a phase")
    add_phase_arguments(build)
    build.add_argument("--sources", type=Path, default=SOURCES_FILE, help="sources YAML (default: the samples)")
    build.add_argument("--tokenizers", type=Path, default=TOKENIZERS_FILE, help="tokenizers YAML")
    build.add_argument("--lid", type=Path, default=LID_FILE, help="language identification YAML")
    build.add_argument("--quality", type=Path, default=QUALITY_FILE, help="quality filtering YAML")
    build.add_argument("--dedup", type=Path, default=DEDUP_FILE, help="deduplication YAML")
    build.add_argument("--out", type=Path, default=Path("out"), help="output directory (default: out/)")
    build.add_argument("--workers", type=positive_int, default=2, help="CPUs of the embedded Ray (default: 2)")
    build.add_argument("--seed", type=int, default=0, help="seed for sampling and shuffling (default: 0)")
    build.add_argument("--retries", type=int, default=1, help="retries of a failing task before its input file "
                                                             "is quarantined (default: 1)")
    build.add_argument("--budget", type=float, help="phase token budget (default: the pool's eligible tokens)")
    build.add_argument("--ray-address", help="a Ray cluster: http://head:8265 submits the build as a Ray job; "
                                             "ray://... or host:port joins it (default: $RAY_ADDRESS, else embedded)")
    build.add_argument("--dry-run", action="store_true", help="print the resolved configuration and stop")

    query = commands.add_parser("query", help="run SQL against <out>/catalog.duckdb")
    query.add_argument("sql", help="SQL, or the name of a named query: " + ", ".join(_named_queries()))
    query.add_argument("--out", type=Path, default=Path("out"))
    query.add_argument("--format", choices=["table", "csv", "json"], default="table")

    check = commands.add_parser("check", help="verify a built phase: sha256s, row/token counts, stage counts")
    add_phase_arguments(check)
    check.add_argument("--out", type=Path, default=Path("out"))

    plan = commands.add_parser("plan", help="print a phase's targets per source and language; writes nothing")
    add_phase_arguments(plan)
    plan.add_argument("--counts", type=Path, help="CSV of available tokens: lang,tokens[,source], or mmBERT's "
                                                  "counts file (default: the pool under --out)")
    plan.add_argument("--scale", choices=["sample", "full"], default="sample",
                      help="full: the recipe's budget (2.3T / 600B / 100B); sample: what the counts hold")
    plan.add_argument("--budget", type=float, help="token budget (overrides --scale)")
    plan.add_argument("--out", type=Path, default=Path("out"))
    plan.add_argument("--format", choices=["table", "csv", "json"], default="table")
    plan.add_argument("--cost", action="store_true", help="also estimate the full recipe's core-hours and wall time "
                                                          "from the rates `make bench` measured")
    plan.add_argument("--cost-workers", type=positive_int, default=64, help="Ray workers for the wall-time estimate")
    plan.add_argument("--rates", type=Path, help="benchmark results (default: bench/results.json)")

    export = commands.add_parser("export-mds", help="write a built phase's shards as MosaicML MDS (zstd)")
    add_phase_arguments(export)
    export.add_argument("--out", type=Path, default=Path("out"))
    export.add_argument("dest", type=Path, help="destination folder (index.json + shard.NNNNN.mds.zstd)")

    report = commands.add_parser("report", help="write a built phase's data card: <out>/<phase>/report/")
    add_phase_arguments(report)
    report.add_argument("--out", type=Path, default=Path("out"))

    commands.add_parser("fetch-assets", help="download the tokenizer and LID model files into the cache (set-up)")
    return root


def add_phase_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--phase", type=int, required=True, help="phase number in the phases YAML")
    command.add_argument("--variant", help="phase variant (phase 3: all, cont, eng; default: the phase's own)")
    command.add_argument("--phases", type=Path, default=PHASES_FILE, help="phases YAML (default: configs/)")


def _named_queries() -> list[str]:
    from manifests.catalog import NAMED_QUERIES

    return list(NAMED_QUERIES)


def run_build(args: argparse.Namespace, argv: list[str]) -> int:
    from pipeline.build import BuildSettings, build
    from pipeline.cluster import is_job_address, submit_build

    phase = load_phase(args.phase, args.variant, args.phases)
    settings = BuildSettings(out=args.out, phase=phase, sources=load_sources(args.sources),
                             tokenizers=load_tokenizers(args.tokenizers), seed=args.seed, workers=args.workers,
                             budget_tokens=args.budget, ray_address=args.ray_address,
                             lid_config=args.lid.resolve(), quality_config=args.quality.resolve(),
                             dedup_config=args.dedup.resolve(), retries=args.retries)
    if args.budget is not None and args.budget <= 0:
        raise ConfigError(f"--budget must be > 0, got {args.budget}")
    resolved = dict(phase=phase.to_dict() | {"languages": len(phase.languages)}, sources=settings.sources.to_dict(),
                    out=str(args.out), seed=args.seed, workers=args.workers, budget=args.budget)
    print(json.dumps(resolved, indent=2, default=str))
    if args.dry_run:
        return 0
    if is_job_address(args.ray_address):
        return submit_build(args.ray_address, job_arguments(argv, args))
    info = build(settings)
    print_summary(args.out, phase.id, info)
    return 0


def job_arguments(argv: list[str], args: argparse.Namespace) -> list[str]:
    """The build's own arguments for the job: without --ray-address, with --out made absolute (the job runs in
    a copy of the project, so a relative --out would land there)."""
    kept, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
            continue
        if arg in ("--ray-address", "--out"):
            skip = True
            continue
        if not arg.startswith(("--ray-address=", "--out=")):
            kept.append(arg)
    return [*kept, "--out", str(args.out.resolve())]


def print_summary(out: Path, phase_id: str, info: dict) -> None:
    from manifests.catalog import connect

    with connect(out) as con:
        per_source = con.execute(
            """SELECT source, count(DISTINCT doc_id) AS docs, sum(len(input_ids)) AS tokens FROM read_parquet(?)
               GROUP BY 1 ORDER BY tokens DESC""", [str(out.resolve() / phase_id / "shards" / "*.parquet")]
        ).fetchall()
        languages = con.execute(
            "SELECT lang, sum(tokens) FROM mixture WHERE phase = ? GROUP BY 1 ORDER BY 2 DESC LIMIT 8", [phase_id]
        ).fetchall()
        shards = con.execute("SELECT count(*), sum(tokens), sum(bytes) FROM shards WHERE phase = ?",
                             [phase_id]).fetchone()
    print(f"\n{phase_id}: {shards[0]} shards, {shards[1]:,} tokens, {shards[2] / 1e6:.1f} MB "
          f"in {info['seconds']:.1f} s (seed {info['seed']})")
    print(f"  shards   {out / phase_id / 'shards'}/")
    print(f"  manifest {out / phase_id / 'manifest'}/")
    print(f"  catalog  {out / 'catalog.duckdb'}   (mmcorpus query --out {out} \"SELECT * FROM mixture\")")
    print(f"\n  {'source':<10} {'documents':>10} {'tokens':>12}")
    for source, docs, tokens in per_source:
        print(f"  {source:<10} {docs:>10,} {tokens:>12,}")
    print("\n  top languages: " + ", ".join(f"{lang} {tokens:,}" for lang, tokens in languages))


def run_query(args: argparse.Namespace) -> int:
    from manifests.catalog import NAMED_QUERIES, connect

    sql = NAMED_QUERIES.get(args.sql, args.sql)
    with connect(args.out) as con:
        result = con.execute(sql)
        columns = [d[0] for d in result.description]
        rows = result.fetchall()
    if args.format == "json":
        print(json.dumps([dict(zip(columns, row, strict=True)) for row in rows], default=str, indent=2))
    elif args.format == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        cells = [columns] + [["" if v is None else str(v) for v in row] for row in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
        for n, row in enumerate(cells):
            print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())
            if n == 0:
                print("  ".join("-" * width for width in widths))
    return 0


def run_check(args: argparse.Namespace) -> int:
    from manifests.catalog import check

    phase_id = load_phase(args.phase, args.variant, args.phases).id
    problems = check(args.out, phase_id)
    for problem in problems:
        print(f"FAIL {problem}")
    if not problems:
        print(f"{phase_id}: OK (shard sha256s, rows and tokens match the manifest; read = kept + rejected "
              "for every stage and source)")
    return 1 if problems else 0


def run_plan(args: argparse.Namespace) -> int:
    from pipeline.mixing import plan_rows, read_counts, summarize_pool

    phase = load_phase(args.phase, args.variant, args.phases)
    if args.counts:
        available = read_counts(args.counts, phase)
    elif (args.out / "pool").exists():
        available = summarize_pool(args.out, phase).available
    else:
        raise ConfigError(f"no --counts and no pool under {args.out}: build first or give a counts CSV")
    if not available:
        raise ConfigError(f"no available tokens for the phase-{phase.number} languages")
    if args.budget is not None and args.budget <= 0:
        raise ConfigError(f"--budget must be > 0, got {args.budget}")
    budget = args.budget or (phase.budget_tokens if args.scale == "full" else float(sum(available.values())))
    rows = plan_rows(phase, available, budget)
    columns = ["source", "lang", "available", "p", "target", "epochs"]
    records = [dict(zip(columns, (r.source, r.lang, r.available_tokens, r.p, r.target_tokens, r.epochs),
                        strict=True)) for r in rows]
    if args.format == "json":
        print(json.dumps(records, indent=2))
        return 0
    if args.format == "csv":
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return 0
    print(f"{'source':<10} {'lang':<16} {'available':>16} {'p':>9} {'target':>16} {'epochs':>7}")
    for r in sorted(rows, key=lambda r: (r.source, -r.target_tokens)):
        print(f"{r.source:<10} {r.lang:<16} {r.available_tokens:>16,} {r.p:>9.5f} {r.target_tokens:>16,} "
              f"{r.epochs:>7.3f}{' cap' if r.capped else ''}")
    languages = {base_language(r.lang) for r in rows}
    repeated = sorted(rows, key=lambda r: -r.epochs)[:5]
    print(f"\n{phase.id} ({phase.name}): budget {budget:,.0f} tokens, {len(languages)} languages "
          f"({'with' if 'code' in languages else 'without'} code), target {sum(r.target_tokens for r in rows):,} "
          f"tokens, {sum(r.capped for r in rows)} capped at {phase.max_epochs:g} epochs, tau {phase.temperature}")
    print("most repeated: " + ", ".join(f"{r.lang} {r.epochs:.2f}x" for r in repeated))
    if args.cost:
        from pipeline.cost import RESULTS, describe, full_recipe, measured_rates

        print("\n" + describe(full_recipe(measured_rates(args.rates or RESULTS), args.cost_workers,
                                          phases=args.phases)))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from stages.shards import export_mds

    phase_id = load_phase(args.phase, args.variant, args.phases).id
    shards = sorted((args.out / phase_id / "shards").glob("shard-*.parquet"))
    if not shards:
        raise ConfigError(f"no shards under {args.out / phase_id / 'shards'}: build the phase first")
    result = export_mds(shards, args.dest)
    print(f"{phase_id}: {result['samples']:,} samples, {result['tokens']:,} tokens in {result['shards']} MDS "
          f"shard(s) under {args.dest} (read back and checked)")
    return 0


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `mmcorpus query ... | head` ends quietly
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    try:
        if args.command == "build":
            return run_build(args, argv)
        if args.command == "query":
            return run_query(args)
        if args.command == "check":
            return run_check(args)
        if args.command == "plan":
            return run_plan(args)
        if args.command == "export-mds":
            return run_export(args)
        if args.command == "report":
            from manifests.report import build_report

            print(build_report(args.out, load_phase(args.phase, args.variant, args.phases).id))
            return 0
        from pipeline.assets import fetch_assets

        fetch_assets()
        return 0
    except ConfigError as error:
        print(f"mmcorpus: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - one clear line, exit 1; the log above has the details
        log.debug("failure", exc_info=True)
        print(f"mmcorpus: {args.command} failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
