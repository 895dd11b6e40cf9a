"""Real Ray tasks that raise or lose their worker: retried as configured; one that keeps failing fails the stage
naming its input (never recorded as done), and a rerun resumes."""

import os
import signal
from pathlib import Path

import pytest

from manifests.layout import Layout
from pipeline.markers import recorded
from pipeline.runner import Runner, Task, TaskFailed

pytestmark = pytest.mark.slow  # kills Ray workers


def flaky(counter: str, failures: int) -> dict:
    """Fails `failures` times (counted in a file, so across worker processes), then succeeds."""
    path = Path(counter)
    attempts = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(attempts))
    if attempts <= failures:
        raise RuntimeError(f"attempt {attempts} fails")
    return {"attempts": attempts}


def test_a_raising_task_is_retried(ray_session, tmp_path):
    with Runner(Layout(tmp_path / "out"), retries=2) as runner:
        result = runner.run("flaky", [Task("a", flaky, dict(counter=str(tmp_path / "a"), failures=2))])
    assert result == {"a": {"attempts": 3}}


def test_a_task_that_keeps_failing_fails_the_stage_naming_its_input_and_a_rerun_resumes(ray_session, tmp_path):
    tasks = [Task("bad", flaky, dict(counter=str(tmp_path / "bad"), failures=2), label="inputs/bad.jsonl"),
             Task("good", flaky, dict(counter=str(tmp_path / "good"), failures=0))]
    with Runner(Layout(tmp_path / "out"), retries=1) as runner, pytest.raises(TaskFailed) as failed:
        runner.run("stage", tasks)
    assert "inputs/bad.jsonl: RuntimeError('attempt 2 fails')" in str(failed.value)
    assert (tmp_path / "bad").read_text() == "2"  # one run plus one retry, then no more
    assert set(recorded(Layout(tmp_path / "out"), "stage")) == {"good"}  # the failed task not recorded as done
    with Runner(Layout(tmp_path / "out"), retries=1) as runner:
        result = runner.run("stage", tasks)
    assert result == {"bad": {"attempts": 3}, "good": {"attempts": 1}}  # the finished task was not run again
    assert (tmp_path / "good").read_text() == "1"


def crash_once(counter: str) -> dict:
    """Kills its own worker process the first time (as the OOM killer or a lost node would), then succeeds."""
    path = Path(counter)
    if not path.exists():
        path.write_text("crashed")
        os.kill(os.getpid(), signal.SIGKILL)
    return {"survived": True}


def test_a_killed_worker_is_retried_not_quarantined(ray_session, tmp_path):
    with Runner(Layout(tmp_path / "out"), retries=0) as runner:
        result = runner.run("stage", [Task("a", crash_once, dict(counter=str(tmp_path / "a")))])
    assert result == {"a": {"survived": True}}


def test_a_worker_killed_every_time_fails_the_build_naming_its_input(ray_session, tmp_path):
    def always_crash() -> dict:
        os.kill(os.getpid(), signal.SIGKILL)
        return {}

    with Runner(Layout(tmp_path / "out"), retries=0) as runner, pytest.raises(TaskFailed, match="in.parquet: Worker"):
        runner.run("stage", [Task("a", always_crash, label="in.parquet")])
    assert recorded(Layout(tmp_path / "out"), "stage") == {}


def test_a_failing_internal_task_fails_the_stage(ray_session, tmp_path):
    with Runner(Layout(tmp_path / "out"), retries=0) as runner, pytest.raises(TaskFailed, match="attempt 1 fails"):
        runner.run("stage", [Task("x", flaky, dict(counter=str(tmp_path / "x"), failures=1))])
