"""Gemma 2 ids by cached pieces (stages/pieces.py) against SentencePiece's own `encode`, text by text."""

import random
import re

import icu
import pytest
import sentencepiece
from sentencepiece import sentencepiece_model_pb2

from bench.data import documents
from pipeline.config import load_recipe
from stages.assets import AssetSpec
from stages.languages import _language_rows
from stages.pieces import PieceCache, cut_rule_refusal
from stages.sources import create_reader
from stages.tokenize import Gemma2Tokenizer

SEPARATORS = [" "] * 12 + ["  ", "   ", "\t", "\n", "\n\n", " \n", "\t ", "\r\n", "\u00a0", "\u3000", "\u2581",
                           " \u2581", "\u2581 ", "\u2581\u2581", " " * 17]
PUNCTUATION = [".", ",", "!", "?", "(", ")", "«", "»", "—", "'", '"', "。", "、", "…", ":", ";", "-", "1984", "3.14"]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇩🇪", "❤️", "🤖", "🧑🏿‍💻", "🏳️‍🌈"]
# characters outside the vocabulary (byte fallback), controls, lone marks, and user-defined symbols
RARE = ["\U00020000", "\U0002a6d6", "\U00031350", "\ue000", "\uf8ff", "\U000f0001", "\x00", "\x07", "\ufffd",
        "\u0301", "\u200d", "\U0001d400", "\u0085", "\u2028"]
SYMBOLS = ["<mask>", "<unused7>", "</code>", "[@BOS@]", "<2mass>", "<bos>", "<unk>"]
CODE = ('def f(x):\n    return {"a": [1, 2,  3]}\t# 12345\n\n    if x  >=  0:\n\t\tpass  \n'
        "int main() {\n\treturn  0;  // ok\n}\n<div class=\"a b\">  </div>\n")
EDGES = ["", " ", "  ", "\t", "\n", " \n ", "a", " a", "a ", "  a  ", "\u2581", "\u2581\u2581a\u2581 b", "a\u2581b",
         "  leading", "trailing  ", " x" * 40, "x" * 500, "a" * 33 + " " + "a" * 33, "😀 😀  😀", CODE, " " + CODE,
         "<mask> <mask>", "a<mask> b", " \u2581<unused7>\u2581 "]


@pytest.fixture(scope="module")
def processor(tokenizers) -> sentencepiece.SentencePieceProcessor:
    return sentencepiece.SentencePieceProcessor(model_file=str(tokenizers["gemma2"].check()))


def script_characters(script: str) -> list[str]:
    union = {"Jpan": "[:sc=Hira:][:sc=Kana:][:sc=Hani:]", "Hang": "[:sc=Hang:][:sc=Hani:]"}.get(script,
                                                                                             f"[:sc={script}:]")
    return list(icu.UnicodeSet(f"[[{union}]&[[:L:][:M:][:N:]]]"))


def stress_texts(seed: int = 0) -> list[str]:
    """Texts in every script of configs/languages.csv, alone and mixed, with emoji, punctuation, code, runs of
    whitespace, characters SentencePiece spells in bytes, user-defined symbols, and the edge cases above."""
    rng = random.Random(seed)
    scripts = sorted({row["script"] for row in _language_rows()}
                     | {s for row in _language_rows() for s in row["other_scripts"].split("|") if s})
    words = {}
    for script in scripts:
        characters = script_characters(script)
        common = characters[:200]  # the first block of a script: its usual letters
        words[script] = [
            "".join(rng.choice(common if rng.random() < 0.9 else characters) for _ in range(rng.randint(1, 12)))
            for _ in range(40)]

    def text(pool: list[str], n: int) -> str:
        parts = [rng.choice(SEPARATORS)] if rng.random() < 0.2 else []
        for _ in range(n):
            roll = rng.random()
            extra = (rng.choice(PUNCTUATION) if roll < 0.15 else rng.choice(EMOJI) if roll < 0.2
                     else rng.choice(RARE) if roll < 0.25 else rng.choice(SYMBOLS) if roll < 0.27 else "")
            parts += [rng.choice(pool), extra, rng.choice(SEPARATORS)]
        return "".join(parts[:-1] if rng.random() < 0.7 else parts)

    texts = [text(words[script], rng.randint(1, 120)) for script in scripts for _ in range(6)]
    texts += [text([w for pool in words.values() for w in pool], rng.randint(1, 200)) for _ in range(40)]
    return texts + EDGES + [f"{rng.choice(EDGES)}{rng.choice(EDGES)}" for _ in range(40)]


def sample_texts() -> list[str]:
    """Every document of the bundled samples, of all five sources, as the readers give them."""
    recipe = load_recipe()
    texts = []
    for name, options in recipe.sources.sources.items():
        reader = create_reader(name, options, recipe.tokenizers)
        texts += [doc.text for doc in reader.run(reader.list_files())]
    return texts


def assert_same_ids(cache: PieceCache, processor: sentencepiece.SentencePieceProcessor, texts: list[str],
                    batch: int) -> None:
    for start in range(0, len(texts), batch):
        chunk = texts[start:start + batch]
        for text, ours, theirs in zip(chunk, cache.encode_batch(chunk), processor.encode(chunk), strict=True):
            assert ours == theirs, repr(text[:200])


def test_gemma2_allows_the_cut_and_a_worker_uses_it(tokenizers, processor):
    assert cut_rule_refusal(processor) is None
    assert isinstance(Gemma2Tokenizer(tokenizers["gemma2"]).pieces, PieceCache)
    assert Gemma2Tokenizer(tokenizers["gemma2"], threads=2).pieces is None  # SentencePiece's own threads


@pytest.mark.parametrize("options", [{}, {"entries": 16, "key_bytes": 64}, {"longest": 4, "widest_mean": 1 << 30}],
                         ids=["default", "tiny table", "every text cut"])
def test_stress_texts_get_sentencepiece_ids(processor, options):
    """Twice over, so the second pass finds its parts in the table (or, tiny, one that filled and restarted)."""
    cache = PieceCache(processor, **options)
    texts = stress_texts()
    assert_same_ids(cache, processor, texts, batch=37)
    assert_same_ids(cache, processor, texts[::-1], batch=64)
    assert cache.used[0] > 0
    ids = {i for text_ids in processor.encode(texts) for i in text_ids}
    assert any(map(processor.is_byte, ids)) and processor.piece_to_id("<mask>") in ids  # the set spans those


def test_samples_and_bench_corpus_get_sentencepiece_ids(processor):
    cache = PieceCache(processor)
    assert_same_ids(cache, processor, sample_texts(), batch=256)
    assert_same_ids(cache, processor, [doc.text for doc in documents(600, seed=2)], batch=256)


def edited(processor: sentencepiece.SentencePieceProcessor, edit: object) -> bytes:
    model = sentencepiece_model_pb2.ModelProto.FromString(processor.serialized_model_proto())
    edit(model)
    return model.SerializeToString()


def crossing_piece(model: sentencepiece_model_pb2.ModelProto) -> None:
    """The piece "o▁w" made the best merge there is."""
    model.pieces[-1].piece, model.pieces[-1].score = "o\u2581w", 1e9


@pytest.mark.parametrize(("edit", "reason"), [
    (crossing_piece, "has U\\+2581 after another character"),
    (lambda m: setattr(m.normalizer_spec, "add_dummy_prefix", True), "add_dummy_prefix"),
    (lambda m: setattr(m.normalizer_spec, "remove_extra_whitespaces", True), "remove_extra_whitespaces"),
    (lambda m: setattr(m.normalizer_spec, "name", "nmt_nfkc"), "normalization 'nmt_nfkc'"),
    (lambda m: setattr(m.trainer_spec, "treat_whitespace_as_suffix", True), "not escaped as a prefix"),
    (lambda m: setattr(m.trainer_spec, "model_type", m.trainer_spec.UNIGRAM), "model type UNIGRAM, not BPE"),
])
def test_models_the_cut_would_change_are_refused(processor, edit, reason):
    refusal = cut_rule_refusal(sentencepiece.SentencePieceProcessor(model_proto=edited(processor, edit)))
    assert refusal is not None and re.search(reason, refusal), refusal


def test_a_refused_model_is_encoded_whole(processor, tmp_path):
    """A piece across a cut changes the ids of cut text, so such a tokenizer gets plain `encode`."""
    path = tmp_path / "crossing.model"
    path.write_bytes(edited(processor, crossing_piece))
    crossing = sentencepiece.SentencePieceProcessor(model_file=str(path))
    texts = ["hello world", "go west"]
    assert PieceCache(crossing).encode_batch(texts) != crossing.encode(texts)  # what the refusal prevents
    tokenizer = Gemma2Tokenizer(AssetSpec(str(path)))
    assert tokenizer.pieces is None
    assert tokenizer.encode_batch(texts) == crossing.encode(texts)
