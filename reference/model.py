"""A ModernBERT-style encoder as mmBERT trains it, in one module, on unpadded (varlen) sequences.

References: ModernBERT (Warner et al. 2024; HF transformers `modeling_modernbert.py`) and mmBERT (Marone et al.
2025). Token embeddings + LayerNorm; pre-norm layers (LayerNorm without bias; the first layer's attention norm
is the embeddings' own), fused Wqkv, RoPE, attention global every third layer and a 128-token sliding window
(64 each side) otherwise, GeGLU MLP; final norm; an MLM head tied to the embeddings.

Sequences arrive packed: `input_ids` (total,) with `cu_seqlens` (n + 1,) marking where each one starts, so
no compute goes to padding and no token attends across sequences. A forward builds the RoPE tables and the mask
once for the global layers and once for the local ones (`AttentionTables`). Attention backends share one signature:
    flash_attn  FlashAttention-2's varlen kernel (window_size for local layers), when the package is installed
    sdpa        PyTorch's scaled_dot_product_attention with a block-diagonal (+ window) mask
    eager       the same maths written out, the reference the others are tested against
"""

import ctypes
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


@dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int = 256_000  # Gemma 2's tokenizer
    n_layers: int = 22
    hidden: int = 768
    heads: int = 12
    intermediate: int = 1152
    local_window: int = 128  # tokens a local layer sees: 64 on each side
    global_every: int = 3  # layer i is global when i % global_every == 0
    global_rope_theta: float = 160_000.0  # the phase's, for global and local layers alike (10k in phase 1)
    local_rope_theta: float = 160_000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    pad_id: int = 0


CONFIGS = {
    "base": EncoderConfig(),
    "small": EncoderConfig(hidden=384, heads=6),
    "tiny": EncoderConfig(n_layers=3, hidden=64, heads=4, intermediate=128),
}


def rotary(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (total, head_dim / 2) for the given positions."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (total, heads, head_dim), rotating the two halves of the head dimension (GPT-NeoX style)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def attention_mask(cu_seqlens: torch.Tensor, total: int, window: int | None) -> torch.Tensor:
    """(total, total) boolean: True where query i may attend to key j (same sequence, within the window)."""
    seq = torch.bucketize(torch.arange(total, device=cu_seqlens.device), cu_seqlens[1:], right=True)
    allowed = seq[:, None] == seq[None, :]
    if window is not None:
        position = torch.arange(total, device=cu_seqlens.device)
        allowed &= (position[:, None] - position[None, :]).abs() <= window // 2
    return allowed


@dataclass(frozen=True)
class AttentionTables:
    """What every layer of one kind (global or local) attends with over a packed batch, built once per forward."""

    backend: str
    cu_seqlens: torch.Tensor  # (n + 1,) int32
    max_seqlen: int
    window: int | None  # tokens a query sees, half on each side; None: its whole sequence
    cos: torch.Tensor  # (total, head_dim / 2)
    sin: torch.Tensor  # (total, head_dim / 2)
    mask: torch.Tensor | None  # (total, total) from attention_mask; None for flash_attn, which reads cu_seqlens


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tables: AttentionTables) -> torch.Tensor:
    """q, k, v: (total, heads, head_dim) -> (total, heads, head_dim)."""
    scores = torch.einsum("ihd,jhd->hij", q.float(), k.float()) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~tables.mask, float("-inf"))
    return torch.einsum("hij,jhd->ihd", scores.softmax(dim=-1), v.float()).to(q.dtype)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tables: AttentionTables) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                         attn_mask=tables.mask[None, None])
    return out[0].transpose(0, 1)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tables: AttentionTables) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    dtype = q.dtype
    half = dtype if dtype in (torch.float16, torch.bfloat16) else torch.bfloat16  # FA2 needs fp16/bf16
    side = (tables.window // 2, tables.window // 2) if tables.window is not None else (-1, -1)
    out = flash_attn_varlen_func(q.to(half), k.to(half), v.to(half), tables.cu_seqlens, tables.cu_seqlens,
                                 tables.max_seqlen, tables.max_seqlen, dropout_p=0.0, causal=False, window_size=side)
    return out.to(dtype)


ATTENTION = {"eager": eager_attention, "sdpa": sdpa_attention, "flash_attn": flash_attention}


def default_backend(device: torch.device) -> str:
    if device.type == "cuda":
        try:
            import flash_attn  # noqa: F401

            return "flash_attn"
        except ImportError:
            pass
    return "sdpa"


def prepare_cpu(threads: int) -> None:
    """Use `threads` CPU threads, and keep freed memory in the process: a step allocates and frees the same
    hundreds of MB (the 256k-way logits, the embedding's gradient), which glibc would otherwise return to the
    kernel and fault back in page by page, nearly doubling a CPU step (sys time as large as user time)."""
    torch.set_num_threads(threads)
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    largest = 2**31 - 1  # mallopt takes an int
    libc.mallopt(M_MMAP_THRESHOLD, largest)
    libc.mallopt(M_TRIM_THRESHOLD, largest)


class Attention(nn.Module):
    def __init__(self, config: EncoderConfig, layer: int) -> None:
        super().__init__()
        assert config.hidden % config.heads == 0, f"hidden {config.hidden} must divide into {config.heads} heads"
        self.heads, self.head_dim = config.heads, config.hidden // config.heads
        self.is_global = layer % config.global_every == 0
        self.window = None if self.is_global else config.local_window
        self.theta = config.global_rope_theta if self.is_global else config.local_rope_theta
        self.Wqkv = nn.Linear(config.hidden, 3 * config.hidden, bias=False)
        self.Wo = nn.Linear(config.hidden, config.hidden, bias=False)

    def tables(self, positions: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
               backend: str) -> AttentionTables:
        """What this layer attends with, given each token's position within its sequence (total,)."""
        cos, sin = rotary(positions, self.head_dim, self.theta)
        # FlashAttention finds the sequences and the window from cu_seqlens and window_size: no mask to build
        mask = None if backend == "flash_attn" else attention_mask(cu_seqlens, positions.shape[0], self.window)
        return AttentionTables(backend, cu_seqlens, max_seqlen, self.window, cos, sin, mask)

    def forward(self, x: torch.Tensor, tables: AttentionTables) -> torch.Tensor:
        total = x.shape[0]
        q, k, v = self.Wqkv(x).view(total, 3, self.heads, self.head_dim).unbind(dim=1)  # each (total, nh, hd)
        q, k = apply_rotary(q, tables.cos, tables.sin), apply_rotary(k, tables.cos, tables.sin)
        out = ATTENTION[tables.backend](q, k, v, tables)  # (total, nh, hd)
        return self.Wo(out.reshape(total, -1))


class GeGLU(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.Wi = nn.Linear(config.hidden, 2 * config.intermediate, bias=False)
        self.Wo = nn.Linear(config.intermediate, config.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.Wi(x).chunk(2, dim=-1)
        return self.Wo(F.gelu(value) * gate)


class Layer(nn.Module):
    def __init__(self, config: EncoderConfig, layer: int) -> None:
        super().__init__()
        # the embeddings end in a norm already: the first layer's attention takes them as they are
        self.attn_norm = nn.Identity() if layer == 0 else nn.LayerNorm(config.hidden, config.norm_eps, bias=False)
        self.attn = Attention(config, layer)
        self.mlp_norm = nn.LayerNorm(config.hidden, config.norm_eps, bias=False)
        self.mlp = GeGLU(config)

    def forward(self, x: torch.Tensor, tables: AttentionTables) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), tables)
        return x + self.mlp(self.mlp_norm(x))


class Encoder(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden, padding_idx=config.pad_id)
        self.embedding_norm = nn.LayerNorm(config.hidden, config.norm_eps, bias=False)
        self.layers = nn.ModuleList(Layer(config, i) for i in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.hidden, config.norm_eps, bias=False)
        self.head = nn.Linear(config.hidden, config.hidden, bias=False)
        self.head_norm = nn.LayerNorm(config.hidden, config.norm_eps, bias=False)
        self.decoder_bias = nn.Parameter(torch.zeros(config.vocab_size))  # the decoder's weight is the embeddings'
        self.apply(self._init_weights)
        for name, parameter in self.named_parameters():  # residual outputs scaled by depth, as GPT-2 / ModernBERT
            if name.endswith("Wo.weight"):
                nn.init.trunc_normal_(parameter, std=config.init_std / math.sqrt(2 * config.n_layers),
                                      a=-2 * config.init_std, b=2 * config.init_std)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)

    def num_parameters(self, embeddings: bool = True) -> int:
        total = sum(p.numel() for p in self.parameters())
        return total if embeddings else total - self.embeddings.weight.numel()

    def encode(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
               backend: str | None = None) -> torch.Tensor:
        """The final hidden states (total, hidden) of packed sequences."""
        backend = backend or default_backend(input_ids.device)
        starts = cu_seqlens[:-1].repeat_interleave(cu_seqlens.diff())
        positions = torch.arange(input_ids.shape[0], device=input_ids.device) - starts  # within each sequence
        x = self.embedding_norm(self.embeddings(input_ids))  # (total, hidden)
        tables: dict[tuple[int | None, float], AttentionTables] = {}
        for layer in self.layers:
            kind = layer.attn.window, layer.attn.theta  # global layers share one set of tables, local ones another
            if kind not in tables:
                tables[kind] = layer.attn.tables(positions, cu_seqlens, max_seqlen, backend)
            x = layer(x, tables[kind])
        return self.final_norm(x)

    def forward(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                labels: torch.Tensor | None = None, backend: str | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """input_ids (total,) and cu_seqlens (n + 1,) int32 -> (logits, loss). With labels (-100 where not
        masked), logits are computed at the masked positions only (sparse prediction) and loss is their mean
        cross-entropy; without, logits cover every position."""
        x = self.encode(input_ids, cu_seqlens, max_seqlen, backend)
        if labels is not None:
            keep = labels != -100
            x, labels = x[keep], labels[keep]
        logits = self.head_norm(F.gelu(self.head(x))) @ self.embeddings.weight.T + self.decoder_bias
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return logits, loss


def config_for(name: str, vocab_size: int, global_rope_theta: float, local_rope_theta: float) -> EncoderConfig:
    """A named configuration with the phase's vocabulary and RoPE θ (mmBERT: 10k / 10k in phase 1, 160k / 160k
    after)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown configuration {name!r}; choose from {', '.join(CONFIGS)}")
    return replace(CONFIGS[name], vocab_size=vocab_size, global_rope_theta=global_rope_theta,
                   local_rope_theta=local_rope_theta)
