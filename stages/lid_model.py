"""fastText's supervised prediction (top label and its probability) compiled with Numba, read from the model file
itself: the algorithm half of LID (stages/lid.py decides what a label means).

fastText's own `predict` spends most of its time building a std::string per character n-gram and reading the
line through a stream. Here the words and their n-grams are hashed straight from one UTF-8 buffer of a batch (a
word seen before takes the input rows found the first time, from a bounded cache per worker: most words repeat),
and the arithmetic is fastText 0.9.2's, step for step in float32 (the same libm `expf` and `log`), so the labels
and the probabilities are the same bits (tests/stages/test_lid.py compares them document by document). Only what
lid.176 and models like it need is compiled: hierarchical softmax, word n-grams of 1, an input matrix dense or
product-quantized (its norms apart or not), a dense output matrix. `load_compiled` returns None for any other
model, and the caller uses fastText's own `predict`.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np

MAGIC, MAX_VERSION = 793712314, 12  # fastText's file signature and the newest format it writes
HIERARCHICAL_SOFTMAX, SUPERVISED = 1, 3  # Args' loss_name::hs and model_name::sup
LABEL_PREFIX, EOS = b"__label__", b"</s>"
NO_PRUNING, ALL_PRUNED, PRUNED = 0, 1, 2  # how an n-gram's bucket becomes an input row (Dictionary::pushHash)
CENTROIDS_PER_SUBQUANTIZER = 256  # ProductQuantizer::ksub_
# The word cache of a worker: at most 65,536 words, 4 MiB of their rows and 1 MiB of their bytes; emptied when full
WORD_CACHE_SLOTS, WORD_CACHE_ROWS, WORD_CACHE_BYTES = 1 << 17, 1 << 20, 1 << 20


@dataclass(frozen=True)
class CompiledModel:
    """The arrays the kernel reads. Words by UTF-8 bytes (`word_bytes[word_offsets[i]:word_offsets[i + 1]]`) in an
    open-addressing table of fastText's word hash; input rows dense (`input_rows`) or as product-quantizer codes
    (`codes`, `centroids`); the label tree as fastText builds it from the label counts."""

    dim: int
    minn: int
    maxn: int
    bucket: int
    nwords: int
    labels: list[str]
    word_bytes: np.ndarray
    word_offsets: np.ndarray
    word_slots: np.ndarray
    eos: int
    pruning: int
    pruned_rows: np.ndarray
    input_rows: np.ndarray
    codes: np.ndarray
    centroids: np.ndarray
    norm_codes: np.ndarray
    norm_centroids: np.ndarray
    subquantizers: int
    dsub: int
    last_dsub: int
    output: np.ndarray
    left: np.ndarray
    right: np.ndarray
    cache: "WordCache"

    def predict(self, texts: list[str]) -> tuple[list[str], list[float]]:
        """The top label and its probability for each text (one line each, as fastText's `predict(texts, k=1)`)."""
        encoded = [text.encode() for text in texts]
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(line) for line in encoded], out=offsets[1:])
        buffer = np.frombuffer(b"".join(encoded), np.uint8)
        best, scores = _predict(buffer, offsets, self.dim, self.minn, self.maxn, self.bucket, self.nwords,
                                self.word_bytes, self.word_offsets, self.word_slots, self.eos, self.pruning,
                                self.pruned_rows, self.input_rows, self.codes, self.centroids, self.norm_codes,
                                self.norm_centroids, self.subquantizers,
                                self.dsub, self.last_dsub, self.output, self.left, self.right, *self.cache.arrays())
        if (best < 0).any():  # fastText answers nothing when no label reaches its floor of 1e-5
            raise ValueError("fastText gave no label for a text")
        return [self.labels[i] for i in best.tolist()], scores.tolist()


@dataclass(frozen=True)
class WordCache:
    """The input rows of words seen before, by their bytes: an open-addressing table of word hashes onto entries
    (where the word's bytes are in `word_bytes`, how many, where its rows are in `rows`, how many). `fill` counts
    the entries, rows and bytes held."""

    slots: np.ndarray = field(default_factory=lambda: np.full(WORD_CACHE_SLOTS, -1, np.int32))
    entries: np.ndarray = field(default_factory=lambda: np.zeros((WORD_CACHE_SLOTS // 2, 4), np.int64))
    rows: np.ndarray = field(default_factory=lambda: np.zeros(WORD_CACHE_ROWS, np.int32))
    word_bytes: np.ndarray = field(default_factory=lambda: np.zeros(WORD_CACHE_BYTES, np.uint8))
    fill: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))

    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.slots, self.entries, self.rows, self.word_bytes, self.fill


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, dtype: str, count: int = 1) -> np.ndarray:
        values = np.frombuffer(self.data, dtype, count, self.at)
        self.at += values.nbytes
        return values

    def one(self, dtype: str) -> int | float | bool:
        return self.take(dtype)[0].item()

    def word(self) -> bytes:
        end = self.data.index(b"\0", self.at)
        word, self.at = self.data[self.at:end], end + 1
        return word


def load_compiled(path: Path) -> CompiledModel | None:
    """The model at `path` for the compiled prediction, or None when it uses what is not compiled here. The file is
    read as fastText 0.9.2's `loadModel` reads it."""
    f = _Reader(path.read_bytes())
    magic, version = f.take("<i4", 2).tolist()
    if magic != MAGIC or not 11 < version <= MAX_VERSION:  # version 11 models ignore their character n-grams
        return None
    dim, _ws, _epoch, _min_count, _neg, word_ngrams, loss, model, bucket, minn, maxn, _lr_update = (
        f.take("<i4", 12).tolist())
    f.one("<f8")
    if loss != HIERARCHICAL_SOFTMAX or model != SUPERVISED or word_ngrams != 1 or maxn <= 0:
        return None
    size, nwords, nlabels = f.take("<i4", 3).tolist()
    f.one("<i8")
    prune_size = f.one("<i8")
    words, counts = [], []
    for _ in range(size):
        words.append(f.word())
        counts.append(f.one("<i8"))
        f.one("<i1")
    pairs = f.take("<i4", 2 * max(prune_size, 0)).reshape(-1, 2)
    quantized = f.one("?")
    codes, centroids, input_rows = np.zeros((0, 0), np.uint8), np.zeros(0, np.float32), np.zeros((0, 0), np.float32)
    norm_codes, norm_centroids = np.zeros(0, np.uint8), np.zeros(0, np.float32)
    subquantizers = dsub = last_dsub = 0
    if quantized:
        norms_apart = f.one("?")  # qnorm: each row a unit vector times a norm of its own quantizer
        rows, _cols = f.take("<i8", 2).tolist()
        codesize = f.one("<i4")
        codes = f.take("u1", codesize)
        pq_dim, subquantizers, dsub, last_dsub = f.take("<i4", 4).tolist()
        centroids = f.take("<f4", pq_dim * CENTROIDS_PER_SUBQUANTIZER)
        codes = codes.reshape(rows, subquantizers)
        if norms_apart:
            norm_codes = f.take("u1", rows)
            if f.take("<i4", 4).tolist() != [1, 1, 1, 1]:
                return None
            norm_centroids = f.take("<f4", CENTROIDS_PER_SUBQUANTIZER)
    else:
        rows, cols = f.take("<i8", 2).tolist()
        input_rows = f.take("<f4", rows * cols).reshape(rows, cols)
    if f.one("?"):  # quantized output (qout)
        return None
    rows, cols = f.take("<i8", 2).tolist()
    output = f.take("<f4", rows * cols).reshape(rows, cols)
    if f.at != len(f.data) or cols != dim or rows < nlabels - 1 or EOS not in words[:nwords]:
        return None
    pruned_rows = np.full(bucket if prune_size > 0 else 0, -1, np.int32)
    pruned_rows[pairs[:, 0]] = pairs[:, 1]
    pruning = NO_PRUNING if prune_size < 0 else ALL_PRUNED if prune_size == 0 else PRUNED
    word_bytes = np.frombuffer(b"".join(words[:nwords]), np.uint8)
    word_offsets = np.zeros(nwords + 1, np.int64)
    np.cumsum([len(word) for word in words[:nwords]], out=word_offsets[1:])
    left, right = _label_tree(np.array(counts[nwords:], np.int64))
    return CompiledModel(
        dim=dim, minn=minn, maxn=maxn, bucket=bucket, nwords=nwords,
        labels=[label.decode() for label in words[nwords:]], word_bytes=word_bytes, word_offsets=word_offsets,
        word_slots=_word_slots(word_bytes, word_offsets), eos=words.index(EOS),
        pruning=pruning, pruned_rows=pruned_rows, input_rows=np.ascontiguousarray(input_rows),
        codes=np.ascontiguousarray(codes), centroids=centroids, norm_codes=norm_codes,
        norm_centroids=norm_centroids, subquantizers=subquantizers, dsub=dsub,
        last_dsub=last_dsub, output=np.ascontiguousarray(output), left=left, right=right, cache=WordCache())


def _label_tree(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Children of each node of the Huffman tree over label counts (HierarchicalSoftmaxLoss::buildTree); leaves
    are the labels, -1 their children, the root the last node."""
    n = len(counts)
    count = np.full(2 * n - 1, 10**15, np.int64)
    count[:n] = counts
    left, right = np.full(2 * n - 1, -1, np.int32), np.full(2 * n - 1, -1, np.int32)
    leaf, node = n - 1, n
    for i in range(n, 2 * n - 1):
        picked = []
        for _ in range(2):
            if leaf >= 0 and count[leaf] < count[node]:
                picked.append(leaf)
                leaf -= 1
            else:
                picked.append(node)
                node += 1
        left[i], right[i] = picked
        count[i] = count[picked[0]] + count[picked[1]]
    return left, right


@numba.njit(cache=True)
def _fnv_step(h: np.uint32, byte: int) -> np.uint32:
    """One byte into fastText's FNV-1a: the byte as a signed char widened to 32 bits; arithmetic modulo 2^32 (Numba
    widens uint32 products to 64 bits, hence the masks)."""
    signed = byte - 256 if byte >= 128 else byte
    return np.uint32(((np.uint64(h) ^ np.uint64(signed & 0xFFFFFFFF)) * np.uint64(16777619)) & np.uint64(0xFFFFFFFF))


@numba.njit(cache=True)
def _hash(data: np.ndarray, start: int, end: int, prefix: int, suffix: int) -> np.uint32:
    """fastText's FNV-1a over signed bytes, of data[start:end] between an optional leading and trailing byte."""
    h = np.uint32(2166136261)
    if prefix >= 0:
        h = _fnv_step(h, prefix)
    for i in range(start, end):
        h = _fnv_step(h, data[i])
    if suffix >= 0:
        h = _fnv_step(h, suffix)
    return h


@numba.njit(cache=True)
def _word_slots(word_bytes: np.ndarray, word_offsets: np.ndarray) -> np.ndarray:
    """An open-addressing table of the words by their fastText hash, at most half full."""
    size = 16
    while size < 2 * (len(word_offsets) - 1):
        size *= 2
    slots = np.full(size, -1, np.int32)
    for word in range(len(word_offsets) - 1):
        slot = _hash(word_bytes, word_offsets[word], word_offsets[word + 1], -1, -1) & np.uint32(size - 1)
        while slots[slot] >= 0:
            slot = (slot + np.uint32(1)) & np.uint32(size - 1)
        slots[slot] = word
    return slots


@numba.njit(cache=True)
def _word_id(data: np.ndarray, start: int, end: int, word_bytes: np.ndarray, word_offsets: np.ndarray,
             word_slots: np.ndarray) -> int:
    mask = np.uint32(len(word_slots) - 1)
    slot = _hash(data, start, end, -1, -1) & mask
    while word_slots[slot] >= 0:
        word = word_slots[slot]
        first = word_offsets[word]
        if word_offsets[word + 1] - first == end - start:
            same = True
            for i in range(end - start):
                if word_bytes[first + i] != data[start + i]:
                    same = False
                    break
            if same:
                return word
        slot = (slot + np.uint32(1)) & mask
    return -1


@numba.njit(cache=True)
def _same_bytes(cached: np.ndarray, first: int, first_length: int, data: np.ndarray, second: int,
                second_length: int) -> bool:
    if first_length != second_length:
        return False
    for i in range(first_length):
        if cached[first + i] != data[second + i]:
            return False
    return True


@numba.njit(cache=True)
def _add_row(hidden: np.ndarray, row: int, input_rows: np.ndarray, codes: np.ndarray, centroids: np.ndarray,
             norm_codes: np.ndarray, norm_centroids: np.ndarray, subquantizers: int, dsub: int,
             last_dsub: int) -> None:
    """hidden += input row `row` (DenseMatrix / QuantMatrix::addRowToVector)."""
    if subquantizers == 0:
        for j in range(len(hidden)):
            hidden[j] += input_rows[row, j]
        return
    norm = norm_centroids[norm_codes[row]] if len(norm_codes) else np.float32(1.0)
    for m in range(subquantizers):
        code = np.int64(codes[row, m])
        if m == subquantizers - 1:
            base, width = m * CENTROIDS_PER_SUBQUANTIZER * dsub + code * last_dsub, last_dsub
        else:
            base, width = (m * CENTROIDS_PER_SUBQUANTIZER + code) * dsub, dsub
        for n in range(width):
            hidden[m * dsub + n] += norm * centroids[base + n]


@numba.njit(cache=True)
def _byte_of_token(data: np.ndarray, start: int, length: int, k: int) -> int:
    """Byte k of `<word>` for the word data[start:start + length - 2]."""
    if k == 0:
        return 60  # "<"
    if k == length - 1:
        return 62  # ">"
    return np.int64(data[start + k - 1])


@numba.njit(cache=True)
def _add_ngrams(data: np.ndarray, start: int, end: int, minn: int, maxn: int, bucket: int, nwords: int,
                pruning: int, pruned_rows: np.ndarray, rows: np.ndarray, count: int) -> int:
    """Append to rows[count:] the input rows of the character n-grams of `<word>` (Dictionary::computeSubwords,
    then pushHash; n counts UTF-8 characters); returns the new count."""
    length = end - start + 2
    for i in range(length):
        if _byte_of_token(data, start, length, i) & 0xC0 == 0x80:
            continue
        h = np.uint32(2166136261)
        j, n = i, 1
        while j < length and n <= maxn:
            h = _fnv_step(h, _byte_of_token(data, start, length, j))
            j += 1
            while j < length and _byte_of_token(data, start, length, j) & 0xC0 == 0x80:
                h = _fnv_step(h, _byte_of_token(data, start, length, j))
                j += 1
            if n >= minn and not (n == 1 and (i == 0 or j == length)):
                bucket_id = np.int64(h % np.uint32(bucket))
                if pruning == NO_PRUNING:
                    rows[count] = nwords + bucket_id
                    count += 1
                elif pruning == PRUNED and pruned_rows[bucket_id] >= 0:
                    rows[count] = nwords + np.int64(pruned_rows[bucket_id])
                    count += 1
            n += 1
    return count


@numba.njit(cache=True)
def _is_separator(byte: int) -> bool:
    """The bytes Dictionary::readWord splits on (a line is one text: no newline inside)."""
    return byte == 32 or byte == 10 or byte == 13 or byte == 9 or byte == 11 or byte == 12 or byte == 0


@numba.njit(cache=True)
def _starts_with_label(data: np.ndarray, start: int, end: int) -> bool:
    prefix = (95, 95, 108, 97, 98, 101, 108, 95, 95)  # "__label__": a label token is no word (getType)
    if end - start < len(prefix):
        return False
    for i in range(len(prefix)):
        if data[start + i] != prefix[i]:
            return False
    return True


@numba.njit(cache=True)
def _std_log(x: np.float32) -> np.float32:
    return np.float32(math.log(np.float64(x) + 1e-5))


@numba.njit(cache=True)
def _predict(data: np.ndarray, offsets: np.ndarray, dim: int, minn: int, maxn: int, bucket: int, nwords: int,
             word_bytes: np.ndarray, word_offsets: np.ndarray, word_slots: np.ndarray, eos: int, pruning: int,
             pruned_rows: np.ndarray, input_rows: np.ndarray, codes: np.ndarray, centroids: np.ndarray,
             norm_codes: np.ndarray, norm_centroids: np.ndarray, subquantizers: int, dsub: int, last_dsub: int,
             output: np.ndarray, left: np.ndarray, right: np.ndarray, cache_slots: np.ndarray,
             cache_entries: np.ndarray, cache_rows: np.ndarray, cache_bytes: np.ndarray,
             cache_fill: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per text: the top label (-1 if none) and its probability, as FastText::predictLine with k = 1."""
    texts = len(offsets) - 1
    best_labels = np.full(texts, -1, np.int64)
    best_scores = np.zeros(texts, np.float32)
    hidden = np.zeros(dim, np.float32)
    floor = _std_log(np.float32(0.0))  # threshold 0
    n_labels = (len(left) + 1) // 2
    stack_nodes = np.zeros(len(left), np.int64)
    stack_scores = np.zeros(len(left), np.float32)
    longest = 0
    for t in range(texts):
        longest = max(longest, offsets[t + 1] - offsets[t])
    rows = np.zeros(longest * (1 + 3 * maxn) + 2, np.int64)  # a word of b bytes: 1 + (b + 2) * maxn rows at most
    mask = np.uint32(len(cache_slots) - 1)
    for t in range(texts):
        count = 0
        # Dictionary::getLine: words split on readWord's bytes, then the end of line as the word </s>
        position, end = offsets[t], offsets[t + 1]
        while True:
            while position < end and _is_separator(data[position]):
                position += 1
            if position >= end:
                rows[count] = eos
                count += 1
                break
            start = position
            while position < end and not _is_separator(data[position]):
                position += 1
            if _starts_with_label(data, start, position):
                continue
            length = position - start
            slot = _hash(data, start, position, -1, -1) & mask
            entry = cache_slots[slot]
            while entry >= 0 and not _same_bytes(cache_bytes, cache_entries[entry, 0], cache_entries[entry, 1], data,
                                                 start, length):
                slot = (slot + np.uint32(1)) & mask
                entry = cache_slots[slot]
            if entry >= 0:
                first, n_rows = cache_entries[entry, 2], cache_entries[entry, 3]
                rows[count:count + n_rows] = cache_rows[first:first + n_rows]
                count += n_rows
                continue
            before = count
            word = _word_id(data, start, position, word_bytes, word_offsets, word_slots)
            if word >= 0:
                rows[count] = word
                count += 1
                if word == eos:  # a literal </s> ends the line (and is never cached)
                    break
            count = _add_ngrams(data, start, position, minn, maxn, bucket, nwords, pruning, pruned_rows, rows, count)
            n_rows = count - before
            if n_rows > len(cache_rows) or length > len(cache_bytes):
                continue  # larger than the cache
            if (cache_fill[0] == len(cache_entries) or cache_fill[1] + n_rows > len(cache_rows)
                    or cache_fill[2] + length > len(cache_bytes)):
                cache_slots[:] = -1  # full: start again
                cache_fill[:] = 0
                slot = _hash(data, start, position, -1, -1) & mask
            entries, used, used_bytes = cache_fill[0], cache_fill[1], cache_fill[2]
            cache_slots[slot] = entries
            cache_entries[entries, 0], cache_entries[entries, 1] = used_bytes, length
            cache_entries[entries, 2], cache_entries[entries, 3] = used, n_rows
            cache_rows[used:used + n_rows] = rows[before:count]
            cache_bytes[used_bytes:used_bytes + length] = data[start:position]
            cache_fill[0], cache_fill[1], cache_fill[2] = entries + 1, used + n_rows, used_bytes + length
        # Model::computeHidden
        hidden[:] = 0
        for k in range(count):
            _add_row(hidden, rows[k], input_rows, codes, centroids, norm_codes, norm_centroids, subquantizers, dsub,
                     last_dsub)
        scale = np.float32(1.0 / count)
        for j in range(dim):
            hidden[j] *= scale
        # HierarchicalSoftmaxLoss::dfs with k = 1, left child before right; a leaf at least as good as the best
        # so far replaces it (the heap keeps the later of equal scores)
        best, best_score, depth = -1, np.float32(0.0), 0
        stack_nodes[0], stack_scores[0], depth = len(left) - 1, np.float32(0.0), 1
        while depth > 0:
            depth -= 1
            node, score = stack_nodes[depth], stack_scores[depth]
            if score < floor or (best >= 0 and score < best_score):
                continue
            if left[node] == -1 and right[node] == -1:
                best, best_score = node, score
                continue
            f = np.float32(0.0)
            for j in range(dim):
                f += output[node - n_labels, j] * hidden[j]
            f = np.float32(1.0 / np.float64(np.float32(1.0) + math.exp(-f)))
            stack_nodes[depth], stack_scores[depth] = right[node], score + _std_log(f)
            not_f = np.float32(1.0 - np.float64(f))  # std_log takes a float
            stack_nodes[depth + 1], stack_scores[depth + 1] = left[node], score + _std_log(not_f)
            depth += 2
        if best >= 0:
            best_labels[t], best_scores[t] = best, math.exp(best_score)
    return best_labels, best_scores
