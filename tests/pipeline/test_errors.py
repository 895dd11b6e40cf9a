"""What a user sees when something is wrong: one line per error, and one exit status per kind across commands (2:
usage, configuration, nothing built; 1: a failed run), checked exactly, in this process."""

import logging
import os
import subprocess
from collections import defaultdict

import pytest

from manifests.printing import print_rows
from pipeline.cli import main, parser
from pipeline.option_types import token_count
from pipeline.partitions import Steps
from pipeline.progress import Progress
from stages.paths import COUNTS_FILE
from stages.paths import PROJECT_ROOT as ROOT


def failed(capsys, *argv: str) -> tuple[int, str]:
    """The exit status of `mmcorpus ARGV` and its one line on stderr (there must be exactly one)."""
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return code, lines[0]


@pytest.mark.parametrize("argv, line", [
    (["build", "--phase", "one"], "argument --phase: expected a whole number, got 'one'; see mmcorpus build --help"),
    (["build", "--phase", "1", "--workers", "0"],
     "argument --workers: must be >= 1, got 0; see mmcorpus build --help"),
    (["build", "--phase", "1", "--budget", "2.3X"],
     "argument --budget: expected a number with or without a unit (K, M, B, G, T), got '2.3X'; "
     "see mmcorpus build --help"),
    (["build", "--phase", "1", "--bogus"], "unrecognized arguments: --bogus; see mmcorpus build --help"),
    (["query", "--format", "xml", "x"],
     "argument --format: invalid choice: 'xml' (choose from 'table', 'csv', 'json'); see mmcorpus query --help"),
    (["--bogus"], "the following arguments are required: command; see mmcorpus --help"),
])
def test_usage_errors_are_one_line_naming_the_command_help(capsys, argv, line):
    assert failed(capsys, *argv) == (2, f"mmcorpus: error: {line}")


def test_a_missing_model_is_a_recipe_error_before_any_work(tmp_path, capfd):
    missing = tmp_path / "lid.bin"  # the build runs in a supervised child process: its stderr is the fd's
    code = main(["build", "--phase", "1", "--out", str(tmp_path / "out"), "--set", f"lid.model.path={missing}"])
    last = capfd.readouterr().err.strip().splitlines()[-1]
    assert (code, last) == (2, f"mmcorpus: error: {missing} is missing: run `make setup`")
    assert not (tmp_path / "out").exists()


def test_a_mistyped_command_is_one_line(capsys):
    code, line = failed(capsys, "buidl")
    assert code == 2 and line.startswith("mmcorpus: error: argument command: invalid choice: 'buidl'")
    assert line.endswith("; see mmcorpus --help")


def test_verbose_may_follow_the_command():
    assert parser().parse_args(["config", "show", "-v"]).verbose
    assert not parser().parse_args(["config", "show"]).verbose
    assert parser().parse_args(["-v", "config", "show"]).verbose


@pytest.mark.parametrize("text, tokens", [("2.3T", 2.3e12), ("600B", 600e9), ("50M", 50e6), ("1e9", 1e9),
                                          ("64k", 64e3), ("2.3t", 2.3e12), (" 100 ", 100.0)])
def test_budgets_take_units(text, tokens):
    assert token_count(text) == pytest.approx(tokens)
    assert parser().parse_args(["plan", "--phase", "1", "--budget", text]).budget == pytest.approx(tokens)


@pytest.mark.parametrize("argv", [
    ["check", "--phase", "1"], ["report", "--phase", "1"], ["export-mds", "--phase", "1", "DEST"],
    ["eval-mlm", "--phase", "1", "--checkpoint", "CHECKPOINT"],
])
def test_a_phase_not_built_is_status_2_for_every_command_that_reads_one(tmp_path, capsys, argv):
    argv = [str(tmp_path / arg) if arg.isupper() else arg for arg in argv]
    assert failed(capsys, *argv, "--out", str(tmp_path)) == (
        2, f"mmcorpus: error: {tmp_path}: phase1 is not built (no manifest): run `mmcorpus build` first")


@pytest.mark.parametrize("argv", [["query", "mixture"], ["why", "some/id"]])
def test_an_output_without_a_catalog_is_status_2(tmp_path, capsys, argv):
    assert failed(capsys, *argv, "--out", str(tmp_path)) == (
        2, f"mmcorpus: error: {tmp_path}: no built phase (no manifest): run `mmcorpus build` first")


def test_plan_cost_without_bench_results_prints_the_plan_and_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("pipeline.commands.BENCH_RESULTS", tmp_path / "results.json")
    assert main(["plan", "--phase", "1", "--scale", "full", "--counts", str(COUNTS_FILE), "--cost",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].split()[:2] == ["source", "lang"] and out[-2] == ""
    assert out[-1] == (f"cost: no benchmark results in {tmp_path / 'results.json'} (not shipped): `make bench` "
                       "measures them in about 8 minutes on 2 cores and writes that file; then plan --cost again")


def test_csv_lines_end_with_a_newline_alone(capsys):
    print_rows(["id", "tokens"], [("a", 1), ("b,c", 2)], "csv")
    assert capsys.readouterr().out == 'id,tokens\na,1\n"b,c",2\n'


@pytest.mark.parametrize("target, variable", [("ray-job", "RAY_ADDRESS"), ("reference-eval", "CHECKPOINT")])
def test_make_targets_check_their_variables_before_setup(target, variable):
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "CHECKPOINT", "MAKEFLAGS")}
    result = subprocess.run(["make", "--no-print-directory", target], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""  # nothing ran: set-up neither
    assert result.stderr.strip().endswith(f"*** {variable} is not set: run make {target} {variable}=<value>.  Stop.")


class CountingRunner:
    """Runner.run's bookkeeping without Ray: the first task of each step runs, the others are reused."""

    def __init__(self) -> None:
        self.ran: dict[str, int] = defaultdict(int)
        self.quiet: list[bool] = []

    def run(self, stage: str, tasks: list, costs_as: str | None = None, quiet: bool = False) -> dict:
        self.ran[stage] += min(1, len(tasks))
        self.quiet.append(quiet)
        return {}


def test_dedup_steps_log_one_line_per_pass(caplog):
    runner = CountingRunner()
    steps = Steps(runner, "dedup/steps", partitions=2, prefix="dedup", costs_as="dedup-clusters")
    with caplog.at_level(logging.INFO, logger="pipeline"):
        with steps.reported("exact pass"):
            steps.run("exact-pairs", ["t1", "t2"], [])
            steps.run("exact-verify", ["t3"], [])
    assert runner.quiet == [True, True]  # each step's own lines at DEBUG
    [record] = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert record.getMessage().startswith("dedup exact pass: 2 steps, 3 tasks (2 run, 1 reused), ")


def test_a_quiet_stage_logs_its_progress_at_debug(caplog):
    with caplog.at_level(logging.DEBUG, logger="pipeline.progress"):
        with Progress("dedup-exact-pairs", 1, quiet=True) as progress:
            progress.update({})
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


def test_a_stage_of_a_few_seconds_logs_its_last_line_alone(caplog):
    with caplog.at_level(logging.INFO, logger="pipeline.progress"), Progress("curate", 40) as progress:
        for _ in range(40):
            progress.update({"docs": 10})
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["curate: 40/40 tasks (docs 400)"]


def test_a_ray_start_that_fails_says_what_helps(monkeypatch):
    import ray

    from pipeline.session import start_embedded

    def timed_out(**options):
        raise Exception("The current node timed out during startup. This could happen because some of the raylet "
                        "failed to startup or the GCS has become overloaded.")

    monkeypatch.setattr(ray, "init", timed_out)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    token_setup = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = token_setup.level
    with pytest.raises(RuntimeError) as raised:
        start_embedded(workers=2, object_store_mb=200)
    assert token_setup.level == level  # Ray's token-auth warning silenced only while the cluster starts
    assert str(raised.value).startswith("the embedded Ray did not start after 0 s (The current node timed out during "
                                        "startup): the machine looks loaded")
    assert str(raised.value).endswith("fewer --workers start faster, then retry")


@pytest.mark.slow  # reads the build of the samples
def test_why_strips_an_id_and_shows_a_control_character(sample_build, capsys):
    out, _ = sample_build
    assert main(["query", "--out", str(out), "--format", "csv", "SELECT id FROM rejects ORDER BY id LIMIT 1"]) == 0
    rejected = capsys.readouterr().out.splitlines()[1]
    assert main(["why", "--out", str(out), f" {rejected}\r\n"]) == 0  # as pasted from CSV
    assert capsys.readouterr().out.startswith(rejected)
    assert failed(capsys, "why", "--out", str(out), "no/such\x07id\r") == (
        2, f"mmcorpus: error: 'no/such\\x07id': no such document in {out} (neither pooled nor rejected)")
