"""The per-phase manifest (Parquet tables), the DuckDB catalog over all outputs, named queries and `check`.

Manifest tables under <out>/<phase>/manifest/: shards, mixture, stages, reject_reasons, notes (kept documents
a stage flagged, e.g. an upstream language label the LID model disagrees with), lineage (document -> upstream
file and row, crawl dump and WARC path where the source gives them, shard), mlm_eval (after `mmcorpus eval-mlm`),
files (every file the build wrote, with its checksum), run (the build that wrote the current shards: the whole
recipe, model digests, versions, commit), and runs/ (the run history: a file per build, reruns included).
Views: every phase's tables plus `runs`, `rejects`, `quarantine`, `pool` and `dedup_clusters` (every document of a
duplicate cluster, with the kept one's id and the cluster size), and the named queries below.

`<out>/catalog.duckdb` holds those views with paths relative to <out> (run DuckDB from inside <out>), so a
copied or moved output answers from itself. `mmcorpus query` opens the same views in a sandbox: DuckDB may read
only the output tree, never write, attach, export, install or load anything, and its settings are locked.
"""

import fnmatch
import posixpath
import shutil
import tempfile
import weakref
from collections.abc import Iterable
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from manifests.layout import Layout, matching
from manifests.runs import built_by
from manifests.schemas import (
    DEDUP_CLUSTERS,
    FILES,
    LINEAGE,
    MIXTURE,
    NOTES,
    POOL,
    REJECT_REASONS,
    REJECTS,
    RUN,
    SHARD,
    SHARDS,
    STAGES,
    STATS,
)
from manifests.writer import write_parquet

TABLES = ("shards", "mixture", "stages", "reject_reasons", "notes", "lineage", "files", "run", "mlm_eval")
CURATION_STAGES = ("read", "lid", "quality", "dedup", "tokenize")  # in pipeline order
READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")
# The views over files too many or too large to read whole (a row per document, file or reject): `loaded` makes
# them Arrow datasets that each query scans for its own columns
SCANNED = {"lineage": LINEAGE, "files": FILES, "rejects": REJECTS, "pool": POOL, "dedup_clusters": DEDUP_CLUSTERS}
QUARANTINE = """SELECT source, regexp_replace(origin, ':[^:]*$', '') AS file,
                                 regexp_extract(origin, '[^:]*$') AS row, reason, detail
                                 FROM rejects WHERE stage = 'read' ORDER BY source, file, row"""

NAMED_QUERIES = {
    "tokens_per_language": """
        SELECT phase, lang, sum(tokens) AS tokens, sum(target_tokens) AS target_tokens
        FROM mixture GROUP BY ALL ORDER BY phase, tokens DESC""",
    "share_target_vs_written": """
        SELECT phase, source, lang, p, target_tokens, tokens,
               round(tokens / nullif(target_tokens, 0), 4) AS written_over_target
        FROM mixture ORDER BY phase, source, target_tokens DESC""",
    "rejects_by_reason": f"""
        SELECT 'curation' AS phase, stage, reason, sum(docs) AS docs FROM reject_reasons
        WHERE stage IN {CURATION_STAGES} AND phase = (SELECT phase FROM runs ORDER BY started DESC LIMIT 1)
        GROUP BY ALL
        UNION ALL
        SELECT phase, stage, reason, sum(docs) FROM reject_reasons WHERE stage NOT IN {CURATION_STAGES} GROUP BY ALL
        ORDER BY phase, stage, docs DESC""",
    "epochs_over_cap": """
        SELECT m.phase, m.source, m.lang, m.epochs, r.max_epochs FROM mixture m
        JOIN (SELECT phase, CAST(json_extract(config, '$.phase.max_epochs') AS DOUBLE) AS max_epochs FROM run) r
        USING (phase) WHERE m.epochs > r.max_epochs + 1e-9""",
}


# `mmcorpus query --list`: one line per view (the named queries are views too)
DESCRIPTIONS = {
    "shards": "per phase, one row per shard file: path, rows, tokens, bytes, sha256",
    "mixture": "per phase, source and language: tokens available, sampling p, target and written tokens, epochs",
    "stages": "per phase, stage, source and language: documents read, kept, rejected; tokens; seconds",
    "reject_reasons": "per phase, stage, source, language and reason: documents rejected (curation stages are "
                      "shared: each phase repeats them)",
    "notes": "per phase, stage, source and language: kept documents a stage flagged, by note, and the tokens "
             "concerned (mixing's skipped and moved tail tokens)",
    "lineage": "per phase, every document in the shards: its origin (upstream file:row), crawl dump, WARC, shard",
    "files": "per phase, every file the build wrote: stage, task, checksum",
    "run": "per phase, the build that wrote the current shards: seed, the whole recipe (JSON), versions, "
           "tokenizer and its sha256, commit",
    "runs": "per phase, every build (reruns too), as `run` plus what ran and was reused (stage -> tasks, JSON), "
            "its costs per stage (JSON) and its shards' sha256s",
    "mlm_eval": "per phase, a checkpoint's MLM loss per language (after `mmcorpus eval-mlm`)",
    "rejects": "every rejected document: id, source, lang, stage, reason, origin, detail",
    "quarantine": "unreadable files and records: source, file, row, reason, detail",
    "pool": "the tokenized pool all phases draw from: id, source, lang, quality, n_tokens, input_ids, lineage",
    "dedup_clusters": "every document of a duplicate cluster: pass, kind, its id, the kept document's id, size",
    "tokens_per_language": "named query: tokens written and targeted per phase and language",
    "share_target_vs_written": "named query: each mixture row's written tokens over its target",
    "rejects_by_reason": "named query: rejected documents by stage and reason, curation counted once",
    "epochs_over_cap": "named query: mixture rows whose epochs pass the phase's cap (none expected)",
}


def sql_text(value: str) -> str:
    """A SQL string literal (view definitions cannot take parameters)."""
    return "'" + value.replace("'", "''") + "'"


def _files(names: list[str], globs: list[str], root: str) -> str | None:
    """The globs that match one of `names`, as a SQL list literal rooted at `root` ("" for relative paths)."""
    present = [pattern for pattern in globs if any(fnmatch.fnmatchcase(name, pattern) for name in names)]
    return "[" + ", ".join(sql_text(root + pattern) for pattern in present) + "]" if present else None


def view_globs() -> dict[str, list[str]]:
    """The views over files, each with the globs of its files."""
    return {**{table: [Layout.manifest_glob(table)] for table in TABLES}, "runs": [Layout.run_records_glob()],
            "rejects": Layout.rejects_globs(), "pool": [Layout.POOL_GLOB],
            "dedup_clusters": [Layout.clusters_glob("*")]}


def view_definitions(layout: Layout, root: str) -> dict[str, str]:
    """name -> SELECT for every view; paths rooted at `root` (a URL with a trailing slash, or "")."""
    names = layout.glob("**/*.parquet")  # one listing of the tree (on an object store, each is a round trip)
    globs = view_globs()
    views = {}
    for table in TABLES:
        files = _files(names, globs[table], root)
        if files:
            views[table] = f"SELECT * FROM read_parquet({files}, union_by_name = true)"
    runs = _files(names, globs["runs"], root)
    if runs:
        views["runs"] = f"SELECT * FROM read_parquet({runs}, union_by_name = true) ORDER BY phase, started"
    rejects = _files(names, globs["rejects"], root)
    if rejects:
        views["rejects"] = f"SELECT * FROM read_parquet({rejects}, union_by_name = true)"
        views["quarantine"] = QUARANTINE
    pool = _files(names, globs["pool"], root)
    if pool:
        views["pool"] = f"SELECT * FROM read_parquet({pool})"
    clusters = _files(names, globs["dedup_clusters"], root)
    if clusters:
        views["dedup_clusters"] = f"SELECT * FROM read_parquet({clusters})"
    return views | _named_queries(views.keys())


def _named_queries(views: Iterable[str]) -> dict[str, str]:
    return NAMED_QUERIES if {"mixture", "run", "runs", "reject_reasons"} <= set(views) else {}


def _rooted(layout: Layout) -> str:
    return layout.url_of("") + "/"


def write_manifest(layout: Layout, phase_id: str, plan: list, shards: list[dict], run_info: dict,
                   files: list[dict], stats: list[dict]) -> None:
    """The phase's manifest tables, from the plan, the shards, the pool and `stats`: the counters (STATS rows) of
    the curation tasks and of the phase's own."""
    write_parquet(layout, Layout.manifest(phase_id, "shards"), [s | {"phase": phase_id} for s in shards], SHARDS)
    # The shards and the pool read once, in memory, in one Arrow scan each for the columns needed (through DuckDB
    # each query would list and read each file again, in several ranged requests)
    with layout.duckdb(threads=2) as con:
        con.register("stats", pa.Table.from_pylist(stats, schema=STATS))
        con.register("chunks", shard_chunks(layout, [s["path"] for s in shards]))
        con.register("pool", layout.dataset(layout.glob(Layout.POOL_GLOB), POOL))
        written = dict(
            ((source, lang), tokens) for source, lang, tokens in con.execute(
                "SELECT source, lang, sum(tokens) FROM chunks GROUP BY 1, 2").fetchall()
        )
        tables = {
            "stages": ("""SELECT ? AS phase, stage, source, lang, sum(read)::BIGINT AS read,
                          sum(kept)::BIGINT AS kept, sum(rejected)::BIGINT AS rejected, sum(tokens)::BIGINT AS tokens,
                          sum(seconds) AS seconds
                          FROM stats WHERE reason IS NULL
                          GROUP BY ALL ORDER BY stage, source, lang""", [phase_id], STAGES),
            "reject_reasons": (_reasons_sql("reason", "rejected"), [phase_id], REJECT_REASONS),
            "notes": (_reasons_sql("note", "kept", ", sum(tokens)::BIGINT AS tokens"), [phase_id], NOTES),
            "lineage": ("""SELECT DISTINCT ? AS phase, s.doc_id, p.origin, p.dump, p.file_path, s.shard
                           FROM chunks s JOIN pool p ON s.doc_id = p.id ORDER BY s.doc_id, shard""",
                        [phase_id], LINEAGE),
        }
        for table, (sql, params, schema) in tables.items():
            write_parquet(layout, Layout.manifest(phase_id, table), con.sql(sql, params=params).to_arrow_table(),
                          schema)
    mixture = [
        dict(phase=phase_id, source=row.source, lang=row.lang, available_tokens=row.available_tokens, p=row.p,
             target_tokens=row.target_tokens, tokens=int(written.get((row.source, row.lang), 0)),
             epochs=row.epochs, capped=row.capped)
        for row in plan
    ]
    write_parquet(layout, Layout.manifest(phase_id, "mixture"), mixture, MIXTURE)
    write_parquet(layout, Layout.manifest(phase_id, "files"), [row | {"phase": phase_id} for row in files], FILES)
    write_parquet(layout, Layout.manifest(phase_id, "run"), [built_by(layout, phase_id, shards)], RUN)


def shard_chunks(layout: Layout, names: list[str]) -> pa.Table:
    """Per chunk of these shard files: doc_id, source, lang, its tokens and its shard's file name (one Arrow
    scan, which reads the token ids' lengths, not their values, into memory)."""
    scanner = layout.dataset(names, SHARD).scanner(columns={
        "doc_id": ds.field("doc_id"), "source": ds.field("source"), "lang": ds.field("lang"),
        "tokens": pc.list_value_length(ds.field("input_ids"))})
    schema = scanner.projected_schema.append(pa.field("shard", pa.string()))
    return pa.Table.from_batches([
        batch.append_column("shard", pa.repeat(pa.scalar(posixpath.basename(tagged.fragment.path)), batch.num_rows))
        for tagged in scanner.scan_batches() for batch in [tagged.record_batch]], schema)


def _reasons_sql(column: str, count: str, extra: str = "") -> str:
    return f"""SELECT ? AS phase, stage, source, lang, reason AS {column}, sum({count})::BIGINT AS docs{extra}
               FROM stats WHERE reason IS NOT NULL
               GROUP BY ALL HAVING docs > 0 ORDER BY stage, source, lang, {column}"""


def file_rows(producers: dict[str, tuple[str, str, str]]) -> list[dict]:
    """The `files` table: every file the build's tasks wrote (this build or an earlier one it reused)."""
    rows = []
    for name, (stage, key, checksum) in sorted(producers.items()):
        algorithm, _, value = checksum.partition(":")
        rows.append(dict(path=name, stage=stage, task=key, algorithm=algorithm, checksum=value))
    return rows


def build_catalog(layout: Layout) -> str:
    """(Re)create <out>/catalog.duckdb: the views with paths relative to <out> (absolute URLs for an object
    store, where DuckDB cannot resolve relative ones)."""
    root = "" if layout.is_local else _rooted(layout)
    with layout.writing(Layout.CATALOG) as spool, duckdb.connect(spool.local) as con:
        if layout.is_local:
            con.execute("SET file_search_path = ?", [layout.root])
        else:
            con.register_filesystem(layout.fs)
        for name, sql in view_definitions(layout, root).items():
            con.execute(f"CREATE VIEW {name} AS {sql}")
    return layout.url_of(Layout.CATALOG)


class QueryRefused(ValueError):
    """SQL that would write, attach or load something: `mmcorpus query` only reads."""


def _built(layout: Layout) -> list[str]:
    """The tree's Parquet files (one listing), once a phase is built."""
    names = layout.glob("**/*.parquet")
    if not matching(names, [Layout.manifest_glob("run")]):
        raise FileNotFoundError(f"{layout.url}: no built phase (no manifest): run `mmcorpus build` first")
    return names


def _in_memory() -> duckdb.DuckDBPyConnection:
    # DuckDB's temporary folder is always an allowed directory, and its default is `.tmp` under the working
    # directory, whatever it holds (a Ray job's driver may have lost it with its node's runtime environment): a
    # private one, removed with the connection, holds only what DuckDB spills
    spill = tempfile.mkdtemp(prefix="mmcorpus-query-")
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False,
                                 "threads": 2, "temp_directory": spill})
    weakref.finalize(con, shutil.rmtree, spill, ignore_errors=True)
    return con


def connect(layout: Layout) -> duckdb.DuckDBPyConnection:
    """A sandboxed in-memory DuckDB with the catalog's views over this output tree: it reads only files under
    the tree, writes nothing, installs and loads no extension, and its settings are locked."""
    _built(layout)
    con = _in_memory()
    if not layout.is_local:
        con.register_filesystem(layout.fs)
    allowed = _rooted(layout)
    con.execute("SET allowed_directories = ?", [[allowed]])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    for name, sql in view_definitions(layout, allowed).items():
        con.execute(f"CREATE VIEW {name} AS {sql}")
    return con


def loaded(layout: Layout) -> duckdb.DuckDBPyConnection:
    """The catalog's views for the project's own queries (the data cards, a build's summary), each file read
    once: an in-memory DuckDB in which the small manifest tables and the run history are Arrow tables, fetched
    whole and together, and the larger views (`SCANNED`) Arrow datasets over the store that a query scans for its
    columns. DuckDB reading the tree through fsspec would list it and read each file again for every query, in
    several ranged requests."""
    names = _built(layout)
    found = {view: files for view, globs in view_globs().items() if (files := matching(names, globs))}
    con = _in_memory()
    for view, files in found.items():
        if view in SCANNED:
            con.register(view, layout.dataset(files, SCANNED[view]))
        elif view == "runs":
            con.register(view, layout.read_tables(files).sort_by([("phase", "ascending"), ("started", "ascending")]))
        else:
            con.register(view, layout.read_tables(files))
    derived = ({"quarantine": QUARANTINE} if "rejects" in found else {}) | _named_queries(found)
    for name, sql in derived.items():
        con.execute(f"CREATE VIEW {name} AS {sql}")
    return con


def run_read_only(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> Any:
    """Execute SQL that only reads (SELECT, DESCRIBE, SHOW, EXPLAIN); anything else is refused."""
    statements = con.extract_statements(sql)
    if not statements:
        raise QueryRefused("no SQL statement given")
    for statement in statements:
        kind = statement.type.name
        if kind not in READ_ONLY_STATEMENTS:
            raise QueryRefused(f"{kind} statements are not allowed: `mmcorpus query` only reads")
    for statement in statements[:-1]:
        con.execute(statement.query)
    return con.execute(statements[-1].query, params or [])


def check(layout: Layout, phase_id: str) -> list[str]:
    """Every problem found in a built phase: shard files against the manifest, and the stage counts."""
    name = Layout.manifest(phase_id, "shards")
    if not layout.exists(name):
        return [f"{layout.url_of(name)} is missing: phase not built"]
    problems = []
    with layout.open(name) as f:
        listed = pq.read_table(f).to_pylist()
    on_disk = set(layout.glob(Layout.shards_glob(phase_id)))
    for extra in sorted(on_disk - {s["path"] for s in listed}):
        problems.append(f"{extra}: on disk but not in the manifest")
    for shard in listed:
        path = shard["path"]
        if path not in on_disk:
            problems.append(f"{path}: missing")
            continue
        if layout.verify(path, f"sha256:{shard['sha256']}") is not None:
            problems.append(f"{path}: sha256 differs from the manifest")
        try:
            with layout.open(path) as f:
                table = pq.read_table(f, columns=["input_ids"])
        except (OSError, ValueError) as error:
            problems.append(f"{path}: unreadable: {error}")
            continue
        tokens = pc.sum(pc.list_value_length(table.column("input_ids"))).as_py() or 0
        if (table.num_rows, tokens) != (shard["rows"], shard["tokens"]):
            problems.append(f"{path}: {table.num_rows} rows / {tokens} tokens, manifest says "
                            f"{shard['rows']} / {shard['tokens']}")
    with layout.duckdb(threads=2) as con:
        stages = con.execute(
            "SELECT stage, source, sum(read), sum(kept), sum(rejected) FROM read_parquet(?) GROUP BY 1, 2",
            [layout.url_of(Layout.manifest(phase_id, "stages"))],
        ).fetchall()
        counts = {(stage, source): (read, kept, rejected) for stage, source, read, kept, rejected in stages}
        for (stage, source), (read, kept, rejected) in sorted(counts.items()):
            if read != kept + rejected:
                problems.append(f"stage {stage}, source {source}: read {read} != kept {kept} + rejected {rejected}")
        pool = [layout.url_of(n) for n in layout.glob(Layout.POOL_GLOB)]
        pool_docs = dict(con.execute("SELECT source, count(*) FROM read_parquet(?) GROUP BY 1", [pool]).fetchall()
                         ) if pool else {}
        mixture_tokens = con.execute("SELECT sum(tokens) FROM read_parquet(?)",
                                     [layout.url_of(Layout.manifest(phase_id, "mixture"))]).fetchone()[0] or 0
    for source in sorted({source for _, source in counts}):
        chain = [stage for stage in CURATION_STAGES if (stage, source) in counts]
        for before, after in zip(chain, chain[1:], strict=False):
            if counts[(before, source)][1] != counts[(after, source)][0]:
                problems.append(f"source {source}: {before} kept {counts[(before, source)][1]} but {after} "
                                f"read {counts[(after, source)][0]}")
        if ("tokenize", source) in counts and counts[("tokenize", source)][1] != pool_docs.get(source, 0):
            problems.append(f"source {source}: tokenize kept {counts[('tokenize', source)][1]} but the pool "
                            f"holds {pool_docs.get(source, 0)}")
        if ("mix", source) in counts and counts[("mix", source)][0] != pool_docs.get(source, 0):
            problems.append(f"source {source}: mix read {counts[('mix', source)][0]} of "
                            f"{pool_docs.get(source, 0)} pool documents")
    shard_tokens = sum(s["tokens"] for s in listed)
    if mixture_tokens != shard_tokens:
        problems.append(f"mixture says {mixture_tokens} tokens written, the shards hold {shard_tokens}")
    return problems
