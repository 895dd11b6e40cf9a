"""Places tasks on Ray (an embedded local Ray by default, a cluster when RAY_ADDRESS or --ray-address is set) and
keeps a build a function of its inputs.

A task is a plain function that writes its own outputs through the output layout (manifests/layout.py), which
records each file's checksum. The runner wraps it so that a completion marker, `_done/<stage>/<key>.json`, is
written last, holding:
    fingerprint  sha256 of the task's function, its arguments (the configuration it uses), the checksums of
                 the output-tree files it reads, and the identity of the upstream files it reads
    outputs      every file it wrote, with its checksum
    summary      the small dict the task returned
A rerun skips a task whose marker holds the same fingerprint. A task whose fingerprint changed runs again and
its old outputs that it no longer writes are removed; the tasks downstream of it see new checksums, so they
run again too. Markers of tasks no longer asked for (a removed input) go, with their outputs. Before tasks
run, the files they read that an earlier build wrote are checked (once each) against the checksums their
producers recorded: a damaged or missing one makes its producer run again first, or, when no task of this build
makes it, fails naming the file.
"""

import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from manifests.layout import TASK_MEMORY, Layout, Written, recording
from pipeline.fingerprint import FORMATS, Shared, digest

log = logging.getLogger(__name__)
VERIFY_BATCH = 64  # files one verification task reads
SYSTEM_RETRIES = 3  # a task lost with its node (beyond Ray's own retries) is placed again this many times
MIN_TASK_MEMORY, MAX_DEFAULT_TASK_MEMORY = 256 << 20, 8 << 30


@dataclass
class StageStats:
    """What a stage's tasks that ran cost: wall seconds of the stage, the tasks' own seconds, the bytes they read
    against the bytes of their distinct inputs (read amplification), the largest peak RSS of a task, and the
    most a task grew its worker's RSS (what it held itself: a worker keeps memory an earlier task left)."""

    tasks: int = 0
    seconds: float = 0.0
    task_seconds: float = 0.0
    read_bytes: int = 0
    inputs: dict[str, int] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    rss_growth_mb: float = 0.0

    def add(self, costs: dict, read: tuple[int, dict[str, int]]) -> None:
        self.tasks += 1
        self.task_seconds += float(costs.get("seconds") or 0.0)
        self.read_bytes += read[0]
        self.inputs.update(read[1])
        self.peak_rss_mb = max(self.peak_rss_mb, float(costs.get("peak_rss_mb") or 0.0))
        self.rss_growth_mb = max(self.rss_growth_mb, float(costs.get("rss_growth_mb") or 0.0))

    def to_dict(self) -> dict:
        input_bytes = sum(self.inputs.values())
        return dict(tasks=self.tasks, seconds=round(self.seconds, 3), task_seconds=round(self.task_seconds, 3),
                    read_bytes=self.read_bytes, input_bytes=input_bytes,
                    read_amplification=round(self.read_bytes / input_bytes, 3) if input_bytes else None,
                    peak_rss_mb=self.peak_rss_mb, rss_growth_mb=self.rss_growth_mb)


class TaskFailed(RuntimeError):
    pass


class Terminated(Exception):
    """SIGTERM reached the driver: stop scheduling, shut Ray down, exit 143."""


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


@dataclass(frozen=True)
class Done:
    """A completed task, as its marker records it."""

    fingerprint: str
    outputs: dict[str, str]
    summary: dict
    sizes: dict[str, int] = field(default_factory=dict)  # of the outputs (markers older than this lack them)


_shared_cache: dict[str, Any] = {}


def _resolve(value: Any) -> Any:
    if not isinstance(value, Shared):
        return value
    if value.digest not in _shared_cache:
        import ray

        _shared_cache[value.digest] = ray.get(value.ref)
    return _shared_cache[value.digest]


def _run_task(fn: Callable[..., dict], kwargs: dict, layout: Layout, marker: str, fingerprint: str,
              stale: list[str], memory: int) -> dict:
    """One task on a worker: run it within `memory` bytes, drop its outputs of an earlier run that it no longer
    writes, write its marker last. The marker also records what the task cost: seconds, peak RSS and how much
    it grew its worker's RSS."""
    started, token = time.perf_counter(), TASK_MEMORY.set(memory)
    _reset_peak_rss()
    before = _rss_mb("VmRSS")
    try:
        with recording() as written:
            summary = fn(**{name: _resolve(value) for name, value in kwargs.items()})
    finally:
        TASK_MEMORY.reset(token)
    peak = _rss_mb("VmHWM")
    costs = {"peak_rss_mb": peak, "rss_growth_mb": round(peak - before, 1) if peak and before else None,
             "seconds": round(time.perf_counter() - started, 3)}
    return _finish(layout, marker, fingerprint, written, summary, stale, costs)


def _reset_peak_rss() -> None:
    """Linux: the process's peak RSS restarts from its current RSS, so that the peak is this task's (a Ray
    worker runs many tasks)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _rss_mb(field: str) -> float | None:
    """VmRSS (now) or VmHWM (the peak) of this process, in MB, where /proc tells."""
    try:
        with open("/proc/self/status") as f:
            return round(int(next(line for line in f if line.startswith(field)).split()[1]) / 1024, 1)
    except (OSError, StopIteration):
        return None


def _finish(layout: Layout, marker: str, fingerprint: str, written: Written, summary: dict,
            stale: list[str], costs: dict | None = None) -> dict:
    for name in stale:
        if name not in written:
            layout.delete(name)
    record = {"fingerprint": fingerprint, "outputs": dict(sorted(written.items())), "summary": summary,
              "sizes": dict(sorted(written.sizes.items())), "costs": costs or {}}
    layout.write_text(marker, json.dumps(record, sort_keys=True, default=str))
    return record


def _verify_outputs(layout: Layout, outputs: dict[str, str]) -> dict[str, str]:
    return {name: problem for name, expected in outputs.items() if (problem := layout.verify(name, expected))}


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
        self._started = False
        self._sigterm: Any = None
        self.tasks: dict[tuple[str, str], Task] = {}  # every task asked for in this build
        self.done: dict[str, dict[str, Done]] = defaultdict(dict)  # stage -> key -> its marker
        self.producers: dict[str, tuple[str, str, str]] = {}  # file name -> (stage, key, checksum)
        self.trusted: set[str] = set()  # files written or verified in this build
        self.ran: dict[str, int] = defaultdict(int)  # stage -> tasks run in this build (repairs included)
        self.stats: dict[str, StageStats] = {}  # stage -> what its tasks that ran in this build cost
        self.sizes: dict[str, int] = {}  # file name -> bytes, as the tasks that wrote it recorded
        self.asked: set[str] = set()  # stages run (or found done) in this build

    def __enter__(self) -> "Runner":
        import ray

        if not ray.is_initialized():
            if self.address:
                from pipeline.cluster import check_answers

                check_answers(self.address)
                ray.init(address=self.address, logging_level=logging.WARNING)
            else:
                # address="local": a new embedded Ray, even where `ray start` left a cluster on this machine
                ray.init(address="local", num_cpus=self.workers, include_dashboard=False,
                         logging_level=logging.WARNING, object_store_memory=self.object_store_mb * 2**20)
            self._started = True
        self.task_memory = self._fit_task_memory(self.task_memory)
        if sys.platform != "win32" and _in_main_thread():
            self._sigterm = signal.signal(signal.SIGTERM, _raise_terminated)  # after Ray's own handler
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        if self._sigterm is not None:
            signal.signal(signal.SIGTERM, self._sigterm)
        if self._started:
            ray.shutdown()

    @staticmethod
    def _fit_task_memory(wanted: int | None) -> int:
        """The memory each task asks Ray for: `wanted`, which the largest node must hold, or by default the
        smallest node's memory per CPU (so that every CPU of every node can run a task), within 256 MiB-8 GiB."""
        import ray

        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive") and node["Resources"].get("CPU")]
        if not nodes:
            return wanted or MIN_TASK_MEMORY
        largest = max(int(node.get("memory", 0)) for node in nodes)
        if wanted is not None:
            if wanted > largest:
                raise ValueError(f"task memory {wanted / 2**30:.2f} GiB exceeds the largest node's "
                                 f"{largest / 2**30:.2f} GiB: no node could run a task")
            return wanted
        per_cpu = min(int(node.get("memory", 0) / node["CPU"]) for node in nodes)
        return max(MIN_TASK_MEMORY, min(MAX_DEFAULT_TASK_MEMORY, per_cpu))

    def share(self, value: Any) -> Shared:
        import ray

        return Shared(ray.put(value), digest(value))

    def fingerprint(self, task: Task) -> str:
        reads = {name: self.producers[name][2] if name in self.producers else None for name in task.inputs}
        return digest([task.fn, task.kwargs, reads, task.identity, FORMATS])

    def outputs(self, stage: str) -> dict[str, str]:
        return {name: checksum for done in self.done[stage].values() for name, checksum in done.outputs.items()}

    def _markers(self, stage: str) -> dict[str, Done]:
        found = {}
        for name in self.layout.glob(f"{Layout.MARKERS}/{stage}/*.json"):
            try:
                record = json.loads(self.layout.read_text(name))
                done = Done(record["fingerprint"], record["outputs"], record["summary"], record.get("sizes", {}))
            except (ValueError, KeyError, TypeError, FileNotFoundError):
                continue  # unreadable or from an older layout: the task runs again
            found[name.rsplit("/", 1)[1].removesuffix(".json")] = done
        return found

    def _stages(self, pattern: str) -> set[str]:
        """The stages matching a glob that have markers in the tree (this build's or an earlier one's)."""
        return {name.split("/")[-2] for name in self.layout.glob(f"{Layout.MARKERS}/{pattern}/*.json")}

    def _register(self, stage: str, key: str, done: Done) -> None:
        self.done[stage][key] = done
        for name, checksum in done.outputs.items():
            self.producers[name] = (stage, key, checksum)
        self.sizes.update(done.sizes)

    def run(self, stage: str, tasks: list[Task], final: bool = False, costs_as: str | None = None) -> dict[str, dict]:
        """Run the tasks of one stage; return every task's summary (done earlier or now) by key. `final`: the
        stage's outputs are the build's results (shards): verify them even when their tasks are skipped.
        `costs_as`: the stage whose costs these tasks add to (a step of a larger one, as dedup's rounds)."""
        self.asked.add(stage)
        markers = self._markers(stage)
        wanted = {task.key for task in tasks}
        stale = sorted(set(markers) - wanted)
        for key in stale:
            for name in markers[key].outputs:
                self.layout.delete(name)
            self.layout.delete(Layout.marker(stage, key))
        if stale:
            log.info("%s: removed the outputs of %d task(s) no longer asked for", stage, len(stale))
        todo = []
        for task in tasks:
            self.tasks[(stage, task.key)] = task
            old = markers.get(task.key)
            if old is not None and old.fingerprint == self.fingerprint(task):
                self._register(stage, task.key, old)
            else:
                todo.append(task)
        if final and self.done[stage]:
            todo += self._damaged_outputs(stage, {t.key: t for t in tasks})
        log.info("%s: %d tasks, %d already done, %d to run", stage, len(tasks), len(tasks) - len(todo), len(todo))
        self._execute(stage, todo, markers, costs_as or stage)
        return {key: self.done[stage][key].summary for key in sorted(wanted)}

    def drop_stages(self, prefix: str) -> None:
        """Remove the markers and outputs of stages named `<prefix>*` that this build did not ask for (a step an
        earlier build ran for data that has since changed, as dedup's rounds): the tree stays what a fresh build
        of the same inputs writes."""
        for stage in sorted(self._stages(f"{prefix}*") - self.asked):
            for key, done in self._markers(stage).items():
                for name in done.outputs:
                    self.layout.delete(name)
                self.layout.delete(Layout.marker(stage, key))
            log.info("%s: removed, no longer part of the build", stage)

    def _execute(self, stage: str, todo: list[Task], markers: dict[str, Done], costs_as: str) -> None:
        import ray

        if not todo:
            return
        self.ensure(name for task in todo for name in task.inputs)
        remote = ray.remote(_run_task)
        todo.sort(key=lambda task: -task.size)

        def submit(task: Task) -> Any:
            marker = Layout.marker(stage, task.key)
            old = markers.get(task.key)
            if old is not None:
                self.layout.delete(marker)  # a crash from here on leaves the task to run again
            memory = task.memory or self.task_memory
            return remote.options(num_cpus=1, memory=memory, max_retries=self.retries, retry_exceptions=True).remote(
                task.fn, task.kwargs, self.layout, marker, self.fingerprint(task), list(old.outputs) if old else [],
                memory)

        started = time.perf_counter()
        stats = self.stats.setdefault(costs_as, StageStats())
        pending = {submit(task): task for task in todo}
        lost: dict[str, int] = defaultdict(int)
        failures = []
        with Progress(stage, len(pending)) as progress:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                task = pending.pop(ready[0])
                try:
                    record = ray.get(ready[0])
                except ray.exceptions.RayTaskError as error:  # the task raised, on every try Ray gave it
                    cause = " ".join(repr(getattr(error, "cause", None) or error).split())[:500]
                    failures.append(f"{task.label or task.key}: {cause}")
                    continue
                except ray.exceptions.RayError as error:  # its worker or node died (OOM, a lost node): not its input
                    lost[task.key] += 1
                    if lost[task.key] > SYSTEM_RETRIES:
                        failures.append(f"{task.label or task.key}: {type(error).__name__} {SYSTEM_RETRIES + 1} times")
                        continue
                    log.warning("%s: task %s lost with its worker or node (%s): placing it again", stage, task.key,
                                type(error).__name__)
                    pending[submit(task)] = task
                    continue
                self._register(stage, task.key, Done(record["fingerprint"], record["outputs"], record["summary"],
                                                     record["sizes"]))
                self.trusted.update(record["outputs"])
                self.ran[stage] += 1
                stats.add(record["costs"], self._read_bytes(stage, task))
                progress.update(record["summary"])
        stats.seconds += time.perf_counter() - started
        if failures:
            more = f"; and {len(failures) - 3} more" if len(failures) > 3 else ""
            raise TaskFailed(f"{stage}: {len(failures)} task(s) failed: " + "; ".join(failures[:3]) + more)

    def size(self, name: str) -> int:
        """Bytes of a file of the tree, as the task that wrote it recorded (the store is asked only for files of
        markers older than that)."""
        if name not in self.sizes:
            self.sizes[name] = self.layout.size(name)
        return self.sizes[name]

    def _read_bytes(self, stage: str, task: Task) -> tuple[int, dict[str, int]]:
        """The bytes a task read (its inputs, and its upstream file), and its inputs' sizes by stage and name (a
        step that reads what an earlier step of the same costed stage read counts it again as its own input)."""
        sizes = {f"{stage}:{name}": self.size(name) for name in task.inputs}
        if task.identity:
            sizes[f"upstream:{task.key}"] = int(task.identity.get("size") or 0)
        return sum(sizes.values()), sizes

    def _verify(self, files: dict[str, str]) -> dict[str, str]:
        """Check files against their checksums, in parallel Ray tasks of VERIFY_BATCH files; those that pass are
        trusted for the rest of the build. Returns the damaged or missing ones, with what is wrong."""
        import ray

        verify = ray.remote(_verify_outputs).options(num_cpus=1)
        names = sorted(files)
        batches = [names[i:i + VERIFY_BATCH] for i in range(0, len(names), VERIFY_BATCH)]
        damaged: dict[str, str] = {}
        for problems in ray.get([verify.remote(self.layout, {n: files[n] for n in batch}) for batch in batches]):
            damaged.update(problems)
        self.trusted.update(name for name in names if name not in damaged)
        return damaged

    def _damaged_outputs(self, stage: str, tasks: dict[str, Task]) -> list[Task]:
        """The stage's skipped tasks whose outputs are damaged or missing: they run again."""
        damaged = self._verify(self.outputs(stage))
        keys = sorted({self.producers[name][1] for name in damaged})
        for key in keys:
            log.warning("%s: %s: %s: writing it again", stage, key, "; ".join(
                f"{name} {problem}" for name, problem in damaged.items() if self.producers[name][1] == key))
            del self.done[stage][key]
        return [tasks[key] for key in keys]

    def ensure(self, names: Iterable[str]) -> None:
        """Verify, once each, these files of the tree that an earlier build wrote (inputs of tasks about to run,
        or what the driver reads: the pool it summarizes, the stats and rejects of the manifest); run again the
        producers of those that are damaged or missing."""
        names = sorted({name for name in names if name not in self.trusted})
        unknown = [name for name in names if name not in self.producers]
        if unknown:
            raise TaskFailed(f"{self.layout.url_of(unknown[0])}: read by a task, but no task of this build writes it")
        if damaged := self._verify({name: self.producers[name][2] for name in names}):
            self._repair(damaged)

    def record(self, stage: str, fn: Callable[..., dict | None], **kwargs: Any) -> None:
        """Run a step in the driver (the manifest) and leave a marker of what it wrote, as a task's, so that later
        builds verify those files before reading them."""
        marker = Layout.marker(stage, "driver")
        old = self._markers(stage).get("driver")
        with recording() as written:
            summary = fn(**kwargs) or {}
        done = _finish(self.layout, marker, "", written, summary, list(old.outputs) if old else [])
        self.asked.add(stage)
        self._register(stage, "driver", Done(done["fingerprint"], done["outputs"], summary, done["sizes"]))
        self.trusted.update(written)

    def verify_earlier(self, wanted: Callable[[str], bool]) -> None:
        """Verify the files `wanted` picks among the outputs of stages this build did not run (another phase's
        manifest and rejects, which the catalog reads); a damaged or missing one fails the build, naming it and
        the stage that wrote it (building that phase again writes it anew)."""
        files = {name: (stage, checksum) for stage in sorted(self._stages("*") - self.asked)
                 for done in self._markers(stage).values()
                 for name, checksum in done.outputs.items() if wanted(name)}
        if damaged := self._verify({name: checksum for name, (_, checksum) in files.items()}):
            name, problem = sorted(damaged.items())[0]
            raise TaskFailed(f"{self.layout.url_of(name)}: {problem}; written by stage {files[name][0]} of an "
                             "earlier build: build that phase again to write it anew")

    def sweep(self, folders: Iterable[str], keep: Iterable[str] = ()) -> None:
        """Remove the files under these folders that no task of this build wrote and `keep` does not name: what a
        killed run or a hand left there (a shard of an earlier build with more shards), so that each folder holds
        exactly what the build's records list."""
        known = set(self.producers) | set(keep)
        stray = [name for folder in folders for name in self.layout.files(folder) if name not in known]
        for name in stray:
            self.layout.delete(name)
        if stray:
            log.info("removed %d file(s) no task of this build wrote, such as %s", len(stray),
                     self.layout.url_of(stray[0]))

    def _repair(self, damaged: dict[str, str]) -> None:
        """Run again the tasks that wrote the damaged files (their own inputs checked in turn)."""
        by_stage: dict[str, dict[str, Task]] = defaultdict(dict)
        problems: dict[str, list[str]] = defaultdict(list)
        for name, problem in sorted(damaged.items()):
            producer = self.producers.get(name)
            if producer is None:
                raise TaskFailed(f"{self.layout.url_of(name)}: {problem}, and no task of this build writes it")
            stage, key, _ = producer
            by_stage[stage][key] = self.tasks[(stage, key)]
            problems[stage].append(f"{self.layout.url_of(name)} {problem}")
        for stage, tasks in by_stage.items():
            more = f" (and {len(problems[stage]) - 1} more)" if len(problems[stage]) > 1 else ""
            log.warning("%s%s: running %d %s task(s) again", problems[stage][0], more, len(tasks), stage)
            old = {key: self.done[stage].pop(key) for key in tasks if key in self.done[stage]}
            self._execute(stage, list(tasks.values()), old, stage)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


class Progress:
    """A bar per stage on a terminal; plain log lines (about every 10% of tasks) in logs and CI."""

    def __init__(self, stage: str, total: int) -> None:
        self.stage = stage
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.counts: dict[str, int] = {}
        self.bar = tqdm(total=total, desc=stage, unit="task", file=sys.stderr) if sys.stderr.isatty() else None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, summary: dict) -> None:
        self.done += 1
        for name in ("docs", "tokens"):
            if name in summary:
                self.counts[name] = self.counts.get(name, 0) + int(summary[name])
        text = ", ".join(f"{k} {v:,}" for k, v in self.counts.items())
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)
        elif self.done == self.total or self.done % max(1, self.total // 10) == 0:
            log.info("%s: %s", self.stage, self.line(time.monotonic() - self.started))

    def line(self, elapsed: float) -> str:
        """`12/40 tasks (docs 3,400), 2.1 tasks/s, 810 docs/s, 13 s left` (a log line's progress)."""
        counts = ", ".join(f"{k} {v:,}" for k, v in self.counts.items())
        parts = [f"{self.done}/{self.total} tasks" + (f" ({counts})" if counts else "")]
        if elapsed > 0:
            parts.append(f"{self.done / elapsed:.1f} tasks/s")
            parts += [f"{value / elapsed:,.0f} {name}/s" for name, value in self.counts.items()]
            left = (self.total - self.done) * elapsed / self.done
            parts.append(f"{left:,.0f} s left" if self.done < self.total else f"done in {elapsed:,.1f} s")
        return ", ".join(parts)
