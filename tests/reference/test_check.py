"""`mmcorpus reference-check` on a CPU: a step budget a laptop affords, the runtime printed, nothing saved from a
check that failed."""

from dataclasses import dataclass, replace

import pytest

torch = pytest.importorskip("torch")

from pipeline.cli import main  # noqa: E402
from reference.check import CPU_BATCH_TOKENS, TrainSettings, batch_tokens  # noqa: E402
from reference.model import CONFIGS  # noqa: E402


@dataclass(frozen=True)
class PhaseOne:
    id: str = "phase1"
    seq_len: int = 1024
    mask_rate: float = 0.3
    global_rope_theta: float = 10_000.0
    local_rope_theta: float = 10_000.0


def test_the_cpu_defaults_stay_within_the_step_budget():
    """60 steps of 512 tokens on the tiny model: about a minute on two cores (seconds vary; steps do not)."""
    settings = TrainSettings()
    assert settings.steps * batch_tokens(settings, PhaseOne()) <= 60 * CPU_BATCH_TOKENS
    assert settings.threads == 2 and settings.device == "cpu"
    tiny = CONFIGS[settings.model]
    assert tiny.n_layers == 3 and tiny.hidden == 64 and tiny.global_every == 3  # one global layer, two local
    assert batch_tokens(replace(settings, device="cuda"), PhaseOne()) == 1024  # a GPU takes the phase's seq_len
    assert batch_tokens(TrainSettings(batch_tokens=2048), PhaseOne()) == 2048


@pytest.mark.slow  # builds the samples
def test_a_failed_check_saves_nothing_and_prints_its_steps_and_runtime(sample_build, tmp_path, capsys):
    out, _ = sample_build
    ckpt = tmp_path / "ckpt"
    assert main(["reference-check", "--phase", "1", "--out", str(out), "--steps", "3", "--lr", "1e-9",
                 "--save", str(ckpt), "--workers", "1"]) == 1
    printed = capsys.readouterr().out
    assert "in 3 steps of 512 tokens" in printed and " s; " in printed and "1 threads" in printed
    assert "loss by 10 steps: " in printed and "FAIL: the loss did not fall clearly" in printed
    assert "nothing saved" in printed and not ckpt.exists()


@pytest.mark.slow  # builds the samples
def test_a_passed_check_saves_the_weights_and_the_loss_curve(sample_build, tmp_path, capsys, caplog):
    out, _ = sample_build
    ckpt = tmp_path / "ckpt"
    caplog.set_level("INFO", logger="reference")
    assert main(["reference-check", "--phase", "1", "--out", str(out), "--steps", "20", "--lr", "1e-2",
                 "--batch-tokens", "256", "--save", str(ckpt)]) == 0
    assert "in 20 steps of 256 tokens" in capsys.readouterr().out
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert len(progress) == 2 and progress[0].startswith("step 10/20: loss ") and "s left" in progress[0]
    assert (ckpt / "config.json").is_file()
    lines = (ckpt / "loss_curve.csv").read_text().splitlines()
    assert lines[0] == "step,loss" and len(lines) == 21
