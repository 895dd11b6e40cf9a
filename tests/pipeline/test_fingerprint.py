"""Fingerprints hold the code: a changed function, helper or constant that a task reaches changes its fingerprint
(so a rebuild after an upgrade re-runs what the change produced), code it does not reach changes nothing, and the
digest is the same in every process."""

import importlib.util
import os
import subprocess
import sys
import textwrap

from pipeline import fingerprint
from pipeline.fingerprint import code_digest, digest
from stages.paths import PROJECT_ROOT as ROOT

MODULE = """
    import numba

    LIMIT = 3
    WORDS = {"a", "b", "c"}
    _CACHE = {}  # filled at run time, as a process's DuckDB connections


    def helper(x):
        return x + LIMIT


    @numba.njit(cache=False)
    def kernel(x):
        return x * 2


    class Stage:
        def run(self, x):
            return helper(x) if x in WORDS else kernel(x)


    def task_a(x):
        return Stage().run(x)


    def task_b(x):
        return _CACHE.setdefault(x, x)
"""


def load(tmp_path, source: str):
    """The module as a part of the project's `stages` package, from a file (so that its source can be read)."""
    folder = tmp_path / str(len(list(tmp_path.iterdir())))
    folder.mkdir()
    path = folder / "probe.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location("stages.probe", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # where inspect finds a class's file
    spec.loader.exec_module(module)
    fingerprint._assignments.cache_clear()  # a module of the project is loaded once; this one is loaded anew
    return module


def digests(module) -> tuple[str, str]:
    return code_digest(module.task_a), code_digest(module.task_b)


def test_a_change_anywhere_a_task_reaches_changes_its_fingerprint_and_only_its(tmp_path):
    a, b = digests(load(tmp_path, MODULE))
    assert digests(load(tmp_path, MODULE)) == (a, b)  # the same code, loaded again
    for old, new in [("return x + LIMIT", "return x - LIMIT"),  # a helper a method calls
                     ("LIMIT = 3", "LIMIT = 4"),  # a constant the helper reads
                     ('WORDS = {"a", "b", "c"}', 'WORDS = {"a", "b", "d"}'),  # a set the class reads
                     ("return x * 2", "return x * 3"),  # a compiled kernel's Python source
                     ("return helper(x) if", "return helper(x + 1) if")]:  # the class itself
        changed = digests(load(tmp_path, MODULE.replace(old, new)))
        assert changed[0] != a, old
        assert changed[1] == b, old  # task_b reaches none of it


CACHED = """
    from functools import cache, cached_property


    @cache
    def load_model():
        return 1


    class Model:
        @cached_property
        def table(self):
            return 2


    def task(x):
        return load_model() + Model().table + x
"""


def test_code_behind_a_cache_counts(tmp_path):
    """A loader under functools.cache (as the tokenizer's) and a cached property are followed like plain code."""
    before = code_digest(load(tmp_path, CACHED).task)
    for old, new in [("return 1", "return 3"), ("return 2", "return 4")]:
        assert code_digest(load(tmp_path, CACHED.replace(old, new)).task) != before, old


def test_what_a_module_caches_at_run_time_changes_nothing(tmp_path):
    module = load(tmp_path, MODULE)
    before = code_digest.__wrapped__(module.task_b)
    module.task_b(7)
    assert module._CACHE and code_digest.__wrapped__(module.task_b) == before


def test_a_task_argument_counts_by_its_code_too(tmp_path):
    first, second = load(tmp_path, MODULE), load(tmp_path, MODULE.replace("return x - 0", "return x - 1"))
    assert digest([first.task_a, {"x": 1}]) == digest([second.task_a, {"x": 1}])
    changed = load(tmp_path, MODULE.replace("LIMIT = 3", "LIMIT = 5"))
    assert digest([first.task_a, {"x": 1}]) != digest([changed.task_a, {"x": 1}])


def test_the_digest_is_the_same_in_every_process():
    script = ("from pipeline.build import curate_file, pool_file; from pipeline.fingerprint import code_digest; "
              "print(code_digest(curate_file), code_digest(pool_file))")
    outputs = {subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True,
                              env=dict(os.environ, PYTHONHASHSEED=str(seed))).stdout for seed in (1, 2, 3)}
    assert len(outputs) == 1
