"""Deduplication across sources, per language: exact text, normalized URL, and MinHash LSH near-duplicates.

Connected by files (one Ray task per unit, never one process holding the corpus):
    MinhashSignatures  per curated file:  exact-text hash, URL hash, 112 MinHash values, 14 band hashes
    ClusterQueries     per hash partition of the documents, buckets or edges: candidate pairs of documents sharing
                       (lang, band hash), MinHash verification, components per pass in rounds, each cluster's
                       keeper (SQL steps, each task holding one partition in DuckDB: pipeline/partitions.py)
    DedupFilter        per curated file:  drop the removed documents as rejects naming the kept one
Defaults are FineWeb2's: word 5-grams (script-aware words, stages/text.py), 14 bands x 8 rows. Documents of
different languages never meet: every bucket is keyed by language. The kept document of a cluster is the one
with the highest quality, then the smallest id, so the choice depends on neither input order nor workers.
"""

import hashlib
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numba
import numpy as np
import pyarrow as pa

from stages.base import Document, Stage
from stages.settings import SEED_MAX, setting
from stages.text import dominant_script, script_of, word_hashes

KINDS = ("exact", "url", "minhash")  # the removal passes one may configure, in this order
Kind = Literal["exact", "url", "minhash"]
ID_PASS = "exact_id"  # always first: documents sharing an upstream id keep one copy, so shard ids are unique
TRACKING = ("utm_", "fbclid", "gclid", "mc_cid", "mc_eid")


@dataclass(frozen=True)
class MinhashConfig:
    n_grams: int = setting(5, help="words per shingle (FineWeb2: 5)", ge=1)
    bands: int = setting(14, help="LSH bands (FineWeb2: 14)", ge=1)
    rows: int = setting(8, help="MinHash values per band (FineWeb2: 8)", ge=1)
    seed: int = setting(1, help="seed of the hash permutations", ge=0, le=SEED_MAX)
    min_similarity: float = setting(
        0.7, help="share of the MinHash values a candidate pair must agree on; 0 keeps every LSH candidate",
        ge=0, le=1)

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


def fold(text: str) -> str:
    """The text in Unicode NFC, case-folded: what exact keys and MinHash shingles compare."""
    return unicodedata.normalize("NFC", text).casefold()


def exact_key(folded: str) -> bytes:
    """Hash of a folded text (`fold`) with its whitespace folded."""
    return hashlib.blake2b(" ".join(folded.split()).encode("utf-8"), digest_size=16).digest()


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

    def shingles(self, text: str, lang: str | None, folded: str | None = None) -> np.ndarray:
        """One hash per word n-gram of the text, repeats included (they leave the minima as they are). `folded`:
        the text's `fold`, when the caller has it."""
        script = script_of(lang) or dominant_script(text)
        ids = word_hashes(fold(text) if folded is None else folded, script)
        n = min(self.config.n_grams, max(len(ids), 1))
        count = max(len(ids) - n + 1, 1 if len(ids) else 0)
        shingles = np.zeros(count, np.uint64)
        for k in range(n):
            shingles = shingles * np.uint64(0x100000001B3) + ids[k:k + count]
        return shingles

    def signature(self, text: str, lang: str | None) -> np.ndarray:
        """112 uint32 minima (all 2**32 - 1 for a text without words)."""
        return self.minhash(self.shingles(text, lang))

    def minhash(self, shingles: np.ndarray) -> np.ndarray:
        return self.signatures([shingles])[0]

    def signatures(self, shingles: list[np.ndarray]) -> np.ndarray:
        """One row of minima per document (all 2**32 - 1 for a document without shingles)."""
        offsets = np.zeros(len(shingles) + 1, np.int64)
        np.cumsum([len(values) for values in shingles], out=offsets[1:])
        values = np.concatenate(shingles) if shingles else np.zeros(0, np.uint64)
        return _minima(values, offsets, self.a, self.b)

    def bands(self, signatures: np.ndarray) -> np.ndarray:
        """One uint64 per band, from its `rows` values (a row of bands per row of signatures)."""
        rows = signatures.astype(np.uint64).reshape(*signatures.shape[:-1], self.config.bands, self.config.rows)
        return (rows * self.band_weights).sum(axis=-1, dtype=np.uint64)


@numba.njit(cache=True)
def _minima(values: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per document (values[offsets[d]:offsets[d + 1]]), the minimum of a * shingle + b (uint64, wrapping) over
    its shingles, for each permutation (a, b), shifted to 32 bits. The shift comes after the minimum: it keeps
    order, so the minima are the same. One pass over the shingles, the permutations in the inner loop (compiled,
    vectorized): 15x NumPy's outer product."""
    hashes = len(a)
    out = np.full((len(offsets) - 1, hashes), np.uint32(2**32 - 1), np.uint32)
    minima = np.empty(hashes, np.uint64)
    for doc in range(len(offsets) - 1):
        if offsets[doc] == offsets[doc + 1]:
            continue
        minima[:] = np.uint64(2**64 - 1)
        for i in range(offsets[doc], offsets[doc + 1]):
            value = values[i]
            for k in range(hashes):
                hashed = value * a[k] + b[k]
                if hashed < minima[k]:
                    minima[k] = hashed
        for k in range(hashes):
            out[doc, k] = np.uint32(minima[k] >> np.uint64(32))
    return out


# The relations between the partitioned steps, column for column as ClusterQueries' SQL writes them.
NODES = pa.schema([("key", pa.int64()), ("id", pa.string()), ("upstream_id", pa.string()), ("quality", pa.float64()),
                   ("removed", pa.bool_()), ("source", pa.string()), ("part", pa.string()), ("row", pa.int64()),
                   ("lang", pa.string())])
SIGNATURE_ROWS = pa.schema([("key", pa.int64()), ("signature", pa.list_(pa.uint32()))])
BANDS = pa.schema([("pass_no", pa.int32()), ("band", pa.int64()), ("lang", pa.string()), ("value", pa.string()),
                   ("key", pa.int64())])
HALF_PAIRS = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("removed_a", pa.bool_()),
                        ("signature_a", pa.list_(pa.uint32()))])
EDGES = pa.schema([("u", pa.int64()), ("v", pa.int64())])  # both directions, by u
MEMBERS = pa.schema([("node", pa.int64()), ("root", pa.int64()), ("quality", pa.float64()), ("id", pa.string())])
BEST = pa.schema([("root", pa.int64()), ("origin", pa.int32()), ("node", pa.int64()), ("quality", pa.float64()),
                  ("id", pa.string()), ("members", pa.int64())])
DECISIONS = pa.schema([("root", pa.int64()), ("kept_key", pa.int64()), ("size", pa.int64())])
CLUSTERS = pa.schema([("pass", pa.int32()), ("kind", pa.string()), ("node", pa.int64()), ("kept_key", pa.int64()),
                      ("size", pa.int64()), ("number", pa.int64())])
RECORDS = pa.schema([("pass", pa.int32()), ("kind", pa.string()), ("node", pa.int64()), ("kept_key", pa.int64()),
                     ("size", pa.int64()), ("id", pa.string()), ("lang", pa.string()), ("source", pa.string()),
                     ("part", pa.string()), ("row", pa.int64())])


class ClusterQueries:
    """The SQL of dedup's partitioned steps (pipeline/partitions.py runs each as one task per partition of P).
    Documents are known by key (curated file number << 32 | row); every relation is hash-partitioned by the key
    the next step joins or groups on:

        keys      signatures -> nodes (key, id, quality, removed, where it comes from), signatures (key,
                  signature), bands (pass, band, lang, value, key): one row per bucket a document falls in
        buckets   bands by bucket -> pairs (the bucket's smallest key, each other key), in one block per pass
      per pass, in order (ids, then exact, url, minhash), among the documents no earlier pass removed:
        pairs     pairs by a, ⋈ nodes (and signatures) -> half pairs by b
        verify    half pairs ⋈ nodes (and signatures): MinHash agreement >= min_similarity -> edges (u, v) by u,
                  both directions
        large / small star rounds (Kiveris et al. 2014, as Spark-scale dedup computes components) until the
                  edges stop changing: then every component is a star around its smallest key
        roots     edges by u -> members (node, root: the component's smallest key, quality, id) by node
        best      members -> each partition's best member and count per root, by root
        decide    best -> per root the kept document (highest quality, then smallest id, then smallest key) and
                  the size, back to every partition holding members of it
        keepers   members ⋈ decisions -> clusters (pass, kind, node, kept_key, size, number) by node
                  (the id pass: members by root, every member kept, numbered in key order)
        nodes     nodes ⋈ clusters: removed documents flagged, shared ids renamed `id~1`, `id~2`, ...
      then records (clusters ⋈ nodes by kept key) and clusters (⋈ nodes: the kept document's final id), by
      curated file."""

    def __init__(self, partitions: int, passes: list[str], min_similarity: float) -> None:
        self.partitions, self.passes, self.min_similarity = partitions, passes, min_similarity
        self.verifies = "minhash" in passes and min_similarity > 0

    def part(self, expression: str, block: str = "0") -> str:
        return f"({block} * {self.partitions} + hash({expression}) % {self.partitions})::INTEGER"

    DOCS = """WITH docs AS (SELECT (f.file_no << 32) | s.row AS key, s.* FROM signatures_in s
                            JOIN files f USING (source, part))"""

    def keys(self) -> dict[str, str]:
        """Over the views `signatures_in` (signature files) and `files` (source, part, file_no)."""
        bands = []
        for number, kind in enumerate(self.passes):
            if kind == "minhash":
                bands.append(f"""SELECT {number} AS pass_no, band, lang, value::VARCHAR AS value, key
                                 FROM (SELECT key, lang, unnest(bands) AS value, generate_subscripts(bands, 1) AS band
                                       FROM docs)""")
            else:
                value, lang = ("id", "''") if kind == ID_PASS else (f"hex({kind})", "lang")
                bands.append(f"""SELECT {number} AS pass_no, 0 AS band, {lang} AS lang, {value} AS value, key
                                 FROM docs WHERE {value} IS NOT NULL""")
        queries = {
            "nodes": f"""{self.DOCS} SELECT {self.part('key')} AS _p, key, id, id AS upstream_id,
                         coalesce(quality, 0.0)::DOUBLE AS quality, false AS removed, source, part, row, lang
                         FROM docs""",
            "bands": f"""{self.DOCS} SELECT {self.part('pass_no, band, lang, value')} AS _p, *
                         FROM ({' UNION ALL '.join(bands)})""",
        }
        if self.verifies:
            queries["signatures"] = f"{self.DOCS} SELECT {self.part('key')} AS _p, key, signature FROM docs"
        return queries

    def buckets(self) -> str:
        """Documents sharing (pass, band, lang, value), as pairs with the smallest: enough to connect them."""
        return f"""WITH b AS (SELECT pass_no, key, min(key) OVER (PARTITION BY pass_no, band, lang, value) AS first
                              FROM bands)
                   SELECT {self.part('first', 'pass_no')} AS _p, first AS a, key AS b FROM b WHERE key <> first"""

    def pairs(self) -> tuple[str, str]:
        signature = "s.signature" if self.verifies else "NULL::UINTEGER[]"
        join = "JOIN signatures s ON s.key = p.a" if self.verifies else ""
        return (f"""SELECT {self.part('p.b')} AS _p, p.a, p.b, n.removed AS removed_a, {signature} AS signature_a
                    FROM (SELECT DISTINCT a, b FROM pairs) p JOIN nodes n ON n.key = p.a {join}""",
                "SELECT count(*) AS pairs FROM (SELECT DISTINCT a, b FROM pairs)")

    def verify(self, kind: str) -> tuple[str, str]:
        check = kind == "minhash" and self.verifies
        agreement = ("len(list_filter(list_zip(h.signature_a, s.signature), lambda v: v[1] = v[2])) "
                     f"/ len(h.signature_a) >= {self.min_similarity!r}") if check else "true"
        edges = f"""WITH edges AS (SELECT h.a, h.b, h.removed_a OR n.removed AS removed, {agreement} AS verified
                                   FROM half h JOIN nodes n ON n.key = h.b
                                   {'JOIN signatures s ON s.key = h.b' if check else ''} WHERE h.a <> h.b)"""
        return (f"""{edges} SELECT {self.part('a')} AS _p, a AS u, b AS v FROM edges WHERE verified AND NOT removed
                    UNION ALL SELECT {self.part('b')}, b, a FROM edges WHERE verified AND NOT removed""",
                f"""{edges} SELECT count(*) FILTER (WHERE verified) AS verified_pairs,
                                   count(*) FILTER (WHERE verified AND NOT removed) AS edges FROM edges""")

    def large_star(self) -> tuple[str, str]:
        """Each node's larger neighbours attach to the smallest node it sees (itself included). The summary's
        digest of the distinct edges read tells when a round changed nothing."""
        return (f"""WITH d AS (SELECT DISTINCT u, v FROM edges),
                         m AS (SELECT u, least(u, min(v)) AS m FROM d GROUP BY u)
                    SELECT DISTINCT {self.part('greatest(d.v, m.m)')} AS _p, least(d.v, m.m) AS a,
                           greatest(d.v, m.m) AS b
                    FROM d JOIN m USING (u) WHERE d.v > d.u AND d.v <> m.m""",
                "SELECT count(*) AS edges, sum(hash(u, v)) AS digest FROM (SELECT DISTINCT u, v FROM edges)")

    def small_star(self) -> str:
        """Each node and its smaller neighbours attach to the smallest of them."""
        return f"""WITH e AS (SELECT DISTINCT a, b FROM edges), m AS (SELECT b AS u, min(a) AS m FROM e GROUP BY b),
                        s AS (SELECT DISTINCT least(w, m) AS a, greatest(w, m) AS b
                              FROM (SELECT e.a AS w, m.m FROM e JOIN m ON e.b = m.u UNION ALL SELECT u, m FROM m)
                              WHERE w <> m)
                   SELECT {self.part('a')} AS _p, a AS u, b AS v FROM s
                   UNION ALL SELECT {self.part('b')}, b, a FROM s"""

    def roots(self, by: str) -> str:
        """Members (node, root: the smallest node of its component), by `node` (removal passes: no task holds a
        whole component) or by `root` (the id pass numbers a component's members in one task)."""
        return f"""WITH c AS (SELECT u AS node, least(u, min(v)) AS root FROM edges GROUP BY u)
                   SELECT {self.part(f'c.{by}')} AS _p, c.node, c.root, n.quality, n.id
                   FROM c JOIN nodes n ON n.key = c.node"""

    def best(self) -> str:
        """Per partition of members and root: its best member (highest quality, then smallest id, then smallest
        key) and how many members it holds there, sent to the root's partition with the partition it came from."""
        return f"""WITH r AS (SELECT *, count(*) OVER (PARTITION BY root) AS members,
                                  row_number() OVER (PARTITION BY root ORDER BY quality DESC, id, node) AS rank
                              FROM members)
                   SELECT {self.part('root')} AS _p, root, {self.part('node')} AS origin, node, quality, id, members
                   FROM r WHERE rank = 1"""

    def decide(self) -> str:
        """Per root: the best of the partitions' best and the component's size, sent back to each partition that
        holds members of it."""
        return """WITH b AS (SELECT root, origin, first_value(node) OVER (PARTITION BY root ORDER BY quality DESC, id,
                                                                               node) AS kept_key,
                                  sum(members) OVER (PARTITION BY root) AS size FROM best)
                  SELECT DISTINCT origin AS _p, root, kept_key, size FROM b"""

    def keepers(self, number: int, kind: str) -> tuple[str, str]:
        """Clusters rows by node: removal passes join the decisions of their roots; the id pass (members by root)
        keeps every member and numbers them in key order."""
        if kind == ID_PASS:
            ranked = """WITH ranked AS (SELECT *, node AS kept_key, count(*) OVER (PARTITION BY root) AS size,
                                               row_number() OVER (PARTITION BY root ORDER BY node) - 1 AS number
                                        FROM members)"""
            summary = f"{ranked} SELECT count(*) FILTER (WHERE number > 0) AS {ID_PASS}_renamed FROM ranked"
        else:
            ranked = """WITH ranked AS (SELECT m.node, d.kept_key, d.size, 0 AS number
                                        FROM members m JOIN decisions d USING (root))"""
            summary = f"{ranked} SELECT count(*) FILTER (WHERE node <> kept_key) AS {kind}_removed FROM ranked"
        return (f"""{ranked} SELECT {self.part('node')} AS _p, {number} AS pass, '{kind}' AS kind, node, kept_key,
                                    size, number FROM ranked""", summary)

    def update(self, kind: str) -> str:
        new_id = "CASE WHEN c.number > 0 THEN n.id || '~' || c.number ELSE n.id END" if kind == ID_PASS else "n.id"
        return f"""SELECT {self.part('n.key')} AS _p, n.key, {new_id} AS id, n.upstream_id, n.quality,
                          n.removed OR coalesce(c.node <> c.kept_key, false) AS removed, n.source, n.part, n.row,
                          n.lang
                   FROM nodes n LEFT JOIN clusters c ON c.node = n.key"""

    def records(self) -> str:
        return f"""SELECT {self.part('c.kept_key')} AS _p, c.pass, c.kind, c.node, c.kept_key, c.size,
                          CASE WHEN c.kind = '{ID_PASS}' THEN n.upstream_id ELSE n.id END AS id, n.lang, n.source,
                          n.part, n.row
                   FROM clusters c JOIN nodes n ON n.key = c.node"""

    def clusters(self) -> str:
        """Every document of a cluster with the final id of the one kept, by curated file."""
        return f"""SELECT {self.part('r.node >> 32')} AS _p, r.kind, r.source, r.part, r.row, r.id, r.lang,
                          r.node = r.kept_key AS kept, k.id AS kept_id, r.size AS cluster_size, r.pass
                   FROM records r JOIN nodes k ON k.key = r.kept_key"""


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
