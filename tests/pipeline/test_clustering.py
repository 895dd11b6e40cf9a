"""Dedup's partitioned clustering (pipeline/partitions.py steps on Ray) against a plain union-find in memory:
keepers, passes, renamed ids, random graphs, long and wide shapes, a giant component spread over partitions."""

import random
import tempfile
from collections import Counter

import duckdb
import pyarrow as pa
import pytest

from manifests.layout import Layout
from manifests.schemas import PAIRS
from pipeline.dedup import cluster_passes
from pipeline.partitions import Output, Relation, Steps, run_sql
from pipeline.runner import Runner, Task
from stages.dedup import ID_PASS, KINDS, NODES, ClusterQueries

pytestmark = pytest.mark.slow  # runs the clustering as Ray tasks


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


def sql_passes(docs: dict[int, tuple[str, float]], passes: list[tuple[str, list]], partitions: int = 3,
               stats: dict | None = None) -> dict:
    """What the partitioned steps decide, in the same form as reference_passes."""
    kinds = [kind for kind, _ in passes]
    queries = ClusterQueries(partitions, kinds, min_similarity=0.0)
    with tempfile.TemporaryDirectory() as out, Runner(Layout(out), task_memory=256 << 20) as runner:
        steps = Steps(runner, "steps", partitions, prefix="test", costs_as="test-clusters")
        nodes = pa.table({"key": pa.array(list(docs), pa.int64()), "id": [doc_id for doc_id, _ in docs.values()],
                          "quality": [quality for _, quality in docs.values()]})
        pairs = pa.table({"pass_no": [n for n, (_, edges) in enumerate(passes) for _ in edges],
                          "a": pa.array([a for _, edges in passes for a, _ in edges], pa.int64()),
                          "b": pa.array([b for _, edges in passes for _, b in edges], pa.int64())})
        outputs = [Output("nodes", NODES, f"""SELECT {queries.part('key')} AS _p, key, id, id AS upstream_id, quality,
                                              false AS removed, '' AS source, '' AS part, key AS row, '' AS lang
                                              FROM nodes_in""", partitions),
                   Output("pairs", PAIRS, f"SELECT {queries.part('a', 'pass_no')} AS _p, a, b FROM pairs_in",
                          partitions * len(passes))]
        load = Task("load", run_sql, dict(layout=runner.layout, task="load", views={}, outputs=outputs,
                                          tables={"nodes_in": nodes, "pairs_in": pairs}))
        [node_rows, pair_rows], _ = steps.run("load", [load], outputs)
        found, node_rows, _ = cluster_passes(steps, queries, node_rows, None,
                                             [pair_rows.block(n, partitions) for n in range(len(passes))])
        if stats is not None:
            stats["largest_input_share"] = largest_input_share(runner)
            stats["files_per_step"] = files_per_step(runner)
        with duckdb.connect() as con:
            ids = dict(con.execute("SELECT key, id FROM read_parquet(?)", [files(runner, node_rows)]).fetchall())
            decided: dict[int, list] = {}
            rows = con.execute("SELECT node, kind, kept_key, size FROM read_parquet(?) ORDER BY pass",
                               [[name for relation in found for name in files(runner, relation)]]
                               ).fetchall() if found else []
            for key, kind, kept, size in rows:
                decided.setdefault(key, []).append((kind, kept, size))
    return {key: (ids[key], decided.get(key, [])) for key in docs}


def largest_input_share(runner: Runner) -> float:
    """The most one task of a clustering step read, as a share of the step's input (steps over 64 kB). Star
    rounds aside: they group edges by node, so a converging component's edges gather at its centre's partition
    (within DuckDB's memory limit, spilling past it)."""
    shares = []
    for stage in {stage for stage, _ in runner.tasks if stage != "test-load" and "-large-" not in stage
                  and "-small-" not in stage}:
        sizes = [task.size for (s, _), task in runner.tasks.items() if s == stage]  # its partition's share of each
        if sum(sizes) > 64 << 10:
            shares.append(max(sizes) / sum(sizes))
    return max(shares)


def files_per_step(runner: Runner) -> dict[str, tuple[int, int]]:
    """Per step: the files it wrote and its tasks."""
    tasks = Counter(stage for stage, _ in runner.tasks)
    return {stage: (len(runner.ledger.outputs(stage)), count) for stage, count in tasks.items()}


def files(runner: Runner, relation: Relation) -> list[str]:
    return [runner.layout.path(name) for name in relation.names]


def test_keeper_is_highest_quality_then_smallest_id_whatever_the_order(ray_session):
    docs = {1: ("b", 0.5), 2: ("a", 0.5), 3: ("c", 0.9), 4: ("d", 0.1)}
    for pairs in ([(1, 2), (2, 3)], [(3, 2), (2, 1)]):
        decided = sql_passes(docs, [("minhash", pairs)])
        assert {key: d for key, (_, d) in decided.items()} == {k: [("minhash", 3, 3)] for k in (1, 2, 3)} | {4: []}
    decided = sql_passes({1: ("b", 0.5), 2: ("a", 0.5)}, [("exact", [(1, 2)])])
    assert decided[1][1] == [("exact", 2, 2)]


def test_removed_documents_sit_out_later_passes(ray_session):
    decided = sql_passes({1: ("a", 1.0), 2: ("b", 0.5), 3: ("c", 0.4)}, [("exact", [(1, 2)]), ("minhash", [(2, 3)])])
    assert decided == {1: ("a", [("exact", 1, 2)]), 2: ("b", [("exact", 1, 2)]), 3: ("c", [])}


def test_shared_ids_are_renamed_in_key_order_and_judged_by_their_new_ids(ray_session):
    docs = {5: ("x", 0.5), 3: ("x", 0.5), 9: ("x", 0.5), 4: ("w", 0.5)}
    passes = [(ID_PASS, [(3, 5), (3, 9)]), ("exact", [(9, 4), (5, 9)])]
    decided = sql_passes(docs, passes)
    assert [decided[k][0] for k in (3, 5, 9, 4)] == ["x", "x~1", "x~2", "w"]
    assert decided[9][1][-1] == ("exact", 4, 3)  # "w" < "x~1" < "x~2"
    assert decided == reference_passes(docs, passes)


def random_graph(rng: random.Random, nodes: int, edges: int) -> list[tuple[int, int]]:
    return [(rng.randrange(nodes), rng.randrange(nodes)) for _ in range(edges)]


@pytest.mark.parametrize("seed", range(6))
def test_components_match_union_find_on_random_passes(seed, ray_session):
    rng = random.Random(seed)
    n = rng.choice([20, 200, 2000])
    docs = {key: (f"id{rng.randrange(n // 2)}", rng.choice([0.1, 0.5, 0.5, 0.9])) for key in range(n)}
    passes = [(ID_PASS, random_graph(rng, n, n // 10))] + [
        (kind, [(a, b) for a, b in random_graph(rng, n, rng.randrange(n)) if a != b]) for kind in KINDS]
    assert sql_passes(docs, passes) == reference_passes(docs, passes)


@pytest.mark.parametrize("shape", ["chain", "reversed chain", "star", "two stars", "binary tree"])
def test_components_on_long_and_wide_shapes(shape, ray_session):
    n = 3000
    edges = {"chain": [(i, i + 1) for i in range(n - 1)],
             "reversed chain": [(i + 1, i) for i in reversed(range(n - 1))],
             "star": [(n // 2, i) for i in range(n) if i != n // 2],
             "two stars": [(7, i) for i in range(0, n, 2) if i != 7] + [(8, i) for i in range(1, n, 2) if i != 8],
             "binary tree": [(i, (i - 1) // 2) for i in range(1, n)]}[shape]
    docs = {key: (f"d{key:05d}", (key * 7919) % 13 / 13) for key in range(n)}
    assert sql_passes(docs, [("minhash", edges)]) == reference_passes(docs, [("minhash", edges)])


def test_a_giant_component_spread_over_partitions(ray_session):
    """10^5 documents in one component (a random tree over a long path), 8 partitions: no task reads more than a
    fraction of any step's input; the same keeper and the same members as union-find."""
    rng = random.Random(1)
    n = 100_000
    order = list(range(n))
    rng.shuffle(order)
    edges = [(order[i], order[rng.randrange(max(0, i - 50), i)]) for i in range(1, n)]
    docs = {key: (f"d{key}", rng.random()) for key in range(n)}
    stats: dict = {}
    decided = sql_passes(docs, [("minhash", edges)], partitions=8, stats=stats)
    best = min(docs, key=lambda k: (-docs[k][1], docs[k][0], k))
    assert {d[1][0] for d in decided.values()} == {("minhash", best, n)}
    assert stats["largest_input_share"] < 0.25


def test_a_step_writes_a_file_per_task_and_decides_as_one_partition(ray_session):
    """At P = 8 each step's task writes one file (O(P) objects a step, not one per task and partition: P²), each
    task reading its partition's row groups of them; the clusters are those of a single partition's."""
    rng = random.Random(2)
    n = 2000
    docs = {key: (f"id{rng.randrange(n // 2)}", rng.choice([0.1, 0.5, 0.9])) for key in range(n)}
    passes = [(ID_PASS, random_graph(rng, n, n // 10)),
              ("minhash", [(a, b) for a, b in random_graph(rng, n, n) if a != b])]
    stats: dict = {}
    decided = sql_passes(docs, passes, partitions=8, stats=stats)
    assert decided == sql_passes(docs, passes, partitions=1) == reference_passes(docs, passes)
    steps = {stage: found for stage, found in stats["files_per_step"].items() if stage != "test-load"}
    assert all(written <= tasks <= 8 for written, tasks in steps.values()), steps
    assert max(tasks for _, tasks in steps.values()) == 8
