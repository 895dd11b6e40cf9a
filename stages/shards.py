"""Shards: gather the chunks that mixing placed in one shard, shuffle them by hash, write Parquet (zstd);
export a phase's shards as MosaicML MDS."""

import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zstandard

from manifests.schemas import SHARD
from manifests.writer import sha256_file, write_bytes, write_parquet, write_text
from stages.mds import MDSError, decompress, encode_shard, index_entry, iter_samples, read_index


def write_shard(placed_glob: str, shard: int, path: Path) -> dict:
    """Write shard `shard` from the placed chunks; the order is the chunks' placement hash, so it is fixed."""
    with duckdb.connect() as con:
        con.execute("SET threads = 1")
        table = con.sql(
            f"""SELECT {", ".join(SHARD.names)} FROM read_parquet($glob) WHERE shard = $shard
                ORDER BY place, doc_id, epoch, chunk""",
            params={"glob": placed_glob, "shard": shard},
        ).to_arrow_table()
    write_parquet(path, table, SHARD)
    tokens = pc.sum(pc.list_value_length(table.column("input_ids"))).as_py() or 0
    return dict(path=path.name, rows=table.num_rows, tokens=tokens, bytes=path.stat().st_size,
                sha256=sha256_file(path))


MDS_COLUMNS = {"id": "str", "input_ids": "ndarray:uint32", "len": "int"}
MDS_SIZE_LIMIT = 1 << 26  # streaming's default: 64 MiB of raw samples per shard


def export_mds(shards: list[Path], dest: Path, size_limit: int = MDS_SIZE_LIMIT) -> dict:
    """Write Parquet shards as MosaicML MDS (zstd shards + index.json, the layout `streaming` reads), then read
    every MDS shard back and check it holds the same samples. Returns sample and token counts."""
    dest.mkdir(parents=True, exist_ok=True)
    entries: list[dict] = []
    pending: list[dict] = []
    pending_bytes = samples = tokens = 0

    def flush() -> None:
        nonlocal pending, pending_bytes
        if not pending:
            return
        raw, config = encode_shard(pending, MDS_COLUMNS)
        packed = zstandard.ZstdCompressor(level=3).compress(raw)
        basename = f"shard.{len(entries):05d}.mds"
        write_bytes(dest / f"{basename}.zstd", packed)
        entries.append(index_entry(raw, config | {"size_limit": size_limit}, len(pending), basename, packed))
        pending, pending_bytes = [], 0

    for shard in shards:
        table = pq.read_table(shard, columns=["input_ids", "doc_id", "chunk", "epoch"])
        for ids, doc_id, chunk, epoch in zip(*(table.column(i).to_pylist() for i in range(4)), strict=True):
            row = {"id": f"{doc_id}#{chunk}@{epoch}", "input_ids": np.asarray(ids, np.uint32), "len": len(ids)}
            size = 4 * len(ids) + len(row["id"]) + 64
            if pending and pending_bytes + size > size_limit:
                flush()
            pending.append(row)
            pending_bytes += size
            samples += 1
            tokens += len(ids)
    flush()
    write_text(dest / "index.json", json.dumps({"shards": entries, "version": 2}, sort_keys=True))
    read_back = read_mds(dest)
    if read_back != (samples, tokens):
        raise MDSError(f"{dest}: wrote {samples} samples / {tokens} tokens, read back {read_back}")
    return {"shards": len(entries), "samples": samples, "tokens": tokens}


def read_mds(folder: Path) -> tuple[int, int]:
    """(samples, tokens) of an MDS folder, decoding every sample."""
    samples = tokens = 0
    for info in read_index((folder / "index.json").read_text()):
        data = (folder / info.basename).read_bytes()
        for row in iter_samples(decompress(data, info.compression), info):
            samples += 1
            tokens += len(row["input_ids"])
    return samples, tokens
