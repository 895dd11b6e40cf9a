"""Real Ray tasks that raise: retried as configured; one that keeps failing is quarantined, not looped on."""

import json
from pathlib import Path

import pytest

from manifests.layout import Layout
from pipeline.runner import Runner, Task, TaskFailed


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


def test_a_task_that_keeps_failing_is_quarantined(ray_session, tmp_path):
    quarantined = []

    def on_failure(error: str) -> dict:
        quarantined.append(error)
        return {"quarantined": error}

    tasks = [Task("bad", flaky, dict(counter=str(tmp_path / "bad"), failures=99), on_failure=on_failure),
             Task("good", flaky, dict(counter=str(tmp_path / "good"), failures=0))]
    with Runner(Layout(tmp_path / "out"), retries=1) as runner:
        result = runner.run("stage", tasks)
    assert (tmp_path / "bad").read_text() == "2"  # one run plus one retry, then no more
    assert result["good"] == {"attempts": 1}
    assert len(quarantined) == 1 and "attempt 2 fails" in quarantined[0]
    marker = json.loads((tmp_path / "out" / Layout.marker("stage", "bad")).read_text())
    assert marker["summary"] == result["bad"]  # a rerun skips it instead of trying again
    with Runner(Layout(tmp_path / "out"), retries=1) as runner:
        assert runner.run("stage", tasks) == result
    assert (tmp_path / "bad").read_text() == "2"


def test_a_failing_internal_task_fails_the_stage(ray_session, tmp_path):
    with Runner(Layout(tmp_path / "out"), retries=0) as runner, pytest.raises(TaskFailed, match="attempt 1 fails"):
        runner.run("stage", [Task("x", flaky, dict(counter=str(tmp_path / "x"), failures=1))])
