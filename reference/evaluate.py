"""MLM loss of a checkpoint per language on a built phase: `mmcorpus eval-mlm --phase N --checkpoint DIR`.

A sample of each language's chunks (the same chunks for a given seed, chosen by a hash of doc_id and chunk)
is masked at the phase's rate, as training would see it, and the loss averaged over each language's masked
tokens. A language whose loss stands far above its neighbours' points at text the model never learned: a
mislabelled language, boilerplate, mojibake. The result becomes `<phase>/manifest/mlm_eval.parquet`, a view
in the catalog and a table in the data card.
"""

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from manifests.catalog import build_catalog
from manifests.layout import Layout
from manifests.schemas import MLM_EVAL
from manifests.writer import write_parquet
from reference import checkpoint
from reference.data import Phase, mask_tokens, pack
from reference.model import Encoder, default_backend, prepare_cpu
from stages.tokenize import Gemma2Tokenizer

log = logging.getLogger("reference.evaluate")


@dataclass(frozen=True)
class EvalSettings:
    chunks_per_language: int = 64
    seed: int = 0
    batch_tokens: int | None = None  # default: the phase's sequence length
    device: str = "cpu"
    backend: str | None = None
    threads: int = 2  # torch's CPU threads (--workers)


def sample_chunks(layout: Layout, phase_id: str, per_language: int, seed: int) -> dict[str, list[np.ndarray]]:
    """lang -> up to `per_language` chunks of the phase's shards, the same ones for a given seed."""
    shards = [layout.url_of(name) for name in layout.glob(Layout.shards_glob(phase_id))]
    if not shards:
        raise FileNotFoundError(f"no shards under {layout.url_of(Layout.shards_dir(phase_id))}: build the phase first")
    with layout.duckdb(threads=2) as con:
        table = con.sql("""
            SELECT lang, input_ids FROM read_parquet(?)
            QUALIFY row_number() OVER (PARTITION BY lang ORDER BY hash(doc_id, chunk, ?::BIGINT), doc_id, chunk) <= ?
            ORDER BY lang, hash(doc_id, chunk, ?::BIGINT), doc_id, chunk""",
                        params=[shards, seed, per_language, seed]).to_arrow_table()
    chunks: dict[str, list[np.ndarray]] = {}
    ids = table.column("input_ids").combine_chunks()
    offsets, values = ids.offsets.to_numpy(), ids.values.to_numpy()
    for row, lang in enumerate(table.column("lang").to_pylist()):
        chunks.setdefault(lang, []).append(values[offsets[row]:offsets[row + 1]])
    return chunks


def language_loss(model: Encoder, chunks: list[np.ndarray], phase: Phase, tokenizer: Gemma2Tokenizer,
                  settings: EvalSettings, device: torch.device, backend: str) -> tuple[float, int, int]:
    """(mean loss per masked token, tokens, masked tokens) of one language's chunks."""
    generator = torch.Generator().manual_seed(settings.seed)
    total_loss, tokens, masked = 0.0, 0, 0
    for batch in pack(chunks, settings.batch_tokens or phase.seq_len):
        batch = mask_tokens(batch, phase.mask_rate, tokenizer.mask_id, model.config.vocab_size, tokenizer.special_ids,
                             generator)
        targets = int((batch.labels != -100).sum())
        tokens += batch.input_ids.numel()
        if targets == 0:
            continue
        batch = batch.to(device)
        with torch.inference_mode():  # no autograd bookkeeping at all: cheaper than no_grad
            _, loss = model(batch.input_ids, batch.cu_seqlens, batch.max_seqlen, batch.labels, backend)
        total_loss += float(loss) * targets
        masked += targets
    return (total_loss / masked if masked else float("nan")), tokens, masked


def evaluate(layout: Layout, phase: Phase, checkpoint_dir: Path, tokenizer: Gemma2Tokenizer,
             settings: EvalSettings) -> list[dict]:
    """One row per language of the phase's shards; written to the phase's manifest and the catalog rebuilt."""
    device = torch.device(settings.device)
    prepare_cpu(settings.threads)
    stored = checkpoint.read_config(checkpoint_dir)
    if stored.vocab_size < tokenizer.vocab_size:
        raise checkpoint.CheckpointError(f"{checkpoint_dir}: a vocabulary of {stored.vocab_size:,} cannot "
                                         f"take the tokenizer's {tokenizer.vocab_size:,} ids")
    model = checkpoint.load(checkpoint_dir).to(device).eval()
    backend = settings.backend or default_backend(device)
    rows = []
    for lang, chunks in sorted(sample_chunks(layout, phase.id, settings.chunks_per_language, settings.seed).items()):
        loss, tokens, masked = language_loss(model, chunks, phase, tokenizer, settings, device, backend)
        if masked and not math.isfinite(loss):  # finite weights can still overflow; such a row would mislead
            raise checkpoint.CheckpointError(f"{checkpoint_dir}: the MLM loss on {lang} is {loss}: the weights "
                                             "overflow in the forward pass")
        log.info("%s: loss %.3f over %d masked of %d tokens (%d chunks)", lang, loss, masked, tokens, len(chunks))
        rows.append(dict(phase=phase.id, lang=lang, chunks=len(chunks), tokens=tokens, masked_tokens=masked,
                         loss=loss, perplexity=float(np.exp(loss)), mask_rate=phase.mask_rate,
                         checkpoint=str(checkpoint_dir), seed=settings.seed))
    write_parquet(layout, Layout.manifest(phase.id, "mlm_eval"), pa.Table.from_pylist(rows, MLM_EVAL), MLM_EVAL)
    build_catalog(layout)
    return rows
