"""Bad configuration exits with status 2 and one clear line naming the file or option, before any work."""

import itertools
import subprocess
import sys
import time

import pytest

from pipeline.cli import main
from stages.paths import CONFIG_DIR, SAMPLES_DIR
from stages.paths import PROJECT_ROOT as ROOT

PHASE = """1:
  name: test
  budget_tokens: {budget}
  languages: {{column: {column}, counts: counts.csv}}
  temperature: {tau}
  max_epochs: 5
  seq_len: 1024
  min_chunk_tokens: 512
  always_skip: 128
  mask_rate: 0.3
  global_rope_theta: 10000
  local_rope_theta: 10000
  shard_tokens: 65536
  fineweb2_share: 0.6
  other_sources: {{dolma: 1}}
"""


def run(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def phases_file(tmp_path, budget="1e9", column="pretrain", tau="0.7"):
    (tmp_path / "counts.csv").write_text("language,pretrain,nothing\ndeu,100,0\ncode,50,0\n")
    path = tmp_path / "phases.yaml"
    path.write_text(PHASE.format(budget=budget, column=column, tau=tau))
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown source", "unknown source 'commoncrawl'"),
        ("missing path", "does not exist"),
        ("tau out of range", "1.temperature: must be in (0, 1], got 1.5"),
        ("budget 0 in the phase", "1.budget_tokens: must be > 0, got 0.0"),
        ("budget 0 on the command line", "argument --budget: must be > 0, got 0"),
        ("empty language set", "the language set is empty"),
        ("unknown phase", "no phase 7"),
        ("unknown variant", "has no variant 'fr'"),
    ],
)
def test_bad_configuration_exits_2_with_one_line(tmp_path, case, message):
    out = tmp_path / "out"
    args = ["build", "--phase", "1", "--out", str(out)]
    if case == "unknown source":
        (tmp_path / "s.yaml").write_text("sources:\n  commoncrawl:\n    path: /tmp\n")
        args += ["--sources", str(tmp_path / "s.yaml")]
    elif case == "missing path":
        (tmp_path / "s.yaml").write_text("sources:\n  fineweb2:\n    path: /nowhere/fineweb-2\n")
        args += ["--sources", str(tmp_path / "s.yaml")]
    elif case == "tau out of range":
        args += ["--phases", str(phases_file(tmp_path, tau="1.5"))]
    elif case == "budget 0 in the phase":
        args += ["--phases", str(phases_file(tmp_path, budget="0"))]
    elif case == "budget 0 on the command line":
        args += ["--budget", "0"]
    elif case == "empty language set":
        args += ["--phases", str(phases_file(tmp_path, column="nothing"))]
    elif case == "unknown phase":
        args[2] = "7"
    else:
        args += ["--phase", "3", "--variant", "fr"]
    result = run(*args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()  # nothing started


def refused(capsys, out, *args: str) -> str:
    """`mmcorpus build --phase 1 --dry-run ARGS` in this process: its one error line, after checking the exit
    status 2 and that nothing was written."""
    try:
        code = main(["build", "--phase", "1", "--out", str(out), "--dry-run", *args])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert not out.exists()
    return lines[0]


def section_copy(tmp_path, name: str, old: str, new: str) -> str:
    """configs/<name> with `old` replaced by `new`, its relative paths made absolute."""
    text = (CONFIG_DIR / name).read_text().replace("../samples", str(SAMPLES_DIR))
    text = text.replace("languages_file: fineweb2-thresholds.yaml",
                        f"languages_file: {CONFIG_DIR / 'fineweb2-thresholds.yaml'}")
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    return str(path)


def test_a_negative_max_chars_is_refused(tmp_path, capsys):
    path = section_copy(tmp_path, "sources.yaml", "include_removed: false",
                        "include_removed: false\n    max_chars: -1")  # cut every text's last character
    line = refused(capsys, tmp_path / "out", "--sources", path)
    assert line == f"mmcorpus: error: {path}: sources.fineweb2.max_chars: must be >= 1, got -1"


def test_a_nan_quality_threshold_is_refused(tmp_path, capsys):
    path = section_copy(tmp_path, "quality.yaml", "char_duplicates_ratio: 0.1", "char_duplicates_ratio: .nan")
    line = refused(capsys, tmp_path / "out", "--quality", path)
    assert line == f"mmcorpus: error: {path}: fixed.char_duplicates_ratio: must be a finite number, got nan"


@pytest.mark.parametrize("value, message", [
    ("nan", "must be a finite number, got 'nan'"),
    ("1e400", "must be a finite number, got '1e400'"),
    ("-.inf", "must be a finite number, got -inf"),
    ("123456789012345678901234567890", "must fit in 64 bits, got 123456789012345678901234567890"),
])
def test_a_whole_number_setting_must_be_finite_and_fit_64_bits(tmp_path, capsys, value, message):
    path = section_copy(tmp_path, "quality.yaml", "min_doc_words: 50", f"min_doc_words: {value}")
    assert refused(capsys, tmp_path / "out", "--quality", path) == \
        f"mmcorpus: error: {path}: fixed.min_doc_words: {message}"


def test_a_bad_set_value_is_blamed_on_the_option(tmp_path, capsys):
    line = refused(capsys, tmp_path / "out", "--set", "quality.fixed.min_doc_words=nan")
    assert line == ("mmcorpus: error: --set quality.fixed.min_doc_words=nan: fixed.min_doc_words: must be a finite "
                    "number, got 'nan'")
    line = refused(capsys, tmp_path / "out", "--set", "lid.min_score.overrides={deu: 1.5}")
    assert line.endswith("min_score.overrides.deu: must be in [0, 1], got 1.5"), line


@pytest.mark.parametrize("option, message", [
    ("phases.1.shard_tokens=1", "1: shard_tokens must be >= seq_len (1024), got 1"),  # a check across the phase
    ("sources.shard_tokens=1", "shard_tokens: must be >= the seq_len of phase1 (1024), got 1"),  # across sections
    ("phases.1.other_sources.nobody=1", "1.other_sources: unknown source 'nobody'"),
])
def test_a_set_value_that_fails_a_check_across_settings_is_blamed_on_the_option(tmp_path, capsys, option, message):
    assert refused(capsys, tmp_path / "out", "--set", option).startswith(f"mmcorpus: error: --set {option}: {message}")


@pytest.mark.parametrize("args, message", [
    (["--budget", "nan"], "argument --budget: must be a finite number, got nan"),
    (["--budget", "inf"], "argument --budget: must be a finite number, got inf"),
    (["--retries", "-5"], "argument --retries: must be >= 0, got -5"),
    (["--seed", "123456789012345678901234567890"], "argument --seed: must fit in 64 bits"),
    (["--seed", str(2**63)], "argument --seed: must be in [0, 9223372036854775807]"),  # run.seed is an int64
    (["--task-memory", "9" * 30 + "TiB"], "argument --task-memory: must be at least 256 MiB and fit in 64 bits"),
])
def test_out_of_range_flags_are_one_line_naming_the_flag(tmp_path, capsys, args, message):
    line = refused(capsys, tmp_path / "out", *args)
    assert line.startswith(f"mmcorpus: error: {message}") and line.endswith("; see mmcorpus build --help"), line


def test_shards_must_hold_a_sequence(tmp_path, capsys):
    path = phases_file(tmp_path)
    path.write_text(path.read_text().replace("shard_tokens: 65536", "shard_tokens: 1"))
    assert refused(capsys, tmp_path / "out", "--phases", str(path)) == \
        f"mmcorpus: error: {path}: 1: shard_tokens must be >= seq_len (1024), got 1"
    path = section_copy(tmp_path, "sources.yaml", "shard_tokens: 65536", "shard_tokens: 1")  # replaces the phases'
    assert refused(capsys, tmp_path / "out", "--sources", path) == \
        f"mmcorpus: error: {path}: shard_tokens: must be >= the seq_len of phase1 (1024), got 1"


ALIAS_BOMB = ["&a [lol, lol, lol, lol, lol, lol, lol, lol, lol]",  # then b: 9 a's, ... i: 9 h's, 9^9 lols
              *(f"&{name} [{', '.join([f'*{below}'] * 9)}]" for below, name in itertools.pairwise("abcdefghi"))]


def test_an_alias_bomb_is_refused_at_once(tmp_path, capsys):
    path = section_copy(tmp_path, "lid.yaml", "max_chars: 1000",
                        "max_chars:\n" + "".join(f"  - {line}\n" for line in ALIAS_BOMB))
    started = time.monotonic()
    line = refused(capsys, tmp_path / "out", "--lid", path)
    assert time.monotonic() - started < 1
    assert line == f"mmcorpus: error: {path}: YAML aliases repeat more than 100,000 values (an alias bomb?): refused"
    option = f"lid.min_score.overrides=[{', '.join(ALIAS_BOMB)}]"
    assert refused(capsys, tmp_path / "out", "--set", option).startswith(f"mmcorpus: error: --set {option}: YAML")


def test_bad_usage_exits_2():
    assert run("build").returncode == 2  # --phase missing
    assert run("build", "--phase", "1", "--workers", "0").returncode == 2


@pytest.mark.parametrize("args, message", [
    (["query", "--out", "/etc/hostname", "SELECT 1"], "is a file: give the output folder"),
    (["query", "--out", "/nowhere/out", "SELECT 1"], "no built phase"),
    (["plan", "--phase", "1", "--counts", "/nowhere/counts.csv"], "--counts /nowhere/counts.csv: No such file"),
    (["plan", "--phase", "1", "--cost", "--rates", "/nowhere/results.json"], "no benchmark results"),
])
def test_usage_errors_are_one_line_with_status_2(args, message):
    result = run(*args)
    lines = [line for line in result.stderr.strip().splitlines() if " INFO " not in line]
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert "Error" not in lines[0] and result.stdout == ""  # no class names, no table before the error


def test_a_ray_address_where_nothing_answers_fails_fast():
    import socket
    import time

    from pipeline.cluster import check_answers
    from pipeline.config import ConfigError

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ConfigError, match=f"nothing answers at 127.0.0.1:{port} after 2 s"):
        check_answers(f"127.0.0.1:{port}", wait_s=2)
    assert time.monotonic() - started < 10
    with pytest.raises(ConfigError, match="expected host:port"):
        check_answers("just-a-name")


def test_error_lines_carry_no_class_names():
    from pipeline.cli import error_text

    assert error_text(FileNotFoundError(2, "No such file or directory", "/x/y")) == "No such file or directory: /x/y"
    assert error_text(OSError("source fineweb2: cannot reach hf://datasets/x: offline")).startswith("source fineweb2")
    assert error_text(KeyError("lang")) == "key error 'lang'"


@pytest.mark.slow  # starts a build in another process
def test_an_unreachable_source_url_is_named(tmp_path):
    import os

    (tmp_path / "s.yaml").write_text("sources:\n  fineweb2:\n    path: hf://datasets/HuggingFaceFW/fineweb-2\n")
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}  # nothing listens there
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "build", "--phase", "1", "--out",
                             str(tmp_path / "out"), "--sources", str(tmp_path / "s.yaml")], cwd=ROOT,
                            capture_output=True, text=True, timeout=180, env=env)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1, result.stderr
    assert last.startswith("mmcorpus: build failed: source fineweb2: cannot reach hf://datasets/HuggingFaceFW/"), last
    assert "Error" not in last.split("cannot reach")[0]
