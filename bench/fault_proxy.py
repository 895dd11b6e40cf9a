"""A fault-injecting HTTP proxy on loopback, in front of an S3-protocol server (moto's): it forwards every request
and answers a given share of them, drawn from a seeded generator, with `503 SlowDown` (S3's throttling answer)
or by dropping the connection without an answer. The bench times a build through it (bench/store.py) and the
tests check that a build through it gives the same shards, or fails in bounded time (tests/reliability/
test_store_faults.py). It also counts what passed through: every HTTP attempt a build made.

Also moto's server itself, started and stopped by process group (`moto_server`)."""

import contextlib
import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b'<Message>Please reduce your request rate.</Message></Error>')
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


class FaultProxy(ThreadingHTTPServer):
    """Forwards to `upstream_port` on 127.0.0.1; a share `fault_rate` of requests fails, half of them with 503
    SlowDown, half by a dropped connection. `requests` and `faults` count what came through; `listings` holds every
    listing asked for, as `bucket/prefix` and whether it lists one level (a delimiter) or everything below."""

    daemon_threads = True

    def __init__(self, upstream_port: int, fault_rate: float, seed: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream_port = upstream_port
        self.fault_rate = fault_rate
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.requests = self.faults = 0
        self.listings: list[tuple[str, bool]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def draw(self, method: str, path: str) -> str | None:
        """None (forward), "503" or "drop": the generator's next draw, in the order requests arrive."""
        url = urllib.parse.urlsplit(path)
        query = urllib.parse.parse_qs(url.query)
        with self._lock:
            self.requests += 1
            if method == "GET" and "list-type" in query and "continuation-token" not in query:  # not a next page
                prefix = url.path.strip("/") + "/" + query.get("prefix", [""])[0]
                self.listings.append((prefix, "delimiter" in query))
            if self._random.random() >= self.fault_rate:
                return None
            self.faults += 1
            return "503" if self._random.random() < 0.5 else "drop"


class _Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects
    server: FaultProxy

    def log_message(self, *args: object) -> None:  # quiet: a build makes thousands of requests
        pass

    def _handle(self) -> None:
        body = self._body()
        fault = self.server.draw(self.command, self.path)
        if fault == "drop":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "503":
            self._answer(503, [("Content-Type", "application/xml")], SLOW_DOWN)
            return
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=60)
        try:
            headers = {key: value for key, value in self.headers.items() if key.lower() not in HOP_HEADERS}
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            self._answer(response.status, [(k, v) for k, v in response.getheaders()
                                           if k.lower() not in HOP_HEADERS | {"content-length"}], data,
                         response.getheader("Content-Length", "0"))
        finally:
            upstream.close()

    def _body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes, head_length: str = "0") -> None:
        """The answer; to a HEAD, without the body but with the length the object has (`head_length`)."""
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", head_length if self.command == "HEAD" else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle


@contextlib.contextmanager
def fault_proxy(upstream_port: int, fault_rate: float, seed: int = 0) -> Iterator[FaultProxy]:
    """The proxy serving in a thread of this process while the block runs."""
    proxy = FaultProxy(upstream_port, fault_rate, seed)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def moto_server(bucket: str = "corpus") -> Iterator[tuple[int, dict]]:
    """moto's S3 server on 127.0.0.1 with one bucket, stopped by its process group when the block ends: (its port,
    an environment whose credentials and endpoint reach it)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto's server did not start on port {port}") from None
                time.sleep(0.3)
        from s3fs import S3FileSystem

        S3FileSystem(key="testing", secret="testing", endpoint_url=env["AWS_ENDPOINT_URL"],
                     skip_instance_cache=True).mkdir(bucket)
        yield port, env
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
