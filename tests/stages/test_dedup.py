"""MinHash signatures, normalization and clustering rules."""

import numpy as np

from stages.dedup import MinhashClusters, MinhashConfig, MinhashSignatures, UnionFind, exact_key, url_key
from tests.stages.test_lid import udhr


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


def true_jaccard(signatures: MinhashSignatures, x: str, y: str, lang: str) -> float:
    a, b = set(signatures.shingles(x, lang).tolist()), set(signatures.shingles(y, lang).tolist())
    return len(a & b) / len(a | b)


def test_exact_key_folds_case_whitespace_and_unicode_forms():
    assert exact_key("Alle  Menschen\nsind FREI") == exact_key("alle menschen sind frei")
    assert exact_key("café") == exact_key("cafe\u0301")
    assert exact_key("alle menschen") != exact_key("alle menschen sind")


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


def test_keeper_is_highest_quality_then_smallest_id_whatever_the_order():
    docs = {1: ("b", 0.5), 2: ("a", 0.5), 3: ("c", 0.9), 4: ("d", 0.1)}
    for pairs in ([(1, 2), (2, 3)], [(3, 2), (2, 1)]):
        clusters = MinhashClusters(docs)
        clusters.add_pass("minhash", pairs)
        assert clusters.removed == {1: ("minhash", 3, 3), 2: ("minhash", 3, 3)}
    clusters = MinhashClusters({1: ("b", 0.5), 2: ("a", 0.5)})
    clusters.add_pass("exact", [(1, 2)])
    assert clusters.removed == {1: ("exact", 2, 2)}


def test_removed_documents_sit_out_later_passes():
    clusters = MinhashClusters({1: ("a", 1.0), 2: ("b", 0.5), 3: ("c", 0.4)})
    clusters.add_pass("exact", [(1, 2)])
    clusters.add_pass("minhash", [(2, 3)])  # 2 is gone: 3 stays
    assert clusters.removed == {2: ("exact", 1, 2)}


def test_union_find_groups():
    union = UnionFind()
    for a, b in [(5, 6), (6, 7), (1, 2)]:
        union.union(a, b)
    assert sorted(sorted(g) for g in union.groups().values()) == [[1, 2], [5, 6, 7]]
