"""What the output tree asks of its store: every request counted by kind, and the retry policy for S3 set here,
not left to library defaults.

Counting. `COUNTS` is this process's tally of requests to the output tree's store, by kind (`REQUEST_KINDS`),
plus `attempts` (HTTP attempts, retries included: S3 only), `objects_written`, `bytes_written` (what `Layout`
wrote) and `bytes_read` (GET bodies: S3 only). On S3 a request is one API call, counted by botocore's events,
so a paginated listing counts a request per page of 1,000 keys; on a local tree it is one call of the file
system (a `ls` of one folder, a `stat`, an `open`, a rename). A Ray worker runs one task at a time, so the
runner takes a task's share as the difference of two snapshots (pipeline/runner.py).

Retries (S3). Two layers, both pinned here:
- botocore's `standard` mode retries one request up to `S3_ATTEMPTS` attempts in all, with exponential backoff
  and full jitter (a random share of 2^attempt seconds, capped at 20 s): HTTP 500, 502, 503 and 504,
  throttling codes (`SlowDown`, `Throttling`, `RequestLimitExceeded`, ...), `RequestTimeout`, and connection
  errors (refused, reset or dropped connections, connect and read timeouts: `S3_CONNECT_TIMEOUT_S`,
  `S3_READ_TIMEOUT_S`).
- s3fs then tries the whole call again, `S3FS_RETRIES` times in all: for what botocore cannot see, a body cut
  off while it is read (`IncompleteRead`, a payload error) and a throttling answer whose XML does not parse,
  plus `SlowDown` and connection errors that outlasted botocore's attempts.
So a request is given up after `S3_ATTEMPTS * S3FS_RETRIES` attempts: with 5% of requests failing, one in
0.05^10 ~ 1e-13 fails the build; with every request failing, a call fails within ~2 x 15 s of backoff.

Like manifests/names.py this module imports nothing else of the project.
"""

import contextlib
import functools
import os
import threading
from collections import Counter
from typing import Any

from fsspec.implementations.local import LocalFileSystem

REQUEST_KINDS = ("list", "head", "get", "put", "delete", "other")
# botocore's standard retry mode (its legacy mode retries fewer errors, with a fixed backoff curve); 5 attempts
# ride out a throttling burst of ~15 s on one prefix (AWS's own SDKs default to 3).
S3_RETRY_MODE = "standard"
S3_ATTEMPTS = 5
# Seconds to open a connection, and to wait for the next bytes of an answer: an object store answers within
# milliseconds when healthy; a stalled connection is dropped and retried rather than waited on.
S3_CONNECT_TIMEOUT_S = 10
S3_READ_TIMEOUT_S = 30
S3FS_RETRIES = 2  # s3fs's own tries of a call (its default, 5, multiplies botocore's attempts by 5)

# S3 API calls (botocore operation names) by request kind; any other is "other".
S3_OPERATIONS = {
    "ListObjectsV2": "list", "ListObjects": "list", "ListObjectVersions": "list",
    "HeadObject": "head", "HeadBucket": "head", "GetObjectAttributes": "head",
    "GetObject": "get",
    "PutObject": "put", "CreateMultipartUpload": "put", "UploadPart": "put", "CompleteMultipartUpload": "put",
    "CopyObject": "put", "UploadPartCopy": "put",
    "DeleteObject": "delete", "DeleteObjects": "delete", "AbortMultipartUpload": "delete",
}


class StoreCounts:
    """A process's requests to the store, safe across threads (s3fs calls from its own event loop thread)."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self._counts[kind] += n

    def wrote(self, size: int) -> None:
        with self._lock:
            self._counts["objects_written"] += 1
            self._counts["bytes_written"] += size

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self._counts)


COUNTS = StoreCounts()


def requests(counts: dict[str, int]) -> int:
    return sum(counts.get(kind, 0) for kind in REQUEST_KINDS)


def describe(counts: dict[str, int]) -> str:
    """`7,125 requests (list 812, head 1,020, ...), 1,204 objects written, 3.1 MB read, 5.2 MB written`."""
    kinds = ", ".join(f"{kind} {counts[kind]:,}" for kind in REQUEST_KINDS if counts.get(kind))
    retried = counts.get("attempts", 0) - requests(counts)
    return (f"{requests(counts):,} requests ({kinds or 'none'})" + (f", {retried:,} retried" if retried > 0 else "")
            + f", {counts.get('objects_written', 0):,} objects written, {counts.get('bytes_read', 0) / 1e6:.1f} MB"
              f" read, {counts.get('bytes_written', 0) / 1e6:.1f} MB written")


def open_store(url: str, storage_options: dict[str, Any]) -> tuple[Any, str]:
    """The counting file system of an output tree and the root's path in it: the local one, S3 with the retry
    policy above (where the options do not set their own), or any other fsspec protocol (counted only by what
    `Layout` writes)."""
    import fsspec

    protocol, _ = fsspec.core.split_protocol(url)
    if protocol in (None, "file", "local"):
        _, path = fsspec.core.url_to_fs(url)
        return CountingLocalFileSystem(), path
    if protocol in ("s3", "s3a"):
        counting_s3 = counting_s3_class()  # made once, not after an s3fs instance for the URL as `url_to_fs` would
        options = counting_s3._get_kwargs_from_urls(url) | with_endpoint(with_retry_policy(storage_options))
        return counting_s3(**options), counting_s3._strip_protocol(url)
    return fsspec.core.url_to_fs(url, **storage_options)


def with_endpoint(storage_options: dict[str, Any]) -> dict[str, Any]:
    """The options with the endpoint botocore would take from the environment, made explicit: fsspec caches a file
    system by its options, so without it a process that meets another AWS_ENDPOINT_URL (a test's new server)
    would get the cached client of the old endpoint."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint or "endpoint_url" in storage_options or "endpoint_url" in storage_options.get("client_kwargs", {}):
        return storage_options
    return storage_options | {"endpoint_url": endpoint}


def with_retry_policy(storage_options: dict[str, Any]) -> dict[str, Any]:
    """S3 storage options with this module's retries and timeouts, unless the options set their own."""
    config = dict(storage_options.get("config_kwargs") or {})
    config.setdefault("retries", {"mode": S3_RETRY_MODE, "total_max_attempts": S3_ATTEMPTS})
    config.setdefault("connect_timeout", S3_CONNECT_TIMEOUT_S)
    config.setdefault("read_timeout", S3_READ_TIMEOUT_S)
    return storage_options | {"config_kwargs": config}


class CountingLocalFileSystem(LocalFileSystem):
    """The local file system, counting its calls as the requests an object store would get."""

    _listing = threading.local()  # inside `ls`: its stats of the folder and its entries are the listing's

    def ls(self, path: str, detail: bool = False, **kwargs: Any) -> list:
        COUNTS.add("list")
        self._listing.active = True
        try:
            return super().ls(path, detail=detail, **kwargs)
        finally:
            self._listing.active = False

    def info(self, path: str, **kwargs: Any) -> dict:
        if not getattr(self._listing, "active", False):
            COUNTS.add("head")
        return super().info(path, **kwargs)

    def _open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        COUNTS.add("get" if "r" in mode else "put")
        return super()._open(path, mode, *args, **kwargs)

    def rm_file(self, path: str) -> None:
        COUNTS.add("delete")
        super().rm_file(path)

    def mv(self, path1: str, path2: str, recursive: bool = False, maxdepth: int | None = None, **kwargs: Any) -> None:
        COUNTS.add("other")
        super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)


@functools.cache
def counting_s3_class() -> type:
    """s3fs's file system, counting each API call and HTTP attempt through botocore's events, with
    `S3FS_RETRIES`. Made on first use: importing s3fs takes ~0.3 s that a local build need not pay."""
    from s3fs import S3FileSystem

    class CountingS3FileSystem(S3FileSystem):
        retries = S3FS_RETRIES

        async def set_session(self, *args: Any, **kwargs: Any) -> Any:
            client = await super().set_session(*args, **kwargs)
            if getattr(client, "_mmcorpus_counted", False) is False:  # a new client (a refresh makes one)
                client.meta.events.register("before-call.s3", _count_call)
                client.meta.events.register("before-send.s3", _count_attempt)
                client.meta.events.register("after-call.s3.GetObject", _count_read)
                client._mmcorpus_counted = True
            return client

        def __reduce__(self) -> tuple:
            return _counting_s3, (self.storage_options,)

    return CountingS3FileSystem


def _counting_s3(storage_options: dict) -> Any:
    return counting_s3_class()(**storage_options)


def _count_call(model: Any, **_: Any) -> None:
    COUNTS.add(S3_OPERATIONS.get(model.name, "other"))


def _count_attempt(**_: Any) -> None:
    COUNTS.add("attempts")


def _count_read(parsed: dict, **_: Any) -> None:
    with contextlib.suppress(TypeError, ValueError):
        COUNTS.add("bytes_read", int(parsed.get("ContentLength") or 0))
