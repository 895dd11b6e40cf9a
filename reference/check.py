"""Train the encoder briefly on a phase's chunks; the check fails unless the MLM loss falls.

`mmcorpus reference-check --phase 1 [--out out | --mds EXPORT] [--model tiny] [--steps 60] [--workers 2]
[--device cuda] [--init-from CHECKPOINT_DIR] [--save CHECKPOINT_DIR]` (`make reference-check PHASE=1`) reads the
phase and the tokenizer from the recipe and passes them here. It logs the loss, steps/s, tokens/s and the time
left every ten steps, and prints parameters, tokens/s (and MFU on a GPU), the loss curve (means of ten steps),
the initial loss (the first step's, before any update) and the final one (the mean of the last ten steps), and
with --compare-padded the step time of the same batches padded to their longest sequence. It fails unless
final <= 0.85 x initial (from random weights, initial is about ln(vocabulary) = 12.45: final must lie ~1.9 nats
under chance; from --init-from, unless final <= initial). --save writes the weights, and the curve beside them as
loss_curve.csv, only once the check has passed. With --init-from the shapes are the checkpoint's and the RoPE θ
the phase's.

On a CPU the 256,000-way MLM head (its softmax, and the 16M-parameter embedding it shares, updated whole every
step) dominates a step, so the CPU defaults are the tiny model (3 layers, hidden 64: one global layer, two
local), 60 steps and sequences cut to 512 tokens, batches of 512: about 25 s of training on two cores
(after `prepare_cpu`, which keeps the step's large buffers from being returned to the kernel every step).
--model small / base and --batch-tokens give the full sizes; on a GPU a batch is the phase's seq_len.
"""

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from manifests.layout import Layout
from reference import checkpoint
from reference.data import Batch, Phase, cut, mask_tokens, pack, read_chunks
from reference.model import Encoder, EncoderConfig, config_for, default_backend, prepare_cpu
from stages.tokenize import Gemma2Tokenizer

log = logging.getLogger("reference")
H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM
CPU_BATCH_TOKENS = 512  # a CPU step's tokens (and longest sequence) unless --batch-tokens says otherwise
FALL_FROM_RANDOM = 0.85  # from random weights the final loss must be at most this fraction of the initial
REPORT_EVERY = 10  # steps between progress lines


def flops_per_step(config: EncoderConfig, batch: Batch, params_no_embedding: int) -> float:
    """Training FLOPs (forward + backward = 3x forward) of one step: matmuls, attention scores, sparse head."""
    tokens = batch.input_ids.numel()
    lengths = batch.cu_seqlens.diff().double()
    attention = 0.0
    for layer in range(config.n_layers):
        context = lengths if layer % config.global_every == 0 else lengths.clamp(max=config.local_window + 1)
        attention += float((4 * lengths * context).sum()) * config.hidden  # QK^T and AV
    masked = int((batch.labels != -100).sum()) if batch.labels is not None else tokens
    head = 2 * masked * config.hidden * config.vocab_size
    return 3 * (2 * params_no_embedding * tokens + attention + head)


def batches(source: Layout, max_tokens: int) -> itertools.cycle:
    """The phase's batches, repeated as often as the steps need (packed once, kept in memory); chunks longer than
    a batch are cut into pieces that fit."""
    packed = list(pack(cut(read_chunks(source), max_tokens), max_tokens))
    if not packed:
        raise FileNotFoundError(f"no chunks under {source.url}")
    return itertools.cycle(packed)


def padded_twin(batch: Batch, pad_id: int) -> Batch:
    """The same sequences padded to the batch's longest and computed in full: what padding costs."""
    rows, _ = batch.padded(pad_id)
    n, length = rows.shape
    labels = None
    if batch.labels is not None:
        labels = torch.full((n, length), -100, dtype=torch.int64)
        labels[torch.arange(length)[None, :] < batch.cu_seqlens.diff()[:, None]] = batch.labels
        labels = labels.reshape(-1)
    cu = torch.arange(n + 1, dtype=torch.int32) * length
    return Batch(rows.reshape(-1), cu, length, labels)


@dataclass(frozen=True)
class TrainSettings:
    model: str = "tiny"  # tiny, small or base (reference.model.config_for); the checkpoint's with init_from
    steps: int = 60
    batch_tokens: int | None = None  # default: the phase's seq_len, at most CPU_BATCH_TOKENS on a CPU
    threads: int = 2  # torch's CPU threads (--workers)
    lr: float = 3e-3
    device: str = "cpu"
    backend: str | None = None  # default: the fastest the device has
    compare_padded: bool = False  # also time the same batches padded to their longest sequence
    seed: int = 0
    init_from: Path | None = None  # a Hugging Face ModernBERT/mmBERT checkpoint folder
    save: Path | None = None  # where the trained weights go, as a Hugging Face checkpoint
    peak_flops: float | None = None  # for MFU on a GPU (default: H100_BF16_PEAK)


def initial_model(settings: TrainSettings, phase: Phase, vocab_size: int) -> Encoder:
    """Random weights of the settings' size, or the checkpoint's with the phase's RoPE θ; a checkpoint that
    cannot serve raises CheckpointError."""
    config = config_for(settings.model, vocab_size, phase.global_rope_theta, phase.local_rope_theta)
    if not settings.init_from:
        return Encoder(config)
    stored = checkpoint.read_config(settings.init_from)
    if stored.vocab_size < vocab_size:
        raise checkpoint.CheckpointError(f"{settings.init_from}: a vocabulary of {stored.vocab_size:,} cannot "
                                         f"take the tokenizer's {vocab_size:,} ids")
    config = replace(stored, global_rope_theta=config.global_rope_theta, local_rope_theta=config.local_rope_theta)
    return checkpoint.load(settings.init_from, config)


def batch_tokens(settings: TrainSettings, phase: Phase) -> int:
    if settings.batch_tokens:
        return settings.batch_tokens
    return phase.seq_len if settings.device.startswith("cuda") else min(phase.seq_len, CPU_BATCH_TOKENS)


def curve(losses: list[float]) -> str:
    """The loss curve as means of REPORT_EVERY steps."""
    parts = [losses[start:start + REPORT_EVERY] for start in range(0, len(losses), REPORT_EVERY)]
    return " ".join(f"{sum(part) / len(part):.2f}" for part in parts)


def write_curve(losses: list[float], folder: Path) -> Path:
    path = folder / "loss_curve.csv"
    path.write_text("step,loss\n" + "".join(f"{step},{loss:.6f}\n" for step, loss in enumerate(losses)))
    return path


def train_check(source: Layout, phase: Phase, tokenizer: Gemma2Tokenizer, settings: TrainSettings) -> bool:
    """Train on the chunks under `source` for the settings' steps, printing the loss and the speed: whether the
    loss fell clearly."""
    specials = tokenizer.special_ids
    device = torch.device(settings.device)
    prepare_cpu(settings.threads)
    backend = settings.backend or default_backend(device)
    torch.manual_seed(settings.seed)
    model = initial_model(settings, phase, tokenizer.vocab_size).to(device)
    config = model.config
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, settings.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    generator = torch.Generator().manual_seed(settings.seed)
    stream = batches(source, batch_tokens(settings, phase))
    params = model.num_parameters(embeddings=False)
    log.info("%s on %s: %s parameters (%s without embeddings), backend %s, mask rate %.2f, RoPE %.0f / %.0f",
             settings.model, device, f"{model.num_parameters():,}", f"{params:,}", backend, phase.mask_rate,
             phase.global_rope_theta, phase.local_rope_theta)

    def step(batch: Batch) -> float:
        batch = batch.to(device)
        with autocast:
            _, loss = model(batch.input_ids, batch.cu_seqlens, batch.max_seqlen, batch.labels, backend)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    losses, tokens, flops, seconds = [], 0, 0.0, 0.0
    began = time.perf_counter()
    for number in range(settings.steps):
        batch = mask_tokens(next(stream), phase.mask_rate, tokenizer.mask_id, config.vocab_size, specials, generator)
        started = time.perf_counter()
        losses.append(step(batch))
        if device.type == "cuda":
            torch.cuda.synchronize()
        if number >= 2:  # the first steps warm kernels and allocators up
            seconds += time.perf_counter() - started
            tokens += batch.input_ids.numel()
            flops += flops_per_step(config, batch, params)
        done = number + 1
        if done % REPORT_EVERY == 0 or done == settings.steps:
            rate = done / (time.perf_counter() - began)
            log.info("step %d/%d: loss %.3f; %.2f steps/s, %s tokens/s, %.0f s left", done, settings.steps,
                     losses[-1], rate, f"{tokens / seconds:,.0f}" if seconds else "-", (settings.steps - done) / rate)
    initial, final = losses[0], sum(losses[-10:]) / len(losses[-10:])
    print(f"{settings.model} {phase.id}: loss {initial:.3f} -> {final:.3f} in {settings.steps} steps of "
          f"{batch_tokens(settings, phase)} tokens, {time.perf_counter() - began:.0f} s; "
          f"{tokens / seconds if seconds else 0:,.0f} tokens/s on {device} ({backend}, {settings.threads} threads)")
    print(f"loss by {REPORT_EVERY} steps: {curve(losses)}")
    if device.type == "cuda":
        peak = settings.peak_flops or H100_BF16_PEAK
        print(f"MFU {flops / seconds / peak:.1%} of {peak / 1e12:.0f} TFLOP/s")
    if settings.compare_padded:
        compare_padded(step, stream, phase, tokenizer, config, specials, generator, device)
    required = 1.0 if settings.init_from else FALL_FROM_RANDOM
    if not final <= required * initial:
        print(f"FAIL: the loss did not fall clearly ({final:.3f} > {required} x {initial:.3f})"
              + ("; nothing saved" if settings.save else ""))
        return False
    if settings.save:
        folder = checkpoint.save(model, settings.save)
        print(f"weights written to {folder}, the loss curve to {write_curve(losses, folder)}")
    return True


def compare_padded(step: Callable[[Batch], float], stream: Iterator[Batch], phase: Phase,
                   tokenizer: Gemma2Tokenizer, config: EncoderConfig, specials: set[int], generator: torch.Generator,
                   device: torch.device) -> None:
    """Time the same batches unpadded (varlen) and padded to their longest sequence."""
    unpadded = padded = 0.0
    real = total = 0
    for _ in range(20):
        batch = mask_tokens(next(stream), phase.mask_rate, tokenizer.mask_id, config.vocab_size, specials, generator)
        twin = padded_twin(batch, tokenizer.pad_id)
        for which, b in (("unpadded", batch), ("padded", twin)):
            started = time.perf_counter()
            step(b)
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - started
            unpadded, padded = (unpadded + elapsed, padded) if which == "unpadded" else (unpadded, padded + elapsed)
        real += batch.input_ids.numel()
        total += twin.input_ids.numel()
    print(f"padded batches: {total / real:.2f}x the tokens; varlen step time {unpadded / 20 * 1e3:.1f} ms vs "
          f"padded {padded / 20 * 1e3:.1f} ms: {padded / unpadded:.2f}x speed-up from unpadding")


