"""The stage interface: a stage consumes a stream of documents and yields the ones it keeps.

Every stage counts what it read, kept and rejected per (source, lang), records each rejected document with a
reason, and times itself, so that `read == kept + rejected` can be checked for every stage in the manifest.
"""

import re
import time
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from datatrove.data import Document

__all__ = ["BatchStage", "Document", "Records", "Reject", "Stage", "StageStats", "failed_file"]


@dataclass(slots=True)
class Reject:
    """One dropped document (or unreadable file / record) and why."""

    id: str
    source: str
    lang: str | None
    stage: str
    reason: str
    origin: str
    detail: str | None = None  # what was measured (`doc_words=23<50`), the kept document's id, the error
    text: str | None = None  # the document's text, when the build keeps rejected text


@dataclass
class StageStats:
    """Counters of one stage, per (source, lang); mergeable across tasks."""

    stage: str
    read: Counter = field(default_factory=Counter)
    kept: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    reasons: dict = field(default_factory=lambda: defaultdict(Counter))
    notes: dict = field(default_factory=lambda: defaultdict(Counter))  # kept documents flagged, by label
    note_tokens: dict = field(default_factory=lambda: defaultdict(Counter))  # tokens a note concerns, by label
    tokens: Counter = field(default_factory=Counter)
    seconds: Counter = field(default_factory=Counter)

    def count_reject(self, key: tuple[str, str | None], reason: str) -> None:
        self.rejected[key] += 1
        self.reasons[key][reason_key(reason)] += 1

    def count_note(self, key: tuple[str, str | None], label: str, tokens: int = 0) -> None:
        self.notes[key][label] += 1
        self.note_tokens[key][label] += tokens

    def rows(self) -> list[dict]:
        """Long-form rows: one total row per (source, lang) with reason None, then one row per reject reason
        (counted in `rejected`) and one per note on kept documents (counted in `kept`, the tokens it concerns in
        `tokens`)."""
        rows = []
        for key in sorted(set(self.read) | set(self.kept) | set(self.rejected), key=str):
            source, lang = key
            rows.append(
                dict(
                    stage=self.stage, source=source, lang=lang, reason=None, read=self.read[key],
                    kept=self.kept[key], rejected=self.rejected[key], tokens=self.tokens[key],
                    seconds=float(self.seconds[key]),
                )
            )
            for reason, n in sorted(self.reasons[key].items()):
                rows.append(dict(stage=self.stage, source=source, lang=lang, reason=reason, read=0, kept=0,
                                 rejected=n, tokens=0, seconds=0.0))
            for note, n in sorted(self.notes[key].items()):
                rows.append(dict(stage=self.stage, source=source, lang=lang, reason=note, read=0, kept=n,
                                 rejected=0, tokens=self.note_tokens[key][note], seconds=0.0))
        return rows


@dataclass
class Records:
    """What a stage leaves behind, counters and rejects; a Stage is one, so is a quarantined task."""

    stats: StageStats
    rejects: list[Reject]


def failed_file(source: str, relative: str, reason: str, detail: str) -> Records:
    """The records of an input file that produced nothing: read once, rejected once."""
    key = (source, None)
    stats = StageStats("read")
    stats.read[key] = stats.rejected[key] = 1
    stats.reasons[key][reason_key(reason)] = 1
    origin = f"{relative}:file"
    return Records(stats, [Reject(f"{source}/{origin}", source, None, "read", reason, origin, detail)])


def reason_key(reason: str) -> str:
    """A reason without its threshold: `quality:gopher_repetition dup_line_frac>0.3` groups as
    `quality:gopher_repetition dup_line_frac`, whatever each language's threshold."""
    return re.split(r"[<>]", reason, maxsplit=1)[0].strip()


class Stage(ABC):
    """A step between reader and pool. Subclasses implement `run` over a document stream."""

    name: str
    keep_text = False  # rejects keep the document's text (`--keep-rejected-text`)

    def __init__(self) -> None:
        self.stats = StageStats(self.name)
        self.rejects: list[Reject] = []

    @staticmethod
    def key(doc: Document) -> tuple[str, str | None]:
        return doc.metadata["source"], doc.metadata.get("lang")

    def count_read(self, doc: Document) -> None:
        self.stats.read[self.key(doc)] += 1

    def keep(self, doc: Document) -> Document:
        self.stats.kept[self.key(doc)] += 1
        return doc

    def reject(self, doc: Document, reason: str, detail: str | None = None) -> None:
        key = self.key(doc)
        self.stats.count_reject(key, reason)
        self.rejects.append(Reject(doc.id, key[0], key[1], self.name, reason, doc.metadata.get("origin", ""), detail,
                                   doc.text if self.keep_text else None))

    def note(self, doc: Document, label: str) -> None:
        """Flag a kept document (counted per label in the stats, e.g. `lid:upstream_disagrees`)."""
        self.stats.count_note(self.key(doc), label)

    @contextmanager
    def track_time(self, docs: list[Document]) -> Iterator[None]:
        """Time a unit of work and charge it evenly to the (source, lang) of the documents it handled."""
        start = time.perf_counter()
        try:
            yield
        finally:
            share = (time.perf_counter() - start) / max(len(docs), 1)
            for doc in docs:
                self.stats.seconds[self.key(doc)] += share

    @abstractmethod
    def run(self, docs: Iterable[Document]) -> Iterator[Document]: ...


class BatchStage(Stage):
    """A stage that works on batches of documents (one model call per batch): implement `process(batch)`."""

    batch_size: int = 256

    def run(self, docs: Iterable[Document]) -> Iterator[Document]:
        batch: list[Document] = []
        for doc in docs:
            self.count_read(doc)
            batch.append(doc)
            if len(batch) == self.batch_size:
                yield from self.process(batch)
                batch = []
        if batch:
            yield from self.process(batch)

    @abstractmethod
    def process(self, batch: list[Document]) -> Iterator[Document]:
        """Keep or reject each document of the batch (already counted as read)."""

