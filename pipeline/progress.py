"""What a stage's tasks cost (seconds, bytes read, memory), how much memory a task may ask for, and how far along
a stage is."""

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)
MIN_TASK_MEMORY, MAX_DEFAULT_TASK_MEMORY = 256 << 20, 8 << 30
LOG_EVERY_S = 10  # the fewest seconds between two progress lines of a stage in a log


@dataclass
class StageCosts:
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

    def add(self, costs: dict, reads: dict[str, int]) -> None:
        """One task that ran: the costs its marker records, and the sizes of what it read, by a name unique within
        this stage (a step that reads what an earlier step of the same stage read counts it again as an input)."""
        self.tasks += 1
        self.task_seconds += float(costs.get("seconds") or 0.0)
        self.read_bytes += sum(reads.values())
        self.inputs.update(reads)
        self.peak_rss_mb = max(self.peak_rss_mb, float(costs.get("peak_rss_mb") or 0.0))
        self.rss_growth_mb = max(self.rss_growth_mb, float(costs.get("rss_growth_mb") or 0.0))

    def to_dict(self) -> dict:
        input_bytes = sum(self.inputs.values())
        return dict(tasks=self.tasks, seconds=round(self.seconds, 3), task_seconds=round(self.task_seconds, 3),
                    read_bytes=self.read_bytes, input_bytes=input_bytes,
                    read_amplification=round(self.read_bytes / input_bytes, 3) if input_bytes else None,
                    peak_rss_mb=self.peak_rss_mb, rss_growth_mb=self.rss_growth_mb)


@contextlib.contextmanager
def measured() -> Iterator[dict]:
    """What the block costs, filled in when it ends: seconds, peak RSS and how much it grew this process's RSS."""
    costs: dict = {}
    started = time.perf_counter()
    _reset_peak_rss()
    before = _rss_mb("VmRSS")
    yield costs
    peak = _rss_mb("VmHWM")
    costs.update(peak_rss_mb=peak, rss_growth_mb=round(peak - before, 1) if peak and before else None,
                 seconds=round(time.perf_counter() - started, 3))


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


def fit_task_memory(wanted: int | None) -> int:
    """The memory each task asks Ray for: `wanted`, which the largest node must hold, or by default the smallest
    node's memory per CPU (so that every CPU of every node can run a task), within 256 MiB-8 GiB."""
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


class Progress:
    """A bar per stage on a terminal; plain log lines in logs and CI: about every 10% of tasks, at most one per
    LOG_EVERY_S (a stage of a few seconds logs its last line alone), and the last. A `quiet` stage (a step of a
    larger one) has no bar and logs at DEBUG."""

    def __init__(self, stage: str, total: int, quiet: bool = False) -> None:
        self.stage = stage
        self.total = total
        self.done = 0
        self.started = self.logged = time.monotonic()
        self.counts: dict[str, int] = {}
        self.level = logging.DEBUG if quiet else logging.INFO
        shown = sys.stderr.isatty() and not quiet
        self.bar = tqdm(total=total, desc=stage, unit="task", file=sys.stderr) if shown else None

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
            return
        now = time.monotonic()
        if self.done == self.total or (self.done % max(1, self.total // 10) == 0 and now - self.logged >= LOG_EVERY_S):
            self.logged = now
            log.log(self.level, "%s: %s", self.stage, self.line(now - self.started))

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
