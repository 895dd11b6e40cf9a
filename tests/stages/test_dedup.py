"""MinHash signatures, normalization and clustering rules."""

import random

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from stages.dedup import (
    ID_PASS,
    KINDS,
    ClusterPasses,
    MinhashConfig,
    MinhashSignatures,
    connected_components,
    exact_key,
    url_key,
)
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


class UnionFind:
    """The plain reference the SQL components are checked against."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
            self.parent[max(rx, ry)] = min(rx, ry)

    def groups(self) -> list[list[int]]:
        groups: dict[int, list[int]] = {}
        for x in list(self.parent):
            groups.setdefault(self.find(x), []).append(x)
        return [sorted(g) for g in groups.values()]


def reference_passes(docs: dict[int, tuple[str, float]], passes: list[tuple[str, list]]) -> dict:
    """What dedup decides, by union-find in memory: key -> (id, [(kind, kept key, size), ...])."""
    ids = {key: doc_id for key, (doc_id, _) in docs.items()}
    decided: dict[int, list] = {}
    removed: set[int] = set()
    for kind, pairs in passes:
        union = UnionFind()
        for a, b in pairs:
            if kind == ID_PASS or (a not in removed and b not in removed):
                union.union(a, b)
        for members in union.groups():
            if kind == ID_PASS:
                for number, key in enumerate(members):
                    ids[key] = f"{ids[key]}~{number}" if number else ids[key]
                    decided.setdefault(key, []).append((kind, key, len(members)))
                continue
            kept = min(members, key=lambda k: (-docs[k][1], ids[k], k))
            for key in members:
                decided.setdefault(key, []).append((kind, kept, len(members)))
                if key != kept:
                    removed.add(key)
    return {key: (ids[key], decided.get(key, [])) for key in docs}


def sql_passes(docs: dict[int, tuple[str, float]], passes: list[tuple[str, list]],
               memory_limit: str = "1GB") -> dict:
    with duckdb.connect(config={"memory_limit": memory_limit, "threads": 1}) as con:
        con.register("nodes_in", pa.table({"key": pa.array(list(docs), pa.int64()),
                                           "id": [doc_id for doc_id, _ in docs.values()],
                                           "quality": [quality for _, quality in docs.values()]}))
        clusters = ClusterPasses(con, "nodes_in")
        for number, (kind, pairs) in enumerate(passes):
            con.register(f"pairs_{number}", pa.table({"a": pa.array([a for a, _ in pairs], pa.int64()),
                                                      "b": pa.array([b for _, b in pairs], pa.int64())}))
            if kind == ID_PASS:
                clusters.rename_shared_ids(f"pairs_{number}")
            else:
                clusters.add_pass(kind, f"pairs_{number}")
        ids = dict(con.execute("SELECT key, id FROM dedup_nodes").fetchall())
        decided: dict[int, list] = {}
        for key, kind, kept, size in con.execute("SELECT key, kind, kept_key, size FROM dedup_clusters ORDER BY pass"
                                                 ).fetchall():
            decided.setdefault(key, []).append((kind, kept, size))
    return {key: (ids[key], decided.get(key, [])) for key in docs}


def test_keeper_is_highest_quality_then_smallest_id_whatever_the_order():
    docs = {1: ("b", 0.5), 2: ("a", 0.5), 3: ("c", 0.9), 4: ("d", 0.1)}
    for pairs in ([(1, 2), (2, 3)], [(3, 2), (2, 1)]):
        decided = sql_passes(docs, [("minhash", pairs)])
        assert {key: d for key, (_, d) in decided.items()} == {k: [("minhash", 3, 3)] for k in (1, 2, 3)} | {4: []}
    decided = sql_passes({1: ("b", 0.5), 2: ("a", 0.5)}, [("exact", [(1, 2)])])
    assert decided[1][1] == [("exact", 2, 2)]


def test_removed_documents_sit_out_later_passes():
    decided = sql_passes({1: ("a", 1.0), 2: ("b", 0.5), 3: ("c", 0.4)}, [("exact", [(1, 2)]), ("minhash", [(2, 3)])])
    assert decided == {1: ("a", [("exact", 1, 2)]), 2: ("b", [("exact", 1, 2)]), 3: ("c", [])}


def test_shared_ids_are_renamed_in_key_order_and_judged_by_their_new_ids():
    docs = {5: ("x", 0.5), 3: ("x", 0.5), 9: ("x", 0.5), 4: ("w", 0.5)}
    passes = [(ID_PASS, [(3, 5), (3, 9)]), ("exact", [(9, 4), (5, 9)])]
    decided = sql_passes(docs, passes)
    assert [decided[k][0] for k in (3, 5, 9, 4)] == ["x", "x~1", "x~2", "w"]
    assert decided[9][1][-1] == ("exact", 4, 3)  # "w" < "x~1" < "x~2"
    assert decided == reference_passes(docs, passes)


def random_graph(rng: random.Random, nodes: int, edges: int) -> list[tuple[int, int]]:
    return [(rng.randrange(nodes), rng.randrange(nodes)) for _ in range(edges)]


@pytest.mark.parametrize("seed", range(6))
def test_components_match_union_find_on_random_passes(seed):
    rng = random.Random(seed)
    n = rng.choice([20, 200, 2000])
    docs = {key: (f"id{rng.randrange(n // 2)}", rng.choice([0.1, 0.5, 0.5, 0.9])) for key in range(n)}
    passes = [(ID_PASS, random_graph(rng, n, n // 10))] + [
        (kind, [(a, b) for a, b in random_graph(rng, n, rng.randrange(n)) if a != b]) for kind in KINDS]
    assert sql_passes(docs, passes) == reference_passes(docs, passes)


@pytest.mark.parametrize("shape", ["chain", "reversed chain", "star", "two stars", "binary tree"])
def test_components_on_long_and_wide_shapes(shape):
    n = 3000
    edges = {"chain": [(i, i + 1) for i in range(n - 1)],
             "reversed chain": [(i + 1, i) for i in reversed(range(n - 1))],
             "star": [(n // 2, i) for i in range(n) if i != n // 2],
             "two stars": [(7, i) for i in range(0, n, 2) if i != 7] + [(8, i) for i in range(1, n, 2) if i != 8],
             "binary tree": [(i, (i - 1) // 2) for i in range(1, n)]}[shape]
    docs = {key: (f"d{key:05d}", (key * 7919) % 13 / 13) for key in range(n)}
    assert sql_passes(docs, [("minhash", edges)]) == reference_passes(docs, [("minhash", edges)])


def test_a_giant_component_within_a_small_memory_limit():
    """10^5 documents in one component (a random tree over a long path) under a 32 MB limit: DuckDB spills; the
    same keeper and the same members as union-find."""
    rng = random.Random(1)
    n = 100_000
    order = list(range(n))
    rng.shuffle(order)
    edges = [(order[i], order[rng.randrange(max(0, i - 50), i)]) for i in range(1, n)]
    docs = {key: (f"d{key}", rng.random()) for key in range(n)}
    with duckdb.connect(config={"memory_limit": "32MB", "threads": 1}) as con:
        con.register("pairs", pa.table({"a": [a for a, _ in edges], "b": [b for _, b in edges]}))
        rounds = connected_components(con, "pairs", "components")
        roots = con.execute("SELECT count(DISTINCT root), min(root), count(*) FROM components").fetchone()
    assert roots == (1, 0, n) and rounds < 60
    decided = sql_passes(docs, [("minhash", edges)], memory_limit="32MB")
    best = min(docs, key=lambda k: (-docs[k][1], docs[k][0], k))
    assert {d[1][0] for d in decided.values()} == {("minhash", best, n)}
