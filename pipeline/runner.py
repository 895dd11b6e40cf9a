"""Places tasks on Ray: an embedded local Ray by default, a cluster when RAY_ADDRESS (or --ray-address) is set.

The runner only schedules. Each task is a plain function that writes its own outputs atomically; the runner
wraps it so that a completion marker (holding the task's small summary) is written last. A rerun skips every
task whose marker exists, which makes builds resumable.
"""

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from manifests.writer import write_text

log = logging.getLogger(__name__)


class TaskFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Task:
    key: str  # unique within its stage, safe as a file name
    fn: Callable[..., dict]
    kwargs: dict = field(default_factory=dict)
    # Called with the error once the retries are spent: records the input as quarantined and returns the
    # task's summary, so the stage goes on. Without it, a failing task fails the stage.
    on_failure: Callable[[str], dict] | None = None
    size: int = 0  # bytes of input: the biggest tasks start first, so none is left running alone at the end


def _run_task(fn: Callable[..., dict], kwargs: dict, marker: str) -> dict:
    summary = fn(**kwargs)
    write_text(Path(marker), json.dumps(summary, sort_keys=True))
    return summary


class Runner:
    """Context manager around a Ray session; `run(stage, tasks)` executes tasks not yet completed."""

    def __init__(self, out: Path, workers: int = 2, address: str | None = None, object_store_mb: int = 200,
                 retries: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.out = out
        self.workers = workers
        self.address = address or os.environ.get("RAY_ADDRESS")
        self.object_store_mb = object_store_mb
        self.retries = retries
        self._started = False

    def __enter__(self) -> "Runner":
        import ray

        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, logging_level=logging.WARNING)
            else:
                # address="local": a new embedded Ray, even where `ray start` left a cluster on this machine
                ray.init(address="local", num_cpus=self.workers, include_dashboard=False,
                         logging_level=logging.WARNING, object_store_memory=self.object_store_mb * 2**20)
            self._started = True
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        if self._started:
            ray.shutdown()

    def marker(self, stage: str, key: str) -> Path:
        return self.out / "_done" / stage / f"{key}.json"

    def run(self, stage: str, tasks: list[Task]) -> dict[str, dict]:
        """Run the tasks of one stage; return every task's summary (completed earlier or now) by key."""
        import ray

        summaries: dict[str, dict] = {}
        todo = []
        for task in tasks:
            marker = self.marker(stage, task.key)
            if marker.exists():
                summaries[task.key] = json.loads(marker.read_text())
            else:
                todo.append(task)
        log.info("%s: %d tasks, %d already done, %d to run", stage, len(tasks), len(summaries), len(todo))
        if not todo:
            return summaries
        todo.sort(key=lambda task: -task.size)
        remote = ray.remote(_run_task).options(num_cpus=1, max_retries=self.retries, retry_exceptions=True)
        pending = {remote.remote(t.fn, t.kwargs, str(self.marker(stage, t.key))): t for t in todo}
        failures = []
        with Progress(stage, len(todo)) as progress:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                task = pending.pop(ready[0])
                try:
                    summaries[task.key] = ray.get(ready[0])
                except (ray.exceptions.RayTaskError, ray.exceptions.WorkerCrashedError) as error:
                    cause = " ".join(repr(getattr(error, "cause", None) or error).split())[:500]
                    if task.on_failure is None:
                        failures.append(f"{task.key}: {cause}")
                        continue
                    log.warning("%s: task %s failed after %d retries, quarantined: %s", stage, task.key,
                                self.retries, cause)
                    summaries[task.key] = task.on_failure(cause)
                    write_text(self.marker(stage, task.key), json.dumps(summaries[task.key], sort_keys=True))
                progress.update(summaries[task.key])
        if failures:
            more = f"; and {len(failures) - 3} more" if len(failures) > 3 else ""
            raise TaskFailed(f"{stage}: {len(failures)} task(s) failed: " + "; ".join(failures[:3]) + more)
        return summaries


class Progress:
    """A bar per stage on a terminal; plain log lines (about every 10% of tasks) in logs and CI."""

    def __init__(self, stage: str, total: int) -> None:
        self.stage = stage
        self.total = total
        self.done = 0
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
            log.info("%s: %d/%d tasks%s", self.stage, self.done, self.total, f" ({text})" if text else "")
