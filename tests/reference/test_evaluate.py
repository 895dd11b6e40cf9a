"""`mmcorpus eval-mlm`: a checkpoint's MLM loss per language on a built phase, in the manifest and the data card."""

import json

import pytest

torch = pytest.importorskip("torch")

from manifests.catalog import connect  # noqa: E402
from manifests.layout import Layout  # noqa: E402
from manifests.report import build_report  # noqa: E402
from pipeline.build import build  # noqa: E402
from pipeline.cli import main  # noqa: E402
from reference import checkpoint  # noqa: E402
from reference.evaluate import sample_chunks  # noqa: E402
from reference.model import Encoder, config_for  # noqa: E402
from tests.helpers import settings_for  # noqa: E402

pytestmark = pytest.mark.slow  # builds the samples


def test_eval_mlm_per_language(sample_build_copy, tmp_path, capsys):
    out, _ = sample_build_copy
    torch.manual_seed(0)
    model = Encoder(config_for("tiny", 256_000, 10_000, 10_000))
    checkpoint.save(model, tmp_path / "ckpt")
    layout = Layout(out)
    sample = sample_chunks(layout, "phase1", 4, seed=0)
    again = sample_chunks(layout, "phase1", 4, seed=0)
    assert again.keys() == sample.keys()
    assert all(a.tolist() == b.tolist() for lang in sample for a, b in zip(sample[lang], again[lang], strict=True))
    assert max(len(chunks) for chunks in sample.values()) == 4

    assert main(["eval-mlm", "--phase", "1", "--out", str(out), "--checkpoint", str(tmp_path / "ckpt"),
                 "--chunks-per-language", "4"]) == 0
    printed = capsys.readouterr().out
    assert "phase1:" in printed and "mlm_eval" in printed
    with connect(layout) as con:
        rows = con.execute("SELECT lang, chunks, masked_tokens, loss, mask_rate FROM mlm_eval ORDER BY lang"
                           ).fetchall()
    assert [row[0] for row in rows] == sorted(sample)
    for lang, chunks, masked, loss, rate in rows:
        assert chunks == len(sample[lang]) and masked > 0 and rate == 0.3
        assert 11.0 < loss < 13.5  # a random model: about ln(256,000) = 12.45
    build_report(layout, "phase1")
    page = (out / Layout.report("phase1", "index.html")).read_text()
    assert "MLM loss per language" in page and (out / Layout.report("phase1", "mlm_eval.csv")).is_file()

    evaluated = out / Layout.manifest("phase1", "mlm_eval")
    (out / Layout.shard("phase1", 0)).unlink()
    build(settings_for(out))  # the shard is written again, the same: the evaluation still stands
    assert evaluated.is_file()
    build(settings_for(out, seed=1))  # other shards: it no longer does
    assert not evaluated.is_file()


def test_eval_mlm_refuses_a_bad_checkpoint(sample_build, tmp_path, capsys):
    out, _ = sample_build
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    assert main(["eval-mlm", "--phase", "1", "--out", str(out), "--checkpoint", str(tmp_path)]) == 2
    assert "model_type is 'bert'" in capsys.readouterr().err


@pytest.mark.parametrize("problem", ["nan weight", "weights that overflow", "weight_map out of the folder"])
def test_eval_mlm_refuses_weights_it_cannot_trust_in_one_line(sample_build, tmp_path, capsys, problem):
    """Nothing is written: the shared build stays as it was."""
    out, _ = sample_build
    torch.manual_seed(0)
    model = Encoder(config_for("tiny", 256_000, 10_000, 10_000))
    with torch.no_grad():
        if problem == "nan weight":
            model.layers[1].mlp.Wo.weight[0, 0] = float("nan")
        elif problem == "weights that overflow":
            model.head.weight.fill_(1e38)  # finite, but the head's sums are not
    directory = checkpoint.save(model, tmp_path / "ckpt")
    if problem == "weight_map out of the folder":
        names = checkpoint.read_weights(directory)
        (directory / checkpoint.WEIGHTS).unlink()
        (directory / checkpoint.WEIGHTS_INDEX).write_text(
            json.dumps({"weight_map": dict.fromkeys(names, "../../../../../../../../etc/passwd")}))
    evaluated = out / Layout.manifest("phase1", "mlm_eval")

    assert main(["eval-mlm", "--phase", "1", "--out", str(out), "--checkpoint", str(directory),
                 "--chunks-per-language", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmcorpus: error: ") and err.count("\n") == 1
    assert {"nan weight": "model.layers.1.mlp.Wo.weight holds 1 NaN or infinite values",
            "weights that overflow": "the MLM loss on",
            "weight_map out of the folder": "etc/passwd' is outside the checkpoint folder"}[problem] in err
    assert not evaluated.exists()
