"""The reader interface: list a source's files in its upstream layout, stream Documents out of one file.

A reader is the first stage of a curation task (`name = "read"`). It reads from a local path or any fsspec
URL, keeps lineage in `metadata["origin"]` (file and row), and turns what it cannot read into rejects: a bad
record is rejected alone; a bad file (corrupt, truncated, wrong schema) becomes one reject naming the file
and the error, after whatever documents came out of it before the damage.
"""

import io
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from typing import IO, Any, Literal
from urllib.parse import urlsplit

import fsspec
import zstandard

from manifests.layout import checksum_stream
from stages.assets import AssetSpec
from stages.base import Document, Stage
from stages.settings import ConfigError, Location, setting

log = logging.getLogger(__name__)

# fsspec `info` keys that change when a file's content does, best first (object stores, the Hub, local files)
IDENTITY_KEYS = ("ETag", "etag", "md5Hash", "sha256", "blob_id", "generation", "mtime", "LastModified", "updated")
MAX_CHARS = 5_000_000  # a longer text is cut here (option `max_chars`), noted as read:text_capped


@dataclass(frozen=True)
class ReaderOptions:
    """What every source takes in the sources YAML; each reader adds its own options."""

    path: Location = setting(help="local folder (relative to the YAML naming it) or fsspec URL, upstream layout")
    max_chars: int = setting(MAX_CHARS, help="a longer text is cut here and noted read:text_capped", ge=1)
    identity: Literal["mtime", "content"] = setting(
        "mtime", help="what tells a rebuild that an input file changed: `mtime` its size and ETag or modification "
        "time (as make and rsync); `content` its size and an xxhash64 of its bytes, which reads every input on "
        "every build")


@dataclass(frozen=True)
class SourceTerms:
    """What the data cards say of a source: the terms its text comes under, where it is from, how to cite it.
    Kept apart from the reader's options: they change no document, so a change of them curates nothing again."""

    license: str | None = setting(None, help="the licence as the Hugging Face Hub names it (odc-by, cc-by-4.0, "
                                             "apache-2.0, ...), or other: say which terms in `description`")
    description: str | None = setting(None, help="what the source is and the terms it comes under, in words")
    homepage: str | None = setting(None, help="where the source comes from (its dataset page)")
    citation: str | None = setting(None, help="how to cite the source (BibTeX)")


class BadRecord(ValueError):
    """A record that cannot become a document (a field of the wrong type, text that is not valid Unicode): it is
    rejected alone as read:bad_record, naming the field; the rest of the file goes on."""

    reason = "read:bad_record"


class UnknownLanguage(BadRecord):
    """A record whose language is no label, no code of configs/languages.csv and not in the source's lang_map."""

    reason = "read:unknown_language"


def text_field(record: dict, name: str, required: bool = False) -> str | None:
    """A text field of a record, checked: None when absent (BadRecord if required), BadRecord when it is not
    text or holds what UTF-8 cannot encode (a lone surrogate from a JSON `\\ud800` escape)."""
    value = record.get(name)
    if value is None:
        if required:
            raise BadRecord(f"no {name} field")
        return None
    if not isinstance(value, str):
        raise BadRecord(f"{name} is {type(value).__name__}, not text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise BadRecord(f"{name} is not valid Unicode ({error.reason} at {error.start})") from None
    return value


def id_field(record: dict, name: str = "id") -> str | None:
    """An upstream id: text or a number; None when absent or empty (the reader then names it by file and row)."""
    value = record.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return text_field(record, name) or None


class SourceReader(Stage):
    name = "read"
    source: str  # the source's key in sources.yaml and in the pool
    patterns: tuple[str, ...]  # globs under the root, in the upstream layout
    Options: type[ReaderOptions] = ReaderOptions
    terms = SourceTerms()  # the named sources' own, from their upstream cards

    def __init__(self, path: str, **options: Any) -> None:
        super().__init__()
        self.options = self.Options(path=path, **options)
        self.root = path.rstrip("/")
        self.fs, self.fs_root = fsspec.core.url_to_fs(self.root)

    @classmethod
    def create(cls, options: ReaderOptions, tokenizers: dict[str, AssetSpec]) -> "SourceReader":
        """The reader for a configured source (readers that need a tokenizer look it up by role)."""
        return cls(**{f.name: getattr(options, f.name) for f in fields(options)})

    @staticmethod
    def tokenizer_for(tokenizers: dict[str, AssetSpec], role: str, source: str) -> AssetSpec:
        if role not in tokenizers:
            raise ConfigError(f"source {source}: tokenizer {role!r} is not in the tokenizers config "
                              f"(known: {', '.join(tokenizers)})")
        return tokenizers[role]

    def reach(self) -> None:
        """Raise, in one line naming the source and its root, when the root cannot be reached or is not there."""
        try:
            exists = self.fs.exists(self.fs_root)
        except Exception as error:  # noqa: BLE001 - each fsspec backend raises its own (offline, credentials)
            reason = " ".join(str(error).split()) or type(error).__name__
            raise OSError(f"source {self.source}: cannot reach {self.root}: {reason}") from None
        if not exists:
            raise FileNotFoundError(f"source {self.source}: {self.root} does not exist")

    def list_files(self) -> list[str]:
        """Paths relative to the root, sorted, so that task keys and output names are stable."""
        self.reach()
        found = set()
        for pattern in self.patterns:
            for path, info in self.fs.glob(f"{self.fs_root}/{pattern}", detail=True).items():
                if info.get("type") == "directory":  # a wildcard of the path matched a folder too
                    continue
                relative = path[len(self.fs_root.rstrip("/")) + 1:]
                if self.accept(relative):
                    found.add(relative)
        return sorted(found)

    def folder(self, relative: str, up: int = 1) -> str:
        """The name of the folder `up` levels above a file; the root's own name when the file sits higher (a
        path that points straight at one language's or one subset's folder)."""
        parts = [*self.fs_root.rstrip("/").split("/"), *relative.split("/")]
        return parts[-1 - up]

    def identity(self, relative: str) -> dict:
        """What tells whether an upstream file changed: its size and its ETag, hash or modification time, or with
        `identity: content` a checksum of its bytes in their place, so that a touched file is not curated again
        (raises OSError for a path that cannot be read, such as a dangling or looping link)."""
        path = f"{self.fs_root}/{relative}"
        info = self.fs.info(path)
        if self.options.identity == "content":
            with self.fs.open(path, "rb") as f:
                version = checksum_stream(f)
        else:
            version = next((info[key] for key in IDENTITY_KEYS if info.get(key) is not None), None)
        return {"path": relative, "size": int(info.get("size") or 0), "version": str(version)}

    def accept(self, relative: str) -> bool:
        """Hook for readers that skip some files of the layout (with a log line saying so)."""
        return True

    def open(self, relative: str, mode: str = "rb", compression: str | None = None) -> IO[bytes]:
        return self.fs.open(f"{self.fs_root}/{relative}", mode, compression=compression)

    def make_doc(self, doc_id: str, text: str, relative: str, row: int | str, lang: str | None,
                 lang_source: str, lang_score: float | None = None, url: str | None = None,
                 upstream: dict | None = None, upstream_lang: str | None = None, **extra: object) -> Document:
        """`lang_source` says where `lang` comes from: `upstream` (the source's own label), `expected` (what the
        subset is configured to hold, for LID to decide) or `code`. `upstream` holds the lineage fields of
        manifests.schemas.UPSTREAM that the source has (dump, file_path, cluster_size); `upstream_lang` a language
        the source's metadata names beside an `expected` label (Dolma's), which LID checks against it."""
        text = text_field({"text": text}, "text", required=True)  # type: ignore[assignment]
        doc_id = text_field({"id": doc_id}, "id", required=True)  # type: ignore[assignment]
        url = text_field({"url": url}, "url")
        metadata = dict(source=self.source, lang=lang, lang_source=lang_source, lang_score=lang_score,
                        url=url if valid_url(url) else None, origin=f"{relative}:{row}", upstream=upstream or {},
                        upstream_lang=upstream_lang, extra=extra)
        doc = Document(text=text, id=f"{self.source}/{doc_id}", metadata=metadata)
        if url and metadata["url"] is None:
            self.note(doc, "read:bad_url")
        return doc

    def reject_record(self, relative: str, row: int | str, reason: str, detail: str) -> None:
        doc = Document(text="", id=f"{self.source}/{relative}:{row}",
                       metadata=dict(source=self.source, lang=None, origin=f"{relative}:{row}"))
        self.count_read(doc)
        self.reject(doc, reason, detail)

    def records(self, relative: str) -> Iterator[tuple[int | str, dict]]:
        """(row, record) of one file, for readers that build one document per record with `document`."""
        raise NotImplementedError

    def document(self, relative: str, row: int | str, record: dict) -> Document:
        """The document of one record; raises BadRecord for a record that cannot be one."""
        raise NotImplementedError

    def read_file(self, relative: str) -> Iterator[Document]:
        """Yield the documents of one file; raise on damage that ends the file."""
        for row, record in self.records(relative):
            try:
                doc = self.document(relative, row, record)
            except BadRecord as error:
                self.reject_record(relative, row, error.reason, f"row {row}: {error}")
                continue
            yield doc

    def run(self, files: Iterable[str]) -> Iterator[Document]:
        max_chars = self.options.max_chars
        for relative in files:
            try:
                for doc in self.read_file(relative):
                    self.count_read(doc)
                    if len(doc.text) > max_chars:  # keep memory bounded downstream; the note records it
                        doc.text = doc.text[:max_chars]
                        self.note(doc, "read:text_capped")
                    yield self.keep(doc)
            except Exception as error:  # noqa: BLE001 - any damage ends this file, never the run
                if not_the_files_fault(error):
                    raise  # the runner retries the task, then fails the build naming the file
                detail = " ".join(f"{type(error).__name__}: {error}".split())[:500]
                log.warning("%s: quarantined %s: %s", self.source, relative, detail)
                self.reject_record(relative, "file", "read:corrupt_file", detail)


# Errors of the machine or of the storage, not of a file's bytes: quarantining the file for them would lose it.
TRANSIENT_ERRORS = (MemoryError, ConnectionError, TimeoutError, PermissionError, FileNotFoundError)
STORAGE_CLIENTS = {"botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "s3fs", "gcsfs", "adlfs", "httpx",
                   "httpx2", "huggingface_hub"}


def not_the_files_fault(error: BaseException) -> bool:
    """An error a retry may not see (memory, the network, the store, the file vanishing): fatal to the task, so
    the runner retries it and then fails the build; a damaged file fails the same way every time and is
    quarantined. An OSError with an errno comes from the operating system; a decoder's has none."""
    if isinstance(error, TRANSIENT_ERRORS) or type(error) is OSError and error.errno is not None:
        return True
    return type(error).__module__.split(".")[0] in STORAGE_CLIENTS


def valid_url(url: str | None) -> bool:
    """An absolute URL that parses (`http://[bad2/x` does not: its IPv6 host is unclosed)."""
    if not url:
        return False
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return False
    return bool(parts.scheme and parts.netloc)


class ZstdFrames(io.RawIOBase):
    """The decompressed bytes of a zstd file, every frame in turn (the zstd CLI and streaming writers may write
    several, without their content size). It raises ZstdError where the input ends inside a frame: zstandard's
    own readers take that for the end of the data, and fsspec's cannot be read line by line."""

    def __init__(self, compressed: IO[bytes]) -> None:
        super().__init__()
        self.compressed = compressed
        self.decompressor = zstandard.ZstdDecompressor()
        self.frame = self.decompressor.decompressobj()
        self.in_frame = False  # whether the current frame has begun: the input must not end there
        self.pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.pending:
            data = self.compressed.read(1 << 16)  # 64 KiB at a time: what one call may expand is bounded by it
            if not data:
                if self.in_frame:
                    raise zstandard.ZstdError("zstd decompressor error: the input ends inside a frame (truncated)")
                return 0
            self.pending = memoryview(self.decompress(data))
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def decompress(self, data: bytes) -> bytes:
        out = []
        while data:
            out.append(self.frame.decompress(data))
            self.in_frame = not self.frame.eof
            if self.in_frame:
                break
            data = self.frame.unused_data  # the next frame begins in this block
            self.frame = self.decompressor.decompressobj()
        return b"".join(out)


def iter_json_lines(reader: SourceReader, relative: str) -> Iterator[tuple[int, dict]]:
    """(line number, record) for a JSON-lines file, compressed or not; bad lines become rejects."""
    zstd = relative.endswith(".zst")
    with reader.open(relative, "rb", compression=None if zstd else "infer") as f:
        for number, raw in enumerate(io.BufferedReader(ZstdFrames(f), 1 << 20) if zstd else f):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                reader.reject_record(relative, number, "read:bad_record", f"line {number}: {error}")
                continue
            if not isinstance(record, dict):
                reader.reject_record(relative, number, "read:bad_record", f"line {number}: not a JSON object")
                continue
            yield number, record


def iter_parquet_rows(reader: SourceReader, relative: str, columns: list[str] | None, required: list[str],
                      batch_size: int = 1024) -> Iterator[tuple[int, dict]]:
    """(row number, row) over the columns a reader needs (None: all); a missing required column fails the file."""
    import pyarrow.parquet as pq

    with reader.open(relative) as f:
        parquet = pq.ParquetFile(f)
        present = set(parquet.schema_arrow.names)
        missing = [c for c in required if c not in present]
        if missing:
            raise ValueError(f"missing column(s) {missing}; file has {sorted(present)}")
        row = 0
        wanted = None if columns is None else [c for c in columns if c in present]
        for batch in parquet.iter_batches(batch_size=batch_size, columns=wanted):
            for record in batch.to_pylist():
                yield row, record
                row += 1
