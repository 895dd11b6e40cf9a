"""Repeated word n-grams for Gopher's repetition rules, compiled with Numba: the counting is a loop per word,
which NumPy could only do in a dozen calls per n and document, each costing more than the work.

`repeated_ngrams` gives, per n, what datatrove's `find_top_duplicate` over space-joined n-grams and
`find_all_duplicate` return (tests/stages/test_quality.py checks them against datatrove's functions). Words are
known by their str hashes and n-grams by 64-bit hashes of those: equal n-grams, equal hashes, without joining
strings or building a vocabulary.
"""

import numba
import numpy as np

MULTIPLIERS = np.random.default_rng(0x5EED).integers(1, 2**63, size=32, dtype=np.uint64) | np.uint64(1)


def repeated_ngrams(words: list[str], top_ns: list[int], duplicate_ns: list[int]) -> tuple[list[int], list[int]]:
    """For each n of `top_ns`, the characters of the most frequent n-gram (its words joined by spaces) times its
    count, the earliest on ties (0 for a text of fewer than n words); for each n of `duplicate_ns`, the
    characters of the n-grams that repeat one seen earlier, scanning left to right and skipping past each."""
    if max((*top_ns, *duplicate_ns), default=0) > len(MULTIPLIERS):
        raise ValueError(f"repetition rules count n-grams of at most {len(MULTIPLIERS)} words")
    ids = np.fromiter(map(hash, words), np.int64, len(words)).view(np.uint64)  # a str caches its hash
    chars = np.zeros(len(words) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, words), np.int64, len(words)), out=chars[1:])
    tops, duplicates = _count(ids, chars, np.array(top_ns, np.int64), np.array(duplicate_ns, np.int64), MULTIPLIERS)
    return tops.tolist(), duplicates.tolist()


@numba.njit(cache=True)
def _groups(hashes: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """Each n-gram's group (equal hashes share one; groups numbered in order of first occurrence), the number of
    groups, and per group its count and first position: an open-addressing table of twice the n-grams."""
    size = 16
    while size < 2 * len(hashes):
        size *= 2
    slots = np.full(size, -1, np.int64)
    group = np.empty(len(hashes), np.int64)
    counts = np.zeros(len(hashes), np.int64)
    firsts = np.zeros(len(hashes), np.int64)
    distinct = 0
    for i in range(len(hashes)):
        value = hashes[i]
        slot = np.int64((value ^ (value >> np.uint64(29))) & np.uint64(size - 1))
        while slots[slot] >= 0 and hashes[firsts[slots[slot]]] != value:
            slot = (slot + 1) & (size - 1)
        if slots[slot] < 0:
            slots[slot] = distinct
            firsts[distinct] = i
            distinct += 1
        group[i] = slots[slot]
        counts[slots[slot]] += 1
    return group, distinct, counts, firsts


@numba.njit(cache=True)
def _count(ids: np.ndarray, chars: np.ndarray, top_ns: np.ndarray, duplicate_ns: np.ndarray,
           multipliers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`repeated_ngrams` on word hashes and the cumulative characters of the words (chars[0] = 0). The n-gram
    hashes grow in place, n - 1 to n; an n-gram repeats only where its (n-1)-gram does, so past an n without
    repeats every n has none."""
    tops = np.zeros(len(top_ns), np.int64)
    duplicates = np.zeros(len(duplicate_ns), np.int64)
    largest = max(max(top_ns) if len(top_ns) else 0, max(duplicate_ns) if len(duplicate_ns) else 0)
    hashes = ids * multipliers[0]
    unrepeated = len(ids) + 1  # the smallest n known to have no repeated n-gram
    for n in range(1, largest + 1):
        if n > 1:
            for i in range(len(hashes) - 1):
                hashes[i] = hashes[i] * multipliers[n - 1] + ids[i + n - 1] + np.uint64(n - 1)
            hashes = hashes[:len(hashes) - 1]
        if len(hashes) == 0:
            break
        top = (top_ns == n).any()
        duplicate = (duplicate_ns == n).any() and n < unrepeated
        if not (top or duplicate):
            continue
        group, distinct, counts, firsts = _groups(hashes)
        if distinct == len(hashes):
            unrepeated = min(unrepeated, n)
            duplicate = False
        if top:
            best, start = 0, 0
            for g in range(distinct):  # in order of first occurrence: the earliest wins a tie
                if counts[g] > best:
                    best, start = counts[g], firsts[g]
            tops[top_ns == n] = (chars[start + n] - chars[start] + n - 1) * best
        if duplicate:
            seen = np.zeros(distinct, np.bool_)
            repeated, index = 0, 0
            while index < len(hashes):
                if seen[group[index]]:
                    repeated += chars[index + n] - chars[index]
                    index += n
                else:
                    seen[group[index]] = True
                    index += 1
            duplicates[duplicate_ns == n] = repeated
    return tops, duplicates
