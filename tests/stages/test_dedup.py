"""MinHash signatures and normalization (clustering: tests/pipeline/test_clustering.py)."""

import numpy as np

from stages.dedup import MinhashConfig, MinhashSignatures, exact_key, fold, url_key
from tests.helpers import udhr


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


def true_jaccard(signatures: MinhashSignatures, x: str, y: str, lang: str) -> float:
    a, b = set(signatures.shingles(x, lang).tolist()), set(signatures.shingles(y, lang).tolist())
    return len(a & b) / len(a | b)


def test_exact_key_folds_case_whitespace_and_unicode_forms():
    assert exact_key(fold("Alle  Menschen\nsind FREI")) == exact_key(fold("alle menschen sind frei"))
    assert exact_key(fold("café")) == exact_key(fold("cafe\u0301"))
    assert exact_key(fold("alle menschen")) != exact_key(fold("alle menschen sind"))


def test_url_key_normalizes():
    same = ["https://www.Example.org/a/b/?utm_source=x&q=1#top", "http://example.org/a/b?q=1"]
    assert url_key(same[0]) == url_key(same[1])
    assert url_key("https://example.org/a/c") != url_key(same[0])
    assert url_key(None) is None and url_key("not a url") is None


def test_signature_estimates_jaccard_in_several_scripts():
    signatures = MinhashSignatures(MinhashConfig())
    for lang in ("deu_Latn", "cmn_Hani", "tha_Thai"):
        text = udhr(lang)
        words = text.split("\n")
        edited = "\n".join(words[:-1])  # drop the last line
        estimate = similarity(signatures.signature(text, lang), signatures.signature(edited, lang))
        assert abs(estimate - true_jaccard(signatures, text, edited, lang)) < 0.15
        other = udhr("rus_Cyrl") if lang != "rus_Cyrl" else udhr("ukr_Cyrl")
        assert similarity(signatures.signature(text, lang), signatures.signature(other, lang)) < 0.05


def test_bands_match_exactly_for_identical_rows():
    signatures = MinhashSignatures(MinhashConfig())
    sig = signatures.signature(udhr("deu_Latn"), "deu_Latn")
    changed = sig.copy()
    changed[0] += 1  # first band differs, the others do not
    assert (signatures.bands(sig) == signatures.bands(changed)).tolist() == [False] + [True] * 13


def test_batched_signatures_equal_one_document_at_a_time():
    """The compiled kernel over a batch of documents (a long one, one without words) gives each document the
    minima of its own shingles through every permutation, shifted to 32 bits, as NumPy per document does."""
    signatures = MinhashSignatures(MinhashConfig())
    long = " ".join(f"w{i}" for i in range(30_000))
    texts = [udhr("deu_Latn"), "", long, "nur fünf Wörter hier stehen", "!!"]
    shingles = [signatures.shingles(text, "deu_Latn") for text in texts]
    expected = []
    for values in shingles:
        if not len(values):
            expected.append(np.full(signatures.config.hashes, 2**32 - 1, np.uint32))
            continue
        hashed = (np.unique(values)[:, None] * signatures.a[None, :] + signatures.b[None, :]) >> np.uint64(32)
        expected.append(hashed.min(axis=0).astype(np.uint32))
    assert (signatures.signatures(shingles) == np.stack(expected)).all()
    assert (signatures.bands(signatures.signatures(shingles))[0] == signatures.bands(expected[0])).all()
