"""The per-phase manifest (Parquet tables), the DuckDB catalog over all outputs, named queries and `check`.

Manifest tables under <out>/<phase>/manifest/: shards, mixture, stages, reject_reasons, notes (kept documents
a stage flagged, e.g. an upstream language label the LID model disagrees with), lineage, run.
The catalog <out>/catalog.duckdb holds views over every phase's tables plus `rejects`, `pool` and
`dedup_clusters` (every document of a duplicate cluster, with the kept one's id and the cluster size), and the
named queries below as views, so `duckdb out/catalog.duckdb` answers the same questions as `mmcorpus query`.
"""

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pyarrow.compute as pc
import pyarrow.parquet as pq

from manifests.schemas import MIXTURE, RUN, SHARDS
from manifests.writer import atomic_path, sha256_file, write_parquet

if TYPE_CHECKING:
    from pipeline.config import PhaseConfig

TABLES = ("shards", "mixture", "stages", "reject_reasons", "notes", "lineage", "run")
CURATION_STAGES = ("read", "lid", "quality", "dedup", "tokenize")  # in pipeline order

NAMED_QUERIES = {
    "tokens_per_language": """
        SELECT phase, lang, sum(tokens) AS tokens, sum(target_tokens) AS target_tokens
        FROM mixture GROUP BY ALL ORDER BY phase, tokens DESC""",
    "share_target_vs_written": """
        SELECT phase, source, lang, p, target_tokens, tokens,
               round(tokens / nullif(target_tokens, 0), 4) AS written_over_target
        FROM mixture ORDER BY phase, source, target_tokens DESC""",
    "rejects_by_reason": """
        SELECT phase, stage, reason, sum(docs) AS docs FROM reject_reasons GROUP BY ALL
        ORDER BY phase, stage, docs DESC""",
    "epochs_over_cap": """
        SELECT m.phase, m.source, m.lang, m.epochs, r.max_epochs FROM mixture m
        JOIN (SELECT phase, CAST(json_extract(config, '$.phase.max_epochs') AS DOUBLE) AS max_epochs FROM run) r
        USING (phase) WHERE m.epochs > r.max_epochs + 1e-9""",
}


def _glob(*parts: object) -> str:
    return str(Path(*map(str, parts)))


def copy_query(con: duckdb.DuckDBPyConnection, sql: str, path: Path, params: list | None = None) -> None:
    """Stream a query's result into a Parquet file, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    con.execute(f"COPY ({sql}) TO '{tmp}' (FORMAT parquet, COMPRESSION zstd)", params or [])
    os.replace(tmp, path)


def write_manifest(out: Path, phase: "PhaseConfig", plan: list, shards: list[dict], run_info: dict) -> Path:
    phase_id = phase.id
    manifest = out / phase_id / "manifest"
    write_parquet(manifest / "shards.parquet",
                  [s | {"phase": phase_id, "path": f"{phase_id}/shards/{s['path']}"} for s in shards], SHARDS)
    stats = [_glob(out, "stats", "*", "*", "*.parquet"), _glob(out, phase_id, "stats", "**", "*.parquet")]
    shard_glob = _glob(out, phase_id, "shards", "*.parquet")
    with duckdb.connect() as con:
        con.execute("SET threads = 2")
        written = dict(
            ((source, lang), tokens) for source, lang, tokens in con.execute(
                "SELECT source, lang, sum(len(input_ids)) FROM read_parquet(?) GROUP BY 1, 2", [shard_glob]
            ).fetchall()
        )
        copy_query(con, f"""SELECT '{phase_id}' AS phase, stage, source, lang, sum(read)::BIGINT AS read,
                           sum(kept)::BIGINT AS kept, sum(rejected)::BIGINT AS rejected,
                           sum(tokens)::BIGINT AS tokens,
                           sum(seconds) AS seconds
                           FROM read_parquet({stats}, union_by_name = true) WHERE reason IS NULL
                           GROUP BY ALL ORDER BY stage, source, lang""", manifest / "stages.parquet")
        for table, column, count in (("reject_reasons", "reason", "rejected"), ("notes", "note", "kept")):
            copy_query(con, f"""SELECT '{phase_id}' AS phase, stage, source, lang, reason AS {column},
                               sum({count})::BIGINT AS docs
                               FROM read_parquet({stats}, union_by_name = true) WHERE reason IS NOT NULL
                               GROUP BY ALL HAVING docs > 0 ORDER BY stage, source, lang, {column}""",
                       manifest / f"{table}.parquet")
        copy_query(con, f"""SELECT DISTINCT '{phase_id}' AS phase, s.doc_id, p.origin,
                           regexp_extract(s.filename, '[^/]+$') AS shard
                           FROM read_parquet(?, filename = true) s
                           JOIN read_parquet(?) p ON s.doc_id = p.id ORDER BY s.doc_id, shard""",
                   manifest / "lineage.parquet", [shard_glob, _glob(out, "pool", "*", "*", "*.parquet")])
    mixture = [
        dict(phase=phase_id, source=row.source, lang=row.lang, available_tokens=row.available_tokens, p=row.p,
             target_tokens=row.target_tokens, tokens=int(written.get((row.source, row.lang), 0)),
             epochs=row.epochs, capped=row.capped)
        for row in plan
    ]
    write_parquet(manifest / "mixture.parquet", mixture, MIXTURE)
    versions = {name: _version(name) for name in ("mmcorpus", "ray", "pyarrow", "duckdb", "sentencepiece",
                                                  "tokenizers", "datatrove")}
    run = dict(phase=phase_id, seed=run_info["seed"], config=json.dumps(run_info, default=str, sort_keys=True),
               versions=json.dumps(versions), tokenizer=run_info["tokenizer"],
               tokenizer_sha256=run_info["tokenizer_sha256"], started=str(run_info["started"]),
               seconds=run_info["seconds"])
    write_parquet(manifest / "run.parquet", [run], RUN)
    return manifest


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def build_catalog(out: Path) -> Path:
    """(Re)create <out>/catalog.duckdb: views over every built phase's manifest, rejects and the pool."""
    path = out / "catalog.duckdb"
    tmp = atomic_path(path)
    out = out.resolve()
    with duckdb.connect(str(tmp)) as con:
        for table in TABLES:
            tables = _glob(out, "phase*", "manifest", f"{table}.parquet")
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{tables}', union_by_name = true)")
        rejects = [_glob(out, "rejects", "*", "*", "*.parquet"),
                   _glob(out, "phase*", "rejects", "*", "*", "*.parquet")]
        con.execute(f"CREATE VIEW rejects AS SELECT * FROM read_parquet({rejects}, union_by_name = true)")
        con.execute("""CREATE VIEW quarantine AS SELECT source, regexp_replace(origin, ':[^:]*$', '') AS file,
                       regexp_extract(origin, '[^:]*$') AS row, reason, detail
                       FROM rejects WHERE stage = 'read' ORDER BY source, file, row""")
        con.execute(f"CREATE VIEW pool AS SELECT * FROM read_parquet('{_glob(out, 'pool', '*', '*', '*.parquet')}')")
        if list(out.glob("dedup/*/clusters.parquet")):
            clusters = _glob(out, "dedup", "*", "clusters.parquet")
            con.execute(f"CREATE VIEW dedup_clusters AS SELECT * FROM read_parquet('{clusters}')")
        for name, sql in NAMED_QUERIES.items():
            con.execute(f"CREATE VIEW {name} AS {sql}")
    os.replace(tmp, path)
    return path


def connect(out: Path) -> duckdb.DuckDBPyConnection:
    path = out / "catalog.duckdb"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run `mmcorpus build` first")
    return duckdb.connect(str(path), read_only=True)


def check(out: Path, phase_id: str) -> list[str]:
    """Every problem found in a built phase: shard files against the manifest, and the stage counts."""
    manifest = out / phase_id / "manifest"
    if not (manifest / "shards.parquet").exists():
        return [f"{manifest} has no shards.parquet: phase not built"]
    problems = []
    listed = pq.read_table(manifest / "shards.parquet").to_pylist()
    on_disk = {p.name for p in (out / phase_id / "shards").glob("*.parquet")}
    for extra in sorted(on_disk - {Path(s["path"]).name for s in listed}):
        problems.append(f"{phase_id}/shards/{extra}: on disk but not in the manifest")
    for shard in listed:
        path = out / shard["path"]
        if not path.exists():
            problems.append(f"{shard['path']}: missing")
            continue
        if sha256_file(path) != shard["sha256"]:
            problems.append(f"{shard['path']}: sha256 differs from the manifest")
        try:
            table = pq.read_table(path, columns=["input_ids"])
        except (OSError, ValueError) as error:
            problems.append(f"{shard['path']}: unreadable: {error}")
            continue
        tokens = pc.sum(pc.list_value_length(table.column("input_ids"))).as_py() or 0
        if (table.num_rows, tokens) != (shard["rows"], shard["tokens"]):
            problems.append(f"{shard['path']}: {table.num_rows} rows / {tokens} tokens, manifest says "
                            f"{shard['rows']} / {shard['tokens']}")
    with duckdb.connect() as con:
        stages = con.execute(
            "SELECT stage, source, sum(read), sum(kept), sum(rejected) FROM read_parquet(?) GROUP BY 1, 2",
            [str(manifest / "stages.parquet")],
        ).fetchall()
        counts = {(stage, source): (read, kept, rejected) for stage, source, read, kept, rejected in stages}
        for (stage, source), (read, kept, rejected) in sorted(counts.items()):
            if read != kept + rejected:
                problems.append(f"stage {stage}, source {source}: read {read} != kept {kept} + rejected {rejected}")
        pool_docs = dict(con.execute(
            "SELECT source, count(*) FROM read_parquet(?) GROUP BY 1",
            [_glob(out, "pool", "*", "*", "*.parquet")]).fetchall())
        mixture_tokens = con.execute("SELECT sum(tokens) FROM read_parquet(?)",
                                     [str(manifest / "mixture.parquet")]).fetchone()[0] or 0
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
