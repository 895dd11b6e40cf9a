"""Deduplication.

The vertical slice removes exact duplicates (Unicode NFC, case and whitespace folded) within one task's
documents; the first seen is kept and the reject names it. Cross-source exact, MinHash LSH and URL dedup
across the whole pool replace this in the dedup issue.
"""

import hashlib
import unicodedata
from collections.abc import Iterable, Iterator

from stages.base import Document, Stage


def normalized_hash(text: str) -> bytes:
    folded = " ".join(unicodedata.normalize("NFC", text).casefold().split())
    return hashlib.blake2b(folded.encode("utf-8"), digest_size=16).digest()


class ExactDedup(Stage):
    name = "dedup"

    def run(self, docs: Iterable[Document]) -> Iterator[Document]:
        seen: dict[tuple[str | None, bytes], str] = {}
        for doc in docs:
            self.count_read(doc)
            with self.track_time([doc]):
                key = (doc.metadata.get("lang"), normalized_hash(doc.text))
                kept_id = seen.setdefault(key, doc.id)
            if kept_id == doc.id:
                yield self.keep(doc)
            else:
                self.reject(doc, "dedup:exact", detail=f"kept {kept_id}")
