"""SentencePiece BPE ids by cached pieces, compiled with Numba: the same ids as `encode`, most of them looked up.

BPE only ever merges two symbols into a piece of the vocabulary. Where no piece has the escaped space U+2581 after
another character (Gemma 2: none of its 256,000), no merge crosses the point before a space that follows a
non-space character, and no user-defined symbol spans it: text cut at those points, each part encoded alone, gives
the ids of the whole. Those parts (a word with the spaces before it) repeat, so their ids are kept in a table keyed
by their UTF-8 bytes: a hash of the bytes into open addressing, a hit verified byte for byte, so the ids never
depend on what the table holds. Only the misses go to SentencePiece, in one batch. A part longer than
`PieceCache.longest` bytes is not cached (runs of them are encoded as one string), and a text of few spaces
(Chinese, Japanese, Thai, Khmer, Burmese) is encoded whole: its parts are long and rarely repeat, so those
scripts cost what `encode` costs and no more.

`cut_rule_refusal` checks the rule on the model itself, so a tokenizer it does not hold for is encoded whole.
"""

from itertools import chain, compress, pairwise
from typing import TYPE_CHECKING

import numba
import numpy as np

if TYPE_CHECKING:
    import sentencepiece

WHITESPACE = "\u2581"  # SentencePiece's escaped space
FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)


def cut_rule_refusal(processor: "sentencepiece.SentencePieceProcessor") -> str | None:
    """Why cutting before each space that follows a non-space character could change this model's ids, or None
    where it cannot: BPE with spaces escaped as U+2581 before a word, the text unchanged otherwise (no
    normalization, dummy prefix or whitespace folding), and no piece with U+2581 after another character."""
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto.FromString(processor.serialized_model_proto())
    trainer, normalizer = model.trainer_spec, model.normalizer_spec
    if trainer.model_type != sentencepiece_model_pb2.TrainerSpec.BPE:
        return f"model type {sentencepiece_model_pb2.TrainerSpec.ModelType.Name(trainer.model_type)}, not BPE"
    if normalizer.precompiled_charsmap or normalizer.normalization_rule_tsv or normalizer.name != "identity":
        return f"normalization {normalizer.name!r} may map characters across a cut"
    for name in ("add_dummy_prefix", "remove_extra_whitespaces"):
        if getattr(normalizer, name):
            return f"normalizer_spec.{name} changes text at cuts"
    if not normalizer.escape_whitespaces or trainer.treat_whitespace_as_suffix:
        return "spaces are not escaped as a prefix U+2581"
    if trainer.pretokenization_delimiter:
        return "a pretokenization delimiter"
    # every piece, control and byte ones too (they have no U+2581): the processor lists them faster than the proto
    for piece in processor.id_to_piece(list(range(processor.get_piece_size()))):
        if WHITESPACE in piece.lstrip(WHITESPACE):
            return f"piece {piece!r} has U+2581 after another character"
    return None


class PieceCache:
    """`encode_batch` gives `processor.encode(texts)`, from a bounded table of the parts' ids (one per worker).

    The table holds at most `entries` parts of at most `longest` bytes, `key_bytes` bytes in all; once full,
    misses are encoded without being kept, and the table starts empty at the next batch. A text of more than
    `widest_mean` bytes per space (a script written without spaces) goes to SentencePiece whole: few of its parts
    would repeat, and each string costs SentencePiece a call."""

    def __init__(self, processor: "sentencepiece.SentencePieceProcessor", threads: int = 1, longest: int = 32,
                 widest_mean: int = 24, entries: int = 1 << 18, key_bytes: int = 1 << 22) -> None:
        self.processor = processor
        self.threads = threads
        self.longest = longest
        self.widest_mean = widest_mean
        self.slots = np.full(2 * entries, -1, np.int32)  # load factor at most 1/2
        self.hashes = np.empty(entries, np.uint64)
        self.key_starts = np.empty(entries, np.int64)  # a part's bytes at keys[start:start + length]
        self.key_lengths = np.empty(entries, np.int32)
        self.id_counts = np.empty(entries, np.int32)  # its ids at ids[start:start + count]
        self.keys = np.empty(key_bytes, np.uint8)
        self.ids = np.empty(key_bytes, np.int32)  # every id covers at least one byte of its part
        self.used = np.zeros(2, np.int64)  # entries, key bytes
        self.full = False

    def clear(self) -> None:
        self.slots.fill(-1)
        self.used[:] = 0
        self.full = False

    def spaced(self, text: str) -> bool:
        """Whether the text has at most `widest_mean` bytes per space, its bytes estimated from its first
        characters: encoding a long text of a script without spaces only to learn its length costs 5% of `encode`."""
        limit = self.widest_mean * (text.count(" ") + 1)
        if not 0 < len(text) <= limit:  # a text has at least as many bytes as characters
            return False
        head = text[:256]
        return len(head.encode()) * len(text) <= limit * len(head)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self.full:
            self.clear()
        spaced = list(map(self.spaced, texts))
        encoded = [text.encode() for text in compress(texts, spaced)]
        buffer = b"".join(encoded)
        doc_starts = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=doc_starts[1:])
        first_new = int(self.used[0])
        most_parts = buffer.count(b" ") + buffer.count(WHITESPACE.encode()) + len(encoded)  # a part per cut
        items, doc_items, spans, self.full = _look_up(
            np.frombuffer(buffer, np.uint8), doc_starts, most_parts, self.longest, self.slots, self.hashes,
            self.key_starts, self.key_lengths, self.keys, self.used)
        new = range(first_new, int(self.used[0]))
        misses = [self.keys[self.key_starts[e]:self.key_starts[e] + self.key_lengths[e]].tobytes() for e in new]
        misses += [buffer[start:stop] for start, stop in spans.tolist()]
        strings = misses + [text for text, cut in zip(texts, spaced, strict=True) if not cut]
        encoded_ids = self.processor.encode(strings, num_threads=self.threads) if strings else []
        miss_ids = encoded_ids[:len(misses)]
        miss_starts = np.zeros(len(misses) + 1, np.int64)
        np.cumsum(np.fromiter(map(len, miss_ids), np.int64, len(miss_ids)), out=miss_starts[1:])
        flat_miss_ids = np.fromiter(chain.from_iterable(miss_ids), np.int32, miss_starts[-1])
        out, doc_offsets = _gather(items, doc_items, first_new, len(new), flat_miss_ids, miss_starts,
                                   self.key_starts, self.key_lengths, self.id_counts, self.ids)
        ids = out.tolist()
        cut_ids = (ids[start:stop] for start, stop in pairwise(doc_offsets.tolist()))
        whole_ids = iter(encoded_ids[len(misses):])
        return [next(cut_ids) if cut else next(whole_ids) for cut in spaced]


@numba.njit(cache=True)
def _look_up(data: np.ndarray, doc_starts: np.ndarray, most_parts: int, longest: int, slots: np.ndarray,
             hashes: np.ndarray, key_starts: np.ndarray, key_lengths: np.ndarray, keys: np.ndarray,
             used: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Cuts each document's bytes into parts and finds each part's entry, inserting a part seen for the first time
    (its ids still to come) while there is room. Items: an entry (>= 0), or a span (-1 - its index) of parts
    not cached, consecutive ones joined; doc_items: each document's first item; spans: (start, stop) bytes. Full:
    a part found no room."""
    items = np.empty(most_parts, np.int64)
    doc_items = np.empty(len(doc_starts), np.int64)
    spans = np.empty((most_parts, 2), np.int64)
    n_items, n_spans, full = 0, 0, False
    for doc in range(len(doc_starts) - 1):
        doc_items[doc] = n_items
        start, end = doc_starts[doc], doc_starts[doc + 1]
        while start < end:
            stop, value = _cut(data, start, end)
            length = stop - start
            entry = -1
            if length <= longest:
                entry, slot = _find(data, start, length, value, slots, hashes, key_starts, key_lengths, keys)
                if entry < 0:
                    if used[0] < len(hashes) and used[1] + length <= len(keys):
                        entry = used[0]
                        slots[slot] = entry
                        hashes[entry], key_starts[entry], key_lengths[entry] = value, used[1], length
                        keys[used[1]:used[1] + length] = data[start:stop]
                        used[0] += 1
                        used[1] += length
                    else:
                        full = True
            if entry >= 0:
                items[n_items] = entry
                n_items += 1
            elif n_items > doc_items[doc] and items[n_items - 1] < 0:
                spans[n_spans - 1, 1] = stop  # joins the span before: no merge crosses a cut either way
            else:
                spans[n_spans, 0], spans[n_spans, 1] = start, stop
                n_spans += 1
                items[n_items] = -n_spans
                n_items += 1
            start = stop
    doc_items[len(doc_starts) - 1] = n_items
    return items[:n_items], doc_items, spans[:n_spans], full


@numba.njit(cache=True)
def _cut(data: np.ndarray, start: int, end: int) -> tuple[int, np.uint64]:
    """The end of the part that begins at start (the next space after a non-space character, or the end) and the
    FNV-1a hash of its bytes."""
    stop, after_space, value = start, False, FNV_OFFSET
    while stop < end:
        byte = data[stop]
        width = 0
        if byte == 0x20:
            width = 1
        elif byte == 0xE2 and stop + 2 < end and data[stop + 1] == 0x96 and data[stop + 2] == 0x81:
            width = 3
        if width > 0 and not after_space and stop > start:
            break
        after_space = width > 0
        for k in range(max(width, 1)):
            value = (value ^ np.uint64(data[stop + k])) * FNV_PRIME
        stop += max(width, 1)
    return stop, value


@numba.njit(cache=True)
def _find(data: np.ndarray, start: int, length: int, value: np.uint64, slots: np.ndarray, hashes: np.ndarray,
          key_starts: np.ndarray, key_lengths: np.ndarray, keys: np.ndarray) -> tuple[int, int]:
    """The entry of the part data[start:start + length] (-1 if absent) and the slot where it is or would go."""
    mask = len(slots) - 1
    slot = np.int64((value ^ (value >> np.uint64(32))) & np.uint64(mask))
    while slots[slot] >= 0:
        entry = slots[slot]
        if hashes[entry] == value and key_lengths[entry] == length:
            key = key_starts[entry]
            same = True
            for k in range(length):
                if keys[key + k] != data[start + k]:
                    same = False
                    break
            if same:
                return entry, slot
        slot = (slot + 1) & mask
    return -1, slot


@numba.njit(cache=True)
def _gather(items: np.ndarray, doc_items: np.ndarray, first_new: int, n_new: int, miss_ids: np.ndarray,
            miss_starts: np.ndarray, key_starts: np.ndarray, key_lengths: np.ndarray, id_counts: np.ndarray,
            ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stores the new entries' ids (the first n_new misses) and joins every document's ids: the output and each
    document's offset in it. Spans' ids follow the new entries' among the misses."""
    for k in range(n_new):
        entry = first_new + k
        id_counts[entry] = miss_starts[k + 1] - miss_starts[k]
        if id_counts[entry] > key_lengths[entry]:  # its room in `ids`: Numba would write past it unchecked
            raise ValueError("a part encoded to more ids than it has bytes")
        for i in range(id_counts[entry]):
            ids[key_starts[entry] + i] = miss_ids[miss_starts[k] + i]
    n_docs = len(doc_items) - 1
    doc_offsets = np.empty(n_docs + 1, np.int64)
    total = 0
    for doc in range(n_docs):
        doc_offsets[doc] = total
        for k in range(doc_items[doc], doc_items[doc + 1]):
            item = items[k]
            total += id_counts[item] if item >= 0 else miss_starts[n_new - item] - miss_starts[n_new - 1 - item]
    doc_offsets[n_docs] = total
    out = np.empty(total, np.int32)
    position = 0
    for k in range(len(items)):
        item = items[k]
        if item >= 0:
            source, count = ids, id_counts[item]
            start = key_starts[item]
        else:
            source = miss_ids
            start = miss_starts[n_new - 1 - item]
            count = miss_starts[n_new - item] - start
        for i in range(count):
            out[position + i] = source[start + i]
        position += count
    return out, doc_offsets
