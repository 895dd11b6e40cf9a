"""Words of spaced scripts in compiled code (Numba): the same words as `WORD.findall`, found by a loop over the
text's code points instead of the regex engine (3x faster), and for MinHash their xxh64 hashes without a Python
string per word.

A word is a run of letters, marks and digits (Unicode L, M, N), runs joined by one apostrophe or hyphen
(`'`, `’`, `-`) between two of them. The classes come from the `regex` module itself (`WORD_CHARS`), for every
code point, so both paths read the same Unicode tables. `xxh64` is XXH64 with seed 0 of a word's UTF-8 bytes,
as `xxhash.xxh64_intdigest(word)` gives it (tests/stages/test_words.py checks both against the originals).
"""

from functools import cache

import numba
import numpy as np
import regex

WORD_CHARS = r"[\p{L}\p{M}\p{N}]"
JOINERS = "'’-"
WORD = regex.compile(rf"{WORD_CHARS}+(?:[{regex.escape(JOINERS)}]{WORD_CHARS}+)*")
OTHER, LETTER, JOINER = 0, 1, 2  # a code point's class

P1, P2, P3 = np.uint64(0x9E3779B185EBCA87), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9)
P4, P5 = np.uint64(0x85EBCA77C2B2AE63), np.uint64(0x27D4EB2F165667C5)


@cache
def classes() -> np.ndarray:
    """Each code point's class (uint8, 0x110000 of them): every character but the word ones replaced by U+0000 in
    one regex pass (surrogates, which `str` may hold alone, are never word characters)."""
    points = np.concatenate((np.arange(0xD800), np.arange(0xE000, 0x110000))).astype(np.uint32)
    kept = regex.sub(rf"(?!{WORD_CHARS}).", "\0", points.tobytes().decode("utf-32-le"), flags=regex.DOTALL)
    table = np.zeros(0x110000, np.uint8)
    table[points] = np.where(np.frombuffer(kept.encode("utf-32-le"), np.uint32) != 0, LETTER, OTHER)
    table[[ord(c) for c in JOINERS]] = JOINER
    return table


def code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)


def split(text: str) -> list[str]:
    """`WORD.findall(text)`: the words joined by U+0000 (never a word character) in compiled code, then split by
    `str.split` (a slice per word in Python would cost 5x the search)."""
    joined, words = _joined(code_points(text), classes())
    return joined.tobytes().decode("utf-32-le").split("\0") if words else []


def hashes(text: str) -> np.ndarray:
    """`[xxhash.xxh64_intdigest(word) for word in WORD.findall(text)]` as uint64."""
    return _hashes(code_points(text), classes())


@numba.njit(cache=True, inline="always")
def _word_end(points: np.ndarray, start: int, table: np.ndarray) -> int:
    """Where the word starting at `start` (a letter) ends: letters, and more after each joiner between letters."""
    i, n = start + 1, len(points)
    while True:
        while i < n and table[points[i]] == LETTER:
            i += 1
        if i + 1 < n and table[points[i]] == JOINER and table[points[i + 1]] == LETTER:
            i += 2
        else:
            return i


@numba.njit(cache=True)
def _joined(points: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, int]:
    """The words' code points, one U+0000 between two words, and the number of words."""
    joined = np.empty(len(points), np.uint32)
    size, words, i = 0, 0, 0
    while i < len(points):
        if table[points[i]] != LETTER:
            i += 1
            continue
        end = _word_end(points, i, table)
        if words:
            joined[size] = 0
            size += 1
        joined[size:size + end - i] = points[i:end]
        size += end - i
        words += 1
        i = end
    return joined[:size], words


@numba.njit(cache=True)
def _hashes(points: np.ndarray, table: np.ndarray) -> np.ndarray:
    found = np.empty(len(points) // 2 + 1, np.uint64)
    buffer = np.empty(4 * len(points) + 8, np.uint8)  # a word's UTF-8 bytes
    words, i = 0, 0
    while i < len(points):
        if table[points[i]] != LETTER:
            i += 1
            continue
        end = _word_end(points, i, table)
        size = 0
        for k in range(i, end):
            size = _put_utf8(buffer, size, points[k])
        found[words] = _xxh64(buffer, size)
        words += 1
        i = end
    return found[:words]


@numba.njit(cache=True, inline="always")
def _put_utf8(buffer: np.ndarray, at: int, point: np.uint32) -> int:
    c = np.int64(point)
    if c < 0x80:
        buffer[at] = c
        return at + 1
    if c < 0x800:
        buffer[at], buffer[at + 1] = 0xC0 | (c >> 6), 0x80 | (c & 0x3F)
        return at + 2
    if c < 0x10000:
        buffer[at], buffer[at + 1], buffer[at + 2] = 0xE0 | (c >> 12), 0x80 | ((c >> 6) & 0x3F), 0x80 | (c & 0x3F)
        return at + 3
    buffer[at], buffer[at + 1] = 0xF0 | (c >> 18), 0x80 | ((c >> 12) & 0x3F)
    buffer[at + 2], buffer[at + 3] = 0x80 | ((c >> 6) & 0x3F), 0x80 | (c & 0x3F)
    return at + 4


@numba.njit(cache=True, inline="always")
def _rotl(x: np.uint64, bits: int) -> np.uint64:
    return (x << np.uint64(bits)) | (x >> np.uint64(64 - bits))


@numba.njit(cache=True, inline="always")
def _read(data: np.ndarray, at: int, size: int) -> np.uint64:
    """`size` bytes from `at`, little-endian."""
    value = np.uint64(0)
    for k in range(size):
        value |= np.uint64(data[at + k]) << np.uint64(8 * k)
    return value


@numba.njit(cache=True, inline="always")
def _round(acc: np.uint64, lane: np.uint64) -> np.uint64:
    return _rotl(acc + lane * P2, 31) * P1


@numba.njit(cache=True)
def _xxh64(data: np.ndarray, size: int) -> np.uint64:
    """XXH64 of data[:size] with seed 0."""
    at = 0
    if size >= 32:
        v1, v2, v3, v4 = P1 + P2, P2, np.uint64(0), np.uint64(0) - P1
        while at + 32 <= size:
            v1 = _round(v1, _read(data, at, 8))
            v2 = _round(v2, _read(data, at + 8, 8))
            v3 = _round(v3, _read(data, at + 16, 8))
            v4 = _round(v4, _read(data, at + 24, 8))
            at += 32
        h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        for v in (v1, v2, v3, v4):
            h = (h ^ _round(np.uint64(0), v)) * P1 + P4
    else:
        h = P5
    h += np.uint64(size)
    while at + 8 <= size:
        h = _rotl(h ^ _round(np.uint64(0), _read(data, at, 8)), 27) * P1 + P4
        at += 8
    if at + 4 <= size:
        h = _rotl(h ^ (_read(data, at, 4) * P1), 23) * P2 + P3
        at += 4
    while at < size:
        h = _rotl(h ^ (np.uint64(data[at]) * P5), 11) * P1
        at += 1
    h = (h ^ (h >> np.uint64(33))) * P2
    h = (h ^ (h >> np.uint64(29))) * P3
    return h ^ (h >> np.uint64(32))
