"""Feeding the encoder from a phase's shards: read chunks, pack them into fixed-token batches, mask for MLM.

Chunks come from the Parquet shards (`<out>/<phase>/shards/`) or from an MDS export (a folder with
`index.json`; its raw files, as mmBERT's trainer reads them). A batch packs whole chunks up to a token budget;
`cu_seqlens` keeps them apart in attention.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow.parquet as pq
import torch

from manifests.layout import Layout
from stages.mds import decompress, iter_samples, read_index


class Phase(Protocol):
    """What the encoder takes of a phase: the pipeline's PhaseConfig has it, and passes it down (the reference
    never reads the recipe itself)."""

    @property
    def id(self) -> str: ...
    @property
    def seq_len(self) -> int: ...
    @property
    def mask_rate(self) -> float: ...
    @property
    def global_rope_theta(self) -> float: ...
    @property
    def local_rope_theta(self) -> float: ...


def read_chunks(source: Layout) -> Iterator[np.ndarray]:
    """Token chunks (uint32) of a phase: a folder (or object-store prefix) of Parquet shards or an MDS export."""
    if source.exists("index.json"):
        for info in read_index(source.read_text("index.json")):
            if source.exists(info.raw_basename):  # the bytes mmBERT's trainer reads
                raw = source.read_bytes(info.raw_basename)
            else:
                raw = decompress(source.read_bytes(info.basename), info.compression)
            for sample in iter_samples(raw, info):
                yield np.asarray(sample["input_ids"], np.uint32)
        return
    shards = source.glob("*.parquet")
    if not shards:
        raise FileNotFoundError(f"no shards (*.parquet or index.json) under {source.url}")
    for shard in shards:
        with source.open(shard) as f:
            yield from _parquet_chunks(f)


def _parquet_chunks(f: object) -> Iterator[np.ndarray]:
    for batch in pq.ParquetFile(f).iter_batches(batch_size=256, columns=["input_ids"]):
        column = batch.column(0)
        offsets = column.offsets.to_numpy()
        values = column.values.to_numpy()
        for start, end in zip(offsets[:-1], offsets[1:], strict=True):
            yield values[start:end]


@dataclass
class Batch:
    input_ids: torch.Tensor  # (total,) int64
    cu_seqlens: torch.Tensor  # (n + 1,) int32
    max_seqlen: int
    labels: torch.Tensor | None = None  # (total,) int64, -100 where not masked

    def to(self, device: torch.device) -> "Batch":
        labels = self.labels.to(device) if self.labels is not None else None
        return Batch(self.input_ids.to(device), self.cu_seqlens.to(device), self.max_seqlen, labels)

    def padded(self, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The same sequences as a padded (n, max_seqlen) matrix and its (n, max_seqlen) attention mask."""
        lengths = self.cu_seqlens.diff()
        rows = torch.full((len(lengths), self.max_seqlen), pad_id, dtype=self.input_ids.dtype)
        mask = torch.arange(self.max_seqlen)[None, :] < lengths[:, None]
        rows[mask] = self.input_ids
        return rows, mask


def pack(chunks: Iterable[np.ndarray], max_tokens: int) -> Iterator[Batch]:
    """Whole chunks, in order, into batches of at most `max_tokens` tokens."""
    pending: list[np.ndarray] = []
    size = 0
    for chunk in chunks:
        if len(chunk) > max_tokens:
            raise ValueError(f"a chunk of {len(chunk)} tokens does not fit a batch of {max_tokens}")
        if pending and size + len(chunk) > max_tokens:
            yield make_batch(pending)
            pending, size = [], 0
        pending.append(chunk)
        size += len(chunk)
    if pending:
        yield make_batch(pending)


def cut(chunks: Iterable[np.ndarray], length: int) -> Iterator[np.ndarray]:
    """Chunks longer than `length` tokens in consecutive pieces of at most `length`: shorter sequences for a CPU,
    where a step's attention and a batch's tokens must stay small."""
    for chunk in chunks:
        for start in range(0, len(chunk), length):
            yield chunk[start:start + length]


def make_batch(chunks: list[np.ndarray]) -> Batch:
    lengths = torch.tensor([len(c) for c in chunks], dtype=torch.int32)
    cu_seqlens = torch.zeros(len(chunks) + 1, dtype=torch.int32)
    cu_seqlens[1:] = lengths.cumsum(0)
    input_ids = torch.from_numpy(np.concatenate(chunks).astype(np.int64))
    return Batch(input_ids, cu_seqlens, int(lengths.max()))


def mask_tokens(batch: Batch, rate: float, mask_id: int, vocab_size: int, special_ids: Iterable[int],
                generator: torch.Generator) -> Batch:
    """BERT masking: `rate` of the tokens become targets; of those 80% -> mask, 10% -> a random token, 10% kept.
    Special tokens (bos, eos, pad, ...) are never targets."""
    ids = batch.input_ids.clone()
    special = torch.isin(ids, torch.tensor(sorted(set(special_ids)), dtype=ids.dtype))
    chosen = (torch.rand(ids.shape, generator=generator) < rate) & ~special
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape, generator=generator)
    ids[chosen & (roll < 0.8)] = mask_id
    random_positions = chosen & (roll >= 0.8) & (roll < 0.9)
    ids[random_positions] = torch.randint(vocab_size, (int(random_positions.sum()),), generator=generator)
    return Batch(ids, batch.cu_seqlens, batch.max_seqlen, labels)
