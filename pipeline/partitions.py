"""Relations spread over hash partitions, and SQL steps from one to the next: how dedup clusters a corpus of any
size with tasks that each hold one partition.

A relation is a folder of Parquet files, `<folder>/p<NNNNN>/<task>.parquet`: the rows of partition N, one file per
task of the step that wrote them. A step runs one Ray task per partition of its inputs; the task opens DuckDB
views over its partition's files of each input relation (held to the task's memory, spilling past it) and runs
queries whose rows name, in a `_p` column, the partition of the output they belong to. Every step reads each
input byte once, and a step over P partitions writes at most P² files: `partitions_for` picks P so that those
files average SHUFFLE_FILE_BYTES, the task count growing with the corpus and the file count in proportion to it.
"""

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from manifests.layout import Layout
from manifests.writer import SCRATCH_OPTIONS, ParquetSink
from pipeline.runner import Runner, Task

log = logging.getLogger(__name__)
SHUFFLE_FILE_BYTES = 1 << 20  # the bytes one task writes for one partition, on average


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


@dataclass(frozen=True)
class Relation:
    folder: str
    schema: pa.Schema
    files: tuple[tuple[str, ...], ...]  # the files of each partition

    def block(self, number: int, partitions: int) -> "Relation":
        """Partitions [number × partitions, (number + 1) × partitions): one of several relations a step wrote
        into consecutive blocks of partitions."""
        return Relation(self.folder, self.schema, self.files[number * partitions:(number + 1) * partitions])

    def rows_in(self, partition: int) -> bool:
        return bool(self.files[partition])

    @property
    def empty(self) -> bool:
        return not any(self.files)

    def union(self, other: "Relation") -> "Relation":
        return Relation(self.folder, self.schema, tuple(a + b for a, b in zip(self.files, other.files, strict=True)))


@dataclass(frozen=True)
class Output:
    folder: str
    schema: pa.Schema
    sql: str  # its rows, with a `_p` column: the partition each goes to
    partitions: int


def run_sql(layout: Layout, task: str, views: dict[str, tuple[tuple[str, ...], pa.Schema]], outputs: list[Output],
            summary: str | None = None, tables: dict[str, pa.Table] | None = None) -> dict:
    """One task of a step: views over its input files (an empty relation as an empty table of its schema), the
    `summary` query's one row as the task's summary, then each output's rows in partition order, written one
    partition file at a time (ordered, so that the same inputs give the same bytes)."""
    with layout.duckdb(threads=1) as con:
        for name, (files, schema) in views.items():
            if files:
                layout.parquet_view(con, name, files)
            else:
                con.register(name, schema.empty_table())
        for name, table in (tables or {}).items():
            con.register(name, table)
        result: dict = {}
        if summary:
            row = con.execute(summary).fetchall()[0]
            result = {column[0]: int(value or 0) for column, value in zip(con.description, row, strict=True)}
        for output in outputs:
            columns = ", ".join(output.schema.names)
            reader = con.sql(f"SELECT _p, {columns} FROM ({output.sql}) ORDER BY ALL").fetch_arrow_reader(65536)
            sink, current, rows = None, None, 0
            try:
                for batch in reader:
                    partition_of_row = batch.column(0).to_numpy()
                    table = pa.Table.from_batches([batch]).drop_columns(["_p"]).cast(output.schema)
                    for start, end in runs(partition_of_row):
                        if partition_of_row[start] != current:
                            if sink is not None:
                                sink.close()
                            current = int(partition_of_row[start])
                            sink = ParquetSink(layout, Layout.partition_file(output.folder, current, task),
                                               output.schema, options=SCRATCH_OPTIONS)
                        sink.write_table(table.slice(start, end - start))
                        rows += int(end - start)
            finally:
                if sink is not None:
                    sink.close()
            result[f"{output.folder.rsplit('/', 1)[-1]}_rows"] = rows
    return result


def gather(runner: Runner, stage: str, output: Output) -> Relation:
    """The relation a step's tasks wrote to `output`, by partition."""
    by_partition = Layout.PARTITION_FILE.by(sorted(runner.ledger.outputs(stage)), "partition", folder=output.folder)
    files = tuple(tuple(by_partition.get(partition, ())) for partition in range(output.partitions))
    return Relation(output.folder, output.schema, files)


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
            views = {name: (relation.files[partition], relation.schema) for name, relation in inputs.items()}
            files = tuple(name for names, _ in views.values() for name in names)
            key = Layout.partition(partition)
            tasks.append(Task(key, run_sql, dict(layout=self.layout, task=key, views=views, outputs=outputs,
                                                 summary=summary),
                              inputs=files, size=sum(self.runner.ledger.size(name) for name in files)))
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
                totals[name] = totals.get(name, 0) + value
        return [gather(self.runner, stage, output) for output in outputs], totals
