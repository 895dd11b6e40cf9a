"""Which files each task of a build wrote, as its completion marker records them, and which of them can be trusted.

A task's marker, `_done/<stage>/<key>.json`, is the last file it writes, holding:
    fingerprint  sha256 of the task's function, its arguments (the configuration it uses), the checksums of
                 the output-tree files it reads, and the identity of the upstream files it reads
    outputs      every file it wrote, with its checksum
    sizes        the bytes of each of those files
    summary      the small dict the task returned
    costs        what the task cost (pipeline/progress.py)
A file of the tree is trusted once a task of this build wrote it or it matched its producer's checksum.
"""

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from manifests.layout import Layout, Written, recording
from pipeline.fingerprint import FORMATS, digest

if TYPE_CHECKING:
    from pipeline.runner import Task

log = logging.getLogger(__name__)
VERIFY_BATCH = 64  # files one verification task reads


class TaskFailed(RuntimeError):
    """A task failed on every try, or a file a task reads is damaged and no task of this build writes it."""


@dataclass(frozen=True)
class Done:
    """A completed task, as its marker records it."""

    fingerprint: str
    outputs: dict[str, str]
    summary: dict
    sizes: dict[str, int] = field(default_factory=dict)  # of the outputs (markers older than this lack them)

    @classmethod
    def from_record(cls, record: dict) -> "Done":
        return cls(record["fingerprint"], record["outputs"], record["summary"], record.get("sizes", {}))


def write_marker(layout: Layout, marker: str, fingerprint: str, written: Written, summary: dict,
                 stale: list[str], costs: dict | None = None) -> dict:
    """Drop the outputs of an earlier run of the task that it no longer writes, then write its marker; returns
    the marker's record."""
    for name in stale:
        if name not in written:
            layout.delete(name)
    record = {"fingerprint": fingerprint, "outputs": dict(sorted(written.items())), "summary": summary,
              "sizes": dict(sorted(written.sizes.items())), "costs": costs or {}}
    layout.write_text(marker, json.dumps(record, sort_keys=True, default=str))
    return record


def _verify_outputs(layout: Layout, outputs: dict[str, str]) -> dict[str, str]:
    return {name: problem for name, expected in outputs.items() if (problem := layout.verify(name, expected))}


class Ledger:
    """A build's account of the markers: each stage's completed tasks, the task that wrote each file (with its
    checksum and size), the files it can trust, and the stages it asked for."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.done: dict[str, dict[str, Done]] = defaultdict(dict)  # stage -> key -> its marker
        self.producers: dict[str, tuple[str, str, str]] = {}  # file name -> (stage, key, checksum)
        self.trusted: set[str] = set()  # files written or verified in this build
        self.sizes: dict[str, int] = {}  # file name -> bytes, as the tasks that wrote it recorded
        self.asked: set[str] = set()  # stages run (or found done) in this build

    def markers(self, stage: str) -> dict[str, Done]:
        """The stage's markers in the tree (this build's or an earlier one's) by task key."""
        found = {}
        for name in self.layout.glob(Layout.markers_glob(stage)):
            try:
                done = Done.from_record(json.loads(self.layout.read_text(name)))
            except (ValueError, KeyError, TypeError, FileNotFoundError):
                continue  # unreadable or from an older layout: the task runs again
            found[Layout.MARKER.parse(name)["key"]] = done
        return found

    def earlier_stages(self, pattern: str) -> list[str]:
        """The stages matching a glob that have markers in the tree but that this build did not ask for."""
        marked = {Layout.MARKER.parse(name)["stage"] for name in self.layout.glob(Layout.markers_glob(pattern))}
        return sorted(marked - self.asked)

    def remove(self, stage: str, key: str, done: Done) -> None:
        """Delete a task's outputs and its marker."""
        for name in done.outputs:
            self.layout.delete(name)
        self.layout.delete(Layout.marker(stage, key))

    def drop_stages(self, prefix: str) -> None:
        """Remove the markers and outputs of stages named `<prefix>*` that this build did not ask for (a step an
        earlier build ran for data that has since changed, as dedup's rounds): the tree stays what a fresh build
        of the same inputs writes."""
        for stage in self.earlier_stages(f"{prefix}*"):
            for key, done in self.markers(stage).items():
                self.remove(stage, key, done)
            log.info("%s: removed, no longer part of the build", stage)

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
        for problems in ray.get([verify.remote(self.layout, {n: files[n] for n in batch}) for batch in batches]):
            damaged.update(problems)
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
        record = write_marker(self.layout, Layout.marker(stage, "driver"), "", written, summary,
                              list(old.outputs) if old else [])
        self.asked.add(stage)
        self.register(stage, "driver", Done.from_record(record), written_now=True)

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
