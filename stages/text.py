"""Text helpers shared by LID, quality and dedup: Unicode scripts and script-aware word segmentation.

Scripts written without spaces (Chinese, Japanese, Thai, Khmer, Burmese, Lao, Tibetan) are segmented with
ICU's dictionary-based word break iterator (PyICU); other scripts split on letters, marks and digits, in
compiled code (stages/words.py).
"""

import itertools
from collections import Counter
from functools import cache

import icu
import numpy as np
import regex
import xxhash

from stages import words

# ISO 15924 scripts whose words are not separated by spaces.
UNSPACED_SCRIPTS = frozenset({"Hani", "Hans", "Hant", "Jpan", "Hira", "Kana", "Thai", "Khmr", "Mymr", "Laoo",
                              "Tibt"})
JAPANESE_KANA = frozenset({"Hira", "Kana"})
ASTRAL = regex.compile(r"[\U00010000-\U0010FFFF]")
NOT_A_WORD = icu.UWordBreak.NONE  # the rule status of spaces and punctuation


def dominant_script(text: str, sample: int = 2000) -> str | None:
    """The ISO 15924 code most letters of the text's first `sample` letters are written in.

    Japanese mixes Han and kana: any kana among them makes it `Jpan`. Korean Hangul is `Hang`.
    """
    counts: Counter[str] = Counter()
    seen = 0
    for char in text:
        if char.isalpha():
            counts[icu.Script.getScript(char).getShortName()] += 1
            seen += 1
            if seen >= sample:
                break
    if not counts:
        return None
    if counts.keys() & JAPANESE_KANA and counts["Hira"] + counts["Kana"] >= 0.05 * seen:
        return "Jpan"
    return counts.most_common(1)[0][0]


@cache
def _word_breaker() -> icu.BreakIterator:
    return icu.BreakIterator.createWordInstance(icu.Locale.getRoot())


def split_words(text: str, script: str | None) -> list[str]:
    """Words of a text written mostly in `script` (ISO 15924); punctuation and spaces are not words."""
    if script not in UNSPACED_SCRIPTS:
        return words.split(text)
    breaker = _word_breaker()
    breaker.setText(text)
    status = breaker.getRuleStatus  # of the boundary the iterator reached last: a pair's end
    spans = itertools.pairwise(itertools.chain((breaker.first(),), breaker))
    if ASTRAL.search(text) is None:
        return [text[start:end] for start, end in spans if status() != NOT_A_WORD]
    at = _code_points(text)
    return [text[at[start]:at[end]] for start, end in spans if status() != NOT_A_WORD]


def word_hashes(text: str, script: str | None) -> np.ndarray:
    """xxh64 of each word's UTF-8 bytes (`split_words`), as uint64."""
    if script not in UNSPACED_SCRIPTS:
        return words.hashes(text)
    found = split_words(text, script)
    return np.fromiter(map(xxhash.xxh64_intdigest, found), np.uint64, len(found))


def _code_points(text: str) -> list[int]:
    """ICU's offsets count UTF-16 code units, Python's code points: a character past U+FFFF (an emoji, a rare
    ideograph) takes two units. Python's offset for each of ICU's."""
    units = np.frombuffer(text.encode("utf-16-le"), np.uint16)
    starts = (units < 0xDC00) | (units > 0xDFFF)  # a low surrogate ends the character its high one began
    return np.concatenate(([0], np.cumsum(starts))).tolist()


def script_of(label: str | None) -> str | None:
    """`jpn_Jpan` -> `Jpan`; None for labels without a script (code)."""
    if not label or label.startswith("code_") or "_" not in label:
        return None
    return label.rsplit("_", 1)[1]
