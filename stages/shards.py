"""Shards: gather the chunks that mixing placed in one shard, shuffle them by hash, write Parquet (zstd);
export a phase's shards as MosaicML MDS."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zstandard

from manifests.layout import Layout, checksum_bytes
from manifests.schemas import SHARD
from manifests.writer import write_parquet
from stages.mds import MDSError, ShardInfo, decompress, encode_shard, index_entry, iter_samples, read_index


def write_shard(layout: Layout, placed: list[str], target: str) -> dict:
    """Write a shard from the chunks placed in it (its own partition files, nothing else); the order is the
    chunks' placement hash, so it is fixed."""
    table = SHARD.empty_table()
    if placed:
        tables = []
        for name in placed:
            with layout.open(name) as f:
                tables.append(pq.read_table(f, columns=["place", *SHARD.names]))
        table = pa.concat_tables(tables)
        order = pc.sort_indices(table, sort_keys=[("place", "ascending"), ("doc_id", "ascending"),
                                                  ("epoch", "ascending"), ("chunk", "ascending")])
        table = table.take(order).select(SHARD.names).combine_chunks()
    checksum = write_parquet(layout, target, table, SHARD, algorithm="sha256")
    tokens = pc.sum(pc.list_value_length(table.column("input_ids"))).as_py() or 0
    return dict(path=target, rows=table.num_rows, tokens=tokens, bytes=layout.size(target),
                sha256=checksum.split(":", 1)[1])


# `id` is `<doc_id>#<chunk>@<epoch>`: the document, which of its chunks, which repetition of it
MDS_COLUMNS = {"id": "str", "input_ids": "ndarray:uint32", "len": "int", "lang": "str", "source": "str",
               "epoch": "int"}
MDS_SIZE_LIMIT = 1 << 26  # streaming's default: 64 MiB of raw samples per shard


def export_mds(source: Layout, shards: list[str], dest: Layout, size_limit: int = MDS_SIZE_LIMIT) -> dict:
    """Write Parquet shards as MosaicML MDS (zstd shards + index.json, the layout `streaming` reads): one Ray task
    per Parquet shard (in this process when Ray is not running), each writing its own MDS files
    (`shard.<parquet shard>.<part>.mds.zstd`) and reading them back; the index comes last, once every file is
    written and checked. Returns sample, token and file counts."""
    import ray

    if ray.is_initialized():
        remote = ray.remote(num_cpus=1, max_retries=1)(export_shard)
        results = ray.get([remote.remote(source, shard, number, dest, size_limit)
                           for number, shard in enumerate(shards)])
    else:
        results = [export_shard(source, shard, number, dest, size_limit) for number, shard in enumerate(shards)]
    entries = [entry for result in results for entry in result["entries"]]
    dest.write_text("index.json", json.dumps({"shards": entries, "version": 2}, sort_keys=True))
    return {"shards": len(entries), "samples": sum(r["samples"] for r in results),
            "tokens": sum(r["tokens"] for r in results)}


def export_shard(source: Layout, shard: str, number: int, dest: Layout, size_limit: int) -> dict:
    """One Parquet shard as MDS files of at most `size_limit` raw bytes, read back and checked; returns their
    index entries and counts."""
    entries: list[dict] = []
    pending: list[dict] = []
    pending_bytes = samples = tokens = 0

    def flush() -> None:
        nonlocal pending, pending_bytes
        if not pending:
            return
        raw, config = encode_shard(pending, MDS_COLUMNS)
        packed = zstandard.ZstdCompressor(level=3).compress(raw)
        basename = f"shard.{number:05d}.{len(entries):03d}.mds"
        checksum = dest.write_bytes(f"{basename}.zstd", packed, algorithm="sha256")
        entry = index_entry(raw, config | {"size_limit": size_limit}, len(pending), basename, packed)
        entry["raw_data"]["hashes"]["sha256"] = checksum_bytes(raw, "sha256").split(":", 1)[1]
        entry["zip_data"]["hashes"]["sha256"] = checksum.split(":", 1)[1]  # streaming's validate_hash reads these
        entries.append(entry)
        pending, pending_bytes = [], 0

    with source.open(shard) as f:
        parquet = pq.ParquetFile(f)
        columns = ["input_ids", "doc_id", "chunk", "epoch", "lang", "source"]
        for batch in parquet.iter_batches(batch_size=1024, columns=columns):
            ids = batch.column(0)
            offsets, values = ids.offsets.to_numpy(), ids.values.to_numpy()
            for i, (doc_id, chunk, epoch, lang, origin) in enumerate(
                    zip(*(batch.column(c).to_pylist() for c in range(1, len(columns))), strict=True)):
                chunk_ids = values[offsets[i]:offsets[i + 1]].astype(np.uint32)
                row = {"id": f"{doc_id}#{chunk}@{epoch}", "input_ids": chunk_ids, "len": len(chunk_ids),
                       "lang": lang, "source": origin, "epoch": epoch}
                size = 4 * len(chunk_ids) + len(row["id"]) + len(lang) + len(origin) + 96
                if pending and pending_bytes + size > size_limit:
                    flush()
                pending.append(row)
                pending_bytes += size
                samples += 1
                tokens += len(chunk_ids)
    flush()
    read_back = _read_entries(dest, [ShardInfo.from_index_entry(entry) for entry in entries], entries)
    if read_back != (samples, tokens):
        raise MDSError(f"{dest.url}: {shard} wrote {samples} samples / {tokens} tokens, read back {read_back}")
    return {"entries": entries, "samples": samples, "tokens": tokens}


def read_mds(folder: Layout) -> tuple[int, int]:
    """(samples, tokens) of an MDS folder, decoding every sample; files whose index entry has a sha256 are checked
    against it."""
    text = folder.read_text("index.json")
    return _read_entries(folder, read_index(text), json.loads(text)["shards"])


def _read_entries(folder: Layout, infos: list[ShardInfo], entries: list[dict]) -> tuple[int, int]:
    samples = tokens = 0
    for info, entry in zip(infos, entries, strict=True):
        data = folder.read_bytes(info.basename)
        stored = entry.get("zip_data") if info.compression else entry.get("raw_data")
        expected = (stored or {}).get("hashes") or {}
        if "sha256" in expected and checksum_bytes(data, "sha256") != f"sha256:{expected['sha256']}":
            raise MDSError(f"{folder.url_of(info.basename)}: sha256 differs from index.json")
        for row in iter_samples(decompress(data, info.compression), info):
            samples += 1
            tokens += len(row["input_ids"])
    return samples, tokens
