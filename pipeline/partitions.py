"""Relations spread over hash partitions, and SQL steps from one to the next: how dedup clusters a corpus of any
size with tasks that each hold one partition.

A relation is a folder of Parquet files, `<folder>/<task>.parquet`: one file per task of the step that wrote it
(a sort-based shuffle), its rows sorted by partition, the rows of a partition in row groups of their own, and an
index in the file's key-value metadata (`ROWS_KEY`: partition -> [first row, end row)). A step runs one Ray task per
partition of its inputs; the task opens DuckDB views over its partition's row groups of each input file (Arrow
datasets of those row groups only, streamed: the task holds its partition, not the files) and runs queries whose
rows name, in a `_p` column, the partition of the output they belong to. Every step reads each input byte once
and writes one file per task: O(P) objects, not one per (task, partition) pair. The driver learns which
partitions a file holds, and their rows, from the summary of the task that wrote it (`ROWS_SUMMARY`, a string per
file: a step's files hold up to P² (file, partition) pairs, which the driver keeps and the markers store), so a task
reads only the files with rows of its partition. `partitions_for` picks P so that a task's share of one file, the
range it reads, averages SHUFFLE_FILE_BYTES: the task count grows with the corpus, each task's reads in proportion.
"""

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from manifests.layout import Layout
from manifests.writer import SCRATCH_OPTIONS, ParquetSink
from pipeline.runner import Runner, Task

log = logging.getLogger(__name__)
SHUFFLE_FILE_BYTES = 8 << 20  # what one task writes for one partition, on average: one ranged GET (S3 favours 8-16 MB)
ROWS_KEY = "mmcorpus.partition_rows"  # a relation file's index: partition -> [first row, end row)
ROWS_SUMMARY = "partition_rows"  # in a task's summary: file -> its rows by partition (`encode_rows`)


def partitions_for(total_bytes: int, task_memory: int) -> int:
    """√(bytes / SHUFFLE_FILE_BYTES) partitions, or more where a partition would pass a quarter of a task's
    memory."""
    by_files = math.ceil(math.sqrt(total_bytes / SHUFFLE_FILE_BYTES))
    return max(1, by_files, math.ceil(total_bytes / (task_memory // 4)))


def batches(sizes: dict[str, int], target: int) -> list[list[str]]:
    """Files, sorted, cut into consecutive batches of about `target` bytes."""
    found: list[list[str]] = []
    total = target
    for name in sorted(sizes):
        if total >= target:
            found.append([])
            total = 0
        found[-1].append(name)
        total += sizes[name]
    return found


def runs(keys: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of equal consecutive keys."""
    cuts = [0, *(np.flatnonzero(np.diff(keys)) + 1).tolist(), len(keys)]
    return list(zip(cuts, cuts[1:], strict=False)) if len(keys) else []



def encode_rows(rows: dict[int, int]) -> str:
    """A file's rows by partition, compact: counts joined by commas, each of the partition after the previous
    one's, or `partition:count` after a gap (partitions without rows are left out). `"5,7,2,9:4"`: 5 rows in
    partition 0, 7 in 1, 2 in 2, 4 in 9."""
    tokens, previous = [], -1
    for partition, count in sorted(rows.items()):
        tokens.append(str(count) if partition == previous + 1 else f"{partition}:{count}")
        previous = partition
    return ",".join(tokens)


def decode_rows(encoded: str) -> dict[int, int]:
    """The rows by partition that `encode_rows` gave, in partition order."""
    found, partition = {}, -1
    for token in encoded.split(","):
        at, _, count = token.rpartition(":")
        partition = int(at) if at else partition + 1
        found[partition] = int(count)
    return found

@dataclass(frozen=True)
class Rows:
    """What a view of a task reads: the rows of one partition of these relation files (by the number their index
    gives it), or, with no partition, the files whole."""
    files: tuple[str, ...]
    schema: pa.Schema
    partition: int | None = None
    sizes: tuple[int, ...] = ()  # the bytes of the partition in each file (estimated from its share of the rows)


@dataclass(frozen=True)
class Relation:
    folder: str
    schema: pa.Schema
    files: tuple[tuple[tuple[str, int], ...], ...]  # by partition: the files holding rows of it, with their bytes
    first: int = 0  # the number its files' index gives partition 0 (a block's first partition)

    def block(self, number: int, partitions: int) -> "Relation":
        """Partitions [number × partitions, (number + 1) × partitions): one of several relations a step wrote
        into consecutive blocks of partitions."""
        return Relation(self.folder, self.schema, self.files[number * partitions:(number + 1) * partitions],
                        self.first + number * partitions)

    def rows(self, partition: int) -> Rows:
        files = self.files[partition]
        return Rows(tuple(name for name, _ in files), self.schema, self.first + partition,
                    tuple(size for _, size in files))

    def rows_in(self, partition: int) -> bool:
        return bool(self.files[partition])

    @property
    def names(self) -> list[str]:
        """Every file of the relation, once."""
        return sorted({name for files in self.files for name, _ in files})

    @property
    def empty(self) -> bool:
        return not any(self.files)

    def union(self, other: "Relation") -> "Relation":
        if other.first != self.first:
            raise ValueError(f"{self.folder} and {other.folder}: blocks that start at different partitions")
        return Relation(self.folder, self.schema, tuple(a + b for a, b in zip(self.files, other.files, strict=True)),
                        self.first)


@dataclass(frozen=True)
class Output:
    folder: str
    schema: pa.Schema
    sql: str  # its rows, with a `_p` column: the partition each goes to
    partitions: int


@dataclass
class KeptRelations:
    """The relations under `folder` of a computation run inside one task (pipeline/dedup.py's OneTask), held in
    memory instead of written: no other task reads them, and a resume redoes the whole computation. By name: the
    table (its rows in partition order) and its partitions' [first row, end row), as a file's index holds them."""

    folder: str
    tables: dict[str, tuple[pa.Table, dict[str, list[int]]]] = field(default_factory=dict)

    def holds(self, name: str) -> bool:
        return name.startswith(f"{self.folder}/")

    def rows(self, rows: Rows) -> ds.Dataset:
        pieces = []
        for name in rows.files:
            table, ranges = self.tables[name]
            start, end = ranges[str(rows.partition)] if rows.partition is not None else (0, table.num_rows)
            pieces.append(table.slice(start, end - start))
        return ds.dataset(pa.concat_tables(pieces))


_kept: ContextVar[KeptRelations | None] = ContextVar("kept_relations", default=None)


@contextlib.contextmanager
def keeping(kept: KeptRelations) -> Iterator[None]:
    """Inside the block, `run_sql` holds the relations under `kept.folder` in `kept`, and reads them from it."""
    token = _kept.set(kept)
    try:
        yield
    finally:
        _kept.reset(token)


def rows_dataset(layout: Layout, rows: Rows) -> ds.Dataset:
    """The rows as one Arrow dataset DuckDB streams: of a partition, each file's row groups of it (only each
    file's footer and those column chunks are read); with none, the files whole. Arrow reads the store through
    `layout.fs` in ranges (DuckDB reading through fsspec asks for more: a stat per file and smaller reads)."""
    kept = _kept.get()
    if kept is not None and rows.files and kept.holds(rows.files[0]):
        return kept.rows(rows)
    filesystem = layout.arrow_filesystem(ranges=rows.partition is not None)
    parquet = ds.ParquetFileFormat()
    fragments = []
    for name in rows.files:
        fragment = parquet.make_fragment(layout.path(name), filesystem)
        if rows.partition is None:
            fragments.append(fragment)
            continue
        start, end = json.loads(fragment.metadata.metadata[ROWS_KEY.encode()])[str(rows.partition)]
        groups, first = [], 0
        for number in range(fragment.metadata.num_row_groups):
            last = first + fragment.metadata.row_group(number).num_rows
            if start <= first and last <= end:
                groups.append(number)
            elif first < end and start < last:
                raise ValueError(f"{name}: row group {number} holds rows of partition {rows.partition} and others")
            first = last
        fragments.append(fragment.subset(row_group_ids=groups))
    return ds.FileSystemDataset(fragments, rows.schema, parquet, filesystem)


def run_sql(layout: Layout, task: str, views: dict[str, Rows], outputs: list[Output], summary: str | None = None,
            tables: dict[str, pa.Table] | None = None) -> dict:
    """One task of a step: views over its input rows (none: an empty table of their schema), the `summary`
    query's one row as the task's summary, then each output's rows in partition order, written to one file with
    a row group (or more) per partition and their rows indexed (ordered, so that the same inputs give the same
    bytes). The summary also gives, per file written, the rows of each partition (`ROWS_SUMMARY`)."""
    with layout.duckdb(threads=1) as con:
        for name, rows in views.items():
            if not rows.files:
                con.register(name, rows.schema.empty_table())
            elif rows.partition is None:  # files whole, a batch of about a partition's bytes: read once for all
                con.register(name, rows_dataset(layout, rows).to_table())  # the queries, not once per query
            else:
                con.register(name, rows_dataset(layout, rows))
        for name, table in (tables or {}).items():
            con.register(name, table)
        result: dict = {}
        if summary:
            row = con.execute(summary).fetchall()[0]
            result = {column[0]: int(value or 0) for column, value in zip(con.description, row, strict=True)}
        written: dict[str, str] = {}
        kept = _kept.get()
        for output in outputs:
            columns = ", ".join(output.schema.names)
            reader = con.sql(f"SELECT _p, {columns} FROM ({output.sql}) ORDER BY ALL").to_arrow_reader(65536)
            name = Layout.relation_file(output.folder, task)
            held: list[pa.Table] | None = [] if kept is not None and kept.holds(name) else None
            sink, ranges, rows = None, {}, 0  # ranges: partition -> [first row, end row) in the file
            try:
                for batch in reader:
                    partition_of_row = batch.column(0).to_numpy()
                    table = pa.Table.from_batches([batch]).drop_columns(["_p"]).cast(output.schema)
                    for start, end in runs(partition_of_row):
                        if held is not None:
                            held.append(table.slice(start, end - start))
                        else:
                            if sink is None:  # a task with no rows for an output writes no file for it
                                sink = ParquetSink(layout, name, output.schema, options=SCRATCH_OPTIONS)
                            # each write is a row group of its own (or more): none holds two partitions' rows
                            sink.write_table(table.slice(start, end - start))
                        ranges.setdefault(str(partition_of_row[start]), [rows, rows])[1] = rows + int(end - start)
                        rows += int(end - start)
                if sink is not None:
                    sink.writer.add_key_value_metadata({ROWS_KEY: json.dumps(ranges)})
            finally:
                if sink is not None:
                    sink.close()
            if held and kept is not None:
                kept.tables[name] = (pa.concat_tables(held), ranges)
            if ranges:
                written[name] = encode_rows({int(partition): end - start
                                             for partition, (start, end) in ranges.items()})
            result[f"{output.folder.rsplit('/', 1)[-1]}_rows"] = rows
    return result | {ROWS_SUMMARY: written}


def partition_task(partition: int, fn: Callable[..., dict], kwargs: dict, views: list[Rows]) -> Task:
    """The task of one partition, reading its rows of each relation: what it reads is counted as those rows'
    share of the files, not the files whole."""
    key = Layout.partition(partition)
    reading = {f"{name}:{key}": size for rows in views for name, size in zip(rows.files, rows.sizes, strict=True)}
    return Task(key, fn, kwargs, inputs=tuple(name for rows in views for name in rows.files),
                size=sum(reading.values()), reading=reading)


def gather(runner: Runner, output: Output, summaries: dict[str, dict]) -> Relation:
    """The relation a step's tasks wrote to `output`, by partition: its files (in task order) with the bytes of
    each partition in them, from the summaries of the tasks that wrote them."""
    files: list[list[tuple[str, int]]] = [[] for _ in range(output.partitions)]
    for _, summary in sorted(summaries.items()):
        for name, encoded in summary.get(ROWS_SUMMARY, {}).items():
            if (Layout.RELATION_FILE.parse(name) or {}).get("folder") != output.folder:
                continue  # another output of the step
            rows = decode_rows(encoded)
            size, total = runner.ledger.size(name), sum(rows.values())
            for partition, count in rows.items():
                files[partition].append((name, size * count // total))
    return Relation(output.folder, output.schema, tuple(tuple(found) for found in files))


class Steps:
    """Runs the steps of one partitioned computation as stages `<prefix>-<step>`, their costs counted together
    under `costs_as` unless a step names its own. A step logs at DEBUG: `reported` gives one line for many."""

    def __init__(self, runner: Runner, folder: str, partitions: int, prefix: str, costs_as: str) -> None:
        self.runner, self.folder, self.partitions = runner, folder, partitions
        self.prefix, self.costs_as = prefix, costs_as
        self.steps = self.tasks = self.ran = 0  # so far: steps, their tasks, the tasks that ran (not reused)

    @contextlib.contextmanager
    def reported(self, what: str) -> Iterator[None]:
        """One INFO line for the steps the block runs: `dedup exact: 9 steps, 18 tasks (2 run, 16 reused), 1.2 s`."""
        steps, tasks, ran, started = self.steps, self.tasks, self.ran, time.monotonic()
        yield
        tasks, ran = self.tasks - tasks, self.ran - ran
        if self.steps == steps:
            log.info("%s %s: no steps", self.prefix, what)
        else:
            log.info("%s %s: %d steps, %d tasks (%d run, %d reused), %.1f s", self.prefix, what, self.steps - steps,
                     tasks, ran, tasks - ran, time.monotonic() - started)

    @property
    def layout(self) -> Layout:
        return self.runner.layout

    def output(self, step: str, name: str, schema: pa.Schema, sql: str, blocks: int = 1) -> Output:
        return Output(Layout.relation(self.folder, step, name), schema, sql, self.partitions * blocks)

    def step(self, step: str, inputs: dict[str, Relation], outputs: list[Output], summary: str | None = None,
             driving: str | None = None, costs_as: str | None = None) -> tuple[list[Relation], dict[str, int]]:
        """One task per partition with rows in any input (in the `driving` one, when named: others are only
        looked up); returns the outputs and the tasks' summaries summed."""
        tasks = []
        for partition in range(self.partitions):
            if not any(relation.rows_in(partition) for name, relation in inputs.items() if driving in (None, name)):
                continue
            views = {name: relation.rows(partition) for name, relation in inputs.items()}
            tasks.append(partition_task(partition, run_sql, dict(layout=self.layout, task=Layout.partition(partition),
                                                                 views=views, outputs=outputs, summary=summary),
                                        list(views.values())))
        return self.run(step, tasks, outputs, costs_as)

    def single(self, step: str, inputs: dict[str, Relation], name: str, schema: pa.Schema, sql: str,
               summary: str | None = None, driving: str | None = None) -> tuple[Relation, dict[str, int]]:
        """A step with one output, `<folder>/<step>/<name>`."""
        [relation], totals = self.step(step, inputs, [self.output(step, name, schema, sql)], summary, driving)
        return relation, totals

    def run(self, step: str, tasks: list[Task], outputs: list[Output], costs_as: str | None = None
            ) -> tuple[list[Relation], dict[str, int]]:
        stage = f"{self.prefix}-{step}"
        ran = self.runner.ran.get(stage, 0)  # .get: a stage that runs nothing stays out of the build's `ran`
        summaries = self.runner.run(stage, tasks, costs_as=costs_as or self.costs_as, quiet=True)
        self.steps, self.tasks = self.steps + 1, self.tasks + len(tasks)
        self.ran += self.runner.ran.get(stage, 0) - ran
        totals: dict[str, int] = {}
        for summary in summaries.values():
            for name, value in summary.items():
                if name != ROWS_SUMMARY:
                    totals[name] = totals.get(name, 0) + value
        return [gather(self.runner, output, summaries) for output in outputs], totals
