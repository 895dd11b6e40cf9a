"""The output tree's files, over fsspec: where a name lives, and atomic, checksummed reads and writes of it.

`--out` may be a local folder or any fsspec URL (`s3://bucket/prefix`, `gs://...`, `memory://` in tests). Names
are relative to the root and spelled in manifests/names.py (`Layout` inherits them); `Layout` turns them into
filesystem paths and URLs. Writes are atomic: a temporary name then a rename on a file system, one complete PUT
(or a completed multipart upload) on an object store, so a file is either whole under its name or absent. Every
write computes the file's checksum (xxhash64 for intermediates, sha256 for shards and MDS) and reports it to the
task recording its outputs.

With manifests/names.py and manifests/store.py (the counting file system, the S3 retry policy) this module is a
leaf: it imports nothing else of the project.
"""

import contextlib
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.fs as pafs
import xxhash
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import glob_translate

from manifests.names import Names
from manifests.store import COUNTS, open_store

# What the current task wrote: name -> checksum. Set by the runner around each task (pipeline/runner.py).
_written: ContextVar["Written | None"] = ContextVar("written", default=None)
# Bytes the running task may hold (`--task-memory`; the runner sets it on the worker): DuckDB spills to disk
# beyond part of it, and writers that partition size their buffers from it.
TASK_MEMORY: ContextVar[int] = ContextVar("task_memory", default=1 << 30)
# The sizes of the files the running task reads, by filesystem path: set by the runner from what their producers
# recorded (pipeline/runner.py), so that opening one on an object store asks no HEAD for its size.
_known_sizes: ContextVar[dict[str, int] | None] = ContextVar("known_sizes", default=None)
_DATABASES: dict[int, Any] = {}  # process id -> its DuckDB database, for Layout.duckdb
TMP_MARK = ".tmp-"
HEARTBEAT_SECONDS, STALE_LOCK_SECONDS = 30.0, 300.0  # a build's lock is refreshed, and taken over once this old
BLOCK = 1 << 20
# A file of an object store read through, at a known size, is fetched whole in one GET up to this (s3fs's
# read-ahead would fetch blocks of 50 MB: the memory is no more than it holds).
WHOLE_OBJECT_BYTES = 16 << 20
KEPT_BYTES = 256 << 20  # the driver's objects kept for its queries after the shards (`KeptObjects`)
FOOTER_READ_BYTES = 64 << 10  # what Arrow reads first of a Parquet file, from its end


class TreeLocked(RuntimeError):
    """Another live build holds the output tree (the CLI exits 2)."""


class Written(dict[str, str]):
    """name -> checksum of the files a block wrote, and their sizes in `sizes` (so that nobody asks the store)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[str, int] = {}


@contextlib.contextmanager
def recording() -> Iterator[Written]:
    """Collect the names, checksums and sizes of every file written inside the block. A block inside another
    reports to both (a task that runs steps of its own, pipeline/dedup.py's one-task clustering)."""
    written = Written()
    token = _written.set(written)
    try:
        yield written
    finally:
        _written.reset(token)
        if (outer := _written.get()) is not None:
            outer.update(written)
            outer.sizes.update(written.sizes)


@contextlib.contextmanager
def known_sizes(sizes: dict[str, int]) -> Iterator[None]:
    """Inside the block, `Layout.open`, `Layout.size` and `Layout.arrow_filesystem` take these sizes (by path)
    as the files' own, without asking the store."""
    token = _known_sizes.set(sizes)
    try:
        yield
    finally:
        _known_sizes.reset(token)


def new_digest(algorithm: str) -> Any:
    if algorithm == "xxh64":
        return xxhash.xxh64()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise ValueError(f"unknown checksum algorithm {algorithm!r}")


def checksum_bytes(data: bytes, algorithm: str = "xxh64") -> str:
    digest = new_digest(algorithm)
    digest.update(data)
    return f"{algorithm}:{digest.hexdigest()}"


def checksum_stream(f: IO[bytes], algorithm: str = "xxh64") -> str:
    digest = new_digest(algorithm)
    for block in iter(lambda: f.read(BLOCK), b""):
        digest.update(block)
    return f"{algorithm}:{digest.hexdigest()}"


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a local file."""
    with open(path, "rb") as f:
        return checksum_stream(f, "sha256").split(":", 1)[1]


class Layout(Names):
    """An output tree rooted at a local folder or an fsspec URL, with the names of its files (manifests/names.py)."""

    def __init__(self, root: str | Path, **storage_options: Any) -> None:
        text = str(root)
        self.storage_options = storage_options
        self.fs, path = open_store(text, storage_options)  # every request counted (manifests/store.py)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.root = os.path.abspath(path) if self.is_local else path.rstrip("/")
        self.url = self.root if self.is_local else self.fs.unstrip_protocol(self.root)
        self._listing: set[str] | None = None  # every name of the tree, once `list_once` was called
        self._kept = KeptObjects()  # what `dataset` fetched

    def __reduce__(self) -> tuple:
        return _layout, (self.url, self.storage_options)

    def __repr__(self) -> str:
        return f"Layout({self.url!r})"

    # ---- locations ---------------------------------------------------------------------------------------------
    def path(self, name: str) -> str:
        """The filesystem path of a name (for `self.fs`)."""
        return posixpath.join(self.root, name) if name else self.root

    def url_of(self, name: str) -> str:
        """What other readers (DuckDB, pyarrow, a person) open: a local path or a full URL."""
        return posixpath.join(self.url, name) if name else self.url

    def relative(self, path: str) -> str:
        """A filesystem path (from `fs.glob`) back to its name."""
        stripped = self.fs._strip_protocol(path) if not self.is_local else path
        return posixpath.relpath(stripped, self.root)

    # ---- reading ------------------------------------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        if not self.is_local:
            self.fs.invalidate_cache(self.path(name))
        return self.fs.exists(self.path(name))

    def size(self, name: str) -> int:
        written = _written.get()
        if written is not None and name in written.sizes:
            return written.sizes[name]
        known = self._known_size(self.path(name))
        return known if known is not None else int(self.fs.size(self.path(name)) or 0)

    def open(self, name: str, mode: str = "rb") -> IO[bytes]:
        path = self.path(name)
        size = self._known_size(path) if mode == "rb" else None
        return self.fs.open(path, mode) if size is None else open_at_size(self.fs, path, size)

    def _known_size(self, path: str) -> int | None:
        """The size the running task was told a file has (`known_sizes`); a local file's is never needed."""
        return None if self.is_local else (_known_sizes.get() or {}).get(path)

    def arrow_filesystem(self, ranges: bool = False) -> pafs.FileSystem:
        """This store as a pyarrow file system (for Arrow datasets), opening the files of `known_sizes` at their
        known sizes: pyarrow's own fsspec handler asks an object store twice per file opened (`isfile`, then
        s3fs's `info`). `ranges`: the readers take a few row groups of each file, in the ranges Arrow asks for,
        without s3fs's read-ahead (which reads 50 MB blocks: a small file from the first range to its end)."""
        if self.is_local:  # Arrow's own: DuckDB scanning a dataset over a Python file system can deadlock (`dataset`)
            return pafs.LocalFileSystem()
        return pafs.PyFileSystem(SizedHandler(self.fs, dict(_known_sizes.get() or {}), ranges))

    def read_bytes(self, name: str) -> bytes:
        if self.is_local:
            return self.fs.cat_file(self.path(name))
        # One GET: s3fs would first ask the object's size (a HEAD) to split a large one into concurrent ranges.
        return self.fs.cat_file(self.path(name), max_concurrency=1)

    def read_many(self, names: list[str]) -> dict[str, bytes]:
        """Whole files, fetched together (concurrent GETs on an object store), by name in the order given."""
        if not names:
            return {}
        paths = [self.path(name) for name in names]
        found = self.fs.cat(paths) if self.is_local else self.fs.cat(paths, max_concurrency=1)
        return {name: found[path] for name, path in zip(names, paths, strict=True)}

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode("utf-8")

    def glob(self, pattern: str) -> list[str]:
        """Names matching a glob under the root, sorted; temporary files are never listed. Object stores are
        listed afresh: other processes (Ray workers) write there."""
        if self._listing is not None:
            return sorted(matching(self._listing.copy(), [pattern]))  # a copy: the lock's heartbeat thread writes
        if not self.is_local:
            self.fs.invalidate_cache()
        return self._names(self.fs.glob(self.path(pattern)))

    def files(self, folder: str) -> list[str]:
        """Names of every file under a folder, at any depth, sorted (temporary files left out)."""
        if self._listing is not None:
            return sorted(name for name in self._listing.copy() if name.startswith(f"{folder}/"))
        if not self.is_local:
            self.fs.invalidate_cache()
        if not self.fs.isdir(self.path(folder)):
            return []
        return self._names(self.fs.find(self.path(folder)))

    def list_once(self) -> None:
        """From now on only this process writes the tree (the build's Ray tasks are done): `glob` and `files` answer
        from one listing of the whole tree, kept current by this Layout's own writes and deletes (a Ray task gets
        a copy of the Layout without it)."""
        self._listing = set(self._names(self.fs.find(self.root))) if self.fs.isdir(self.root) else set()

    def _names(self, paths: list[str]) -> list[str]:
        """Filesystem paths as names, sorted, temporary files left out."""
        return sorted(name for name in map(self.relative, paths) if TMP_MARK not in posixpath.basename(name))

    def checksum(self, name: str, algorithm: str = "xxh64") -> str:
        with self.open(name) as f:
            return checksum_stream(f, algorithm)

    def verify(self, name: str, expected: str) -> str | None:
        """None when the file is there with the expected checksum, else what is wrong."""
        try:
            found = self.checksum(name, expected.split(":", 1)[0])
        except FileNotFoundError:
            return "missing"
        return None if found == expected else f"checksum {found} != {expected}"

    # ---- writing -------------------------------------------------------------------------------------------------
    def write_bytes(self, name: str, data: bytes, algorithm: str = "xxh64") -> str:
        """Write a whole file atomically; returns (and records) its checksum."""
        with self.writing(name, algorithm) as spool, open(spool.local, "wb") as f:
            f.write(data)
        return spool.checksum

    def write_text(self, name: str, text: str) -> str:
        return self.write_bytes(name, text.encode("utf-8"))

    @contextlib.contextmanager
    def writing(self, name: str, algorithm: str = "xxh64") -> Iterator["Spool"]:
        """A local file (`spool.local`) to write `name` through: it lands under its name (renamed, or uploaded in
        one piece) when the block ends without an error, and is removed otherwise; then `spool.checksum` is set."""
        target = self.path(name)
        if self.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            spool = Spool(temporary_name(target))
        else:  # a fresh folder, no file yet: some writers (DuckDB) refuse an existing empty one
            spool = Spool(os.path.join(tempfile.mkdtemp(prefix="mmcorpus-"), posixpath.basename(name)))
        try:
            yield spool
            with open(spool.local, "rb") as f:
                spool.checksum = checksum_stream(f, algorithm)
            size = os.path.getsize(spool.local)
            if self.is_local:
                os.replace(spool.local, target)
                COUNTS.add("put")
            else:
                self.fs.put_file(spool.local, target)  # a completed (multipart) upload, or nothing
            COUNTS.wrote(size)
            self._record(name, spool.checksum, size)
            if self._listing is not None:
                self._listing.add(name)
        finally:
            if self.is_local:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(spool.local)
            else:  # with whatever else the writer left beside the file (DuckDB's WAL)
                shutil.rmtree(os.path.dirname(spool.local), ignore_errors=True)

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(name))
        if self._listing is not None:
            self._listing.discard(name)

    def delete_tree(self, name: str) -> None:
        if self._listing is not None:
            self._listing -= {listed for listed in self._listing.copy() if listed.startswith(f"{name}/")}
        if self.is_local:
            COUNTS.add("delete")
            shutil.rmtree(self.path(name), ignore_errors=True)
        elif self.fs.exists(self.path(name)):
            self.fs.rm(self.path(name), recursive=True)

    def remove_temporaries(self) -> int:
        """Temporary files a killed run left (local trees only: object stores never see partial objects)."""
        if not self.is_local or not os.path.isdir(self.root):
            return 0
        removed = 0
        for folder, _, files in os.walk(self.root):
            for name in files:
                if name.startswith(".") and TMP_MARK in name:
                    os.unlink(os.path.join(folder, name))
                    removed += 1
        return removed

    @staticmethod
    def _record(name: str, checksum: str, size: int) -> None:
        written = _written.get()
        if written is not None:
            written[name] = checksum
            written.sizes[name] = size

    # ---- one build at a time ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, command: str) -> Iterator[None]:
        """Hold the tree for one build: `_lock.json` names the holder (host, process, command, since when) and a
        heartbeat it refreshes. A second build fails with TreeLocked naming the holder, before any work; a lock
        whose process is gone (same host) or whose heartbeat stopped (another host, a lost node) is stale and taken
        over. On an object store the lock is the first object written, so a missing bucket fails here."""
        token = uuid.uuid4().hex
        holder = dict(host=socket.gethostname(), pid=os.getpid(), command=command, token=token,
                      since=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
        try:
            self._take_lock(holder)
        except OSError as error:  # a missing bucket, no credentials: said before any work
            raise OSError(f"{self.url_of(self.LOCK)}: cannot write: {' '.join(str(error).split())}") from error
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(holder, stop), daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            with contextlib.suppress(OSError, ValueError):
                if json.loads(self.read_text(self.LOCK)).get("token") == token:
                    self.delete(self.LOCK)

    def _take_lock(self, holder: dict) -> None:
        record = json.dumps(holder | {"heartbeat": time.time()})
        for _ in range(2):
            if self.is_local:
                os.makedirs(self.root, exist_ok=True)
                try:  # created only if absent: two builds starting together cannot both win
                    with open(os.open(self.path(self.LOCK), os.O_CREAT | os.O_EXCL | os.O_WRONLY), "w") as f:
                        f.write(record)
                    return
                except FileExistsError:
                    pass
            elif not self.exists(self.LOCK):
                self.fs.pipe_file(self.path(self.LOCK), record.encode())
                COUNTS.wrote(len(record))
                if json.loads(self.read_text(self.LOCK))["token"] == holder["token"]:
                    return
            try:
                other = json.loads(self.read_text(self.LOCK))
            except (FileNotFoundError, ValueError):
                other = {}  # a lock half written by a killed build, or released meanwhile
            if other and not _stale(other):
                raise TreeLocked(
                    f"{self.url}: being built by process {other.get('pid')} on {other.get('host')} since "
                    f"{other.get('since')} ({other.get('command')}); wait for it, or delete "
                    f"{self.url_of(self.LOCK)} if that build is gone")
            self.delete(self.LOCK)
        raise TreeLocked(f"{self.url}: another build took the lock {self.url_of(self.LOCK)} at the same time")

    def _heartbeat(self, holder: dict, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError):
                self.write_text(self.LOCK, json.dumps(holder | {"heartbeat": time.time()}))

    # ---- SQL -----------------------------------------------------------------------------------------------------
    def duckdb(self, threads: int = 1) -> Any:
        """A DuckDB connection that reads this tree (through fsspec when it is not local), held to half the task's
        memory: beyond it, DuckDB spills sorts, joins and aggregates to a local temporary folder. On a local tree
        it is a cursor of this process's one database (starting DuckDB costs ~17 ms, a cursor ~0.2 ms: most SQL
        steps are shorter than that); its views and registered tables are its own and go when it closes."""
        import tempfile

        import duckdb

        temporary = os.path.join(tempfile.gettempdir(), f"mmcorpus-duckdb-{os.getpid()}")
        settings = {"threads": threads, "memory_limit": f"{TASK_MEMORY.get() // 2 // 2**20}MiB"}
        if not self.is_local:
            con = duckdb.connect(config={**settings, "temp_directory": temporary})
            con.register_filesystem(self.fs)
            return con
        database = _DATABASES.get(os.getpid())
        if database is None:  # a forked child has its parent's entry under another pid
            database = _DATABASES[os.getpid()] = duckdb.connect(config={"temp_directory": temporary})
        con = database.cursor()
        for name, value in settings.items():  # global settings: a process runs one task at a time
            con.execute(f"SET {name} = '{value}'")
        return con

    def dataset(self, names: list[str], schema: Any) -> Any:
        """Parquet files of the tree as one Arrow dataset over this store: a scan opens each file once and reads
        only the column chunks it asks for, several files at a time (DuckDB reading through fsspec lists and
        stats the files again for every query)."""
        import pyarrow.dataset as ds

        # A local tree through Arrow's own file system: DuckDB scans a registered dataset holding the GIL, and
        # Arrow's reading threads then wait for it when the file system is Python (a deadlock, seen in the suite).
        filesystem = pafs.LocalFileSystem() if self.is_local else pafs.PyFileSystem(
            KeptHandler(self.fs, self._kept, dict(_known_sizes.get() or {})))
        return ds.dataset([self.path(name) for name in names], schema=schema, format="parquet", filesystem=filesystem)

    def read_tables(self, names: list[str]) -> Any:
        """Small Parquet files read whole and together (`read_many`: one GET each, concurrent), as one Arrow table
        whose columns are the files' united by name (as DuckDB's `union_by_name`)."""
        import pyarrow.parquet as pq

        tables = [pq.read_table(pa.BufferReader(data)) for data in self.read_many(names).values()]
        return pa.concat_tables(tables, promote_options="default")


def matching(names: Iterable[str], globs: list[str]) -> list[str]:
    """The names any of the globs matches as a store's glob does (`*` within a folder, `**` across folders), in
    the order given."""
    patterns = [re.compile(glob_translate(pattern)) for pattern in globs]
    return [name for name in names if any(pattern.fullmatch(name) for pattern in patterns)]


def open_at_size(fs: Any, path: str, size: int, ranges: bool = False) -> IO[bytes]:
    """A file of an object store opened for reading at a size known beforehand, asking no HEAD: s3fs asks one for
    the size when the file opens, and another for the ETag it compares each range read against, unless given
    both. The tree's files are written once, whole, and never changed while a build reads them. A file read
    through is fetched in one GET up to WHOLE_OBJECT_BYTES (a Parquet reader would ask for its footer, then its
    body), a larger one in s3fs's read-ahead blocks; `ranges`: the reader takes a few ranges of it (row groups),
    each fetched as asked, unless the file is no larger than Arrow's first read of a Parquet footer, twice."""
    if size <= (FOOTER_READ_BYTES * 2 if ranges else WHOLE_OBJECT_BYTES):
        return io.BytesIO(fs.cat_file(path, max_concurrency=1))  # one GET, as `Layout.read_bytes`
    f = fs.open(path, "rb", size=size, cache_type="none" if ranges else "readahead")
    f.details = {"name": path, "size": size, "type": "file"}
    return f


class SizedHandler(pafs.FSSpecHandler):
    """pyarrow's fsspec handler, answering from `sizes` (path -> bytes) where it can instead of asking the store.
    Made in the task's own thread: Arrow and DuckDB call it from theirs, where `known_sizes` is not set."""

    def __init__(self, fs: Any, sizes: dict[str, int], ranges: bool) -> None:
        super().__init__(fs)
        self.sizes, self.ranges = sizes, ranges

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        if not all(path in self.sizes for path in paths):
            return super().get_file_info(paths)
        return [pafs.FileInfo(path, pafs.FileType.File, size=self.sizes[path]) for path in paths]

    def open_input_file(self, path: str) -> pa.PythonFile:
        if path not in self.sizes:
            return super().open_input_file(path)
        return pa.PythonFile(open_at_size(self.fs, path, self.sizes[path], self.ranges), mode="r")


class KeptObjects:
    """Whole objects the driver fetched for its queries after the shards (manifest, catalog, cards), which scan
    the same shards and pool files several times: each fetched once, in one GET, and kept up to KEPT_BYTES in all,
    the least recently read dropped first. Arrow's threads read it together."""

    def __init__(self) -> None:
        self.objects: OrderedDict[str, bytes] = OrderedDict()
        self.total = 0
        self.lock = threading.Lock()

    def read(self, fs: Any, path: str) -> bytes:
        with self.lock:
            if path in self.objects:
                self.objects.move_to_end(path)
                return self.objects[path]
        data = fs.cat_file(path, max_concurrency=1)
        with self.lock:
            if path not in self.objects:
                self.objects[path] = data
                self.total += len(data)
            while self.total > KEPT_BYTES:
                self.total -= len(self.objects.popitem(last=False)[1])
        return data


class KeptHandler(SizedHandler):
    """`SizedHandler` reading objects up to WHOLE_OBJECT_BYTES through `KeptObjects`, a larger one in the ranges
    Arrow asks for. Two thresholds on purpose: the driver scans the same objects again (the pool, the shards), so
    each one it can keep is fetched whole once (up to 16 MiB); a task reads an object once, so only one no larger
    than two footer reads is fetched whole (`open_at_size`, `ranges`), the rest by the row groups it wants."""

    def __init__(self, fs: Any, kept: KeptObjects, sizes: dict[str, int]) -> None:
        super().__init__(fs, sizes, ranges=True)
        self.kept = kept

    def open_input_file(self, path: str) -> pa.NativeFile:
        size = self.sizes[path] if path in self.sizes else int(self.fs.size(path))
        if size > WHOLE_OBJECT_BYTES:
            return pa.PythonFile(open_at_size(self.fs, path, size, ranges=True), mode="r")
        return pa.BufferReader(self.kept.read(self.fs, path))


def _stale(holder: dict) -> bool:
    """A lock whose build is gone: its process ended (same host), or its heartbeat stopped."""
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder.get("pid") or 0), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError):
            pass
    return time.time() - float(holder.get("heartbeat") or 0) > STALE_LOCK_SECONDS


@dataclass
class Spool:
    local: str
    checksum: str = ""


def _layout(url: str, storage_options: dict) -> Layout:
    return Layout(url, **storage_options)


def temporary_name(target: str) -> str:
    folder, name = os.path.split(target)
    return os.path.join(folder, f".{name}{TMP_MARK}{os.getpid()}")
