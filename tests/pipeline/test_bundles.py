"""Small tasks go to a worker in bundles (pipeline/runner.py): each keeps its own marker, a task that raises in a
bundle is retried alone as configured while the others finish, and a rerun resumes per task."""


import pytest

from manifests.layout import Layout
from pipeline.markers import recorded
from pipeline.runner import BUNDLE_TASKS, Runner, Task, TaskFailed, bundles
from tests.reliability.test_retries import flaky


def keys(found: list[list[Task]]) -> list[list[str]]:
    return [[task.key for task in bundle] for bundle in found]


def tasks(n: int, **kwargs) -> list[Task]:
    return [Task(f"t{number}", dict, **kwargs) for number in range(n)]


def test_small_tasks_are_bundled_up_to_an_eighth_of_the_input_per_worker():
    sizes = [40, 20, 5, 5, 2, 6, 4, 4, 4, 10]  # 100 bytes on 1 worker: bundles of up to 12
    assert keys(bundles(tasks(10), sizes, workers=1)) == [
        ["t0"], ["t1"], ["t2", "t3", "t4"], ["t5", "t6"], ["t7", "t8"], ["t9"]]
    assert keys(bundles(tasks(10), sizes, workers=4)) == [[f"t{n}"] for n in range(10)]  # 3 bytes: none


def test_a_task_of_unknown_size_or_other_memory_is_alone_and_a_bundle_holds_at_most_bundle_tasks():
    assert keys(bundles(tasks(6), [200, 0, 5, 0, 5, 5], workers=1)) == [["t0"], ["t1"], ["t2"], ["t3"], ["t4", "t5"]]
    other = [*tasks(2), Task("big", dict, memory=1 << 30), *tasks(2)]
    assert keys(bundles(other, [100, 1, 1, 1, 1], workers=1)) == [["t0"], ["t1"], ["big"], ["t0", "t1"]]
    many = bundles(tasks(BUNDLE_TASKS + 2), [10**6] + [1] * (BUNDLE_TASKS + 1), workers=1)
    assert [len(bundle) for bundle in many] == [1, BUNDLE_TASKS, 1]


def counted(counter: str, failures: int) -> dict:
    """`flaky`, and the Ray task that ran it."""
    import ray

    return flaky(counter, failures) | {"ray_task": ray.get_runtime_context().get_task_id()}


@pytest.mark.slow  # starts Ray
def test_bundled_tasks_keep_their_markers_retries_and_failures(ray_session, tmp_path):
    failures = {"flaky": 1, "bad": 2}  # with one retry: flaky passes alone, bad fails the stage
    small = [Task(key, counted, dict(counter=str(tmp_path / key), failures=failures.get(key, 0)),
                  reading={f"in/{key}": 1000}, label=f"in/{key}")
             for key in ["flaky", "bad", *(f"s{n:02d}" for n in range(BUNDLE_TASKS - 2))]]
    stage = [Task("large", counted, dict(counter=str(tmp_path / "large"), failures=0), reading={"in/large": 10**6}),
             *small]
    with Runner(Layout(tmp_path / "out"), retries=1) as runner, pytest.raises(TaskFailed) as failed:
        runner.run("stage", stage)
    assert "1 task(s) failed: in/bad: RuntimeError('attempt 2 fails')" in str(failed.value)
    done = recorded(Layout(tmp_path / "out"), "stage")
    assert set(done) == {task.key for task in stage} - {"bad"}
    assert done["flaky"]["summary"]["attempts"] == 2
    ray_tasks = {done[task.key]["summary"]["ray_task"] for task in small if task.key in done}
    assert len(ray_tasks) == 2  # the small ones in one bundle, flaky's retry alone
    with Runner(Layout(tmp_path / "out"), retries=1) as runner:
        result = runner.run("stage", stage)
    assert result["bad"]["attempts"] == 3 and runner.ran["stage"] == 1  # only the failed task ran again
