"""Parquet writing on the output tree: fixed writer options, explicit schemas, atomic files with checksums."""

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from manifests.layout import TASK_MEMORY, Layout
from manifests.schemas import REJECTS, SHARD

# Fixed writer options so that the same rows give the same bytes (shard sha256s are compared across runs).
PARQUET_OPTIONS = dict(compression="zstd", compression_level=3, use_dictionary=True, write_statistics=True)
# Files only the pipeline reads back (the relations between dedup steps): no dictionary pages, which keys fill in vain
# (trying them made writing placed chunks, then Parquet, 10x slower), and light compression.
SCRATCH_OPTIONS = dict(compression="zstd", compression_level=1, use_dictionary=False, write_statistics=True)
# Shards: token ids get no dictionary either. Looking every token up in the dictionary's hash table was the largest
# cost of writing a shard, and zstd-3 packs plain 4-byte ids smaller than the dictionary's indices (on the bench
# corpus and the samples: written 1.6x as fast, a quarter smaller). The other columns keep theirs (a few values).
SHARD_OPTIONS = PARQUET_OPTIONS | dict(use_dictionary=[name for name in SHARD.names if name != "input_ids"])
# Chunks placed by mixing, read back only by the shard tasks: Arrow IPC files, whose buffers are written as they are
# (zstd), where Parquet encodes a level per token: a fifth of the CPU to write and read back, as small.
PLACED_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd", use_threads=False)


def write_parquet(layout: Layout, name: str, rows: list[dict] | pa.Table, schema: pa.Schema,
                  algorithm: str = "xxh64", options: dict = PARQUET_OPTIONS) -> str:
    """Write rows (or a table) with `schema` to `name` atomically; returns the file's checksum."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=schema)
    table = table.cast(schema)
    with layout.writing(name, algorithm) as spool:
        pq.write_table(table, spool.local, **options)
    return spool.checksum


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

    def __init__(self, layout: Layout, name: str, schema: pa.Schema, batch_rows: int = 2048,
                 algorithm: str = "xxh64", options: dict = PARQUET_OPTIONS) -> None:
        self.schema = schema
        self.batch_rows = batch_rows
        self.rows: list[dict] = []
        self.count = 0
        self._writing = layout.writing(name, algorithm)
        self.spool = self._writing.__enter__()
        self.writer = self.open_writer(self.spool.local, schema, options)

    def open_writer(self, local: str, schema: pa.Schema, options: dict) -> pq.ParquetWriter:
        return pq.ParquetWriter(local, schema, **options)

    def write(self, row: dict) -> None:
        self.rows.append(row)
        self.count += 1
        if len(self.rows) >= self.batch_rows:
            self.flush()

    def write_rows(self, rows: list[dict]) -> None:
        """Rows written at once, as one batch."""
        self.rows.extend(rows)
        self.count += len(rows)
        self.flush()

    def write_table(self, table: pa.Table) -> None:
        self.flush()
        self.writer.write_table(table.cast(self.schema))
        self.count += table.num_rows

    def flush(self) -> None:
        if self.rows:
            columns = [column([row.get(field.name) for row in self.rows], field.type) for field in self.schema]
            self.writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        self.flush()
        self.writer.close()
        self._writing.__exit__(None, None, None)

    def __enter__(self) -> "ParquetSink":
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.writer.close()
            self._writing.__exit__(exc_type, exc, tb)


class ArrowSink(ParquetSink):
    """Streams tables into one Arrow IPC file, for files only the pipeline reads back (`open_arrow`); a record
    batch per table written, its chunks joined first: each buffer of a batch is compressed on its own, and small
    ones cost more to compress than to copy (writing placed chunks took twice as long with a batch per chunk)."""

    def open_writer(self, local: str, schema: pa.Schema,
                    options: pa.ipc.IpcWriteOptions) -> pa.ipc.RecordBatchFileWriter:
        return pa.ipc.new_file(local, schema, options=options)

    def write_table(self, table: pa.Table) -> None:
        super().write_table(table.combine_chunks())


def open_arrow(layout: Layout, name: str) -> pa.ipc.RecordBatchFileReader:
    """An Arrow IPC file fetched whole (one GET on an object store); its batches decompress as they are read."""
    return pa.ipc.open_file(pa.py_buffer(layout.read_bytes(name)))


class PartitionedSink:
    """Rows spread over many files (one per partition, named by `name_of`, each a `sink`: Parquet by default),
    buffered together and flushed when the buffer holds `max_bytes` (default: 16 MiB, or an eighth of a smaller
    task memory): memory stays bounded however many partitions there are. A partition's file exists only if it
    received rows."""

    def __init__(self, layout: Layout, name_of: Callable[[int], str], schema: pa.Schema,
                 max_bytes: int | None = None, options: dict | pa.ipc.IpcWriteOptions = PARQUET_OPTIONS,
                 sink: type[ParquetSink] = ParquetSink) -> None:
        self.layout, self.name_of, self.schema, self.options, self.sink = layout, name_of, schema, options, sink
        self.max_bytes = max_bytes or min(16 << 20, TASK_MEMORY.get() // 8)
        self.rows: dict[int, list[dict]] = defaultdict(list)
        self.tables: dict[int, list[pa.Table]] = defaultdict(list)
        self.buffered = 0
        self.sinks: dict[int, ParquetSink] = {}

    def write(self, partition: int, row: dict, nbytes: int) -> None:
        self.rows[partition].append(row)
        self._grew(nbytes)

    def write_table(self, partition: int, table: pa.Table) -> None:
        self.tables[partition].append(table)
        self._grew(table.nbytes)

    def _grew(self, nbytes: int) -> None:
        self.buffered += nbytes
        if self.buffered >= self.max_bytes:
            self.flush()

    def _sink(self, partition: int) -> ParquetSink:
        if partition not in self.sinks:
            self.sinks[partition] = self.sink(self.layout, self.name_of(partition), self.schema,
                                              options=self.options)
        return self.sinks[partition]

    def flush(self) -> None:
        for partition in sorted(self.rows):
            self._sink(partition).write_rows(self.rows[partition])
        for partition in sorted(self.tables):
            self._sink(partition).write_table(pa.concat_tables(self.tables[partition]))
        self.rows.clear()
        self.tables.clear()
        self.buffered = 0

    def close(self) -> dict[int, int]:
        """partition -> rows written."""
        self.flush()
        for sink in self.sinks.values():
            sink.close()
        return {partition: sink.count for partition, sink in self.sinks.items()}


_counted: ContextVar[list[dict] | None] = ContextVar("counted", default=None)


@contextlib.contextmanager
def counting() -> Iterator[list[dict]]:
    """Collect the stats rows (STATS, without `task`) that `write_task_records` gives inside the block: a task's
    counters travel in its marker (pipeline/markers.py), not in a file of their own (a Parquet file per task was a
    quarter of the objects of a build and ~2 ms of each small task)."""
    rows: list[dict] = []
    token = _counted.set(rows)
    try:
        yield rows
    finally:
        _counted.reset(token)


def write_task_records(layout: Layout, group: str, source: str, part: str, stages: list,
                       phase: str | None = None) -> None:
    """The records of one task's stages (stages/base.py Stage or Records): its rejects in a file named after the
    task, so reruns overwrite (none when nothing was rejected), and its stats rows to the task's `counting`."""
    counted = _counted.get()
    if counted is None:
        raise RuntimeError(f"{source}/{part}: stats counted outside a task (pipeline/runner.py counts them)")
    counted += [row for stage in stages for row in stage.stats.rows()]
    if rejects := [asdict(reject) for stage in stages for reject in stage.rejects]:
        write_parquet(layout, Layout.rejects(group, source, part, phase), rejects, REJECTS)
