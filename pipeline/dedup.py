"""The dedup passes as Ray tasks (the orchestration half; stages/dedup.py holds the algorithms): signatures per
curated file, candidate pairs per band, one cluster pass.

Outputs under dedup/<config>/: signatures/<source>/<part>.parquet, pairs/<kind>-NN.parquet, clusters.parquet
(every document in a duplicate cluster, with the id of the one kept) and removed/<source>/<part>.parquet (the
rows of one curated file that the clusters remove), which the pool task of that file reads.

A document is known by (file number, row): file numbers are given when pairs are made, from the sorted parts,
so a curated file's signatures do not depend on which other files the build holds.
"""

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from manifests.layout import Layout
from manifests.schemas import DEDUP_CLUSTERS, PAIRS, SIGNATURES
from manifests.writer import ParquetSink, write_parquet
from pipeline.runner import Runner, Task
from stages.dedup import (
    ID_PASS,
    DedupConfig,
    MinhashClusters,
    MinhashConfig,
    MinhashSignatures,
    bucket_pairs,
    exact_key,
    url_key,
)

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
    file, the rows they remove."""
    with layout.duckdb(threads=2) as con:
        con.register("files", _files_table(parts))
        edges = {
            kind: con.execute("SELECT DISTINCT a, b FROM read_parquet(?) ORDER BY a, b",
                              [[layout.url_of(name) for name in names]]).fetchall()
            for kind, names in pairs.items()
        }
        keys = sorted({k for kind_pairs in edges.values() for pair in kind_pairs for k in pair})
        con.register("wanted", pa.table({"key": pa.array(keys, pa.int64())}))
        rows = con.execute(
            f"""SELECT {KEY_SQL} AS key, s.id, s.quality, s.source, s.part, s.row, s.lang, s.signature
                FROM read_parquet(?) s JOIN files f USING (source, part)
                WHERE {KEY_SQL} IN (SELECT key FROM wanted)""",
            [[layout.url_of(name) for name in signatures]]).fetchall()
    docs = {key: (doc_id, quality if quality is not None else 0.0) for key, doc_id, quality, *_ in rows}
    where = {key: (source, part, row, lang) for key, _, _, source, part, row, lang, _ in rows}
    sigs = {key: np.asarray(signature, np.uint32) for key, *_, signature in rows}
    upstream_ids = {key: doc_id for key, (doc_id, _) in docs.items()}
    clusters = MinhashClusters(docs)
    clusters.rename_shared_ids(edges.get(ID_PASS, []))
    verified = {}
    for kind, candidates in edges.items():
        if kind == ID_PASS:
            verified[kind] = len(candidates)
            continue
        if kind == "minhash" and config.min_similarity > 0:
            candidates = [(a, b) for a, b in candidates if np.mean(sigs[a] == sigs[b]) >= config.min_similarity]
        verified[kind] = len(candidates)
        clusters.add_pass(kind, candidates)
    records = [  # a renamed document is kept under its new id (kept_id); a removed one names the kept one
        dict(kind=kind, source=where[key][0], part=where[key][1], row=where[key][2],
             id=upstream_ids[key] if kind == ID_PASS else docs[key][0], lang=where[key][3],
             kept=key == kept or kind == ID_PASS, kept_id=docs[key if kind == ID_PASS else kept][0],
             cluster_size=len(members))
        for kind, kept, members in clusters.clusters for key in sorted(members)
    ]
    write_parquet(layout, Layout.clusters(config), records, DEDUP_CLUSTERS)
    by_part: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        if not record["kept"] or record["kind"] == ID_PASS and record["id"] != record["kept_id"]:
            by_part.setdefault((record["source"], record["part"]), []).append(record)
    for (source, part), removed in sorted(by_part.items()):
        write_parquet(layout, removals_name(config, source, part), sorted(removed, key=lambda r: r["row"]),
                      DEDUP_CLUSTERS)
    summary = {f"{kind}_pairs": len(edges[kind]) for kind in edges}
    summary |= {f"{kind}_verified_pairs": verified[kind] for kind in edges}
    summary |= {f"{kind}_removed": sum(1 for k, *_ in clusters.removed.values() if k == kind) for kind in edges}
    summary[f"{ID_PASS}_renamed"] = summary.pop(f"{ID_PASS}_removed", 0) + len(clusters.renamed)
    return summary


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
