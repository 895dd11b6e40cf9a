"""`mmcorpus`: build a phase, query and check its manifest, show the recipe, fetch the tokenizer assets.

Exit codes: 0 success, 1 the run failed, 2 bad usage or configuration (one line naming the file or option),
130 interrupted (Ctrl-C), 143 terminated (SIGTERM). An interrupted build resumes when run again.
"""

import argparse
import json
import logging
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import yaml

if TYPE_CHECKING:
    import duckdb

from pipeline.config import SAMPLES_DIR, SECTIONS, ConfigError, PhaseConfig, Recipe, load_phases, load_recipe
from pipeline.supervisor import announce_end, run_watched, supervised
from stages.settings import SEED_MAX, UINT64_MAX, Range, number_problem

log = logging.getLogger("mmcorpus")


def number(kind: type[int] | type[float], bounds: Range) -> Callable[[str], float]:
    """An option's type: a number of `kind` within `bounds`, and finite and within 64 bits as every setting."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, got "
                                             f"{text!r}") from None
        problem = number_problem(value) or (None if value in bounds else f"must be {bounds}")
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        return value

    return parse


positive_int = number(int, Range(ge=1))
seed = number(int, Range(ge=0, le=SEED_MAX))


SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
              "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


def byte_size(text: str) -> int:
    """`512MiB`, `2GiB`, `1.5G` or plain bytes: the memory of a task, at least MIN_TASK_MEMORY."""
    from pipeline.progress import MIN_TASK_MEMORY

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"expected a size such as 512MiB or 2GiB, got {text!r}")
    size = float(match.group(1)) * SIZE_UNITS[unit]
    if not MIN_TASK_MEMORY <= size <= UINT64_MAX:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_TASK_MEMORY >> 20} MiB and fit in 64 bits, "
                                         f"got {text}")
    return int(size)


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, as every other error (the usage is one --help away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, unless it says it already or has none worth saying."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or not action.option_strings or action.required
                or action.default in (None, False, [], argparse.SUPPRESS)):
            return text
        return f"{text} (default: %(default)s)"


EXAMPLES = {
    "build": """examples:
  mmcorpus build --phase 1                                   # the bundled samples into out/
  mmcorpus build --phase 2 --sources my-sources.yaml --out /data/mmcorpus --workers 16
  mmcorpus build --phase 1 --set quality.fixed.min_doc_words=100 --dry-run
  mmcorpus build --phase 1 --ray-address http://head:8265 --out s3://bucket/mmcorpus""",
    "config": """examples:
  mmcorpus config show --set phases.1.temperature=0.5
  mmcorpus config fields | grep quality""",
    "sources": """examples:
  mmcorpus sources                                           # the bundled samples
  mmcorpus sources --sources my-sources.yaml                 # your own data: files, a sample, the mapping""",
    "query": """examples:
  mmcorpus query --list
  mmcorpus query --describe mixture
  mmcorpus query rejects_by_reason
  mmcorpus query --out /data/mmcorpus --format csv "SELECT lang, sum(tokens) FROM mixture GROUP BY 1\"""",
    "why": "examples:\n  mmcorpus why fineweb2/<urn:uuid:...>\n  mmcorpus query \"SELECT id FROM rejects LIMIT 5\"   "
           "# ids to ask about",
    "check": "examples:\n  mmcorpus check --phase 1\n  mmcorpus check --phase 3 --variant eng --out /data/mmcorpus",
    "plan": """examples:
  mmcorpus plan --phase 1                                    # from the pool under out/
  mmcorpus plan --phase 1 --scale full --counts configs/mmbert-language-counts.csv --cost
  mmcorpus plan --phase 1 --sources my-sources.yaml --set phases.1.other_sources.mycorpus=50""",
    "export-mds": "examples:\n  mmcorpus export-mds --phase 1 out/phase1-mds\n  mmcorpus export-mds --phase 2 "
                  "--compression zstd --out s3://bucket/mmcorpus s3://bucket/mds/phase2",
    "report": "examples:\n  mmcorpus report --phase 1             # out/phase1/report/index.html",
    "eval-mlm": "examples:\n  mmcorpus eval-mlm --phase 2 --checkpoint ~/mmBERT-base --chunks-per-language 16",
    "fetch-assets": "examples:\n  mmcorpus fetch-assets                 # what `make setup` runs",
}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("mmcorpus")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def parser() -> argparse.ArgumentParser:
    root = Parser(prog="mmcorpus", description=__doc__, formatter_class=HelpFormatter)
    root.add_argument("--version", action="version", version=f"mmcorpus {version()}")
    root.add_argument("-v", "--verbose", action="store_true", help="debug logging, and the resolved recipe at the "
                                                                     "start of a build")
    commands = root.add_subparsers(dest="command", required=True)
    original = commands.add_parser

    def add_parser(name: str, **kwargs: object) -> argparse.ArgumentParser:
        return original(name, formatter_class=HelpFormatter, epilog=EXAMPLES.get(name), **kwargs)

    commands.add_parser = add_parser  # type: ignore[method-assign]

    build = commands.add_parser("build", help="curate the sources into the pool, then mix and shard a phase")
    add_phase_arguments(build)
    add_recipe_arguments(build)
    add_out_argument(build)
    build.add_argument("--workers", type=positive_int, default=2, help="CPUs of the embedded Ray (default: 2)")
    build.add_argument("--seed", type=seed, default=0, help="seed for sampling and shuffling (default: 0)")
    build.add_argument("--task-memory", type=byte_size, help="memory each task may hold, e.g. 2GiB: Ray places "
                                                             "tasks by it and stages spill or partition within it "
                                                             "(default: the smallest node's memory per CPU, at most "
                                                             "8 GiB)")
    build.add_argument("--retries", type=number(int, Range(ge=0)), default=1,
                       help="retries of a failing task before its input file is quarantined (default: 1)")
    build.add_argument("--keep-rejected-text", action="store_true",
                       help="rejected documents keep their text in the `rejects` view (more disk)")
    build.add_argument("--budget", type=number(float, Range(gt=0)),
                       help="phase token budget (default: the pool's eligible tokens)")
    build.add_argument("--ray-address", help="a Ray cluster: http://head:8265 submits the build as a Ray job; "
                                             "ray://... or host:port joins it (default: $RAY_ADDRESS, else embedded)")
    build.add_argument("--dry-run", action="store_true", help="check the recipe and the inputs, print the resolved "
                                                              "recipe and stop")

    config = commands.add_parser("config", help="the resolved recipe (show) or every setting with its help (fields)")
    config.add_argument("action", choices=["show", "fields"], help="show: the resolved recipe as YAML; fields: "
                                                                   "every setting with its type, default and help")
    add_recipe_arguments(config)

    sources = commands.add_parser("sources", help="each source of the recipe: its reader, the files it matches, its "
                                                  "first document and what the field mapping did")
    add_recipe_arguments(sources)

    query = commands.add_parser("query", help="run read-only SQL on an output's catalog views")
    query.add_argument("sql", nargs="?", help="SQL, a view's name (all its rows) or a named query's")
    query.add_argument("--list", action="store_true", help="list the views and named queries, with their columns")
    query.add_argument("--describe", metavar="VIEW", help="one view's columns and types")
    add_out_argument(query)
    query.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format")

    why = commands.add_parser("why", help="a document's whole path: where it was read, each stage's verdict, its "
                                          "dedup cluster, the chunks and shards it landed in")
    why.add_argument("id", help="the document's id, as in the shards' doc_id and the rejects view")
    add_out_argument(why)

    check = commands.add_parser("check", help="verify a built phase: sha256s, row/token counts, stage counts")
    add_phase_arguments(check)
    add_out_argument(check)

    plan = commands.add_parser("plan", help="print a phase's targets per source and language; writes nothing")
    add_phase_arguments(plan)
    add_recipe_arguments(plan)  # the sources a phase may name, and --set as the build had it
    plan.add_argument("--counts", type=Path, help="CSV of available tokens: lang,tokens[,source], or mmBERT's "
                                                  "counts file (default: the pool under --out)")
    plan.add_argument("--scale", choices=["sample", "full"], default="sample",
                      help="full: the recipe's budget (2.3T / 600B / 100B); sample: what the counts hold")
    plan.add_argument("--budget", type=number(float, Range(gt=0)), help="token budget (overrides --scale)")
    add_out_argument(plan)
    plan.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format")
    plan.add_argument("--cost", action="store_true", help="also estimate the full recipe's core-hours and wall time "
                                                          "from the rates `make bench` measured")
    plan.add_argument("--cost-workers", type=positive_int, default=64, help="Ray workers for the wall-time estimate")
    plan.add_argument("--rates", type=Path, help="benchmark results (default: bench/results.json)")

    export = commands.add_parser("export-mds", help="write a built phase's shards as MosaicML MDS, laid out as "
                                                    "mmBERT's trainer reads its data")
    add_phase_arguments(export)
    add_out_argument(export)
    export.add_argument("--compression", choices=["zstd"], help="also write each MDS file compressed (the raw ones, "
                                                                "which mmBERT's trainer reads, are always written)")
    export.add_argument("dest", help="destination folder or URL: a folder per source "
                                     "(<source>-tokenized-chunked-<seq>-<min>-<skip>-backfill-nodups/) and a root "
                                     "index.json over them")

    report = commands.add_parser("report", help="write a built phase's data card: <out>/<phase>/report/")
    add_phase_arguments(report)
    add_out_argument(report)

    evaluate = commands.add_parser("eval-mlm", help="a checkpoint's MLM loss per language on a built phase, into "
                                                    "its manifest and data card (needs the reference extra)")
    add_phase_arguments(evaluate)
    add_out_argument(evaluate)
    evaluate.add_argument("--checkpoint", type=Path, required=True,
                          help="Hugging Face ModernBERT/mmBERT folder (config.json + model.safetensors)")
    evaluate.add_argument("--chunks-per-language", type=positive_int, default=64, help="sample size (default: 64)")
    evaluate.add_argument("--batch-tokens", type=positive_int, help="tokens per batch (default: the phase's seq_len)")
    evaluate.add_argument("--seed", type=seed, default=0, help="chooses the sample and the masks (default: 0)")
    evaluate.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")

    commands.add_parser("fetch-assets", help="download the tokenizer and LID model files into the cache (set-up)")
    return root


def add_phase_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--phase", type=int, required=True, help="phase number in the phases YAML")
    command.add_argument("--variant", help="phase variant (phase 3: all, cont, eng; default: the phase's own)")
    command.add_argument("--phases", type=Path, help="phases YAML (default: the recipe's)")


def add_recipe_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("-c", "--recipe", type=Path, help="recipe YAML: every section, inline or by file "
                                                            "(default: configs/recipe.yaml)")
    for section in SECTIONS:
        if section != "phases" or not any(a.dest == "phases" for a in command._actions):
            command.add_argument(f"--{section}", type=Path, help=f"{section} YAML (replaces the recipe's)")
    command.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                         help="change one setting, e.g. --set quality.fixed.min_doc_words=100 (repeatable)")


def add_out_argument(command: argparse.ArgumentParser) -> None:
    command.add_argument("--out", default="out", help="output folder or fsspec URL such as s3://bucket/prefix "
                                                      "(default: out)")


def recipe_from(args: argparse.Namespace) -> Recipe:
    sections = {section: getattr(args, section, None) for section in SECTIONS}
    return load_recipe(getattr(args, "recipe", None), sections, getattr(args, "set", []))


def run_build(args: argparse.Namespace, argv: list[str]) -> int:
    from pipeline.build import BuildSettings, build
    from pipeline.cluster import is_job_address, submit_build
    from pipeline.inputs import check_inputs
    from stages.sources import create_reader

    recipe = recipe_from(args)
    phase = recipe.phase(args.phase, args.variant)
    settings = BuildSettings(out=args.out, phase=phase, recipe=recipe, seed=args.seed, workers=args.workers,
                             budget_tokens=args.budget, ray_address=args.ray_address, retries=args.retries,
                             task_memory=args.task_memory, keep_rejected_text=args.keep_rejected_text)
    if args.dry_run:
        check_inputs(recipe)
        for name, options in recipe.sources.sources.items():
            files = create_reader(name, options, recipe.tokenizers).list_files()
            print(f"{name}: {len(files)} input file(s) under {options.path}")
        for role, spec in recipe.assets().items():
            print(f"{role}: {spec.check() or spec.path}")
        print(yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True))
        return 0
    log.info("recipe: %s", ", ".join(f"{section} {file}" for section, file in recipe.files.items()))
    if all(Path(options.path).resolve().is_relative_to(SAMPLES_DIR) for options in recipe.sources.sources.values()):
        log.warning("building the bundled samples (%s): give --sources YAML for your own data",
                    recipe.files.get("sources", "configs/sources.yaml"))
    log.debug("resolved recipe:\n%s", yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True))
    if is_job_address(args.ray_address):
        return submit_build(args.ray_address, job_arguments(argv, args))
    if not supervised():
        return run_watched(argv, "build")
    info = build(settings)
    print_summary(args.out, phase.id, info)
    return 0


def job_arguments(argv: list[str], args: argparse.Namespace) -> list[str]:
    """The build's own arguments for the job: without --ray-address, with a local --out made absolute (the job
    runs in a copy of the project, so a relative --out would land there)."""
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
    out = args.out if "://" in args.out else str(Path(args.out).resolve())
    return [*kept, "--out", out]


def print_summary(out: str, phase_id: str, info: dict) -> None:
    from manifests.layout import Layout

    layout = Layout(out)
    with layout.duckdb(threads=2) as con:
        shards = layout.glob(Layout.shards_glob(phase_id))
        per_source = con.execute(
            """SELECT source, count(DISTINCT doc_id) AS docs, sum(len(input_ids)) AS tokens FROM read_parquet(?)
               GROUP BY 1 ORDER BY tokens DESC""", [[layout.url_of(s) for s in shards]]).fetchall()
        languages = con.execute(
            "SELECT lang, sum(tokens) FROM read_parquet(?) GROUP BY 1 ORDER BY 2 DESC LIMIT 8",
            [layout.url_of(Layout.manifest(phase_id, "mixture"))]).fetchall()
        total = con.execute("SELECT count(*), sum(tokens), sum(bytes) FROM read_parquet(?)",
                            [layout.url_of(Layout.manifest(phase_id, "shards"))]).fetchone()
    print(f"\n{phase_id}: {total[0]} shards, {total[1]:,} tokens, {total[2] / 1e6:.1f} MB "
          f"in {info['seconds']:.1f} s (seed {info['seed']})")
    print(f"  shards   {layout.url_of(Layout.shards_dir(phase_id))}/")
    print(f"  manifest {layout.url_of(Layout.manifest_dir(phase_id))}/")
    print(f"  catalog  {layout.url_of(Layout.CATALOG)}   (mmcorpus query --out {out} \"SELECT * FROM mixture\")")
    print(f"\n  {'source':<10} {'documents':>10} {'tokens':>12}")
    for source, docs, tokens in per_source:
        print(f"  {source:<10} {docs:>10,} {tokens:>12,}")
    print("\n  top languages: " + ", ".join(f"{lang} {tokens:,}" for lang, tokens in languages))


def run_config(args: argparse.Namespace) -> int:
    if args.action == "fields":
        from pipeline.config import PhaseConfig
        from stages.dedup import DedupConfig
        from stages.lid import LidConfig
        from stages.quality import QualityConfig
        from stages.settings import describe
        from stages.sources import READERS, HfOptions, SourceTerms

        sections = {"lid": LidConfig, "quality": QualityConfig, "dedup": DedupConfig, "phases.N": PhaseConfig,
                    **{f"sources.sources.{name}": reader.Options for name, reader in READERS.items()},
                    "sources.sources.<your source>": HfOptions, "sources.sources.<any source>": SourceTerms}
        for prefix, cls in sections.items():
            for key, kind, default, text in describe(cls, prefix + "."):
                print(f"{key}: {kind} = {default}  # {text}")
        return 0
    recipe = recipe_from(args)
    print(yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True), end="")
    return 0


def run_sources(args: argparse.Namespace) -> int:
    from pipeline.inputs import describe, inspect_source

    recipe = recipe_from(args)
    for name, options in recipe.sources.sources.items():
        print("\n".join(describe(inspect_source(name, options, recipe))), end="\n\n")
    return 0


LIST_WORDS = (".tables", ".schema", "help", ".help", "\\d")  # what other SQL shells take for --list


def run_query(args: argparse.Namespace) -> int:
    import duckdb

    from manifests.catalog import DESCRIPTIONS, NAMED_QUERIES, QueryRefused, run_read_only

    text = (args.sql or "").strip()
    if not (text or args.list or args.describe):
        raise ConfigError("query: give SQL, a view or named query, --list or --describe VIEW")
    with open_catalog(args.out) as con:
        views = sorted(name for (name,) in con.execute(
            "SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall())
        if args.list or text in LIST_WORDS:
            for view in views:
                columns = ", ".join(row[0] for row in con.execute(f"DESCRIBE {view}").fetchall())
                print(f"{view:<24} {DESCRIPTIONS.get(view, '')}\n{'':<24} columns: {columns}")
            return 0
        if args.describe:
            if args.describe not in views:
                raise ConfigError(f"query: no view {args.describe!r}; views: {', '.join(views)}")
            print(f"{args.describe}: {DESCRIPTIONS.get(args.describe, '')}")
            text = f"DESCRIBE {args.describe}"
        elif text in views:
            text = NAMED_QUERIES.get(text, f"SELECT * FROM {text}")
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text) and text.upper() not in ("SELECT", "DESCRIBE", "SHOW"):
            raise ConfigError(f"query: {text!r} is neither SQL nor a view or named query; named queries: "
                              f"{', '.join(sorted(NAMED_QUERIES))}; views: see --list")
        try:
            result = run_read_only(con, text)
        except QueryRefused as error:
            raise ConfigError(f"query refused: {error}") from None
        except (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException,
                duckdb.PermissionException) as error:
            raise ConfigError(f"query: {' '.join(str(error).split())}") from None
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
        cells = [columns] + [[cell(v) for v in row] for row in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
        for n, row in enumerate(cells):
            print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())
            if n == 0:
                print("  ".join("-" * width for width in widths))
    return 0


def open_catalog(out: str) -> "duckdb.DuckDBPyConnection":
    from manifests.catalog import connect
    from manifests.layout import Layout

    layout = Layout(out)
    if layout.is_local and Path(layout.root).is_file():
        raise ConfigError(f"--out {out} is a file: give the output folder of a build")
    try:
        return connect(layout)
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None


def run_why(args: argparse.Namespace) -> int:
    from manifests.catalog import CURATION_STAGES
    from manifests.layout import Layout

    layout = Layout(args.out)
    with open_catalog(args.out) as con:
        def rows(sql: str, *params: object) -> list[tuple]:
            return con.execute(sql, list(params)).fetchall()

        views = {name for (name,) in rows("SELECT view_name FROM duckdb_views()")}
        rejected = rows("SELECT stage, reason, detail, origin, source, lang FROM rejects WHERE id = ?", args.id) \
            if "rejects" in views else []
        pooled = rows("SELECT source, lang, quality, n_tokens, origin, dump, file_path FROM pool WHERE id = ?",
                      args.id) if "pool" in views else []
        if not rejected and not pooled:
            like = rows("SELECT id FROM pool WHERE contains(id, ?) UNION SELECT id FROM rejects WHERE contains(id, ?) "
                        "ORDER BY 1 LIMIT 5", args.id, args.id) if {"pool", "rejects"} <= views else []
            hint = f"; ids containing it: {', '.join(i for (i,) in like)}" if like else ""
            print(f"mmcorpus: {args.id}: no such document in {layout.url} (neither pooled nor rejected){hint}",
                  file=sys.stderr)
            return 1
        clusters = rows("""SELECT pass, kind, kept, id, kept_id, cluster_size FROM dedup_clusters
                           WHERE id = ? OR kept_id = ? ORDER BY pass, id""", args.id, args.id) \
            if "dedup_clusters" in views else []
        phases = [phase for (phase,) in rows("SELECT phase FROM run ORDER BY phase")]
        placed = {phase: rows("""SELECT regexp_extract(filename, '[^/]*$'), chunk, epoch, len(input_ids)
                                 FROM read_parquet(?, filename = true) WHERE doc_id = ? ORDER BY epoch, chunk""",
                              layout.url_of(Layout.shards_glob(phase)), args.id) for phase in phases}
        mixed = {phase: rows("SELECT reason FROM read_parquet(?) WHERE id = ?", layout.url_of(glob), args.id)
                 for phase in phases for glob in [Layout.rejects("*", "*", "*", phase)] if layout.glob(glob)}
    source, lang, origin = (pooled[0][0], pooled[0][1], pooled[0][4]) if pooled else \
        (rejected[0][4], rejected[0][5], rejected[0][3])
    print(f"{args.id}  ({source}, {lang})")
    curation = {stage: (reason, detail) for stage, reason, detail, *_ in rejected if stage in CURATION_STAGES}
    where = origin + (f"  (dump {pooled[0][5]}, WARC {pooled[0][6]})" if pooled and pooled[0][5] else "")
    for stage in CURATION_STAGES:
        if stage in curation:
            reason, detail = curation[stage]
            print(f"  {stage:<9} rejected: {reason}" + (f" ({detail})" if detail else ""))
            break
        verdict = {"read": f"read from {where}", "quality": f"kept, quality {pooled[0][2]:.4f}" if pooled else "kept",
                   "tokenize": f"kept, {pooled[0][3]:,} tokens" if pooled else "kept"}.get(stage, "kept")
        print(f"  {stage:<9} {verdict}")
    for line in cluster_lines(args.id, clusters):
        print(f"  {'cluster':<9} {line}")
    for phase in phases:
        chunks = placed[phase]
        if chunks:
            shards = sorted({shard for shard, *_ in chunks})
            epochs = sorted({epoch for _, _, epoch, _ in chunks})
            print(f"  {phase:<9} {len(chunks)} chunk(s), {sum(n for *_, n in chunks):,} tokens, epochs "
                  f"{', '.join(map(str, epochs))}, in {', '.join(shards)}")
        elif mixed.get(phase):
            print(f"  {phase:<9} not in the shards: {mixed[phase][0][0]}")
        elif pooled:
            print(f"  {phase:<9} not in the shards: outside the phase's languages or quality tier")
    return 0


def cluster_lines(doc_id: str, clusters: list[tuple]) -> list[str]:
    """What each dedup pass decided about a document, from the rows of `dedup_clusters` that name it (as a
    member, id, or as a keeper, kept_id)."""
    lines = []
    for number, kind, kept, member, kept_id, size in clusters:
        if kind == "exact_id":  # every member's row holds the shared upstream id; its own row, its final id
            if kept_id == doc_id:
                lines.append(f"pass {number} {kind}: its upstream id is shared by {size} documents; "
                             + ("it keeps the id" if member == doc_id else f"renamed from {member}"))
        elif member == doc_id and kept:
            removed = [m for n, k, keeps, m, kid, _ in clusters if n == number and kid == doc_id and not keeps]
            lines.append(f"pass {number} {kind}: kept from a cluster of {size}; removed: {', '.join(removed)}")
        elif member == doc_id:
            lines.append(f"pass {number} {kind}: removed from a cluster of {size} as a copy of {kept_id}")
    return lines


def cell(value: object) -> str:
    """A table cell: floats to 4 decimals (trailing zeros dropped), None as empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 1e15 else f"{value:.4g}"
    return str(value)


def phase_of(args: argparse.Namespace) -> PhaseConfig:
    phases = load_phases(args.phases) if args.phases else load_recipe().phases
    return phases.phase(args.phase, args.variant)


def run_check(args: argparse.Namespace) -> int:
    from manifests.catalog import check
    from manifests.layout import Layout

    phase_id = phase_of(args).id
    problems = check(Layout(args.out), phase_id)
    for problem in problems:
        print(f"FAIL {problem}")
    if not problems:
        print(f"{phase_id}: OK (shard sha256s, rows and tokens match the manifest; read = kept + rejected "
              "for every stage and source)")
    return 1 if problems else 0


def run_plan(args: argparse.Namespace) -> int:
    from manifests.layout import Layout
    from pipeline.mixing import plan_rows, pool_files, read_counts, summarize_pool
    from stages.languages import base_language

    recipe = recipe_from(args)
    phase = recipe.phase(args.phase, args.variant)
    layout = Layout(args.out)
    if args.cost:  # before the table: a missing benchmark is one line, not a table and then an error
        from pipeline.cost import RESULTS, measured_rates

        rates = measured_rates(args.rates or RESULTS)
    if args.counts:
        available = read_counts(args.counts, phase)
    elif files := pool_files(layout):
        available = summarize_pool(layout, phase, files).available
    else:
        raise ConfigError(f"no --counts and no pool under {layout.url}: build first or give a counts CSV")
    if not available:
        raise ConfigError(f"no available tokens for the phase-{phase.number} languages")
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
        from pipeline.cost import describe, full_recipe

        print("\n" + describe(full_recipe(rates, args.cost_workers, recipe.phases), rates, args.rates or RESULTS))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from manifests.catalog import check
    from manifests.layout import Layout
    from stages.shards import export_mds

    phase_id = phase_of(args).id
    layout = Layout(args.out)
    shards = layout.glob(Layout.shards_glob(phase_id))
    if not shards:
        raise ConfigError(f"no shards under {layout.url_of(Layout.shards_dir(phase_id))}: build the phase first")
    problems = check(layout, phase_id)
    if problems:
        raise RuntimeError(f"{phase_id} does not check out ({problems[0]}; {len(problems)} problem(s)): run "
                           "`mmcorpus build` again to repair it")
    from pipeline.runner import Runner

    with Runner(layout):  # Ray: one task per shard (the embedded one, or the cluster at RAY_ADDRESS)
        result = export_mds(layout, phase_id, shards, Layout(args.dest), args.compression)
    print(f"{phase_id}: {result['samples']:,} samples, {result['tokens']:,} tokens in {result['shards']} MDS "
          f"shard(s), {result['folders']} source folder(s), under {args.dest} (read back and checked)")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from manifests.layout import Layout
    from manifests.report import build_report
    from stages.tokenize import load_gemma2

    print(build_report(Layout(args.out), phase_of(args).id, load_gemma2(load_recipe().tokenizers["gemma2"]).decode))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from manifests.layout import Layout
    from stages.tokenize import load_gemma2

    try:
        from reference.checkpoint import CheckpointError
        from reference.evaluate import EvalSettings, evaluate
    except ImportError as error:
        raise ConfigError(f"eval-mlm needs the reference extra (pip install -e '.[reference]'): {error}") from None
    phase = phase_of(args)
    settings = EvalSettings(args.chunks_per_language, args.seed, args.batch_tokens, args.device)
    try:
        rows = evaluate(Layout(args.out), phase, args.checkpoint, load_gemma2(load_recipe().tokenizers["gemma2"]),
                        settings)
    except CheckpointError as error:
        raise ConfigError(str(error)) from None
    print(f"{'lang':<16} {'chunks':>7} {'masked':>9} {'loss':>8}")
    for row in rows:
        print(f"{row['lang']:<16} {row['chunks']:>7} {row['masked_tokens']:>9,} {row['loss']:>8.3f}")
    print(f"{phase.id}: {len(rows)} languages at mask rate {phase.mask_rate:g}; written to "
          f"{Layout(args.out).url_of(Layout.manifest(phase.id, 'mlm_eval'))} (the mlm_eval view)")
    return 0


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `mmcorpus query ... | head` ends quietly
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    commands = {"build": lambda: run_build(args, argv), "config": lambda: run_config(args),
                "sources": lambda: run_sources(args),
                "query": lambda: run_query(args), "why": lambda: run_why(args), "check": lambda: run_check(args),
                "plan": lambda: run_plan(args),
                "export-mds": lambda: run_export(args), "report": lambda: run_report(args),
                "eval-mlm": lambda: run_eval(args)}
    try:
        return run_command(args, commands)
    finally:
        announce_end()


def run_command(args: argparse.Namespace, commands: dict[str, Callable[[], int]]) -> int:
    """The command's exit status; every error one line on stderr."""
    from manifests.layout import TreeLocked
    from pipeline.runner import Terminated

    try:
        if args.command in commands:
            return commands[args.command]()
        from pipeline.assets import fetch_assets

        fetch_assets()
        return 0
    except (ConfigError, TreeLocked) as error:
        print(f"mmcorpus: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmcorpus: {args.command} interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Terminated:
        print(f"mmcorpus: {args.command} terminated; run the same command again to resume", file=sys.stderr)
        return 143
    except Exception as error:  # noqa: BLE001 - one clear line, exit 1; the log above has the details
        log.debug("failure", exc_info=True)
        print(f"mmcorpus: {args.command} failed: {error_text(error)}", file=sys.stderr)
        return 1


def error_text(error: BaseException) -> str:
    """One line for the user: the message without `[Errno 2]` or a class name (the class only when the message
    is empty or a bare key)."""
    text = " ".join(str(error).split())
    if isinstance(error, OSError) and error.strerror:
        text = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    if isinstance(error, KeyError) or not text:
        text = f"{type(error).__name__.lower().replace('error', ' error').strip()} {text}".strip()
    return text


if __name__ == "__main__":
    sys.exit(main())
