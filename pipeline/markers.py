"""Which files each task of a build wrote, as the driver records them, and which of them can be trusted.

A task's marker (`task_record`: what the task returns to the driver, its record) holds:
    fingerprint  sha256 of the task's function, its arguments (the configuration it uses), the checksums of
                 the output-tree files it reads, and the identity of the upstream files it reads
    outputs      every file it wrote, with its checksum
    sizes        the bytes of each of those files
    summary      the small dict the task returned
    stats        its counters (STATS rows without `task`: documents read, kept and rejected per stage, language
                 and reason), which the manifest sums
    costs        what the task cost (pipeline/progress.py)
Only the driver writes them to the tree, a few objects per stage, not one per task (on an object store each
object is requests, billed and waited on):
    _done/<stage>/index.json         {"records": key -> record, "folded": N}: the stage's completed tasks
    _done/<stage>/batch-<n>.json     {"records": ..., "removed": [key, ...]}: what changed since the index:
                                     tasks completed (written every BATCH_SECONDS or BATCH_TASKS while the
                                     stage runs, so a killed build loses at most that much finished work) and
                                     tasks about to run again (removed before they start, so a build killed
                                     while one reruns does not take its old record for done)
When a stage ends (done, failed or interrupted), the driver folds its batches into the index and deletes them; a
build killed before that leaves them, and the next one reads the index, then the batches numbered above
`folded`, in order. The whole `_done` folder is listed once per build (`Markers`), and each stage's objects are
read once. A file of the tree is trusted once a task of this build wrote it or it matched its producer's
checksum.
"""

import fnmatch
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from manifests.layout import Layout, Written, recording
from manifests.store import COUNTS
from pipeline.fingerprint import FORMATS, digest

if TYPE_CHECKING:
    from pipeline.runner import Task

log = logging.getLogger(__name__)
VERIFY_BATCH = 64  # files one verification task reads
# A stage's completed tasks reach the tree in a batch at least this often (what a killed build can lose), and
# every this many tasks (a batch's size); a stage's batches become one index object when it ends.
BATCH_SECONDS, BATCH_TASKS = 2.0, 1000


class TaskFailed(RuntimeError):
    """A task failed on every try, or a file a task reads is damaged and no task of this build writes it."""


@dataclass(frozen=True)
class Done:
    """A completed task, as its marker records it."""

    fingerprint: str
    outputs: dict[str, str]
    summary: dict
    sizes: dict[str, int] = field(default_factory=dict)  # of the outputs (markers older than this lack them)
    stats: list[dict] = field(default_factory=list)  # its counters (markers older than this lack them: their
    # tasks wrote them to files, and count by a code digest that no longer matches, so they run again)

    @classmethod
    def from_record(cls, record: dict) -> "Done":
        return cls(record["fingerprint"], record["outputs"], record["summary"], record.get("sizes", {}),
                   record.get("stats", []))


def task_record(fingerprint: str, written: Written, summary: dict, costs: dict | None = None,
                stats: list[dict] | None = None) -> dict:
    """What the driver records of a completed task."""
    return {"fingerprint": fingerprint, "outputs": dict(sorted(written.items())), "summary": summary,
            "sizes": dict(sorted(written.sizes.items())), "costs": costs or {}, **({"stats": stats} if stats else {})}


def drop_stale(layout: Layout, stale: Iterable[str], written: Written) -> None:
    """Delete the outputs of an earlier run of a task that it no longer writes."""
    for name in stale:
        if name not in written:
            layout.delete(name)


def _dumps(value: dict) -> str:
    """Markers as JSON without spaces: an index holds a record per task of its stage (up to ~10^5)."""
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


class Markers:
    """The `_done` folder: per stage, the index of its completed tasks and the batches written since. Listed once
    (only the driver writes there, so its own writes keep the listing current), each stage read once."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._listing: set[str] | None = None
        self._records: dict[str, dict[str, dict]] = {}  # stage -> key -> record, as the tree holds them
        self._batches: dict[str, list[str]] = {}  # stage -> its batches in the tree, oldest first
        self._last: dict[str, int] = {}  # stage -> the number of its last batch (written or folded)
        self._changed: set[str] = set()  # stages whose records differ from their index

    def listing(self) -> set[str]:
        if self._listing is None:
            self._listing = set(self.layout.files(Layout.MARKERS))
        return self._listing

    @staticmethod
    def _stage_of(name: str) -> str | None:
        fields = Layout.MARKER_INDEX.parse(name) or Layout.MARKER_BATCH.parse(name)
        return str(fields["stage"]) if fields else None

    def stages(self) -> set[str]:
        """The stages with records in the tree."""
        return {stage for name in self.listing() if (stage := self._stage_of(name))}

    def strays(self) -> list[str]:
        """Files of the folder that are no stage's index or batch (one marker per task, an older layout)."""
        return sorted(name for name in self.listing() if self._stage_of(name) is None)

    def _read(self, name: str) -> dict:
        try:
            return json.loads(self.layout.read_text(name))
        except (ValueError, FileNotFoundError):
            return {}  # unreadable: the stage's tasks run again

    def load(self, stage: str) -> dict[str, dict]:
        """The stage's records by task key: its index, then the batches written after it."""
        if stage not in self._records:
            index = self._read(Layout.marker_index(stage)) if Layout.marker_index(stage) in self.listing() else {}
            records, folded = dict(index.get("records", {})), int(index.get("folded", 0))
            batches = sorted((fields["batch"], name) for name in self.listing()
                             if (fields := Layout.MARKER_BATCH.parse(name)) and fields["stage"] == stage)
            for number, name in batches:
                if number > folded:  # those at or below it were folded by a build killed before deleting them
                    batch = self._read(name)
                    for key in batch.get("removed", []):
                        records.pop(key, None)
                    records.update(batch.get("records", {}))
            self._records[stage] = records
            self._batches[stage] = [name for _, name in batches]
            self._last[stage] = max([folded, *(number for number, _ in batches)])
            if self._last[stage] > folded:  # a killed build's batches: folded into the index when the stage ends
                self._changed.add(stage)
        return self._records[stage]

    def add(self, stage: str, records: dict[str, dict], removed: Iterable[str] = (), durable: bool = True) -> None:
        """Take these records (new, or replacing a key's) and remove these keys; `durable`: written now, as a
        batch, rather than with the stage's index when it is folded."""
        current = self.load(stage)
        removed = sorted(key for key in removed if key in current and key not in records)
        if not records and not removed:
            return
        for key in removed:
            del current[key]
        current.update(records)
        self._changed.add(stage)
        if durable:
            self._last[stage] += 1
            name = Layout.marker_batch(stage, self._last[stage])
            self.layout.write_text(name, _dumps({"records": records, "removed": removed}))
            self.listing().add(name)
            self._batches[stage].append(name)

    def fold(self, stage: str) -> None:
        """Write the stage's index anew if its records changed, then delete its batches."""
        if stage in self._changed:
            index = Layout.marker_index(stage)
            self.layout.write_text(index, _dumps({"records": self._records[stage], "folded": self._last[stage]}))
            self.listing().add(index)
            self._changed.discard(stage)
        for name in self._batches.get(stage, []):
            self.layout.delete(name)
            self.listing().discard(name)
        self._batches[stage] = []

    def drop(self, stage: str) -> None:
        """Delete the stage's records: its batches first, so that none outlives the index it follows."""
        self.load(stage)
        for name in [*self._batches[stage], Layout.marker_index(stage)]:
            if name in self.listing():
                self.layout.delete(name)
                self.listing().discard(name)
        self._records[stage], self._batches[stage] = {}, []
        self._changed.discard(stage)


def recorded(layout: Layout, stage: str) -> dict[str, dict]:
    """The records of a stage's completed tasks that the tree holds now, as the next build reads them."""
    return Markers(layout).load(stage)


def _verify_outputs(layout: Layout, outputs: dict[str, str]) -> tuple[dict[str, str], dict[str, int]]:
    """The damaged or missing files, and the requests to the store that reading them took (a Ray worker's own
    count, which the driver adds to its stage's)."""
    before = COUNTS.snapshot()
    problems = {name: problem for name, expected in outputs.items() if (problem := layout.verify(name, expected))}
    return problems, dict(COUNTS.snapshot() - before)


class Ledger:
    """A build's account of the markers: each stage's completed tasks, the task that wrote each file (with its
    checksum and size), the files it can trust, and the stages it asked for."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.index = Markers(layout)  # the records in the tree
        self.done: dict[str, dict[str, Done]] = defaultdict(dict)  # stage -> key -> its marker
        self.producers: dict[str, tuple[str, str, str]] = {}  # file name -> (stage, key, checksum)
        self.trusted: set[str] = set()  # files written or verified in this build
        self.sizes: dict[str, int] = {}  # file name -> bytes, as the tasks that wrote it recorded
        self.asked: set[str] = set()  # stages run (or found done) in this build
        self._unwritten: dict[str, dict[str, dict]] = defaultdict(dict)  # stage -> records of tasks completed in
        # this build and not yet in the tree
        self._since: dict[str, float] = {}  # stage -> when the oldest of them came (time.monotonic)

    def markers(self, stage: str) -> dict[str, Done]:
        """The stage's markers in the tree (this build's or an earlier one's) by task key."""
        found = {}
        for key, record in self.index.load(stage).items():
            try:
                found[key] = Done.from_record(record)
            except (KeyError, TypeError):
                continue  # from an older layout: the task runs again
        return found

    def earlier_stages(self, pattern: str) -> list[str]:
        """The stages matching a glob that have markers in the tree but that this build did not ask for."""
        return sorted(stage for stage in self.index.stages() - self.asked if fnmatch.fnmatchcase(stage, pattern))

    def remove(self, stage: str, dones: dict[str, Done]) -> None:
        """Delete the outputs of these completed tasks, then their markers."""
        for done in dones.values():
            for name in done.outputs:
                self.layout.delete(name)
        self.index.add(stage, {}, removed=dones)

    def drop_stages(self, prefix: str) -> None:
        """Remove the markers and outputs of stages named `<prefix>*` that this build did not ask for (a step an
        earlier build ran for data that has since changed, as dedup's rounds): the tree stays what a fresh build
        of the same inputs writes. A file a task of this build wrote again stays (dedup's one-task clustering
        writes the files its partitioned steps wrote)."""
        for stage in self.earlier_stages(f"{prefix}*"):
            for done in self.markers(stage).values():
                for name in done.outputs:
                    if name not in self.producers:
                        self.layout.delete(name)
            self.index.drop(stage)
            log.info("%s: removed, no longer part of the build", stage)

    def sweep(self, folders: Iterable[str], keep: Iterable[str] = ()) -> None:
        """Remove the files under these folders that no task of this build wrote and `keep` does not name: what a
        killed run or a hand left there (a shard of an earlier build with more shards), so that each folder holds
        exactly what the build's records list; and the files of the markers' folder that are no stage's records
        (markers of an older layout)."""
        known = set(self.producers) | set(keep)
        stray = [name for folder in folders for name in self.layout.files(folder) if name not in known]
        stray += self.index.strays()
        for name in stray:
            self.layout.delete(name)
        self.index.listing().difference_update(stray)
        if stray:
            log.info("removed %d file(s) no task of this build wrote, such as %s", len(stray),
                     self.layout.url_of(stray[0]))

    def retire(self, stage: str, keys: Iterable[str]) -> None:
        """Remove from the tree the markers of tasks about to run again, before they start: a build killed while
        they run does not take their old outputs for done."""
        self.index.add(stage, {}, removed=keys)

    def completed(self, stage: str, key: str, record: dict) -> Done:
        """Take a task that ran in this build into the account; its record reaches the tree with the next batch."""
        done = Done.from_record(record)
        self.register(stage, key, done, written_now=True)
        self._unwritten[stage][key] = record
        self._since.setdefault(stage, time.monotonic())
        return done

    def flush(self, stage: str) -> None:
        """Write the stage's unwritten records as a batch once there are BATCH_TASKS of them or the oldest is
        BATCH_SECONDS old: what a killed build loses of the work done."""
        unwritten = self._unwritten[stage]
        if unwritten and (len(unwritten) >= BATCH_TASKS or time.monotonic() - self._since[stage] >= BATCH_SECONDS):
            self.index.add(stage, self._unwritten.pop(stage))
            del self._since[stage]

    def settle(self, stage: str) -> None:
        """The stage ends (its tasks done, failed or interrupted): its records go into its index, one object."""
        self.index.add(stage, self._unwritten.pop(stage, {}), durable=False)
        self._since.pop(stage, None)
        self.index.fold(stage)

    def register(self, stage: str, key: str, done: Done, written_now: bool = False) -> None:
        """Take a completed task into the account; `written_now`: it ran in this build, so its outputs are
        trusted without reading them."""
        self.done[stage][key] = done
        for name, checksum in done.outputs.items():
            self.producers[name] = (stage, key, checksum)
        self.sizes.update(done.sizes)
        if written_now:
            self.trusted.update(done.outputs)

    def fingerprint(self, task: "Task") -> str:
        reads = {name: self.producers[name][2] if name in self.producers else None for name in task.inputs}
        return digest([task.fn, task.kwargs, reads, task.identity, FORMATS])

    def stats(self, stages: Iterable[str]) -> list[dict]:
        """The counters of these stages' completed tasks, each row naming its task by key."""
        return [row | {"task": key} for stage in stages for key, done in sorted(self.done[stage].items())
                for row in done.stats]

    def outputs(self, stage: str) -> dict[str, str]:
        return {name: checksum for done in self.done[stage].values() for name, checksum in done.outputs.items()}

    def size(self, name: str) -> int:
        """Bytes of a file of the tree, as the task that wrote it recorded (the store is asked only for files of
        markers older than that)."""
        if name not in self.sizes:
            self.sizes[name] = self.layout.size(name)
        return self.sizes[name]

    def verify(self, files: dict[str, str]) -> dict[str, str]:
        """Check files against their checksums, in parallel Ray tasks of VERIFY_BATCH files; those that pass are
        trusted for the rest of the build. Returns the damaged or missing ones, with what is wrong."""
        import ray

        verify = ray.remote(_verify_outputs).options(num_cpus=1)
        names = sorted(files)
        batches = [names[i:i + VERIFY_BATCH] for i in range(0, len(names), VERIFY_BATCH)]
        damaged: dict[str, str] = {}
        for problems, counts in ray.get([verify.remote(self.layout, {n: files[n] for n in batch})
                                         for batch in batches]):
            damaged.update(problems)
            for kind, n in counts.items():  # counted as the driver's, in the stage (or the build's part) it serves
                COUNTS.add(kind, n)
        self.trusted.update(name for name in names if name not in damaged)
        return damaged

    def forget_damaged(self, stage: str) -> list[str]:
        """The keys of the stage's completed tasks whose outputs are damaged or missing, no longer counted as
        done: they run again."""
        damaged = self.verify(self.outputs(stage))
        keys = sorted({self.producers[name][1] for name in damaged})
        for key in keys:
            log.warning("%s: %s: %s: writing it again", stage, key, "; ".join(
                f"{name} {problem}" for name, problem in damaged.items() if self.producers[name][1] == key))
            del self.done[stage][key]
        return keys

    def record(self, stage: str, fn: Callable[..., dict | None], **kwargs: Any) -> None:
        """Run a step in the driver (the manifest) and leave a marker of what it wrote, as a task's, so that later
        builds verify those files before reading them."""
        old = self.markers(stage).get("driver")
        with recording() as written:
            summary = fn(**kwargs) or {}
        drop_stale(self.layout, old.outputs if old else [], written)
        record = task_record("", written, summary)
        self.asked.add(stage)
        self.register(stage, "driver", Done.from_record(record), written_now=True)
        self.index.add(stage, {"driver": record}, durable=False)
        self.index.fold(stage)

    def verify_earlier(self, wanted: Callable[[str], bool]) -> None:
        """Verify the files `wanted` picks among the outputs of stages this build did not run (another phase's
        manifest and rejects, which the catalog reads); a damaged or missing one fails the build, naming it and
        the stage that wrote it (building that phase again writes it anew)."""
        files = {name: (stage, checksum) for stage in self.earlier_stages("*")
                 for done in self.markers(stage).values()
                 for name, checksum in done.outputs.items() if wanted(name)}
        if damaged := self.verify({name: checksum for name, (_, checksum) in files.items()}):
            name, problem = sorted(damaged.items())[0]
            raise TaskFailed(f"{self.layout.url_of(name)}: {problem}; written by stage {files[name][0]} of an "
                             "earlier build: build that phase again to write it anew")
