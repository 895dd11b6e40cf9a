"""Explicit Arrow schemas for every Parquet file the pipeline writes (docs/architecture.md section 5)."""

import pyarrow as pa

# Where a document came from upstream, carried from the reader to the pool and the lineage: the crawl
# snapshot, the upstream's own record of the file (FineWeb2: the WARC path), and the size of the near-duplicate
# cluster upstream dedup found (FineWeb2's minhash_cluster_size, for re-hydration). Null where a source lacks it.
UPSTREAM = [("dump", pa.string()), ("file_path", pa.string()), ("cluster_size", pa.int64())]

# Curated documents between curation and tokenization: text plus the Document metadata we carry on.
CURATED = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.large_string()),
        ("source", pa.string()),
        ("lang", pa.string()),
        ("lang_score", pa.float32()),
        ("url", pa.string()),
        ("quality", pa.float32()),
        ("origin", pa.string()),
        *UPSTREAM,
        ("extra", pa.string()),  # the source's own fields, JSON
    ]
)

POOL = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("lang", pa.string()),
        ("quality", pa.float32()),
        ("n_tokens", pa.int64()),
        ("input_ids", pa.list_(pa.uint32())),
        ("origin", pa.string()),
        *UPSTREAM,
    ]
)

SHARD = pa.schema(
    [
        ("input_ids", pa.list_(pa.uint32())),
        ("doc_id", pa.string()),
        ("chunk", pa.int32()),
        ("source", pa.string()),
        ("lang", pa.string()),
        ("epoch", pa.int32()),
    ]
)

REJECTS = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("lang", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("origin", pa.string()),
        ("detail", pa.string()),
        ("text", pa.string()),  # with --keep-rejected-text
    ]
)

# Per task and stage: one total row per (source, lang) with reason null, plus one row per reject reason.
STATS = pa.schema(
    [
        ("stage", pa.string()),
        ("source", pa.string()),
        ("lang", pa.string()),
        ("reason", pa.string()),
        ("read", pa.int64()),
        ("kept", pa.int64()),
        ("rejected", pa.int64()),
        ("tokens", pa.int64()),
        ("seconds", pa.float64()),
        ("task", pa.string()),
    ]
)

MIXTURE = pa.schema(
    [
        ("phase", pa.string()),
        ("source", pa.string()),
        ("lang", pa.string()),
        ("available_tokens", pa.int64()),
        ("p", pa.float64()),
        ("target_tokens", pa.int64()),
        ("tokens", pa.int64()),  # written, bos/eos included
        ("epochs", pa.float64()),  # target / available
        ("capped", pa.bool_()),
    ]
)

SHARDS = pa.schema(
    [
        ("phase", pa.string()),
        ("path", pa.string()),
        ("rows", pa.int64()),
        ("tokens", pa.int64()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
    ]
)

RUN = pa.schema(
    [
        ("phase", pa.string()),
        ("seed", pa.int64()),
        ("config", pa.string()),  # resolved phase + sources config, JSON
        ("versions", pa.string()),  # JSON
        ("tokenizer", pa.string()),
        ("tokenizer_sha256", pa.string()),
        ("started", pa.string()),
        ("seconds", pa.float64()),
        ("git_commit", pa.string()),
    ]
)

# A phase's run history: one row per build, even one that reused everything; `run` is the row of the build
# that wrote the current shards.
RUNS = pa.schema(
    [
        *RUN,
        ("ran", pa.string()),  # stage -> tasks run, JSON
        ("reused", pa.string()),  # stage -> tasks found done by an earlier build, JSON
        ("costs", pa.string()),  # stage -> what its tasks that ran cost (pipeline/progress.py), JSON
        ("store", pa.string()),  # stage -> its requests to the store by kind, objects and bytes (manifests/store.py),
        # and "driver" (the driver's own outside the stages), JSON
        ("shards", pa.list_(pa.string())),  # the sha256 of each shard it wrote or found, in shard order
    ]
)

# Every file a build's tasks wrote, with its checksum (xxhash64 for intermediates, sha256 for shards).
FILES = pa.schema([("phase", pa.string()), ("path", pa.string()), ("stage", pa.string()), ("task", pa.string()),
                   ("algorithm", pa.string()), ("checksum", pa.string())])

# `mmcorpus eval-mlm`: a checkpoint's MLM loss per language on a sample of the phase's chunks.
MLM_EVAL = pa.schema([("phase", pa.string()), ("lang", pa.string()), ("chunks", pa.int64()), ("tokens", pa.int64()),
                      ("masked_tokens", pa.int64()), ("loss", pa.float64()), ("perplexity", pa.float64()),
                      ("mask_rate", pa.float64()), ("checkpoint", pa.string()), ("seed", pa.int64())])

# Chunks placed by mixing, before the shard tasks gather them: SHARD columns plus the placement hash.
PLACED = pa.schema([("shard", pa.int64()), ("place", pa.uint64()), *SHARD])

REJECT_REASONS = pa.schema(
    [
        ("phase", pa.string()),
        ("stage", pa.string()),
        ("source", pa.string()),
        ("lang", pa.string()),
        ("reason", pa.string()),
        ("docs", pa.int64()),
    ]
)

STAGES = pa.schema(
    [
        ("phase", pa.string()),
        ("stage", pa.string()),
        ("source", pa.string()),
        ("lang", pa.string()),
        ("read", pa.int64()),
        ("kept", pa.int64()),
        ("rejected", pa.int64()),
        ("tokens", pa.int64()),
        ("seconds", pa.float64()),
    ]
)

NOTES = pa.schema(
    [
        ("phase", pa.string()),
        ("stage", pa.string()),
        ("source", pa.string()),
        ("lang", pa.string()),
        ("note", pa.string()),
        ("docs", pa.int64()),
        ("tokens", pa.int64()),  # the tokens a note concerns (mixing's skipped and moved tail tokens), else 0
    ]
)

LINEAGE = pa.schema([("phase", pa.string()), ("doc_id", pa.string()), ("origin", pa.string()),
                     ("dump", pa.string()), ("file_path", pa.string()), ("shard", pa.string())])

# Dedup passes (stages/dedup.py): per-document signatures, candidate pairs, and the documents removed.
SIGNATURES = pa.schema(
    [
        ("source", pa.string()),
        ("part", pa.string()),
        ("row", pa.int64()),
        ("id", pa.string()),
        ("lang", pa.string()),
        ("quality", pa.float32()),
        ("exact", pa.binary(16)),
        ("url", pa.binary(16)),
        ("signature", pa.list_(pa.uint32())),
        ("bands", pa.list_(pa.uint64())),
    ]
)

PAIRS = pa.schema([("a", pa.int64()), ("b", pa.int64())])  # document numbers: file number << 32 | row

DEDUP_CLUSTERS = pa.schema(
    [
        ("kind", pa.string()),
        ("source", pa.string()),
        ("part", pa.string()),
        ("row", pa.int64()),
        ("id", pa.string()),
        ("lang", pa.string()),
        ("kept", pa.bool_()),
        ("kept_id", pa.string()),
        ("cluster_size", pa.int64()),
        ("pass", pa.int32()),  # the pass that judged it: 1 for shared ids, then the configured kinds in order
    ]
)
