"""The commands that read a built output: query, why, check, export-mds and report (each phase with the recipe
it was built with)."""

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

from manifests.layout import Layout
from manifests.printing import print_rows
from pipeline.config import ConfigError
from pipeline.recipes import built_recipe

if TYPE_CHECKING:
    import duckdb

LIST_WORDS = (".tables", ".schema", "help", ".help", "\\d")  # what other SQL shells take for --list


def open_catalog(out: str) -> "duckdb.DuckDBPyConnection":
    from manifests.catalog import connect

    layout = Layout(out)
    if layout.is_local and Path(layout.root).is_file():
        raise ConfigError(f"--out {out} is a file: give the output folder of a build")
    try:
        return connect(layout)
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None


def require_built(layout: Layout, phase_id: str) -> None:
    """A command that reads a built phase stops with status 2, as `query` does, where the phase was not built."""
    if not layout.exists(Layout.manifest(phase_id, "shards")):
        raise ConfigError(f"{layout.url}: {phase_id} is not built (no manifest): run `mmcorpus build` first")


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
    print_rows(columns, rows, args.format)
    return 0


def run_why(args: argparse.Namespace) -> int:
    from manifests.why import NoSuchDocument, trace

    with open_catalog(args.out) as con:
        try:  # an id pasted from CSV or a terminal may carry a line's end: the id is what lies between
            title, steps = trace(con, Layout(args.out), args.id.strip())
        except NoSuchDocument as error:
            raise ConfigError(str(error)) from None
    if args.format == "table":
        print(title)
    print_rows(["step", "verdict"], steps, args.format, header=False, indent="  ")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from manifests.catalog import check

    _, phase = built_recipe(args)
    require_built(Layout(args.out), phase.id)
    problems = check(Layout(args.out), phase.id)
    for problem in problems:
        print(f"FAIL {problem}")
    if not problems:
        print(f"{phase.id}: OK (shard sha256s, rows and tokens match the manifest; read = kept + rejected "
              "for every stage and source)")
    return 1 if problems else 0


def run_export(args: argparse.Namespace) -> int:
    from manifests.catalog import check
    from pipeline.runner import Runner
    from stages.shards import export_mds

    _, phase = built_recipe(args)
    layout = Layout(args.out)
    require_built(layout, phase.id)
    shards = layout.glob(Layout.shards_glob(phase.id))
    if not shards:
        raise ConfigError(f"no shards under {layout.url_of(Layout.shards_dir(phase.id))}: build the phase first")
    problems = check(layout, phase.id)
    if problems:
        raise RuntimeError(f"{phase.id} does not check out ({problems[0]}; {len(problems)} problem(s)): run "
                           "`mmcorpus build` again to repair it")
    with Runner(layout):  # Ray: one task per shard (the embedded one, or the cluster at RAY_ADDRESS)
        result = export_mds(layout, phase.id, shards, Layout(args.dest), args.compression)
    print(f"{phase.id}: {result['samples']:,} samples, {result['tokens']:,} tokens in {result['shards']} MDS "
          f"shard(s), {result['folders']} source folder(s), under {args.dest} (read back and checked)")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from manifests.report import build_report
    from stages.tokenize import load_gemma2

    recipe, phase = built_recipe(args)
    require_built(Layout(args.out), phase.id)
    print(build_report(Layout(args.out), phase.id, load_gemma2(recipe.tokenizers["gemma2"]).decode))
    return 0
