"""Compiled words (stages/words.py) against the regex and xxhash they replace, text by text."""

import random

import numpy as np
import pytest
import regex
import xxhash

from bench.data import documents
from stages.dedup import fold
from stages.words import JOINER, JOINERS, LETTER, OTHER, WORD, WORD_CHARS, classes, hashes, split
from tests.stages.test_tokenize_pieces import sample_texts, stress_texts

EDGES = ["", " ", "'", "-", "a", "a'", "'a", "a-b", "a--b", "a-'b", "a'-b", "a' b", "a -b", "l'homme", "’’x’y’",
         "-x-y-", "x\u0301y", "\u0301x", "١٢٣-٤٥", "a\ud800b", "\ud83d", "😀a😀", "𝐀𝐁-𝐂", "\U00020000\U00020001",
         "ß-Straße", "İstanbul'da", "x" * 31, "x" * 32, "x" * 33, "é" * 16, "é" * 17, "ж" * 40 + "-" + "€" * 3,
         "a" * 8 + "-" + "b" * 3, "\x00a\x00", "don't stop-words, 42 times!", "🧑🏿‍💻 x 🏳️‍🌈 y"]


def check(texts: list[str]) -> None:
    for text in texts:
        expected = WORD.findall(text)
        assert split(text) == expected, text
        assert hashes(text).tolist() == [xxhash.xxh64_intdigest(word.encode("utf-8", "surrogatepass"))
                                         for word in expected], text


def test_every_code_point_classed_as_the_regex_does():
    table = classes()
    points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    letters = regex.compile(WORD_CHARS)
    expected = np.array([JOINER if chr(c) in JOINERS else LETTER if letters.match(chr(c)) else OTHER
                         for c in points], np.uint8)
    assert (table[points] == expected).all()
    assert (table[0xD800:0xE000] == OTHER).all()


@pytest.mark.parametrize("edge", EDGES)
def test_edges(edge):
    check([edge, f" {edge} ", f"{edge}{edge}", fold(edge)])


def test_stress_set_and_its_folding():
    texts = stress_texts(seed=3)
    check(texts + [fold(text) for text in texts])


def test_generated_words_of_every_length():
    rng = random.Random(5)
    alphabet = ["a", "é", "ж", "€", "😀", "中", "\u0301", "1", "'", "-", "’", " ", ".", "\t"]
    check(["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 90))) for _ in range(3_000)])


def test_samples_and_bench_documents():
    texts = sample_texts() + [doc.text for doc in documents(400, seed=1)]
    check(texts + [fold(text) for text in texts])
