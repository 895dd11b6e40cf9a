"""Phase mixing: how many tokens of each (source, language) a phase takes, and which chunks carry them.

Budgets: FineWeb2 takes its share of the phase budget B; the other sources split the rest in the proportions
the recipe gives them. Within a source, languages are sampled with p_i = n_i^τ / Σ_j n_j^τ over available
tokens n_i; target t_i = p_i · B_source. A language whose target exceeds `max_epochs` · n_i is capped there and
its shortfall re-spread over the others in proportion to p (water-filling, repeated until stable).

Chunking follows mmBERT's data (`ChunkRules`): pieces of seq_len - 2 tokens, each written as bos + piece + eos;
a short later piece is dropped or takes tokens moved (never copied) from the chunk before it. Tokens are counted
as one epoch writes them, bos/eos included and dropped tails left out, so targets and written tokens compare
directly. With r = t_i / n_i, every eligible chunk is written floor(r) times; for the fraction r - floor(r),
chunks are taken in the order of a hash of (seed, doc_id, epoch, chunk) up to the hash below which the fraction's
tokens are reached (`FractionThreshold`). No choice depends on arrival order or workers.

Re-hydration (`rehydrate: true`, FineWeb2's idea): a document gives `repeats` copies by the band its upstream
near-duplicate cluster size falls in, so text that was duplicated a moderate number of times in the wild (and
kept once by dedup) weighs more than a singleton. The language's target stays as planned; it is reached with
copies k_w = min(r · w, max_epochs) of each document of weight w, r solved so that Σ_w k_w · T_w = target
(T_w: the epoch tokens of weight w). No document exceeds the epoch cap, and without re-hydration (every weight 1)
k_1 is the plan's epochs, as before.
"""

import hashlib
import itertools
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from stages.base import Reject, StageStats
from stages.settings import setting

SLICE_TOKENS = 1 << 22  # the most tokens one table of picked chunks holds (with their gather indices: 48 MiB)
HISTOGRAM_BITS = 16  # the first pass of FractionThreshold sums chunk tokens into 2^16 hash ranges


@dataclass(frozen=True)
class RehydrateBand:
    """Documents whose upstream cluster size is at most `max_cluster_size` (and above the band before) count
    `repeats` times."""

    max_cluster_size: int | None = setting(help="the band's largest cluster size (null: no upper end)", ge=1)
    repeats: int = setting(help="copies a document of the band counts for", ge=1)


# The FineWeb2 card's bands (1, 2, 3, 4, 5-100, 101-1000, larger); the weights are an example of its method,
# which derives them per language from each band's filtering rate: set your own per phase.
FINEWEB2_BANDS = (RehydrateBand(1, 1), RehydrateBand(2, 2), RehydrateBand(3, 3), RehydrateBand(4, 4),
                  RehydrateBand(100, 5), RehydrateBand(1000, 8), RehydrateBand(None, 1))


def check_bands(bands: tuple[RehydrateBand, ...]) -> None:
    limits = [band.max_cluster_size for band in bands]
    if not bands or limits[-1] is not None or None in limits[:-1] or limits[:-1] != sorted(set(limits[:-1])):
        raise ValueError("rehydrate_bands must rise by max_cluster_size and end with an open band (null)")


def band_repeats(cluster_size: int | None, bands: tuple[RehydrateBand, ...] | None) -> int:
    """A document's weight: 1 without re-hydration or without a cluster size (sources other than FineWeb2)."""
    if bands is None or cluster_size is None:
        return 1
    return next(band.repeats for band in bands
                if band.max_cluster_size is None or cluster_size <= band.max_cluster_size)


def band_repeats_sql(column: str, bands: tuple[RehydrateBand, ...] | None) -> str:
    """`band_repeats` as a SQL expression over a cluster-size column."""
    if bands is None:
        return "1"
    cases = " ".join(f"WHEN {column} <= {band.max_cluster_size} THEN {band.repeats}"
                     for band in bands if band.max_cluster_size is not None)
    return f"(CASE WHEN {column} IS NULL THEN 1 {cases} ELSE {bands[-1].repeats} END)"


def copies_per_weight(tokens_by_weight: dict[int, int], epochs: float, max_epochs: float) -> dict[int, float]:
    """weight -> copies of each document of that weight, so that the language writes `epochs` × its tokens:
    k_w = min(r · w, max_epochs) with r solved (the heaviest weights reach the cap first)."""
    if set(tokens_by_weight) <= {1}:
        return {1: epochs}
    target = epochs * sum(tokens_by_weight.values())
    capped: set[int] = set()
    while True:
        free = sum(w * t for w, t in tokens_by_weight.items() if w not in capped)
        rest = target - sum(max_epochs * tokens_by_weight[w] for w in capped)
        r = rest / free if free else 0.0
        over = [w for w in tokens_by_weight if w not in capped and r * w > max_epochs]
        if not over:
            return {w: max_epochs if w in capped else r * w for w in tokens_by_weight}
        capped.add(max(over))


@dataclass(frozen=True)
class Selection:
    """How a (source, lang) is written: documents below `floor` quality are left out; a document of weight w is
    written `copies[w][0]` whole times, plus once for the chunks whose hash is at most `copies[w][1]`."""

    floor: float
    copies: dict[int, tuple[int, int | None]]


@dataclass(frozen=True)
class MixRow:
    source: str
    lang: str
    available_tokens: int
    p: float
    target_tokens: int
    epochs: float
    capped: bool


def water_fill(available: dict[str, int], temperature: float, budget: float, max_epochs: float,
               fixed_shares: dict[str, float] | None = None) -> dict[str, tuple]:
    """lang -> (p, target, capped) for one source's budget. `fixed_shares` pins p for some languages (the
    English-heavy decay variant); the others share the rest by n^τ."""
    langs = sorted(lang for lang, n in available.items() if n > 0)
    if not langs:
        return {}
    fixed = {lang: share for lang, share in (fixed_shares or {}).items() if lang in langs}
    weights = {lang: available[lang] ** temperature for lang in langs if lang not in fixed}
    total = sum(weights.values())
    free_share = 1.0 - sum(fixed.values())
    p = {lang: fixed.get(lang, free_share * weights.get(lang, 0.0) / total if total else 0.0) for lang in langs}
    capped: dict[str, float] = {}
    while True:
        free = [lang for lang in langs if lang not in capped]
        remaining = budget - sum(capped.values())
        free_p = sum(p[lang] for lang in free)
        over = [lang for lang in free if free_p and remaining * p[lang] / free_p > max_epochs * available[lang]]
        if not over:
            break
        for lang in over:
            capped[lang] = max_epochs * available[lang]
    remaining = budget - sum(capped.values())
    free_p = sum(p[lang] for lang in langs if lang not in capped)
    targets = {lang: capped.get(lang, remaining * p[lang] / free_p if free_p else 0.0) for lang in langs}
    return {lang: (p[lang], targets[lang], lang in capped) for lang in langs}


def source_budgets(sources: Iterable[str], budget: float, fineweb2_share: float,
                   other_sources: dict[str, float]) -> dict[str, float]:
    """FineWeb2 gets its share of the budget; the other sources present split the rest by their weights."""
    present = set(sources)
    others = {s: w for s, w in other_sources.items() if s in present and w > 0}
    fineweb2 = budget * fineweb2_share if "fineweb2" in present else 0.0
    rest, weight = budget - fineweb2, sum(others.values())
    return {s: fineweb2 if s == "fineweb2" else rest * others.get(s, 0.0) / weight if weight else 0.0
            for s in sorted(present)}


def plan_mixture(available: dict[tuple[str, str], int], budgets: dict[str, float], temperature: float,
                 max_epochs: float, fixed_shares: dict[str, float] | None = None) -> list[MixRow]:
    """Targets per (source, lang): each source's budget water-filled over its languages."""
    rows = []
    for source in sorted({source for source, _ in available}):
        per_lang = {lang: n for (s, lang), n in available.items() if s == source}
        filled = water_fill(per_lang, temperature, budgets.get(source, 0.0), max_epochs, fixed_shares)
        for lang, (p, target, capped) in filled.items():
            n = per_lang[lang]
            rows.append(MixRow(source, lang, n, p, round(target), target / n, capped))
    return rows


def unit_hash(*parts: object) -> int:
    """A uint64 from the parts, identical on every machine and process (no Python hash seed)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def key_hashes(keys: Iterable[str]) -> np.ndarray:
    """`unit_hash` of each "/"-joined key, as one uint64 array."""
    digests = (hashlib.blake2b(key.encode(), digest_size=8).digest() for key in keys)
    return np.frombuffer(b"".join(digests), dtype="<u8").astype(np.uint64)


def chunk_hashes(head: tuple[object, ...], doc_ids: Iterable[str], epochs: Iterable[int],
                 indices: Iterable[int]) -> np.ndarray:
    """`unit_hash(*head, doc_id, epoch, index)` of each chunk, as one uint64 array."""
    prefix = "".join(f"{part}/" for part in head)
    return key_hashes(f"{prefix}{doc_id}/{epoch}/{index}"
                      for doc_id, epoch, index in zip(doc_ids, epochs, indices, strict=True))


@dataclass(frozen=True)
class ChunkRules:
    """How a phase cuts documents into sequences: the rules mmBERT's data was cut by (the Ettin/mmBERT pipeline's
    chunker with backfill and no duplicates, whose folders are named `*-tokenized-chunked-<seq_len>-<min_chunk>-
    <always_skip>-backfill-nodups`). A document's tokens are cut into pieces of seq_len - 2, each written as bos +
    piece + eos. The first piece is always kept; a later piece shorter than `always_skip` is dropped (skipped); a later
    piece shorter than `min_chunk` takes a random number of tokens, uniform in [0, seq_len - 2 - its length), from
    the end of the chunk before it: moved, so no token is written twice in an epoch."""

    seq_len: int
    min_chunk: int
    always_skip: int


@dataclass(frozen=True)
class Chunks:
    """The chunks of a batch of documents, an array entry each: the document's row in the batch, the chunk's
    number in its document, and the [start, end) of the document's tokens it carries (bos/eos come on top)."""

    doc: np.ndarray
    index: np.ndarray
    start: np.ndarray
    end: np.ndarray

    def take(self, rows: np.ndarray | slice) -> "Chunks":
        return Chunks(self.doc[rows], self.index[rows], self.start[rows], self.end[rows])

    @property
    def tokens(self) -> np.ndarray:
        """Tokens each chunk writes, bos and eos included."""
        return self.end - self.start + 2


def chunk_table(n_tokens: np.ndarray, ids: Sequence[str], rules: ChunkRules,
                seed: int) -> tuple[Chunks, np.ndarray, np.ndarray]:
    """Every chunk of documents of these lengths under `rules`, and per document the tokens of its dropped tail
    and the tokens moved into its short tail. The move is drawn from a hash of (seed, document id): a document is
    cut the same way in every epoch, task and phase of the same shape."""
    body = rules.seq_len - 2
    n_tokens = np.asarray(n_tokens, np.int64)
    pieces = -(-n_tokens // body)  # ceil: no chunk for an empty document
    tail = n_tokens - (pieces - 1) * body  # the last piece's length, 1 to body
    later = pieces > 1
    skipped = np.where(later & (tail < rules.always_skip), tail, 0)
    short = np.flatnonzero(later & (tail >= rules.always_skip) & (tail < rules.min_chunk))
    moved = np.zeros(len(n_tokens), np.int64)
    if len(short):
        draws = key_hashes(f"{seed}/backfill/{ids[d]}" for d in short.tolist())
        moved[short] = (draws % (body - tail[short]).astype(np.uint64)).astype(np.int64)
    counts = pieces - (skipped > 0)
    doc = np.repeat(np.arange(len(n_tokens)), counts)
    index = np.arange(len(doc)) - np.repeat(np.cumsum(counts) - counts, counts)
    start = index * body
    end = np.minimum(start + body, n_tokens[doc])
    shift = moved[doc]  # the last chunk starts that much earlier, the one before it ends that much earlier
    start -= np.where(index == counts[doc] - 1, shift, 0)
    end -= np.where(index == counts[doc] - 2, shift, 0)
    return Chunks(doc, index, start, end), skipped, moved


def chunk_tokens(values: np.ndarray, doc_offsets: np.ndarray, chunks: Chunks, bos: int, eos: int) -> pa.ListArray:
    """Each chunk's token list, [bos, its span of its document's tokens, eos], gathered in one pass from the
    documents' concatenated `values` (document d's tokens start at doc_offsets[d])."""
    lengths = chunks.tokens
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # position p of chunk c reads values[doc_offsets[doc] + start + p - 1]; its first and last are bos and eos
    source = np.arange(offsets[-1]) + np.repeat(doc_offsets[chunks.doc] + chunks.start - offsets[:-1] - 1, lengths)
    flat = values[np.clip(source, 0, max(len(values) - 1, 0))].astype(np.uint32)
    flat[offsets[:-1]] = bos
    flat[offsets[1:] - 1] = eos
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat))


def epoch_tokens_sql(n: str, rules: ChunkRules) -> str:
    """SQL for the tokens one epoch writes for a document of `n` tokens, as `chunk_table` cuts it: its tokens but
    a dropped tail, and bos/eos per chunk (moving tokens between chunks changes no total)."""
    body = rules.seq_len - 2
    pieces = f"(({n} + {body - 1}) // {body})"
    tail = f"({n} - ({pieces} - 1) * {body})"
    return (f"(CASE WHEN {n} < 1 THEN 0 WHEN {pieces} > 1 AND {tail} < {rules.always_skip} "
            f"THEN {n} - {tail} + 2 * ({pieces} - 1) ELSE {n} + 2 * {pieces} END)")


class FractionThreshold:
    """The hash up to which chunks carry a fraction of an epoch: taking chunks in hash order, the point where
    their tokens come closest to `target` (within half a chunk). Two passes over batches of (document ids, token
    counts), in bounded memory: token sums per hash range, then the chunks of the one range where the target
    falls."""

    def __init__(self, seed: int, epoch: int, rules: ChunkRules) -> None:
        self.seed, self.epoch, self.rules = seed, epoch, rules
        self.histogram = np.zeros(2**HISTOGRAM_BITS, np.int64)

    def chunks(self, ids: list[str], n_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(hash, tokens) of every chunk of a batch of documents, as arrays."""
        chunks, _, _ = chunk_table(n_tokens, ids, self.rules, self.seed)
        docs = chunks.doc.tolist()
        hashes = chunk_hashes((self.seed,), (ids[d] for d in docs), [self.epoch] * len(docs), chunks.index.tolist())
        return hashes, chunks.tokens

    def count(self, batches: Iterable[tuple[list[str], np.ndarray]]) -> None:
        """First pass over batches of (document ids, token counts)."""
        for ids, n_tokens in batches:
            hashes, tokens = self.chunks(ids, n_tokens)
            ranges = (hashes >> np.uint64(64 - HISTOGRAM_BITS)).astype(np.int64)
            self.histogram += np.bincount(ranges, weights=tokens, minlength=len(self.histogram)).astype(np.int64)

    def locate(self, target: float) -> tuple[int, float]:
        """The hash range where the cumulative tokens reach the target, and the tokens still needed inside it."""
        cumulative = np.cumsum(self.histogram)
        bucket = min(int(np.searchsorted(cumulative, target)), len(cumulative) - 1)
        before = float(cumulative[bucket - 1]) if bucket else 0.0
        return bucket, target - before

    def resolve(self, batches: Iterable[tuple[list[str], np.ndarray]], bucket: int, needed: float) -> int:
        """Second pass: the chunks of the target's hash range, in hash order."""
        inside = []
        for ids, n_tokens in batches:
            hashes, tokens = self.chunks(ids, n_tokens)
            mine = (hashes >> np.uint64(64 - HISTOGRAM_BITS)) == bucket
            inside += zip(hashes[mine].tolist(), tokens[mine].tolist(), strict=True)
        inside.sort()
        threshold, total = (bucket << (64 - HISTOGRAM_BITS)) - 1, 0  # just below the range: none of it
        for value, tokens in inside:
            if total + tokens - needed > needed - total:  # this chunk would overshoot more than it fills
                break
            threshold, total = value, total + tokens
        return threshold


class SampleChunks:
    """Chunks pool documents and picks the chunks each (source, lang) `Selection` writes: every chunk whole times,
    plus once more for the chunks whose hash is at most the fractional epoch's threshold. Documents below their
    (source, lang) quality tier, and those with no chunk picked, are rejected. Works on a record batch at a time:
    the token arrays are cut and joined in NumPy, without a Python object per chunk. Keeps a stage's counters
    and rejects (stages/base.py)."""

    name = "mix"

    def __init__(self, plan: dict[tuple[str, str], Selection], seed: int, rules: ChunkRules, bos: int, eos: int,
                 bands: tuple[RehydrateBand, ...] | None = None) -> None:
        self.plan = plan
        self.seed, self.rules = seed, rules
        self.bos, self.eos = bos, eos
        self.bands = bands  # re-hydration's, or None
        self.stats = StageStats(self.name)
        self.rejects: list[Reject] = []

    def sample(self, batch: pa.RecordBatch) -> Iterator[pa.Table]:
        """The picked chunks of a batch of pool rows (input_ids, doc_id, chunk, source, lang, epoch), in tables of
        SLICE_TOKENS tokens (and the chunk that passes it): memory stays bounded however long the documents and
        however many epochs.
        Consume it whole: the counters are complete only then."""
        started = time.perf_counter()
        ids, sources, langs = (batch.column(name).to_pylist() for name in ("id", "source", "lang"))
        origins = batch.column("origin").to_pylist() if "origin" in batch.schema.names else [""] * len(ids)
        sizes = (batch.column("cluster_size").to_pylist() if "cluster_size" in batch.schema.names
                 else [None] * len(ids))
        quality = batch.column("quality").to_numpy(zero_copy_only=False)
        keys = list(zip(sources, langs, strict=True))
        eligible = np.zeros(len(ids), bool)
        whole = np.zeros(len(ids), np.int64)
        threshold: dict[int, int] = {}  # document row -> the hash its fractional epoch's chunks must not pass
        for row, key in enumerate(keys):
            self.stats.read[key] += 1
            selection = self.plan.get(key, Selection(0.0, {}))
            if quality[row] < selection.floor:
                self._reject(ids[row], key, origins[row], f"mix:below_quality_tier quality<{selection.floor:.4f}")
                continue
            eligible[row] = True
            whole[row], fraction = selection.copies.get(band_repeats(sizes[row], self.bands), (0, None))
            if fraction is not None and fraction >= 0:  # below 0: the fraction takes no chunk
                threshold[row] = fraction
        tokens = batch.column("input_ids")
        doc_offsets = tokens.offsets.to_numpy()
        chunks, skipped, moved = chunk_table(np.diff(doc_offsets) * eligible, ids, self.rules, self.seed)
        repeats = whole[chunks.doc]  # whole epochs: every chunk once per epoch
        rows = np.repeat(np.arange(len(chunks.doc)), repeats)
        epochs = np.arange(len(rows)) - np.repeat(np.cumsum(repeats) - repeats, repeats)
        fractional = np.flatnonzero(np.isin(chunks.doc, list(threshold)))
        if len(fractional):
            docs = chunks.doc[fractional].tolist()
            hashes = chunk_hashes((self.seed,), (ids[d] for d in docs), whole[docs].tolist(),
                                  chunks.index[fractional].tolist())
            extra = fractional[hashes <= np.array([threshold[d] for d in docs], np.uint64)]
            rows, epochs = np.concatenate((rows, extra)), np.concatenate((epochs, whole[chunks.doc[extra]]))
        picked = chunks.take(rows)
        written = np.bincount(picked.doc, weights=picked.tokens, minlength=len(ids)).astype(np.int64)
        for row, key in enumerate(keys):
            if written[row]:
                self.stats.kept[key] += 1
                self.stats.tokens[key] += int(written[row])
                if skipped[row]:  # counted once per document, however many epochs write it
                    self.stats.count_note(key, "mix:tail_skipped", int(skipped[row]))
                if moved[row]:
                    self.stats.count_note(key, "mix:tail_backfilled", int(moved[row]))
            elif eligible[row]:
                self._reject(ids[row], key, origins[row], "mix:not_sampled")
        values, working = tokens.values.to_numpy(), time.perf_counter() - started
        ends = np.cumsum(picked.tokens)
        cuts = np.searchsorted(ends, np.arange(SLICE_TOKENS, ends[-1] if len(ends) else 0, SLICE_TOKENS), "right")
        for first, last in itertools.pairwise(dict.fromkeys([0, *cuts.tolist(), len(ends)])):
            started = time.perf_counter()
            part = picked.take(slice(first, last))
            documents = pa.array(part.doc, pa.int64())
            table = pa.table({"input_ids": chunk_tokens(values, doc_offsets, part, self.bos, self.eos),
                              "doc_id": batch.column("id").take(documents), "chunk": pa.array(part.index, pa.int32()),
                              "source": batch.column("source").take(documents),
                              "lang": batch.column("lang").take(documents),
                              "epoch": pa.array(epochs[first:last], pa.int32())})
            working += time.perf_counter() - started
            yield table
        for key in keys:
            self.stats.seconds[key] += working / len(keys)

    def _reject(self, doc_id: str, key: tuple[str, str], origin: str, reason: str) -> None:
        self.stats.count_reject(key, reason)
        self.rejects.append(Reject(doc_id, key[0], key[1], self.name, reason, origin))
