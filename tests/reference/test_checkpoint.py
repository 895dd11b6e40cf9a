"""Hugging Face ModernBERT checkpoints in and out of the encoder, checked against transformers' own model."""

import json

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
