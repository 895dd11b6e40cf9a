"""Deduplication across sources, per language: exact text, normalized URL, and MinHash LSH near-duplicates.

Four passes connected by files (one Ray task per unit, never one process holding the corpus):
    MinhashSignatures  per curated file:  exact-text hash, URL hash, 112 MinHash values, 14 band hashes
    MinhashBuckets     per band / kind:   documents sharing (lang, band hash) -> candidate pairs
    MinhashClusters    once:              verify MinHash pairs, union-find per kind, choose each cluster's keeper
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

import numpy as np
import xxhash

from stages.base import Document, Stage
from stages.settings import setting
from stages.text import dominant_script, script_of, split_words

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


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
            self.parent[max(rx, ry)] = min(rx, ry)

    def groups(self) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for x in self.parent:
            groups.setdefault(self.find(x), []).append(x)
        return groups


class MinhashClusters:
    """Pass by pass (exact, url, minhash): connect pairs among the documents still kept, keep one per cluster.
    First, documents sharing an upstream id get unique ids (the one with the smallest key keeps it, the others
    become `id~1`, `id~2`, ...): they may be different documents, which the other passes judge."""

    def __init__(self, docs: dict[int, tuple[str, float]]) -> None:
        self.docs = docs  # key -> (id, quality)
        self.removed: dict[int, tuple[str, int, int]] = {}  # key -> (kind, kept key, cluster size)
        self.renamed: dict[int, str] = {}  # key -> its new, unique id
        self.clusters: list[tuple[str, int, list[int]]] = []

    def rename_shared_ids(self, pairs: Iterable[tuple[int, int]]) -> None:
        union = UnionFind()
        for a, b in pairs:
            union.union(a, b)
        for members in union.groups().values():
            members = sorted(members)
            self.clusters.append((ID_PASS, members[0], members))
            for number, key in enumerate(members[1:], 1):
                doc_id, quality = self.docs[key]
                self.renamed[key] = f"{doc_id}~{number}"
                self.docs[key] = (self.renamed[key], quality)

    def keeper(self, members: list[int]) -> int:
        return min(members, key=lambda k: (-self.docs[k][1], self.docs[k][0], k))

    def add_pass(self, kind: str, pairs: Iterable[tuple[int, int]]) -> None:
        union = UnionFind()
        for a, b in pairs:
            if a not in self.removed and b not in self.removed:
                union.union(a, b)
        for members in union.groups().values():
            if len(members) < 2:
                continue
            kept = self.keeper(members)
            self.clusters.append((kind, kept, members))
            for key in members:
                if key != kept:
                    self.removed[key] = (kind, kept, len(members))


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
