"""Shards: gather the chunks that mixing placed in one shard, shuffle them by hash, write Parquet (zstd);
export a phase's shards as MosaicML MDS, laid out as mmBERT's own data is."""

import copy
import csv
import io
import json
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zstandard

from manifests.layout import Layout, checksum_bytes
from manifests.schemas import SHARD
from manifests.writer import SHARD_OPTIONS, open_arrow, write_parquet
from stages.mds import MDSError, ShardInfo, decompress, encode_shard, index_entry, iter_samples, read_index
from stages.mix import ChunkRules


def write_shard(layout: Layout, placed: list[str], target: str) -> dict:
    """Write a shard from the chunks placed in it (its own partition files, nothing else); the order is the
    chunks' placement hash, so it is fixed."""
    table = SHARD.empty_table()
    if placed:
        tables = [open_arrow(layout, name).read_all().select(["place", *SHARD.names]) for name in placed]
        table = pa.concat_tables(tables)
        order = pc.sort_indices(table, sort_keys=[("place", "ascending"), ("doc_id", "ascending"),
                                                  ("epoch", "ascending"), ("chunk", "ascending")])
        table = table.take(order).select(SHARD.names).combine_chunks()
    checksum = write_parquet(layout, target, table, SHARD, algorithm="sha256", options=SHARD_OPTIONS)
    tokens = pc.sum(pc.list_value_length(table.column("input_ids"))).as_py() or 0
    return dict(path=target, rows=table.num_rows, tokens=tokens, bytes=layout.size(target),
                sha256=checksum.split(":", 1)[1])


# `id` is `<doc_id>#<chunk>@<epoch>`: the document, which of its chunks, which repetition of it. mmBERT's trainer
# keeps a sample's arrays (input_ids) and drops the rest.
MDS_COLUMNS = {"input_ids": "ndarray:uint32", "id": "str", "len": "int", "lang": "str", "source": "str",
               "epoch": "int"}
MDS_SIZE_LIMIT = 1 << 26  # streaming's default: 64 MiB of raw samples per shard
PERCENTILES = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 100)  # of chunk lengths, in each folder's stats.json
TAIL_NOTES = {"mix:tail_skipped": "total_tokens_skipped", "mix:tail_backfilled": "total_tokens_moved"}


def mds_folder(source: str, rules: ChunkRules) -> str:
    """A source's folder, named as mmBERT's data folders are: by the chunker settings that cut it."""
    return f"{source}-tokenized-chunked-{rules.seq_len}-{rules.min_chunk}-{rules.always_skip}-backfill-nodups"


def built_chunking(layout: Layout, phase_id: str) -> ChunkRules:
    """The chunking the phase's shards were cut by, from its run manifest (not today's recipe)."""
    with layout.open(Layout.manifest(phase_id, "run")) as f:
        phase = json.loads(pq.read_table(f, columns=["config"]).column(0)[0].as_py())["phase"]
    if "always_skip" not in phase:
        raise RuntimeError(f"{phase_id} was built before its chunks were cut as mmBERT's: build it again")
    return ChunkRules(phase["seq_len"], phase["min_chunk_tokens"], phase["always_skip"])


def tail_tokens(layout: Layout, phase_id: str) -> dict[str, dict[str, int]]:
    """source -> the tokens mixing dropped from and moved into short tails (its notes, once per document)."""
    with layout.open(Layout.manifest(phase_id, "notes")) as f:
        notes = pq.read_table(f, columns=["stage", "source", "note", "tokens"]).to_pylist()
    found: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(TAIL_NOTES.values(), 0))
    for row in notes:
        if row["stage"] == "mix" and row["note"] in TAIL_NOTES:
            found[row["source"]][TAIL_NOTES[row["note"]]] += row["tokens"]
    return found


def export_mds(source: Layout, phase_id: str, shards: list[str], dest: Layout, compression: str | None = None,
               size_limit: int = MDS_SIZE_LIMIT) -> dict:
    """Write a phase's Parquet shards as MDS the way mmBERT's trainer reads its data: one folder per source
    (`mds_folder`) with its index.json, stats.json and token_decile.json, raw shards (`compression` zstd writes
    each compressed too), and a root index.json merging the folders' (basenames prefixed with their folder, as
    streaming's merge_index does), num_tokens.json and dataset_stats.csv. One Ray task per Parquet shard (in this
    process when Ray is not running), each writing its MDS files and reading them back; the indexes come last,
    once every file is written and checked. Files of an earlier export left in the folders are removed, so a
    rerun gives the same tree, byte for byte. Returns sample, token and file counts."""
    import ray

    rules = built_chunking(source, phase_id)
    args = [(source, shard, number, dest, rules, compression, size_limit) for number, shard in enumerate(shards)]
    if ray.is_initialized():
        remote = ray.remote(num_cpus=1, max_retries=1)(export_shard)
        results = ray.get([remote.remote(*task) for task in args])
    else:
        results = [export_shard(*task) for task in args]
    tails = tail_tokens(source, phase_id)
    folders = sorted({folder for result in results for folder in result})
    merged, rows = [], []
    for folder in folders:
        parts = [result[folder] for result in results if folder in result]
        entries = [entry for part in parts for entry in part["entries"]]
        lengths = np.concatenate([part["lengths"] for part in parts]).astype(np.int64)
        dest.write_text(f"{folder}/index.json", json.dumps({"shards": entries, "version": 2}, sort_keys=True))
        origin = parts[0]["source"]
        percentiles = np.percentile(lengths, PERCENTILES)
        stats = {"total_duplicated_tokens": 0, "total_tokens_written": int(lengths.sum()),  # mmBERT's keys, in order
                 "total_tokens_skipped": tails[origin]["total_tokens_skipped"],
                 "percentiles": {f"{p}th": int(v) for p, v in zip(PERCENTILES, percentiles, strict=True)},
                 "total_tokens_moved": tails[origin]["total_tokens_moved"]}
        dest.write_text(f"{folder}/stats.json", json.dumps(stats))
        # sample numbers by the thousands of tokens they hold: mmBERT's keys 0k to 8k, more for longer sequences
        deciles = {f"{k}k": np.flatnonzero(lengths // 1000 == k).tolist()
                   for k in range(max(8, rules.seq_len // 1000) + 1)}
        dest.write_text(f"{folder}/token_decile.json", json.dumps(deciles))
        merged += [in_folder(entry, folder) for entry in entries]
        written = {f"{folder}/{name}" for name in ("index.json", "stats.json", "token_decile.json")}
        written |= {entry[data]["basename"] for entry in merged[-len(entries):] for data in ("raw_data", "zip_data")
                    if entry[data]}
        for name in dest.files(folder):  # an earlier export's files
            if name not in written:
                dest.delete(name)
        rows.append(dict(folder=folder, source=origin, samples=len(lengths), tokens=int(lengths.sum()),
                         tokens_skipped=stats["total_tokens_skipped"], tokens_moved=stats["total_tokens_moved"],
                         tokens_duplicated=0, mds_files=len(entries)))
    dest.write_text("index.json", json.dumps({"shards": merged, "version": 2}, sort_keys=True))
    tokens = sum(row["tokens"] for row in rows)
    dest.write_text("num_tokens.json", json.dumps({"num_tokens": tokens, "num_truncated_tokens": 0,
                                                   "folders": {row["folder"]: row["tokens"] for row in rows}}))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]) if rows else ["folder"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    dest.write_text("dataset_stats.csv", table.getvalue())
    return {"folders": len(rows), "shards": len(merged), "samples": sum(row["samples"] for row in rows),
            "tokens": tokens}


def in_folder(entry: dict, folder: str) -> dict:
    """An index entry as the root index lists it: its files' basenames prefixed with their folder."""
    entry = copy.deepcopy(entry)
    for data in ("raw_data", "zip_data"):
        if entry[data]:
            entry[data]["basename"] = f"{folder}/{entry[data]['basename']}"
    return entry


def export_shard(source: Layout, shard: str, number: int, dest: Layout, rules: ChunkRules, compression: str | None,
                 size_limit: int) -> dict[str, dict]:
    """One Parquet shard as MDS files of at most `size_limit` raw bytes, one series per source in its folder
    (`<folder>/shard.<shard>.<part>.mds`), read back and checked. Returns per folder: the source, the index
    entries and every sample's length, in order."""
    folders: dict[str, dict] = {}
    pending: dict[str, list[dict]] = defaultdict(list)
    pending_bytes: dict[str, int] = defaultdict(int)

    def flush(origin: str) -> None:
        folder = folders.setdefault(origin, {"source": origin, "entries": [], "lengths": []})
        rows = pending.pop(origin)
        pending_bytes.pop(origin)
        raw, config = encode_shard(rows, MDS_COLUMNS)
        basename = f"shard.{number:05d}.{len(folder['entries']):03d}.mds"
        name = f"{mds_folder(origin, rules)}/{basename}"
        raw_sha = dest.write_bytes(name, raw, algorithm="sha256").split(":", 1)[1]
        packed = zstandard.ZstdCompressor(level=3).compress(raw) if compression else None
        entry = index_entry(raw, config | {"size_limit": size_limit}, len(rows), basename, packed)
        entry["raw_data"]["hashes"]["sha256"] = raw_sha  # streaming's validate_hash reads these
        if packed is not None:
            entry["zip_data"]["hashes"]["sha256"] = dest.write_bytes(f"{name}.zstd", packed, "sha256").split(":")[1]
        folder["entries"].append(entry)
        folder["lengths"] += [row["len"] for row in rows]

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
                if pending[origin] and pending_bytes[origin] + size > size_limit:
                    flush(origin)
                pending[origin].append(row)
                pending_bytes[origin] += size
    for origin in sorted(pending):
        flush(origin)
    exported = {}
    for origin, folder in sorted(folders.items()):
        name = mds_folder(origin, rules)
        entries = [in_folder(entry, name) for entry in folder["entries"]]
        read_back = _read_entries(dest, [ShardInfo.from_index_entry(entry) for entry in entries], entries)
        if read_back != (len(folder["lengths"]), sum(folder["lengths"])):
            raise MDSError(f"{dest.url_of(name)}: {shard} wrote {len(folder['lengths'])} samples / "
                           f"{sum(folder['lengths'])} tokens, read back {read_back}")
        exported[name] = {"source": origin, "entries": folder["entries"],
                          "lengths": np.array(folder["lengths"], np.uint32)}
    return exported


def read_mds(folder: Layout) -> tuple[int, int]:
    """(samples, tokens) of an MDS folder, decoding every sample; files whose index entry has a sha256 are checked
    against it."""
    text = folder.read_text("index.json")
    return _read_entries(folder, read_index(text), json.loads(text)["shards"])


def _read_entries(folder: Layout, infos: list[ShardInfo], entries: list[dict]) -> tuple[int, int]:
    samples = tokens = 0
    for info, entry in zip(infos, entries, strict=True):
        raw = None  # the raw file, which mmBERT's trainer reads, is checked whenever it is there
        if not info.compression or folder.exists(info.raw_basename):
            raw = _checked(folder, info.raw_basename, entry.get("raw_data"))
        if info.compression:
            unpacked = decompress(_checked(folder, info.basename, entry.get("zip_data")), info.compression)
            if raw is not None and unpacked != raw:
                raise MDSError(f"{folder.url_of(info.basename)}: differs from its raw file {info.raw_basename}")
            raw = unpacked
        for row in iter_samples(raw, info):
            samples += 1
            tokens += len(row["input_ids"])
    return samples, tokens


def _checked(folder: Layout, name: str, stored: dict | None) -> bytes:
    """A file's bytes, checked against the sha256 its index entry gives, if any."""
    data = folder.read_bytes(name)
    expected = (stored or {}).get("hashes") or {}
    if "sha256" in expected and checksum_bytes(data, "sha256") != f"sha256:{expected['sha256']}":
        raise MDSError(f"{folder.url_of(name)}: sha256 differs from index.json")
    return data
