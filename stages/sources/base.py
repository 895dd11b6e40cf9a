"""The reader interface: list a source's files in its upstream layout, stream Documents out of one file.

A reader is the first stage of a curation task (`name = "read"`). It reads from a local path or any fsspec
URL, keeps lineage in `metadata["origin"]` (file and row), and turns what it cannot read into rejects: a bad
record is rejected alone; a bad file (corrupt, truncated, wrong schema) becomes one reject naming the file
and the error, after whatever documents came out of it before the damage.
"""

import json
import logging
from abc import abstractmethod
from collections.abc import Iterable, Iterator
from typing import IO

import fsspec

from stages.base import Document, Stage

log = logging.getLogger(__name__)

MAX_CHARS = 5_000_000  # a longer text is cut here (option `max_chars`), noted as read:text_capped


class SourceReader(Stage):
    name = "read"
    source: str  # the source's key in sources.yaml and in the pool
    patterns: tuple[str, ...]  # globs under the root, in the upstream layout
    tokenizer_role: str | None = None  # a tokenizer from configs/tokenizers.yaml the reader needs, if any

    def __init__(self, path: str, **options: object) -> None:
        super().__init__()
        self.root = path.rstrip("/")
        self.options = options
        self.fs, self.fs_root = fsspec.core.url_to_fs(self.root)

    def list_files(self) -> list[str]:
        """Paths relative to the root, sorted, so that task keys and output names are stable."""
        if not self.fs.exists(self.fs_root):
            raise FileNotFoundError(f"{self.source}: path {self.root} does not exist")
        found = set()
        for pattern in self.patterns:
            for path in self.fs.glob(f"{self.fs_root}/{pattern}"):
                relative = path[len(self.fs_root.rstrip("/")) + 1:]
                if self.accept(relative):
                    found.add(relative)
        return sorted(found)

    def folder(self, relative: str, up: int = 1) -> str:
        """The name of the folder `up` levels above a file; the root's own name when the file sits higher (a
        path that points straight at one language's or one subset's folder)."""
        parts = [*self.fs_root.rstrip("/").split("/"), *relative.split("/")]
        return parts[-1 - up]

    def size(self, relative: str) -> int:
        return int(self.fs.size(f"{self.fs_root}/{relative}") or 0)

    def accept(self, relative: str) -> bool:
        """Hook for readers that skip some files of the layout (with a log line saying so)."""
        return True

    def open(self, relative: str, mode: str = "rb", compression: str | None = None) -> IO[bytes]:
        return self.fs.open(f"{self.fs_root}/{relative}", mode, compression=compression)

    @abstractmethod
    def read_file(self, relative: str) -> Iterator[Document]:
        """Yield the documents of one file; raise on damage that ends the file."""

    def make_doc(self, doc_id: str, text: str, relative: str, row: int | str, lang: str | None,
                 lang_source: str, lang_score: float | None = None, url: str | None = None,
                 **extra: object) -> Document:
        """`lang_source` says where `lang` comes from: `upstream` (the source's own label), `expected` (what the
        subset is configured to hold, for LID to decide) or `code`."""
        metadata = dict(source=self.source, lang=lang, lang_source=lang_source, lang_score=lang_score, url=url,
                        origin=f"{relative}:{row}", extra=extra)
        return Document(text=text, id=f"{self.source}/{doc_id}", metadata=metadata)

    def reject_record(self, relative: str, row: int | str, reason: str, detail: str) -> None:
        doc = Document(text="", id=f"{self.source}/{relative}:{row}",
                       metadata=dict(source=self.source, lang=None, origin=f"{relative}:{row}"))
        self.count_read(doc)
        self.reject(doc, reason, detail)

    def run(self, files: Iterable[str]) -> Iterator[Document]:
        max_chars = int(self.options.get("max_chars", MAX_CHARS))
        for relative in files:
            try:
                for doc in self.read_file(relative):
                    self.count_read(doc)
                    if len(doc.text) > max_chars:  # keep memory bounded downstream; the note records it
                        doc.text = doc.text[:max_chars]
                        self.note(doc, "read:text_capped")
                    yield self.keep(doc)
            except Exception as error:  # noqa: BLE001 - any damage ends this file, never the run
                detail = " ".join(f"{type(error).__name__}: {error}".split())[:500]
                log.warning("%s: quarantined %s: %s", self.source, relative, detail)
                self.reject_record(relative, "file", "read:corrupt_file", detail)


def iter_json_lines(reader: SourceReader, relative: str) -> Iterator[tuple[int, dict]]:
    """(line number, record) for a JSON-lines file, compressed or not; bad lines become rejects."""
    with reader.open(relative, "rb", compression="infer") as f:
        for number, raw in enumerate(f):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                reader.reject_record(relative, number, "read:bad_record", f"line {number}: {error}")
                continue
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                reader.reject_record(relative, number, "read:bad_record", f"line {number}: no text field")
                continue
            yield number, record


def iter_parquet_rows(reader: SourceReader, relative: str, columns: list[str], required: list[str],
                      batch_size: int = 1024) -> Iterator[tuple[int, dict]]:
    """(row number, row) over the columns a reader needs; a missing required column fails the file."""
    import pyarrow.parquet as pq

    with reader.open(relative) as f:
        parquet = pq.ParquetFile(f)
        present = set(parquet.schema_arrow.names)
        missing = [c for c in required if c not in present]
        if missing:
            raise ValueError(f"missing column(s) {missing}; file has {sorted(present)}")
        row = 0
        for batch in parquet.iter_batches(batch_size=batch_size, columns=[c for c in columns if c in present]):
            for record in batch.to_pylist():
                yield row, record
                row += 1
