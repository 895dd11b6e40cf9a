"""Bad configuration exits with status 2 and one clear line naming the file or option, before any work."""

import subprocess
import sys

import pytest

from pipeline.config import PROJECT_ROOT as ROOT

PHASE = """1:
  name: test
  budget_tokens: {budget}
  languages: {{column: {column}, counts: counts.csv}}
  temperature: {tau}
  max_epochs: 5
  seq_len: 1024
  min_chunk_tokens: 64
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
        ("tau out of range", "temperature must be in (0, 1]"),
        ("budget 0 in the phase", "budget_tokens must be > 0"),
        ("budget 0 on the command line", "--budget must be > 0"),
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
