"""Places tasks on Ray (an embedded local Ray by default, a cluster when RAY_ADDRESS or --ray-address is set) and
keeps a build a function of its inputs.

A task is a plain function that writes its own outputs through the output layout (manifests/layout.py), which
records each file's checksum. The runner wraps it so that it returns its marker (what it wrote, its checksums,
its summary, its counters) to the driver, which writes a stage's markers in a few objects (pipeline/markers.py).
A rerun skips a task whose marker holds the same fingerprint. A task whose fingerprint changed runs again and its
old outputs that it no longer writes are removed; the tasks downstream of it see new checksums, so they run again
too.
Markers of tasks no longer asked for (a removed input) go, with their outputs. Before tasks run, the files they
read that an earlier build wrote are checked (once each) against the checksums their producers recorded: a
damaged or missing one makes its producer run again first, or, when no task of this build makes it, fails
naming the file.
"""

import contextlib
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from manifests.layout import TASK_MEMORY, Layout, known_sizes, recording
from manifests.store import COUNTS
from manifests.writer import counting
from pipeline.fingerprint import Shared, digest
from pipeline.markers import BATCH_SECONDS, Done, Ledger, TaskFailed, drop_stale, task_record
from pipeline.progress import MIN_TASK_MEMORY, Progress, StageCosts, fit_task_memory, measured
from pipeline.session import ray_session, sigterm_raises

log = logging.getLogger(__name__)
SYSTEM_RETRIES = 3  # a task lost with its node (beyond Ray's own retries) is placed again this many times
# Small tasks go to a worker together (a Ray task and its scheduling cost several ms, a 30 KB input file's work
# tens): up to BUNDLE_TASKS of them (few: a stage's last bundle holds a worker alone) and BUNDLE_BYTES of input,
# and no more than an eighth of the stage's input per worker, so that the workers still share the stage evenly.
# Each keeps its own marker.
BUNDLE_TASKS, BUNDLE_BYTES = 16, 64 << 20


@dataclass(frozen=True)
class Task:
    key: str  # unique within its stage, safe as a file name
    fn: Callable[..., dict]
    kwargs: dict = field(default_factory=dict)
    inputs: tuple[str, ...] = ()  # names in the output tree the task reads: verified before it runs
    identity: Any = None  # what identifies the upstream files it reads (path, size, modification time or ETag)
    label: str = ""  # what a failure names: the upstream file the task reads (default: its key)
    size: int = 0  # bytes of input: the biggest tasks start first, so none is left running alone at the end
    memory: int | None = None  # bytes the task may hold at once (default: the runner's task memory); Ray places it
    # on a node with that much to spare
    reading: dict[str, int] | None = None  # what it reads by name where not its inputs whole (a hash partition's
    # row groups of each: pipeline/partitions.py)

    def reads(self, stage: str, size: Callable[[str], int]) -> dict[str, int]:
        """The sizes of what the task reads, by stage and name: its inputs, and its upstream file."""
        reading = self.reading if self.reading is not None else {name: size(name) for name in self.inputs}
        sizes = {f"{stage}:{name}": value for name, value in reading.items()}
        if self.identity:
            sizes[f"upstream:{self.key}"] = int(self.identity.get("size") or 0)
        return sizes


_shared_cache: dict[str, Any] = {}


def _resolve(value: Any) -> Any:
    if not isinstance(value, Shared):
        return value
    if value.digest not in _shared_cache:
        import ray

        _shared_cache[value.digest] = ray.get(value.ref)
    return _shared_cache[value.digest]


def _run_task(fn: Callable[..., dict], kwargs: dict, layout: Layout, fingerprint: str, stale: list[str],
              memory: int, sizes: dict[str, int]) -> dict:
    """One task on a worker: run it within `memory` bytes, its inputs opened at the `sizes` their producers
    recorded, then return its marker, with what it cost; the record also carries the task's requests to the store
    (`store`: a worker runs one task at a time)."""
    before = COUNTS.snapshot()
    token = TASK_MEMORY.set(memory)
    try:
        with known_sizes(sizes), measured() as costs, recording() as written, counting() as stats:
            summary = fn(**{name: _resolve(value) for name, value in kwargs.items()})
    finally:
        TASK_MEMORY.reset(token)
    drop_stale(layout, stale, written)
    record = task_record(fingerprint, written, summary, costs, stats)
    return record | {"store": dict(COUNTS.snapshot() - before)}


def _run_tasks(calls: list[tuple[Callable[..., dict], dict, str, list[str], dict[str, int]]], layout: Layout,
               memory: int) -> list[dict]:
    """A bundle of tasks, one after another on one worker: each one's record. In a bundle of several, a task that
    raises leaves the others to run and gets `error` for a record (the driver places it again alone)."""
    if len(calls) == 1:
        [(fn, kwargs, fingerprint, stale, sizes)] = calls
        return [_run_task(fn, kwargs, layout, fingerprint, stale, memory, sizes)]
    records = []
    for fn, kwargs, fingerprint, stale, sizes in calls:
        try:
            records.append(_run_task(fn, kwargs, layout, fingerprint, stale, memory, sizes))
        except Exception as error:  # noqa: BLE001 - the task's own failure, retried alone by the driver
            records.append({"error": " ".join(repr(error).split())[:500]})
    return records


def bundles(tasks: list[Task], sizes: list[int], workers: int) -> list[list[Task]]:
    """The tasks (biggest first) in bundles: consecutive tasks of the same memory, each of known size (`sizes`:
    the bytes each reads), up to BUNDLE_TASKS and the smaller of BUNDLE_BYTES and an eighth of the input per
    worker; a bigger task, or one of unknown size, alone."""
    target = min(BUNDLE_BYTES, sum(sizes) // (8 * workers))
    found: list[list[Task]] = []
    total = 0
    for task, size in zip(tasks, sizes, strict=True):
        last = found[-1] if found else []
        if (0 < size and last and len(last) < BUNDLE_TASKS and total + size <= target
                and last[0].memory == task.memory):
            last.append(task)
            total += size
        else:
            found.append([task])
            total = size if 0 < size else target + 1  # a task of unknown size takes no company
    return found


class Runner:
    """Context manager around a Ray session; `run(stage, tasks)` executes the tasks not already done."""

    def __init__(self, layout: Layout, workers: int = 2, address: str | None = None, object_store_mb: int = 200,
                 retries: int = 1, task_memory: int | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if task_memory is not None and task_memory < MIN_TASK_MEMORY:
            raise ValueError(f"task memory must be >= {MIN_TASK_MEMORY >> 20} MiB, got {task_memory:,} bytes")
        self.task_memory = task_memory  # None: from the cluster, once Ray runs
        self.layout = layout
        self.workers = workers
        self.address = address or os.environ.get("RAY_ADDRESS")
        self.object_store_mb = object_store_mb
        self.retries = retries
        self._session = contextlib.ExitStack()  # Ray and the SIGTERM handler, while the runner is entered
        self.ledger = Ledger(layout)  # what the tasks wrote, by their markers
        self.tasks: dict[tuple[str, str], Task] = {}  # every task asked for in this build
        self.ran: dict[str, int] = defaultdict(int)  # stage -> tasks run in this build (repairs included)
        self.costs: dict[str, StageCosts] = {}  # stage -> what its tasks that ran in this build cost
        self.store: dict[str, Counter[str]] = defaultdict(Counter)  # stage -> its requests to the store (tasks and
        # the driver's own for it: markers listed, read, deleted, inputs verified)
        self._driver_start = COUNTS.snapshot()  # the driver's requests not in a stage make the "driver" row
        self._driver_in_stages: Counter[str] = Counter()

    def __enter__(self) -> "Runner":
        with contextlib.ExitStack() as stack:
            stack.enter_context(ray_session(self.address, self.workers, self.object_store_mb))
            self.task_memory = fit_task_memory(self.task_memory)
            stack.enter_context(sigterm_raises())
            self._session = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._session.close()

    def share(self, value: Any) -> Shared:
        import ray

        return Shared(ray.put(value), digest(value))

    def run(self, stage: str, tasks: list[Task], final: bool = False, costs_as: str | None = None,
            quiet: bool = False) -> dict[str, dict]:
        """Run the tasks of one stage; return every task's summary (done earlier or now) by key. `final`: the
        stage's outputs are the build's results (shards): verify them even when their tasks are skipped.
        `costs_as`: the stage whose costs these tasks add to (a step of a larger one, as dedup's rounds). `quiet`:
        its lines at DEBUG and no bar (a step of a larger stage, which says how it went itself)."""
        self.ledger.asked.add(stage)
        before = COUNTS.snapshot()
        try:
            return self._run(stage, tasks, final, costs_as or stage, quiet)
        finally:
            self.ledger.settle(stage)  # its markers, one index object, even when it failed or was interrupted
            own = COUNTS.snapshot() - before
            self.store[costs_as or stage] += own
            self._driver_in_stages += own

    def store_counts(self) -> dict[str, dict[str, int]]:
        """stage -> its requests to the store (manifests/store.py), and `driver`: the driver's own outside the
        stages (the lock, the manifest's inputs verified, the sweep), until now."""
        driver = COUNTS.snapshot() - self._driver_start - self._driver_in_stages
        return {stage: dict(counts) for stage, counts in sorted(self.store.items())} | {"driver": dict(driver)}

    def _run(self, stage: str, tasks: list[Task], final: bool, costs_as: str, quiet: bool) -> dict[str, dict]:
        markers = self.ledger.markers(stage)
        wanted = {task.key for task in tasks}
        stale = sorted(set(markers) - wanted)
        self.ledger.remove(stage, {key: markers[key] for key in stale})
        if stale:
            log.info("%s: removed the outputs of %d task(s) no longer asked for", stage, len(stale))
        todo = []
        for task in tasks:
            self.tasks[(stage, task.key)] = task
            old = markers.get(task.key)
            if old is not None and old.fingerprint == self.ledger.fingerprint(task):
                self.ledger.register(stage, task.key, old)
            else:
                todo.append(task)
        if final and self.ledger.done[stage]:
            todo += [self.tasks[(stage, key)] for key in self.ledger.forget_damaged(stage)]
        log.log(logging.DEBUG if quiet else logging.INFO, "%s: %d tasks, %d already done, %d to run", stage,
                len(tasks), len(tasks) - len(todo), len(todo))
        self._execute(stage, todo, markers, costs_as, quiet)
        return {key: self.ledger.done[stage][key].summary for key in sorted(wanted)}

    def _execute(self, stage: str, todo: list[Task], markers: dict[str, Done], costs_as: str,
                 quiet: bool = False) -> None:
        import ray

        if not todo:
            return
        self.ensure(name for task in todo for name in task.inputs)
        remote = ray.remote(_run_tasks)
        todo.sort(key=lambda task: -task.size)

        def submit(bundle: list[Task], retries: int = self.retries) -> Any:
            memory = bundle[0].memory or self.task_memory
            calls = [(task.fn, task.kwargs, self.ledger.fingerprint(task), stale_outputs(task),
                      self.sizes(task.inputs)) for task in bundle]
            return remote.options(num_cpus=1, memory=memory, max_retries=retries, retry_exceptions=True).remote(
                calls, self.layout, memory)

        def stale_outputs(task: Task) -> list[str]:
            old = markers.get(task.key)
            return list(old.outputs) if old else []

        started = time.perf_counter()
        costs = self.costs.setdefault(costs_as, StageCosts())
        self.ledger.retire(stage, [task.key for task in todo])  # a crash from here on leaves them to run again
        workers = int(ray.cluster_resources().get("CPU", self.workers))
        reads = {task.key: task.reads(stage, self.ledger.size) for task in todo}
        sizes = [sum(reads[task.key].values()) for task in todo]
        pending = {submit(bundle): bundle for bundle in bundles(todo, sizes, workers)}
        lost: dict[str, int] = defaultdict(int)
        failures = []
        with Progress(stage, len(todo), quiet) as progress:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=BATCH_SECONDS)
                self.ledger.flush(stage)  # the markers of the tasks done so far, every few seconds
                if not ready:
                    continue
                bundle = pending.pop(ready[0])
                try:
                    records = ray.get(ready[0])
                except ray.exceptions.RayTaskError as error:  # the task raised, on every try Ray gave it
                    if len(bundle) > 1:  # not one of its tasks: the bundle itself (its records unsent)
                        pending.update({submit([task]): [task] for task in bundle})
                        continue
                    cause = " ".join(repr(getattr(error, "cause", None) or error).split())[:500]
                    failures.append(f"{bundle[0].label or bundle[0].key}: {cause}")
                    continue
                except ray.exceptions.RayError as error:  # its worker or node died (OOM, a lost node): not its input
                    log.warning("%s: task %s%s lost with its worker or node (%s): placing it again", stage,
                                bundle[0].key, f" and {len(bundle) - 1} more" if len(bundle) > 1 else "",
                                type(error).__name__)
                    for task in bundle:  # each alone: a task that kills its worker fails alone
                        lost[task.key] += 1
                        if lost[task.key] > SYSTEM_RETRIES:
                            failures.append(f"{task.label or task.key}: {type(error).__name__} "
                                            f"{SYSTEM_RETRIES + 1} times")
                        else:
                            pending[submit([task])] = [task]
                    continue
                for task, record in zip(bundle, records, strict=True):
                    if "error" in record:  # its first try, in a bundle: the others it may still have, alone
                        if self.retries:
                            pending[submit([task], self.retries - 1)] = [task]
                        else:
                            failures.append(f"{task.label or task.key}: {record['error']}")
                        continue
                    store = record.pop("store", {})
                    self.ledger.completed(stage, task.key, record)
                    self.ran[stage] += 1
                    costs.add(record["costs"], reads[task.key])
                    self.store[costs_as] += Counter(store)
                    progress.update(record["summary"])
        costs.seconds += time.perf_counter() - started
        if failures:
            more = f"; and {len(failures) - 3} more" if len(failures) > 3 else ""
            raise TaskFailed(f"{stage}: {len(failures)} task(s) failed: " + "; ".join(failures[:3]) + more)

    def sizes(self, names: Iterable[str]) -> dict[str, int]:
        """The files' sizes by path, as their producers recorded them, for `known_sizes` (manifests/layout.py): on
        an object store they spare a HEAD per file opened; a local file is opened without one."""
        return {} if self.layout.is_local else {self.layout.path(name): self.ledger.size(name) for name in names}

    def ensure(self, names: Iterable[str]) -> None:
        """Verify, once each, these files of the tree that an earlier build wrote (inputs of tasks about to run,
        or what the driver reads: the pool it summarizes, the stats and rejects of the manifest); run again the
        producers of those that are damaged or missing."""
        names = sorted({name for name in names if name not in self.ledger.trusted})
        unknown = [name for name in names if name not in self.ledger.producers]
        if unknown:
            raise TaskFailed(f"{self.layout.url_of(unknown[0])}: read by a task, but no task of this build writes it")
        if damaged := self.ledger.verify({name: self.ledger.producers[name][2] for name in names}):
            self._repair(damaged)

    def _repair(self, damaged: dict[str, str]) -> None:
        """Run again the tasks that wrote the damaged files (their own inputs checked in turn)."""
        by_stage: dict[str, dict[str, Task]] = defaultdict(dict)
        problems: dict[str, list[str]] = defaultdict(list)
        for name, problem in sorted(damaged.items()):
            producer = self.ledger.producers.get(name)
            if producer is None:
                raise TaskFailed(f"{self.layout.url_of(name)}: {problem}, and no task of this build writes it")
            stage, key, _ = producer
            by_stage[stage][key] = self.tasks[(stage, key)]
            problems[stage].append(f"{self.layout.url_of(name)} {problem}")
        for stage, tasks in by_stage.items():
            more = f" (and {len(problems[stage]) - 1} more)" if len(problems[stage]) > 1 else ""
            log.warning("%s%s: running %d %s task(s) again", problems[stage][0], more, len(tasks), stage)
            old = {key: self.ledger.done[stage].pop(key) for key in tasks if key in self.ledger.done[stage]}
            try:
                self._execute(stage, list(tasks.values()), old, stage)
            finally:
                self.ledger.settle(stage)
