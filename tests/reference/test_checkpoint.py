"""Hugging Face ModernBERT checkpoints in and out of the encoder, checked against transformers' own model."""

import json
import re

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from reference import checkpoint  # noqa: E402
from reference.data import make_batch  # noqa: E402
from reference.model import Encoder, EncoderConfig  # noqa: E402

LENGTHS = (300, 45, 180)  # two sequences longer than the 128-token window
TOLERANCE = 1e-5


def hf_config(**overrides: object) -> "transformers.ModernBertConfig":
    """mmBERT's settings (window 128, a global layer every third, θ 160k / 160k) at a size a CPU test affords."""
    settings = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                    global_attn_every_n_layers=3, local_attention=128, global_rope_theta=160_000.0,
                    local_rope_theta=160_000.0, pad_token_id=0, bos_token_id=2, eos_token_id=1, cls_token_id=2,
                    sep_token_id=1, max_position_embeddings=512)
    return transformers.ModernBertConfig(**(settings | overrides))


def sequences(vocab_size: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(3, vocab_size, (n,), generator=generator) for n in LENGTHS]


def hf_outputs(model: "transformers.ModernBertForMaskedLM", seqs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Last hidden states and logits of the real tokens of a padded batch."""
    ids = torch.zeros(len(seqs), max(LENGTHS), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)], mask[row, : len(seq)] = seq, 1
    with torch.no_grad():
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    return hidden[real], logits[real]


def our_outputs(model: Encoder, seqs: list[torch.Tensor], backend: str) -> tuple[torch.Tensor, ...]:
    batch = make_batch([s.numpy() for s in seqs])
    with torch.no_grad():
        hidden = model.encode(batch.input_ids, batch.cu_seqlens, batch.max_seqlen, backend)
        logits, _ = model(batch.input_ids, batch.cu_seqlens, batch.max_seqlen, backend=backend)
    return hidden, logits


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_loads_a_transformers_checkpoint_and_matches_it(tmp_path, backend):
    torch.manual_seed(0)
    theirs = transformers.ModernBertForMaskedLM._from_config(hf_config(), attn_implementation=backend).eval()
    theirs.save_pretrained(tmp_path)
    ours = checkpoint.load(tmp_path).eval()
    assert ours.config.global_every == 3 and ours.config.local_window == 128
    assert (ours.config.global_rope_theta, ours.config.local_rope_theta) == (160_000.0, 160_000.0)
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters())
    seqs = sequences(ours.config.vocab_size)
    for mine, reference in zip(our_outputs(ours, seqs, backend), hf_outputs(theirs, seqs), strict=True):
        assert (mine - reference).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_transformers_loads_what_we_save(tmp_path, backend):
    torch.manual_seed(0)
    ours = Encoder(EncoderConfig(vocab_size=512, n_layers=4, hidden=64, heads=4, intermediate=96,
                                 global_rope_theta=10_000.0, local_rope_theta=10_000.0)).eval()
    with torch.no_grad():
        ours.decoder_bias.normal_()  # zero at init: make the test see it
    checkpoint.save(ours, tmp_path)
    theirs = transformers.ModernBertForMaskedLM.from_pretrained(tmp_path, attn_implementation=backend).eval()
    assert theirs.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    assert {kind["rope_theta"] for kind in theirs.config.rope_parameters.values()} == {10_000.0}
    assert theirs.decoder.weight.data_ptr() == theirs.model.embeddings.tok_embeddings.weight.data_ptr()
    seqs = sequences(512)
    for mine, reference in zip(our_outputs(ours, seqs, backend), hf_outputs(theirs, seqs), strict=True):
        assert (mine - reference).abs().max().item() <= TOLERANCE
    again = checkpoint.load(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), again.state_dict().values(), strict=True))


def test_sharded_checkpoint_and_transformers_5_config(tmp_path):
    torch.manual_seed(0)
    theirs = transformers.ModernBertForMaskedLM._from_config(hf_config(local_rope_theta=10_000.0))
    theirs.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / checkpoint.WEIGHTS_INDEX).is_file()
    assert "layer_types" in json.loads((tmp_path / "config.json").read_text())
    ours = checkpoint.load(tmp_path)
    assert (ours.config.global_rope_theta, ours.config.local_rope_theta) == (160_000.0, 10_000.0)
    assert torch.equal(ours.embeddings.weight, theirs.model.embeddings.tok_embeddings.weight)


def test_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="config.json: missing"):
        checkpoint.load(tmp_path)
    torch.manual_seed(0)
    transformers.ModernBertForMaskedLM._from_config(hf_config()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"hidden_activation": "silu"}))
    with pytest.raises(checkpoint.CheckpointError, match="hidden_activation is 'silu'"):
        checkpoint.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(checkpoint.CheckpointError, match="hidden is 64, the model asks for 32"):
        checkpoint.load(tmp_path, EncoderConfig(vocab_size=512, n_layers=4, hidden=32, heads=4, intermediate=96))
    weights = checkpoint.read_weights(tmp_path)
    del weights["model.layers.2.mlp.Wi.weight"]
    weights["decoder.weight"] = torch.zeros_like(weights["model.embeddings.tok_embeddings.weight"])
    checkpoint.save_file(weights, tmp_path / checkpoint.WEIGHTS)
    with pytest.raises(checkpoint.CheckpointError, match=r"missing model\.layers\.2\.mlp\.Wi\.weight"):
        checkpoint.load(tmp_path)
    weights["model.layers.2.mlp.Wi.weight"] = torch.zeros(192, 64)
    checkpoint.save_file(weights, tmp_path / checkpoint.WEIGHTS)
    with pytest.raises(checkpoint.CheckpointError, match="decoder.weight differs from the embeddings"):
        checkpoint.load(tmp_path)


@pytest.fixture
def saved(tmp_path):
    """A two-layer checkpoint written by `checkpoint.save`: (folder, its tensors by checkpoint name)."""
    torch.manual_seed(0)
    directory = checkpoint.save(Encoder(EncoderConfig(vocab_size=512, n_layers=2, hidden=64, heads=4,
                                                      intermediate=96)), tmp_path / "ckpt")
    return directory, checkpoint.read_weights(directory)


@pytest.fixture
def refuses(monkeypatch):
    """`refuses(folder, pattern)`: load raises a one-line CheckpointError before any model is allocated (only the
    meta device, which allocates nothing, may build one)."""

    def allocating(config: EncoderConfig) -> Encoder:
        assert torch.get_default_device().type == "meta", "a model was allocated before the checkpoint was checked"
        return Encoder(config)

    monkeypatch.setattr(checkpoint, "Encoder", allocating)

    def check(directory: object, pattern: str) -> None:
        with pytest.raises(checkpoint.CheckpointError, match=pattern) as error:
            checkpoint.load(directory)
        assert "\n" not in str(error.value)

    return check


def edit_config(directory: object, **changes: object) -> None:
    path = directory / checkpoint.CONFIG
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def shard(directory: object, weight_map: dict[str, str] | None = None) -> None:
    """Move the weights into one shard named by an index, as `save_pretrained` writes large models."""
    names = list(checkpoint.read_weights(directory))
    (directory / checkpoint.WEIGHTS).rename(directory / "model-00001-of-00001.safetensors")
    weight_map = weight_map or dict.fromkeys(names, "model-00001-of-00001.safetensors")
    (directory / checkpoint.WEIGHTS_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_refuses_a_missing_folder(tmp_path, refuses):
    refuses(tmp_path / "nowhere", r"nowhere: not a folder")


@pytest.mark.parametrize(("content", "pattern"), [
    (b"\xff\xfe{}", r"config\.json: not JSON \('utf-8' codec can't decode"),
    (b"[1, 2]", r"config\.json: not a JSON object"),
])
def test_refuses_an_invalid_config(saved, refuses, content, pattern):
    directory, _ = saved
    (directory / checkpoint.CONFIG).write_bytes(content)
    refuses(directory, pattern)


@pytest.mark.parametrize(("changes", "pattern"), [
    ({"num_hidden_layers": -1}, r"num_hidden_layers is -1; it must be at least 1"),
    ({"hidden_size": -64}, r"hidden_size is -64; it must be at least 1"),
    ({"num_attention_heads": 0}, r"num_attention_heads is 0; it must be at least 1"),
    ({"num_attention_heads": 5}, r"hidden_size 64 does not split into 5 heads"),
    ({"global_attn_every_n_layers": 0}, r"global_attn_every_n_layers is 0; it must be at least 1"),
    ({"pad_token_id": 512}, r"pad_token_id is 512, outside the vocabulary of 512"),
    ({"norm_eps": -1e-5}, r"norm_eps is -1e-05; it must be a positive number"),
    ({"num_hidden_layers": float("inf")}, r"config\.json: cannot convert float infinity to integer"),
])
def test_refuses_config_values_out_of_range(saved, refuses, changes, pattern):
    directory, _ = saved
    edit_config(directory, **changes)
    refuses(directory, pattern)


def test_refuses_more_layers_than_the_weights_hold_before_building_them(saved, refuses):
    directory, _ = saved
    edit_config(directory, num_hidden_layers=200_000)
    refuses(directory, r"num_hidden_layers 200,000 describes 6,988,837,504 parameters; the weight files hold "
                       r"2 layers, 107,392 parameters in \d+,\d{3} bytes")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing shard", "index not JSON"])
def test_refuses_missing_or_corrupt_weights(saved, refuses, damage):
    directory, _ = saved
    weights = directory / checkpoint.WEIGHTS
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "garbage":
        weights.write_bytes(b"\x00" * 4096)
    else:
        shard(directory)
        if damage == "missing shard":
            (directory / "model-00001-of-00001.safetensors").unlink()
        else:
            (directory / checkpoint.WEIGHTS_INDEX).write_text("{")
    pattern = {"missing shard": r"weight file 'model-00001-of-00001\.safetensors' is missing",
               "index not JSON": r"model\.safetensors\.index\.json: no weight_map"}.get(damage,
                                                                                      "not a safetensors file")
    refuses(directory, pattern)


@pytest.mark.parametrize(("name", "shape"), [("model.layers.1.mlp.Wi.weight", (96, 64)),
                                             ("decoder.weight", (512, 32))])
def test_refuses_shapes_that_do_not_fit(saved, refuses, name, shape):
    directory, weights = saved
    checkpoint.save_file(weights | {name: torch.zeros(shape)}, directory / checkpoint.WEIGHTS)
    refuses(directory, re.escape(f"{name} has shape {shape}, expected"))


@pytest.mark.parametrize("escape", ["traversal", "absolute"])
def test_weight_files_stay_inside_the_checkpoint_folder(saved, refuses, escape):
    directory, weights = saved
    outside = directory.parent / "outside.safetensors"  # a valid file: only its place is wrong
    checkpoint.save_file(weights, outside)
    target = "../../../../../../../../etc/passwd" if escape == "traversal" else str(outside)
    shard(directory, dict.fromkeys(weights, target))
    refuses(directory, r"is outside the checkpoint folder")


def test_a_hugging_face_cache_snapshot_loads_through_its_links(saved):
    """snapshots/<commit>/model.safetensors links to ../../blobs/<sha256>, as the Hub's cache lays them out."""
    directory, weights = saved
    cache = directory.parent / "models--org--tiny"
    (cache / "blobs").mkdir(parents=True)
    snapshot = cache / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for file in directory.iterdir():
        (cache / "blobs" / file.name).write_bytes(file.read_bytes())
        (snapshot / file.name).symlink_to(f"../../blobs/{file.name}")
    linked, copied = checkpoint.load(snapshot).state_dict(), checkpoint.load(directory).state_dict()
    assert linked.keys() == copied.keys() and all(torch.equal(linked[k], copied[k]) for k in copied)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_refuses_non_finite_weights(saved, refuses, value):
    directory, weights = saved
    weights["model.layers.1.mlp.Wo.weight"][3, 5] = value
    checkpoint.save_file(weights, directory / checkpoint.WEIGHTS)
    refuses(directory, r"model\.layers\.1\.mlp\.Wo\.weight holds 1 NaN or infinite values of 6,144")


@pytest.mark.parametrize("problem", ["no folder", "vocabulary too small"])
def test_check_init_from_refuses_a_bad_checkpoint_in_one_line(saved, tmp_path, tokenizers, capsys, problem):
    from pipeline.cli import main

    directory = saved[0] if problem == "vocabulary too small" else tmp_path / "nowhere"
    # --mds: no built phase is needed to reach the checkpoint, which is checked before any chunk is read
    assert main(["reference-check", "--phase", "1", "--out", str(tmp_path), "--mds", str(tmp_path / "shards"),
                 "--init-from", str(directory)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmcorpus: error: ") and err.count("\n") == 1
    assert ("not a folder" if problem == "no folder" else "a vocabulary of 512 cannot take") in err
