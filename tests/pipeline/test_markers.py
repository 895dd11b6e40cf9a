"""Task markers: a stage's completed tasks are one index object in the tree (with batches while it runs), read
back in order whatever point a build was killed at."""

import os
import signal
import subprocess
import sys
import time

import pytest

from manifests.layout import Layout
from pipeline import markers
from pipeline.markers import Markers, recorded
from pipeline.runner import Runner, Task
from stages.paths import PROJECT_ROOT as ROOT


def record(n: int) -> dict:
    return {"fingerprint": f"f{n}", "outputs": {}, "summary": {"n": n}, "sizes": {}, "costs": {}}


def test_batches_are_read_after_the_index_in_order_and_folded_into_it(tmp_path):
    layout = Layout(tmp_path / "out")
    store = Markers(layout)
    store.add("stage", {"a": record(1), "b": record(2)})
    store.add("stage", {"c": record(3)}, removed=["a"])  # a task about to run again: no longer done
    assert sorted(layout.files(Layout.MARKERS)) == [Layout.marker_batch("stage", 1), Layout.marker_batch("stage", 2)]
    assert recorded(layout, "stage") == {"b": record(2), "c": record(3)}  # as a build killed now leaves it
    store.fold("stage")
    assert layout.files(Layout.MARKERS) == [Layout.marker_index("stage")]
    assert recorded(layout, "stage") == {"b": record(2), "c": record(3)}


def test_batches_a_killed_fold_left_are_not_read_again(tmp_path):
    """Killed after writing the index, before deleting the batches it folded: a batch that removed a key must not
    bring back what a later one did, and the next batch numbers continue above the folded ones."""
    layout = Layout(tmp_path / "out")
    store = Markers(layout)
    store.add("stage", {"a": record(1)})
    store.add("stage", {}, removed=["a"])
    store.add("stage", {"a": record(4)})
    layout.write_text(Layout.marker_index("stage"), '{"folded": 2, "records": {}}')  # as if folded up to batch 2
    again = Markers(layout)
    assert again.load("stage") == {"a": record(4)}  # batch 3 only
    again.add("stage", {"b": record(5)})
    assert Layout.marker_batch("stage", 4) in layout.files(Layout.MARKERS)
    again.fold("stage")
    assert layout.files(Layout.MARKERS) == [Layout.marker_index("stage")]
    assert recorded(layout, "stage") == {"a": record(4), "b": record(5)}


def write_one(layout: Layout, n: int) -> dict:
    layout.write_text(f"files/{n}.txt", str(n))
    return {"n": n}


@pytest.mark.slow  # starts Ray
def test_a_stage_of_many_tasks_leaves_one_index_object(ray_session, tmp_path, monkeypatch):
    monkeypatch.setattr(markers, "BATCH_TASKS", 8)  # batches while the stage runs, folded when it ends
    layout = Layout(tmp_path / "out")
    tasks = [Task(f"t{n:03d}", write_one, dict(layout=layout, n=n)) for n in range(60)]
    written, write_text = [], layout.write_text  # the driver's writes (the tasks get a copy of the layout)
    monkeypatch.setattr(layout, "write_text", lambda name, text: written.append(name) or write_text(name, text))
    with Runner(layout) as runner:
        assert runner.run("many", tasks) == {f"t{n:03d}": {"n": n} for n in range(60)}
    assert sum(1 for name in written if Layout.MARKER_BATCH.parse(name)) >= 6  # a batch each 8 tasks
    assert written.count(Layout.marker_index("many")) == 1  # the index once, whatever the batches
    assert layout.files(Layout.MARKERS) == [Layout.marker_index("many")]
    assert sorted(recorded(layout, "many")) == [task.key for task in tasks]
    with Runner(layout) as runner:
        runner.run("many", tasks[:50])  # ten inputs gone: their outputs and markers go
        assert runner.ran == {}
        written.clear()
        runner.run("many", tasks[:50])  # every task done: nothing to write
        assert written == []
    assert layout.files(Layout.MARKERS) == [Layout.marker_index("many")]
    assert sorted(recorded(layout, "many")) == [task.key for task in tasks[:50]]
    assert layout.files("files") == sorted(f"files/{n}.txt" for n in range(50))


def write_slowly(layout: Layout, n: int) -> dict:
    time.sleep(0.3)
    return write_one(layout, n)


SLOW_TASKS = 30
# A driver of one stage of SLOW_TASKS tasks, with a batch of markers every 4 tasks.
SLOW_STAGE = f"""
import sys
from manifests.layout import Layout
from pipeline import markers
from pipeline.runner import Runner, Task
from tests.pipeline.test_markers import write_slowly
markers.BATCH_TASKS = 4
layout = Layout(sys.argv[1])
with Runner(layout) as runner:
    runner.run("slow", [Task(f"t{{n:03d}}", write_slowly, dict(layout=layout, n=n)) for n in range({SLOW_TASKS})])
"""


@pytest.mark.slow  # starts Ray, kills a driver
def test_a_stage_killed_midway_resumes_from_its_batches(ray_session, tmp_path):
    out = tmp_path / "out"
    driver = subprocess.Popen([sys.executable, "-c", SLOW_STAGE, str(out)], cwd=ROOT, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(recorded(Layout(out), "slow")) < 4:
        assert driver.poll() is None and time.monotonic() < deadline, "the stage ended before the kill"
        time.sleep(0.02)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its Ray: no index written, the batches stay
    driver.wait()
    layout = Layout(out)
    done_before = set(recorded(layout, "slow"))
    assert 4 <= len(done_before) < SLOW_TASKS and Layout.marker_index("slow") not in layout.files(Layout.MARKERS)
    tasks = [Task(f"t{n:03d}", write_slowly, dict(layout=layout, n=n)) for n in range(SLOW_TASKS)]
    with Runner(layout) as runner:
        runner.run("slow", tasks)
        assert runner.ran["slow"] == SLOW_TASKS - len(done_before)  # the tasks recorded before the kill reused
    assert layout.files(Layout.MARKERS) == [Layout.marker_index("slow")]
    assert sorted(recorded(layout, "slow")) == [task.key for task in tasks]
    assert layout.files("files") == sorted(f"files/{n}.txt" for n in range(SLOW_TASKS))


def test_a_verification_returns_the_requests_it_made(tmp_path):
    """A verify task runs on a Ray worker, whose requests the driver's count cannot see: it returns them."""
    layout = Layout(tmp_path)
    good = layout.write_text("a.txt", "a")
    problems, counts = markers._verify_outputs(layout, {"a.txt": good, "missing.txt": good})
    assert problems == {"missing.txt": "missing"}
    assert counts["get"] == 2, counts
