"""Atomic Parquet writes: a killed task never leaves a half-written file under its final name."""

import hashlib
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from manifests.schemas import REJECTS, STATS

# Fixed writer options so that the same rows give the same bytes (shard sha256s are compared across runs).
PARQUET_OPTIONS = dict(compression="zstd", compression_level=3, use_dictionary=True, write_statistics=True)


def atomic_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_parquet(path: Path, rows: list[dict] | pa.Table, schema: pa.Schema) -> Path:
    """Write rows (or a table) with `schema` to `path` atomically: temporary name, then rename."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=schema)
    table = table.cast(schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    pq.write_table(table, tmp, **PARQUET_OPTIONS)
    os.replace(tmp, path)
    return path


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def column(values: list, type_: pa.DataType) -> pa.Array:
    """An Arrow column; lists given as NumPy arrays are joined without a detour through Python ints."""
    if pa.types.is_list(type_) and values and isinstance(values[0], np.ndarray):
        offsets = np.zeros(len(values) + 1, np.int32)
        np.cumsum([len(v) for v in values], out=offsets[1:])
        flat = np.concatenate(values).astype(type_.value_type.to_pandas_dtype(), copy=False)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
    return pa.array(values, type=type_)


class ParquetSink:
    """Streams rows into one Parquet file in batches; the file appears under its name only on close."""

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int = 2048) -> None:
        self.path = path
        self.schema = schema
        self.batch_rows = batch_rows
        self.rows: list[dict] = []
        self.count = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = atomic_path(path)
        self.writer = pq.ParquetWriter(self.tmp, schema, **PARQUET_OPTIONS)

    def write(self, row: dict) -> None:
        self.rows.append(row)
        self.count += 1
        if len(self.rows) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            columns = [column([row.get(field.name) for row in self.rows], field.type) for field in self.schema]
            self.writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        self.flush()
        self.writer.close()
        os.replace(self.tmp, self.path)

    def __enter__(self) -> "ParquetSink":
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.writer.close()
            self.tmp.unlink(missing_ok=True)


def write_task_records(out: Path, stage_group: str, source: str, part: str, stages: list) -> None:
    """Stats and rejects of one task's stages (stages/base.py Stage or Records), named after the task, so
    reruns overwrite."""
    stats = [row | {"task": f"{source}/{part}"} for stage in stages for row in stage.stats.rows()]
    rejects = [asdict(reject) for stage in stages for reject in stage.rejects]
    write_parquet(out / "stats" / stage_group / source / f"{part}.parquet", stats, STATS)
    write_parquet(out / "rejects" / stage_group / source / f"{part}.parquet", rejects, REJECTS)
