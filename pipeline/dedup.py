"""The dedup passes as Ray tasks: signatures per curated file, candidate pairs per band, one cluster pass.

Outputs under <out>/dedup/<config>/: signatures/<source>/<part>.parquet, pairs/<kind>.parquet, and
clusters.parquet (every document in a duplicate cluster, with the id of the one kept). The pool stage then
drops, per curated file, the rows the clusters removed.
"""

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from manifests.schemas import DEDUP_CLUSTERS, PAIRS, SIGNATURES
from manifests.writer import ParquetSink, write_parquet
from pipeline.runner import Runner, Task
from stages.dedup import MinhashClusters, MinhashConfig, MinhashSignatures, bucket_pairs, exact_key, url_key


def dedup_dir(out: Path, config: MinhashConfig) -> Path:
    return out / "dedup" / str(config)


def signature_file(curated: str, target: str, file_no: int, source: str, part: str, config: MinhashConfig) -> dict:
    signatures = MinhashSignatures(config)
    table = pq.ParquetFile(curated)
    with ParquetSink(Path(target), SIGNATURES) as sink:
        row = 0
        for batch in table.iter_batches(batch_size=512, columns=["id", "text", "lang", "quality", "url"]):
            for doc in batch.to_pylist():
                signature = signatures.signature(doc["text"], doc["lang"])
                sink.write(dict(key=(file_no << 32) | row, source=source, part=part, row=row, id=doc["id"],
                                lang=doc["lang"], quality=doc["quality"], exact=exact_key(doc["text"]),
                                url=url_key(doc["url"]), signature=signature.tolist(),
                                bands=signatures.bands(signature).tolist()))
                row += 1
    return {"docs": row}


def bucket_file(signatures: str, target: str, kind: str, band: int | None) -> dict:
    """Candidate pairs of one kind (one band for MinHash): documents of one language sharing a hash."""
    column = {"exact": "exact", "url": "url"}.get(kind, f"bands[{(band or 0) + 1}]")
    pairs = 0
    with duckdb.connect() as con, ParquetSink(Path(target), PAIRS) as sink:
        con.execute("SET threads = 1")
        result = con.execute(
            f"""SELECT list(key) FROM read_parquet(?) WHERE {column} IS NOT NULL
                GROUP BY lang, {column} HAVING count(*) > 1""", [signatures])
        while chunk := result.fetchmany(4096):
            for (members,) in chunk:
                for a, b in bucket_pairs(members):
                    sink.write({"a": a, "b": b})
                    pairs += 1
    return {"pairs": pairs}


def cluster_pass(signatures: str, pairs_dir: str, target: str, kinds: list[str], min_similarity: float) -> dict:
    with duckdb.connect() as con:
        con.execute("SET threads = 2")
        pairs = {
            kind: con.execute(f"SELECT DISTINCT a, b FROM read_parquet('{pairs_dir}/{kind}-*.parquet') ORDER BY a, b"
                              ).fetchall()
            for kind in kinds
        }
        keys = sorted({k for kind_pairs in pairs.values() for pair in kind_pairs for k in pair})
        con.register("wanted", pa.table({"key": keys}))
        rows = con.execute(
            """SELECT key, id, quality, source, part, row, lang, signature FROM read_parquet(?)
               WHERE key IN (SELECT key FROM wanted)""", [signatures]).fetchall()
    docs = {key: (doc_id, quality if quality is not None else 0.0) for key, doc_id, quality, *_ in rows}
    where = {key: (source, part, row, lang) for key, _, _, source, part, row, lang, _ in rows}
    sigs = {key: np.asarray(signature, np.uint32) for key, *_, signature in rows}
    clusters = MinhashClusters(docs)
    verified = {}
    for kind in kinds:
        candidates = pairs[kind]
        if kind == "minhash" and min_similarity > 0:
            candidates = [(a, b) for a, b in candidates if np.mean(sigs[a] == sigs[b]) >= min_similarity]
        verified[kind] = len(candidates)
        clusters.add_pass(kind, candidates)
    records = [
        dict(kind=kind, source=where[key][0], part=where[key][1], row=where[key][2], id=docs[key][0],
             lang=where[key][3], kept=key == kept, kept_id=docs[kept][0], cluster_size=len(members))
        for kind, kept, members in clusters.clusters for key in sorted(members)
    ]
    write_parquet(Path(target), records, DEDUP_CLUSTERS)
    summary = {f"{kind}_pairs": len(pairs[kind]) for kind in kinds}
    summary |= {f"{kind}_verified_pairs": verified[kind] for kind in kinds}
    summary |= {f"{kind}_removed": sum(1 for k, *_ in clusters.removed.values() if k == kind) for kind in kinds}
    return summary


def run_dedup(runner: Runner, out: Path, parts: list[tuple[str, str]], config: MinhashConfig,
              kinds: list[str]) -> dict:
    """All passes for the curated files `parts` ((source, part) pairs); returns the cluster pass summary."""
    base = dedup_dir(out, config)
    ordered = sorted(parts)
    runner.run("dedup-signatures", [
        Task(f"{source}__{part}", signature_file,
             dict(curated=str(out / "curated" / source / f"{part}.parquet"),
                  target=str(base / "signatures" / source / f"{part}.parquet"), file_no=file_no, source=source,
                  part=part, config=config),
             size=(out / "curated" / source / f"{part}.parquet").stat().st_size)
        for file_no, (source, part) in enumerate(ordered)
    ])
    signatures = str(base / "signatures" / "*" / "*.parquet")
    buckets = [(kind, None) for kind in kinds if kind != "minhash"]
    if "minhash" in kinds:
        buckets += [("minhash", band) for band in range(config.bands)]
    runner.run("dedup-buckets", [
        Task(f"{kind}-{band or 0:02d}", bucket_file,
             dict(signatures=signatures, target=str(base / "pairs" / f"{kind}-{band or 0:02d}.parquet"), kind=kind,
                  band=band))
        for kind, band in buckets
    ])
    summary = runner.run("dedup-clusters", [
        Task("clusters", cluster_pass, dict(signatures=signatures, pairs_dir=str(base / "pairs"),
                                            target=str(base / "clusters.parquet"), kinds=kinds,
                                            min_similarity=config.min_similarity))
    ])
    return summary["clusters"]


def removed_rows(out: Path, config: MinhashConfig, source: str, part: str) -> dict[int, tuple[str, str]]:
    """row -> (kind, kept id) for one curated file."""
    path = dedup_dir(out, config) / "clusters.parquet"
    table = pq.read_table(path, filters=[("source", "=", source), ("part", "=", part)])
    return {row["row"]: (row["kind"], row["kept_id"]) for row in table.to_pylist() if not row["kept"]}
