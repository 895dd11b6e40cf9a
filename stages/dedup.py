"""Deduplication across sources, per language: exact text, normalized URL, and MinHash LSH near-duplicates.

Four passes connected by files (one Ray task per unit, never one process holding the corpus):
    MinhashSignatures  per curated file:  exact-text hash, URL hash, 112 MinHash values, 14 band hashes
    MinhashBuckets     per band / kind:   documents sharing (lang, band hash) -> candidate pairs
    ClusterPasses      once:              verify MinHash pairs, components per kind (in DuckDB, spilling to disk
                                          past the task's memory), choose each cluster's keeper
    DedupFilter        per curated file:  drop the removed documents as rejects naming the kept one
Defaults are FineWeb2's: word 5-grams (script-aware words, stages/text.py), 14 bands x 8 rows. Documents of
different languages never meet: every bucket is keyed by language. The kept document of a cluster is the one
with the highest quality, then the smallest id, so the choice depends on neither input order nor workers.
"""

import hashlib
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import xxhash

from stages.base import Document, Stage
from stages.settings import setting
from stages.text import dominant_script, script_of, split_words

if TYPE_CHECKING:
    import duckdb

KINDS = ("exact", "url", "minhash")  # the removal passes one may configure, in this order
Kind = Literal["exact", "url", "minhash"]
ID_PASS = "exact_id"  # always first: documents sharing an upstream id keep one copy, so shard ids are unique
TRACKING = ("utm_", "fbclid", "gclid", "mc_cid", "mc_eid")


@dataclass(frozen=True)
class MinhashConfig:
    n_grams: int = setting(5, help="words per shingle (FineWeb2: 5)")
    bands: int = setting(14, help="LSH bands (FineWeb2: 14)")
    rows: int = setting(8, help="MinHash values per band (FineWeb2: 8)")
    seed: int = setting(1, help="seed of the hash permutations")
    min_similarity: float = setting(
        0.7, help="share of the MinHash values a candidate pair must agree on; 0 keeps every LSH candidate")

    def __post_init__(self) -> None:
        if self.bands < 1 or self.rows < 1 or self.n_grams < 1 or not 0 <= self.min_similarity <= 1:
            raise ValueError("minhash needs bands, rows, n_grams >= 1 and min_similarity in [0, 1]")

    @property
    def hashes(self) -> int:
        return self.bands * self.rows

    def __str__(self) -> str:
        return f"minhash-{self.n_grams}g-{self.bands}x{self.rows}-s{self.seed}"

    def permutations(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        a = rng.integers(1, 2**63, size=self.hashes, dtype=np.uint64) | np.uint64(1)
        b = rng.integers(0, 2**63, size=self.hashes, dtype=np.uint64)
        return a, b


@dataclass(frozen=True)
class DedupConfig:
    """Deduplication passes (run in KINDS order; a document removed by one takes no part in the next)."""

    kinds: tuple[Kind, ...] = setting(KINDS, help="the passes to run: exact, url, minhash")
    minhash: MinhashConfig = setting(factory=MinhashConfig, help="MinHash LSH parameters")

    @property
    def passes(self) -> list[str]:
        return [ID_PASS, *(kind for kind in KINDS if kind in self.kinds)]


def exact_key(text: str) -> bytes:
    """Hash of the text in Unicode NFC, case-folded, whitespace folded."""
    folded = " ".join(unicodedata.normalize("NFC", text).casefold().split())
    return hashlib.blake2b(folded.encode("utf-8"), digest_size=16).digest()


def url_key(url: str | None) -> bytes | None:
    """Hash of a normalized URL: lower-case host without www., no fragment, no tracking parameters, sorted query,
    no trailing slash; http and https alike."""
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # `http://[bad2/x`: readers drop such URLs (noted read:bad_url); never fail a whole pass
        return None
    if not parts.netloc:
        return None
    host = parts.netloc.lower().removeprefix("www.")
    query = sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not k.startswith(TRACKING))
    normalized = urlunsplit(("", host, parts.path.rstrip("/") or "/", urlencode(query), ""))
    return hashlib.blake2b(normalized.encode("utf-8"), digest_size=16).digest()


class MinhashSignatures:
    """MinHash of a document's word n-grams, with multiply-shift hashing in uint64 arithmetic."""

    def __init__(self, config: MinhashConfig) -> None:
        self.config = config
        self.a, self.b = config.permutations()
        self.band_weights = np.random.default_rng(config.seed + 1).integers(
            1, 2**63, size=config.rows, dtype=np.uint64) | np.uint64(1)

    def shingles(self, text: str, lang: str | None) -> np.ndarray:
        script = script_of(lang) or dominant_script(text)
        words = split_words(unicodedata.normalize("NFC", text).casefold(), script)
        ids = np.fromiter((xxhash.xxh64_intdigest(w) for w in words), np.uint64, len(words))
        n = min(self.config.n_grams, max(len(ids), 1))
        count = max(len(ids) - n + 1, 1 if len(ids) else 0)
        shingles = np.zeros(count, np.uint64)
        with np.errstate(over="ignore"):
            for k in range(n):
                shingles = shingles * np.uint64(0x100000001B3) + ids[k:k + count]
        return np.unique(shingles)

    def signature(self, text: str, lang: str | None) -> np.ndarray:
        """112 uint32 minima (all 2**32 - 1 for a text without words)."""
        shingles = self.shingles(text, lang)
        if not len(shingles):
            return np.full(self.config.hashes, 2**32 - 1, np.uint32)
        with np.errstate(over="ignore"):
            hashed = (shingles[:, None] * self.a[None, :] + self.b[None, :]) >> np.uint64(32)
        return hashed.min(axis=0).astype(np.uint32)

    def bands(self, signature: np.ndarray) -> np.ndarray:
        """One uint64 per band, from its `rows` values."""
        rows = signature.astype(np.uint64).reshape(self.config.bands, self.config.rows)
        with np.errstate(over="ignore"):
            return (rows * self.band_weights[None, :]).sum(axis=1, dtype=np.uint64)


def bucket_pairs(members: list[int]) -> list[tuple[int, int]]:
    """A bucket's documents as pairs with its first (smallest key) member: enough to connect them all."""
    first = min(members)
    return [(first, other) for other in sorted(members) if other != first]


def connected_components(con: "duckdb.DuckDBPyConnection", edges: str, out: str) -> int:
    """Table `out` (node, root): every node of table `edges` (a, b) with the smallest node of its component.
    Large-star / small-star rounds (Kiveris et al. 2014, as Spark-scale dedup computes components) in SQL, so
    that DuckDB holds the graph within its memory limit and spills the rest: no union-find in one process's
    memory. Returns the number of rounds (O(log² n))."""
    con.execute(f"""CREATE OR REPLACE TEMP TABLE cc_edges AS
                    SELECT DISTINCT least(a, b) AS a, greatest(a, b) AS b FROM {edges} WHERE a <> b""")
    previous, rounds = _edge_digest(con), 0
    while True:
        rounds += 1
        # large star: each node's larger neighbours attach to the smallest node it sees (itself included)
        con.execute("""CREATE OR REPLACE TEMP TABLE cc_large AS
            WITH d AS (SELECT a AS u, b AS v FROM cc_edges UNION ALL SELECT b, a FROM cc_edges),
                 m AS (SELECT u, least(u, min(v)) AS m FROM d GROUP BY u)
            SELECT DISTINCT least(d.v, m.m) AS a, greatest(d.v, m.m) AS b FROM d JOIN m USING (u)
            WHERE d.v > d.u AND d.v <> m.m""")
        # small star: each node and its smaller neighbours attach to the smallest of them
        con.execute("""CREATE OR REPLACE TEMP TABLE cc_edges AS
            WITH m AS (SELECT b AS u, min(a) AS m FROM cc_large GROUP BY b)
            SELECT DISTINCT least(w, m) AS a, greatest(w, m) AS b
            FROM (SELECT e.a AS w, m.m FROM cc_large e JOIN m ON e.b = m.u UNION ALL SELECT u, m FROM m)
            WHERE w <> m""")
        digest = _edge_digest(con)
        if digest == previous:  # a fixed point: every component is a star around its smallest node
            break
        previous = digest
    con.execute(f"""CREATE OR REPLACE TEMP TABLE {out} AS
                    WITH d AS (SELECT a AS u, b AS v FROM cc_edges UNION ALL SELECT b, a FROM cc_edges)
                    SELECT u AS node, least(u, min(v)) AS root FROM d GROUP BY u""")
    con.execute("DROP TABLE cc_edges; DROP TABLE cc_large")
    return rounds


def _edge_digest(con: "duckdb.DuckDBPyConnection") -> tuple:
    return con.execute("SELECT count(*), sum(hash(a, b)) FROM cc_edges").fetchall()[0]


class ClusterPasses:
    """Pass by pass (exact, url, minhash), in DuckDB tables: connect the pairs among the documents still kept,
    keep one per component (highest quality, then smallest id, then smallest key). First, documents sharing an
    upstream id get unique ids (the one with the smallest key keeps it, the others become `id~1`, `id~2`, ...
    in key order): they may be different documents, which the other passes judge.

    `nodes` is a table of (key, id, quality); the results are the tables `dedup_nodes` (key, upstream_id, id)
    and `dedup_clusters` (pass, kind, key, kept_key, size: every document of a cluster, the renamed ones of the
    id pass with themselves as kept_key)."""

    def __init__(self, con: "duckdb.DuckDBPyConnection", nodes: str) -> None:
        self.con = con
        self.passes = 0
        con.execute(f"""CREATE OR REPLACE TEMP TABLE dedup_nodes AS SELECT key, id AS upstream_id, id,
                        coalesce(quality, 0.0)::DOUBLE AS quality FROM {nodes}""")
        con.execute("""CREATE OR REPLACE TEMP TABLE dedup_clusters (pass INTEGER, kind VARCHAR, key BIGINT,
                       kept_key BIGINT, size BIGINT)""")
        con.execute("CREATE OR REPLACE TEMP TABLE dedup_removed (key BIGINT)")

    def rename_shared_ids(self, pairs: str) -> int:
        """Returns how many documents were renamed."""
        connected_components(self.con, pairs, "dedup_components")
        self.passes += 1
        self.con.execute(f"""INSERT INTO dedup_clusters SELECT {self.passes}, '{ID_PASS}', node, node,
                             count(*) OVER (PARTITION BY root) FROM dedup_components""")
        self.con.execute("""UPDATE dedup_nodes SET id = dedup_nodes.id || '~' || r.number
                            FROM (SELECT node, row_number() OVER (PARTITION BY root ORDER BY node) - 1 AS number
                                  FROM dedup_components) r
                            WHERE dedup_nodes.key = r.node AND r.number > 0""")
        return self.con.execute("SELECT count(*) FROM dedup_nodes WHERE id <> upstream_id").fetchall()[0][0]

    def add_pass(self, kind: str, pairs: str) -> int:
        """Returns how many documents the pass removed."""
        self.con.execute(f"""CREATE OR REPLACE TEMP TABLE dedup_edges AS SELECT p.a, p.b FROM {pairs} p
                             ANTI JOIN dedup_removed r ON p.a = r.key ANTI JOIN dedup_removed s ON p.b = s.key""")
        connected_components(self.con, "dedup_edges", "dedup_components")
        self.passes += 1
        self.con.execute(f"""INSERT INTO dedup_clusters
                             SELECT {self.passes}, '{kind}', c.node,
                                    first_value(c.node) OVER (PARTITION BY c.root ORDER BY n.quality DESC, n.id,
                                                                                         c.node),
                                    count(*) OVER (PARTITION BY c.root)
                             FROM dedup_components c JOIN dedup_nodes n ON n.key = c.node""")
        self.con.execute(f"""INSERT INTO dedup_removed SELECT key FROM dedup_clusters
                             WHERE pass = {self.passes} AND key <> kept_key""")
        return self.con.execute(f"SELECT count(*) FROM dedup_clusters WHERE pass = {self.passes} AND key <> kept_key"
                                ).fetchall()[0][0]


class DedupFilter(Stage):
    """Drops the documents the cluster pass removed (by row of the curated file), naming the kept one, and gives
    documents that shared an upstream id their unique id (noted `dedup:duplicate_id`)."""

    name = "dedup"

    def __init__(self, removed: dict[int, tuple[str, str]], renamed: dict[int, str] | None = None) -> None:
        super().__init__()
        self.removed = removed  # row -> (kind, kept id)
        self.renamed = renamed or {}  # row -> new id

    def run(self, docs: Iterable[Document]) -> Iterator[Document]:
        for row, doc in enumerate(docs):
            if row in self.renamed:
                doc.id = self.renamed[row]
                self.note(doc, "dedup:duplicate_id")
            self.count_read(doc)
            if row in self.removed:
                kind, kept_id = self.removed[row]
                self.reject(doc, f"dedup:{kind}", detail=f"kept {kept_id}")
            else:
                yield self.keep(doc)
