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
