"""The dedup passes as Ray tasks (the orchestration half; stages/dedup.py holds the algorithms): signatures per
curated file, candidate pairs per band, one cluster pass.

Outputs under dedup/<config>/: signatures/<source>/<part>.parquet, pairs/<kind>-NN.parquet, clusters.parquet
(every document in a duplicate cluster, with the id of the one kept) and removed/<source>/<part>.parquet (the
rows of one curated file that the clusters remove), which the pool task of that file reads.

A document is known by (file number, row): file numbers are given when pairs are made, from the sorted parts,
so a curated file's signatures do not depend on which other files the build holds.
"""

import logging
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from manifests.layout import Layout
from manifests.schemas import DEDUP_CLUSTERS, PAIRS, SIGNATURES
from manifests.writer import ParquetSink
from pipeline.runner import Runner, Task
from stages.dedup import (
    ID_PASS,
    ClusterPasses,
    DedupConfig,
    MinhashConfig,
    MinhashSignatures,
    bucket_pairs,
    exact_key,
    url_key,
)

if TYPE_CHECKING:
    import duckdb

log = logging.getLogger(__name__)


def signature_file(layout: Layout, source: str, part: str, config: MinhashConfig) -> dict:
    signatures = MinhashSignatures(config)
    with layout.open(Layout.curated(source, part)) as f, \
            ParquetSink(layout, Layout.signatures(config, source, part), SIGNATURES) as sink:
        row = 0
        for batch in pq.ParquetFile(f).iter_batches(batch_size=512, columns=["id", "text", "lang", "quality", "url"]):
            for doc in batch.to_pylist():
                signature = signatures.signature(doc["text"], doc["lang"])
                sink.write(dict(source=source, part=part, row=row, id=doc["id"], lang=doc["lang"],
                                quality=doc["quality"], exact=exact_key(doc["text"]), url=url_key(doc["url"]),
                                signature=signature.tolist(), bands=signatures.bands(signature).tolist()))
                row += 1
    return {"docs": row}


def _files_table(parts: list[tuple[str, str]]) -> pa.Table:
    return pa.table({"source": [s for s, _ in parts], "part": [p for _, p in parts],
                     "file_no": pa.array(range(len(parts)), pa.int64())})


KEY_SQL = "(f.file_no << 32) | s.row"  # a document's number: file number and row


def bucket_file(layout: Layout, signatures: list[str], parts: list[tuple[str, str]], target: str, kind: str,
                band: int | None) -> dict:
    """Candidate pairs of one kind (one band for MinHash): documents sharing a hash, within one language (ids:
    across languages, as an id must be unique in the corpus)."""
    column = {"exact_id": "id", "exact": "exact", "url": "url"}.get(kind, f"bands[{(band or 0) + 1}]")
    group = column if kind == "exact_id" else f"lang, {column}"
    pairs = 0
    with layout.duckdb(threads=1) as con, ParquetSink(layout, target, PAIRS) as sink:
        con.register("files", _files_table(parts))
        result = con.execute(
            f"""SELECT list({KEY_SQL}) FROM read_parquet(?) s JOIN files f USING (source, part)
                WHERE {column} IS NOT NULL GROUP BY {group} HAVING count(*) > 1""",
            [[layout.url_of(name) for name in signatures]])
        while chunk := result.fetchmany(4096):
            for (members,) in chunk:
                for a, b in bucket_pairs(members):
                    sink.write({"a": a, "b": b})
                    pairs += 1
    return {"pairs": pairs}


def cluster_pass(layout: Layout, signatures: list[str], pairs: dict[str, list[str]],
                 parts: list[tuple[str, str]], config: MinhashConfig) -> dict:
    """Verify MinHash candidates, cluster pass by pass, choose keepers; write the clusters and, per curated
    file, the rows they remove. Everything lives in DuckDB tables held to the task's memory (spilled beyond it)
    and leaves as streamed batches: no list of the corpus's pairs or documents in Python."""
    with layout.duckdb(threads=2) as con:
        con.register("files", _files_table(parts))
        tables = {}
        for number, (kind, names) in enumerate(pairs.items()):
            tables[kind] = f"pairs_{number}"
            con.execute(f"CREATE TEMP TABLE {tables[kind]} AS SELECT DISTINCT a, b FROM read_parquet(?)",
                        [[layout.url_of(name) for name in names]])
        keys = " UNION ".join(f"SELECT a AS key FROM {t} UNION SELECT b FROM {t}" for t in tables.values())
        con.execute(f"CREATE TEMP TABLE keys AS {keys or 'SELECT NULL::BIGINT AS key WHERE false'}")
        con.execute(f"""CREATE TEMP TABLE docs AS
                        SELECT {KEY_SQL} AS key, s.id, s.quality, s.source, s.part, s.row, s.lang, s.signature
                        FROM read_parquet(?) s JOIN files f USING (source, part)
                        SEMI JOIN keys k ON {KEY_SQL} = k.key""",
                    [[layout.url_of(name) for name in signatures]])
        passes = ClusterPasses(con, "docs")
        summary: dict[str, int] = {}
        for kind, table in tables.items():
            summary[f"{kind}_pairs"] = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
            if kind == "minhash" and config.min_similarity > 0:
                con.execute(f"""CREATE TEMP TABLE verified AS SELECT p.a, p.b FROM {table} p
                                JOIN docs x ON x.key = p.a JOIN docs y ON y.key = p.b
                                WHERE len(list_filter(list_zip(x.signature, y.signature), lambda v: v[1] = v[2]))
                                      / len(x.signature) >= ?""", [config.min_similarity])
                table = "verified"
            summary[f"{kind}_verified_pairs"] = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
            if kind == ID_PASS:
                summary[f"{ID_PASS}_renamed"] = passes.rename_shared_ids(table)
            else:
                summary[f"{kind}_removed"] = passes.add_pass(kind, table)
        _write_clusters(layout, con, config)
    return summary


def _write_clusters(layout: Layout, con: "duckdb.DuckDBPyConnection", config: MinhashConfig) -> None:
    """clusters.parquet, and per curated file the rows removed or renamed, streamed in batches (a renamed
    document is kept under its new id, kept_id; a removed one names the kept one)."""
    con.execute(f"""CREATE TEMP VIEW records AS
                    SELECT c.kind, d.source, d.part, d.row,
                           CASE WHEN c.kind = '{ID_PASS}' THEN n.upstream_id ELSE n.id END AS id, d.lang,
                           c.key = c.kept_key AS kept, k.id AS kept_id, c.size AS cluster_size, c.pass
                    FROM dedup_clusters c JOIN dedup_nodes n ON n.key = c.key JOIN dedup_nodes k ON k.key = c.kept_key
                    JOIN docs d ON d.key = c.key""")
    columns = ", ".join(DEDUP_CLUSTERS.names)
    with ParquetSink(layout, Layout.clusters(config), DEDUP_CLUSTERS) as sink:
        for batch in con.sql(f"SELECT {columns} FROM records ORDER BY pass, kept_id, source, part, row"
                             ).fetch_arrow_reader(8192):
            sink.write_table(pa.Table.from_batches([batch]))
    sink, current = None, None  # one file open at a time: the rows come sorted by file
    try:
        for batch in con.sql(f"""SELECT {columns} FROM records WHERE NOT kept OR id <> kept_id
                                 ORDER BY source, part, row, pass""").fetch_arrow_reader(8192):
            for key, rows in _runs(pa.Table.from_batches([batch])):
                if key != current:
                    if sink is not None:
                        sink.close()
                    sink, current = ParquetSink(layout, removals_name(config, *key), DEDUP_CLUSTERS), key
                sink.write_table(rows)
    finally:
        if sink is not None:
            sink.close()


def _runs(table: pa.Table) -> list[tuple[tuple[str, str], pa.Table]]:
    """A table sorted by (source, part) cut into its runs of one (source, part)."""
    sources, parts = table.column("source").to_pylist(), table.column("part").to_pylist()
    runs, start = [], 0
    for i in range(1, len(sources) + 1):
        if i == len(sources) or (sources[i], parts[i]) != (sources[start], parts[start]):
            runs.append(((sources[start], parts[start]), table.slice(start, i - start)))
            start = i
    return runs


def removals_name(config: MinhashConfig, source: str, part: str) -> str:
    return f"{Layout.dedup(config)}/removed/{source}/{part}.parquet"


def read_removals(layout: Layout, name: str) -> tuple[dict[int, tuple[str, str]], dict[int, str]]:
    """For one curated file: row -> (kind, kept id) of the documents removed, row -> new id of those renamed."""
    with layout.open(name) as f:
        rows = pq.read_table(f, columns=["row", "kind", "kept", "kept_id"]).to_pylist()
    removed = {row["row"]: (row["kind"], row["kept_id"]) for row in rows if not row["kept"]}
    renamed = {row["row"]: row["kept_id"] for row in rows if row["kept"]}
    return removed, renamed


def run_dedup(runner: Runner, layout: Layout, parts: list[tuple[str, str]],
              dedup: DedupConfig) -> tuple[dict, dict[tuple[str, str], str]]:
    """Every pass for the curated files `parts` ((source, part), sorted). Returns the cluster pass summary and,
    per curated file with removals, the name of its removals file."""
    config = dedup.minhash
    runner.run("dedup-signatures", [
        Task(f"{source}__{part}", signature_file, dict(layout=layout, source=source, part=part, config=config),
             inputs=(Layout.curated(source, part),), size=1)
        for source, part in parts
    ])
    signatures = [Layout.signatures(config, source, part) for source, part in parts]
    buckets = [(kind, None) for kind in dedup.passes if kind != "minhash"]
    if "minhash" in dedup.passes:
        buckets += [("minhash", band) for band in range(config.bands)]
    pair_files: dict[str, list[str]] = {}
    tasks = []
    for kind, band in buckets:
        target = Layout.pairs(config, f"{kind}-{band or 0:02d}")
        pair_files.setdefault(kind, []).append(target)
        tasks.append(Task(f"{kind}-{band or 0:02d}", bucket_file,
                          dict(layout=layout, signatures=signatures, parts=parts, target=target, kind=kind, band=band),
                          inputs=tuple(signatures)))
    runner.run("dedup-buckets", tasks)
    summary = runner.run("dedup-clusters", [
        Task("clusters", cluster_pass,
             dict(layout=layout, signatures=signatures, pairs=pair_files, parts=parts, config=config),
             inputs=(*signatures, *(name for names in pair_files.values() for name in names)))
    ])["clusters"]
    written = runner.outputs("dedup-clusters")
    removals = {(source, part): removals_name(config, source, part) for source, part in parts
                if removals_name(config, source, part) in written}
    return summary, removals
