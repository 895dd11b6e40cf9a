"""`mmcorpus why ID`: a document's path through a build, from the catalog's views: where it was read, each
curation stage's verdict, its dedup clusters, and the chunks and shards of each phase it landed in."""

import duckdb

from manifests.catalog import CURATION_STAGES
from manifests.layout import Layout

REJECTED = "SELECT stage, reason, detail, origin, source, lang FROM rejects WHERE id = ?"
POOLED = "SELECT source, lang, quality, n_tokens, origin, dump, file_path FROM pool WHERE id = ?"
SIMILAR = """SELECT id FROM pool WHERE contains(id, ?) UNION SELECT id FROM rejects WHERE contains(id, ?)
             ORDER BY 1 LIMIT 5"""
CLUSTERS = """SELECT pass, kind, kept, id, kept_id, cluster_size FROM dedup_clusters
              WHERE id = ? OR kept_id = ? ORDER BY pass, id"""
PHASES = "SELECT phase FROM run ORDER BY phase"
PLACED = """SELECT regexp_extract(filename, '[^/]*$'), chunk, epoch, len(input_ids)
            FROM read_parquet(?, filename = true) WHERE doc_id = ? ORDER BY epoch, chunk"""
MIXING_REJECTS = "SELECT reason FROM read_parquet(?) WHERE id = ?"


class NoSuchDocument(LookupError):
    """Neither pooled nor rejected: the message names the output and ids that contain the one asked for."""


def trace(con: duckdb.DuckDBPyConnection, layout: Layout, doc_id: str) -> tuple[str, list[tuple[str, str]]]:
    """The document's title line, `id  (source, lang)`, and its (step, verdict) rows in pipeline order."""

    def rows(sql: str, *params: object) -> list[tuple]:
        return con.execute(sql, list(params)).fetchall()

    views = {name for (name,) in rows("SELECT view_name FROM duckdb_views()")}
    rejected = rows(REJECTED, doc_id) if "rejects" in views else []
    pooled = rows(POOLED, doc_id) if "pool" in views else []
    if not rejected and not pooled:
        like = rows(SIMILAR, doc_id, doc_id) if {"pool", "rejects"} <= views else []
        hint = f"; ids containing it: {', '.join(i for (i,) in like)}" if like else ""
        shown = doc_id if doc_id.isprintable() else repr(doc_id)  # a control character pasted with it, made visible
        raise NoSuchDocument(f"{shown}: no such document in {layout.url} (neither pooled nor rejected){hint}")
    clusters = rows(CLUSTERS, doc_id, doc_id) if "dedup_clusters" in views else []
    phases = [phase for (phase,) in rows(PHASES)]
    placed = {phase: rows(PLACED, layout.url_of(Layout.shards_glob(phase)), doc_id) for phase in phases}
    mixed = {phase: rows(MIXING_REJECTS, layout.url_of(glob), doc_id)
             for phase in phases for glob in [Layout.rejects("*", "*", "*", phase)] if layout.glob(glob)}

    source, lang, origin = (pooled[0][0], pooled[0][1], pooled[0][4]) if pooled else \
        (rejected[0][4], rejected[0][5], rejected[0][3])
    steps = []
    curation = {stage: (reason, detail) for stage, reason, detail, *_ in rejected if stage in CURATION_STAGES}
    where = origin + (f"  (dump {pooled[0][5]}, WARC {pooled[0][6]})" if pooled and pooled[0][5] else "")
    for stage in CURATION_STAGES:
        if stage in curation:
            reason, detail = curation[stage]
            steps.append((stage, f"rejected: {reason}" + (f" ({detail})" if detail else "")))
            break
        verdict = {"read": f"read from {where}", "quality": f"kept, quality {pooled[0][2]:.4f}" if pooled else "kept",
                   "tokenize": f"kept, {pooled[0][3]:,} tokens" if pooled else "kept"}.get(stage, "kept")
        steps.append((stage, verdict))
    steps += [("cluster", line) for line in cluster_lines(doc_id, clusters)]
    for phase in phases:
        chunks = placed[phase]
        if chunks:
            shards = sorted({shard for shard, *_ in chunks})
            epochs = sorted({epoch for _, _, epoch, _ in chunks})
            steps.append((phase, f"{len(chunks)} chunk(s), {sum(n for *_, n in chunks):,} tokens, epochs "
                                 f"{', '.join(map(str, epochs))}, in {', '.join(shards)}"))
        elif mixed.get(phase):
            steps.append((phase, f"not in the shards: {mixed[phase][0][0]}"))
        elif pooled:
            steps.append((phase, "not in the shards: outside the phase's languages or quality tier"))
    return f"{doc_id}  ({source}, {lang})", steps


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
