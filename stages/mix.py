"""Phase mixing: how many tokens of each (source, language) a phase takes, and which chunks carry them.

Within a source, languages are sampled with p_i = n_i^τ / Σ_j n_j^τ over available tokens n_i; target
t_i = p_i · B_source. A language whose target exceeds `max_epochs` · n_i is capped there and its shortfall is
re-spread over the others in proportion to p (water-filling, repeated until stable). A document's tokens are
repeated floor(r) times for r = t_i / n_i, and each of its chunks enters one more epoch when a hash of
(seed, doc_id, epoch, chunk) falls below the fraction r - floor(r): no choice depends on arrival order.
"""

import hashlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from stages.base import Document, Stage

UINT64 = 2**64


@dataclass(frozen=True)
class MixRow:
    source: str
    lang: str
    available_tokens: int
    p: float
    target_tokens: int
    epochs: float
    capped: bool


def water_fill(available: dict[str, int], temperature: float, budget: float, max_epochs: float) -> dict[str, tuple]:
    """lang -> (p, target, capped) for one source's budget."""
    langs = sorted(lang for lang, n in available.items() if n > 0)
    if not langs:
        return {}
    weights = {lang: available[lang] ** temperature for lang in langs}
    total = sum(weights.values())
    p = {lang: weights[lang] / total for lang in langs}
    capped: dict[str, float] = {}
    while True:
        free = [lang for lang in langs if lang not in capped]
        if not free:
            break
        remaining = budget - sum(capped.values())
        free_p = sum(p[lang] for lang in free)
        over = [lang for lang in free if remaining * p[lang] / free_p > max_epochs * available[lang]]
        if not over:
            break
        for lang in over:
            capped[lang] = max_epochs * available[lang]
    remaining = budget - sum(capped.values())
    free_p = sum(p[lang] for lang in langs if lang not in capped)
    targets = {lang: capped.get(lang, remaining * p[lang] / free_p if free_p else 0.0) for lang in langs}
    return {lang: (p[lang], targets[lang], lang in capped) for lang in langs}


def plan_mixture(available: dict[tuple[str, str], int], shares: dict[str, float], temperature: float,
                 budget: float, max_epochs: float) -> list[MixRow]:
    """Targets per (source, lang): the budget split by source shares, then water-filled within each source."""
    sources = sorted({source for source, _ in available if shares.get(source, 0) > 0})
    share_total = sum(shares[s] for s in sources)
    rows = []
    for source in sorted({source for source, _ in available}):
        per_lang = {lang: n for (s, lang), n in available.items() if s == source}
        source_budget = budget * shares.get(source, 0) / share_total if source in sources else 0.0
        for lang, (p, target, capped) in water_fill(per_lang, temperature, source_budget, max_epochs).items():
            n = per_lang[lang]
            rows.append(MixRow(source, lang, n, p, round(target), target / n, capped))
    return rows


def unit_hash(*parts: object) -> int:
    """A uint64 from the parts, identical on every machine and process (no Python hash seed)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def chunk_document(ids: list[int], seq_len: int, min_chunk: int, bos: int, eos: int) -> list[list[int]]:
    """bos + piece + eos chunks of at most seq_len tokens; a too-short tail is backfilled from earlier tokens.

    Returns [] when even the whole document is shorter than min_chunk.
    """
    body, min_body = seq_len - 2, min_chunk - 2
    if len(ids) < min_body:
        return []
    pieces = [ids[start:start + body] for start in range(0, len(ids), body)]
    if len(pieces) > 1 and len(pieces[-1]) < min_body:
        pieces[-1] = ids[len(ids) - min_body:]
    return [[bos, *piece, eos] for piece in pieces]


def epochs_for_chunk(seed: int, doc_id: str, chunk: int, ratio: float) -> Iterator[int]:
    """The epochs in which one chunk is written: every whole epoch of `ratio`, plus the fractional one by hash."""
    whole = math.floor(ratio)
    yield from range(whole)
    fraction = ratio - whole
    if fraction > 0 and unit_hash(seed, doc_id, whole, chunk) < fraction * UINT64:
        yield whole


class SampleChunks(Stage):
    """Chunks each pool document and keeps the chunks its (source, lang) ratio selects, epoch by epoch."""

    name = "mix"

    def __init__(self, ratios: dict[tuple[str, str], float], seed: int, seq_len: int, min_chunk: int,
                 min_quality: float, bos: int, eos: int) -> None:
        super().__init__()
        self.ratios, self.seed = ratios, seed
        self.seq_len, self.min_chunk, self.min_quality = seq_len, min_chunk, min_quality
        self.bos, self.eos = bos, eos

    def run(self, docs: Iterable[Document]) -> Iterator[Document]:
        for doc in docs:
            self.count_read(doc)
            if doc.metadata["quality"] < self.min_quality:
                self.reject(doc, f"mix:below_quality_tier quality<{self.min_quality}")
                continue
            with self.track_time([doc]):
                chunks = chunk_document(doc.metadata["input_ids"], self.seq_len, self.min_chunk, self.bos, self.eos)
                ratio = self.ratios.get(self.key(doc), 0.0)
                picked = [
                    (epoch, index, chunk) for index, chunk in enumerate(chunks)
                    for epoch in epochs_for_chunk(self.seed, doc.id, index, ratio)
                ]
            if not chunks:
                self.reject(doc, f"mix:shorter_than_min_chunk tokens<{self.min_chunk - 2}")
            elif not picked:
                self.reject(doc, "mix:not_sampled", detail=f"ratio {ratio:.4f}")
            else:
                doc.metadata["chunks"] = picked
                self.stats.tokens[self.key(doc)] += sum(len(chunk) for _, _, chunk in picked)
                yield self.keep(doc)
