"""The encoder: shapes, backends agreeing, the sliding window, documents kept apart, the loss falling."""

import pytest

torch = pytest.importorskip("torch")

from dataclasses import replace  # noqa: E402

from pipeline.sections import PHASES  # noqa: E402
from reference.data import Batch, make_batch, mask_tokens  # noqa: E402
from reference.model import ATTENTION, Attention, Encoder, EncoderConfig, config_for  # noqa: E402

TINY = EncoderConfig(vocab_size=1000, n_layers=3, hidden=64, heads=4, intermediate=128)


def batch_of(*lengths: int, seed: int = 0) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    return make_batch([torch.randint(5, TINY.vocab_size, (n,), generator=generator).numpy() for n in lengths])


def test_configurations():
    base = config_for("base", 256_000, 10_000, 10_000)
    assert (base.n_layers, base.hidden) == (22, 768)
    small = config_for("small", 256_000, 160_000, 160_000)
    assert (small.n_layers, small.hidden, small.heads, small.intermediate) == (22, 384, 6, 1152)
    assert small.global_rope_theta == 160_000 and small.local_rope_theta == 160_000


@pytest.mark.parametrize("number, theta", [(1, 10_000), (2, 160_000), (3, 160_000)])
def test_rope_theta_per_phase_for_global_and_local_layers(number, theta):
    """mmBERT: both at 10k in pre-training, both at 160k from mid-training on (its published config)."""
    phase = PHASES.load().phase(number)
    config = config_for("small", 256_000, phase.global_rope_theta, phase.local_rope_theta)
    layers = Encoder(replace(config, n_layers=3, hidden=64, heads=2, intermediate=64, vocab_size=64)).layers
    assert {layer.attn.theta for layer in layers} == {theta}
    layers = Encoder(TINY).layers
    assert [layer.attn.is_global for layer in layers] == [True, False, False]
    assert isinstance(layers[0].attn_norm, torch.nn.Identity)


def test_shapes_dense_and_sparse():
    torch.manual_seed(0)
    model = Encoder(TINY)
    batch = batch_of(7, 30, 12)
    logits, loss = model(batch.input_ids, batch.cu_seqlens, batch.max_seqlen)
    assert logits.shape == (49, TINY.vocab_size) and loss is None
    labels = torch.full((49,), -100)
    labels[[0, 10, 40]] = torch.tensor([5, 6, 7])
    logits, loss = model(batch.input_ids, batch.cu_seqlens, batch.max_seqlen, labels)
    assert logits.shape == (3, TINY.vocab_size) and loss.ndim == 0
    assert model.embeddings.weight.data_ptr() != model.decoder_bias.data_ptr()


@pytest.mark.parametrize("backend", [b for b in ATTENTION if b != "eager"])
def test_backends_agree_with_eager(backend):
    if backend == "flash_attn":
        pytest.importorskip("flash_attn")
        if not torch.cuda.is_available():
            pytest.skip("flash_attn needs CUDA")
    torch.manual_seed(0)
    device = torch.device("cuda" if backend == "flash_attn" else "cpu")
    model = Encoder(TINY).to(device)
    batch = batch_of(300, 45, 180).to(device)  # long enough that the local window matters
    reference, _ = model(batch.input_ids, batch.cu_seqlens, batch.max_seqlen, backend="eager")
    other, _ = model(batch.input_ids, batch.cu_seqlens, batch.max_seqlen, backend=backend)
    tolerance = 5e-2 if backend == "flash_attn" else 1e-4  # bf16 kernel
    assert torch.allclose(reference, other, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_local_layer_sees_64_tokens_each_side(backend):
    torch.manual_seed(0)
    layer = Attention(TINY, layer=1)
    assert not layer.is_global and layer.window == 128
    x = torch.randn(300, TINY.hidden)
    positions = torch.arange(300)
    cu = torch.tensor([0, 300], dtype=torch.int32)
    tables = layer.tables(positions, cu, 300, backend)
    base = layer(x, tables)
    for distance, changes in ((64, True), (65, False), (150, False)):
        y = x.clone()
        y[100 + distance] += 10.0
        moved = (layer(y, tables)[100] - base[100]).abs().max() > 1e-6
        assert bool(moved) == changes, distance
    global_layer = Attention(TINY, layer=0)
    global_tables = global_layer.tables(positions, cu, 300, backend)
    y = x.clone()
    y[299] += 10.0
    assert (global_layer(y, global_tables)[0] - global_layer(x, global_tables)[0]).abs().max() > 1e-6


def test_packing_keeps_documents_apart():
    torch.manual_seed(0)
    model = Encoder(TINY)
    alone = batch_of(40, seed=1)
    packed = make_batch([alone.input_ids.numpy(), batch_of(25, seed=2).input_ids.numpy()])
    other = make_batch([alone.input_ids.numpy(), batch_of(25, seed=3).input_ids.numpy()])
    a, _ = model(alone.input_ids, alone.cu_seqlens, alone.max_seqlen)
    b, _ = model(packed.input_ids, packed.cu_seqlens, packed.max_seqlen)
    c, _ = model(other.input_ids, other.cu_seqlens, other.max_seqlen)
    assert torch.allclose(a, b[:40], atol=1e-5) and torch.allclose(b[:40], c[:40], atol=1e-5)


def test_loss_falls_on_tiny():
    """A repeating vocabulary pattern: the model must learn it from masked positions."""
    torch.manual_seed(0)
    model = Encoder(TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    pattern = torch.arange(10, 74)
    chunks = [torch.cat([torch.tensor([2]), pattern.roll(i), torch.tensor([1])]).numpy() for i in range(8)]
    losses = []
    for _ in range(80):
        batch = mask_tokens(make_batch(chunks), 0.3, 4, TINY.vocab_size, {0, 1, 2, 4}, generator)
        _, loss = model(batch.input_ids, batch.cu_seqlens, batch.max_seqlen, batch.labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 <= 0.8 * sum(losses[:10]) / 10
