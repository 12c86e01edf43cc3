"""Bodies stream through the whole proxy with bounded memory, in both directions.

The worker's resident memory is sampled from /proc while hundreds of megabytes pass;
a proxy that buffered a body would grow by the body's size. A slow reader must make
the proxy stop reading from the server (flow control) instead of buffering.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from harness import (
    BackendProcess,
    ProxyProcess,
    Received,
    RssSampler,
    ScriptedServer,
    child_pids,
    connect,
    http_response,
    read_response,
    rss_bytes,
    simple_config,
    wait_for,
)

MiB = 1024 * 1024
BIG = 256 * MiB
RSS_GROWTH_LIMIT = 32 * MiB


@dataclass
class Proxied:
    proxy: ProxyProcess
    backend: BackendProcess
    worker: int

    @property
    def port(self) -> int:
        return self.proxy.port("plain")


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxied]:
    backend = BackendProcess("b1=127.0.0.1:0")
    try:
        proxy = ProxyProcess(
            simple_config(backend.port("b1")), tmp_path_factory.mktemp("streaming")
        )
    except BaseException:
        backend.stop()
        raise
    try:
        (worker,) = wait_for(lambda: child_pids(proxy.proc.pid), 5, "the worker")
        yield Proxied(proxy, backend, worker)
    finally:
        code = proxy.stop()
        backend.stop()
        assert code == 0


def _warm_up(p: Proxied) -> int:
    """Make one modest transfer so that allocator pools exist, then return the RSS."""
    status, _, body = _get(p.port, f"/big?bytes={4 * MiB}&cl=1")
    assert status == 200 and len(body) == 4 * MiB
    return rss_bytes(p.worker)


def _get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    with connect(port) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: s.test\r\n\r\n".encode())
        return read_response(sock)


def test_download_256_mib_with_bounded_memory(proxied: Proxied) -> None:
    base = _warm_up(proxied)

    async def download() -> tuple[int, str]:
        total = 0
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{proxied.port}/big?bytes={BIG}"
            async with session.get(url) as resp:
                assert resp.status == 200
                encoding = resp.headers.get("Transfer-Encoding", "")
                async for chunk in resp.content.iter_chunked(256 * 1024):
                    total += len(chunk)
        return total, encoding

    with RssSampler(proxied.worker) as rss:
        total, encoding = asyncio.run(download())
    assert total == BIG
    assert encoding.lower() == "chunked"
    assert rss.peak - base < RSS_GROWTH_LIMIT, (base, rss.peak)


def test_upload_256_mib_with_content_length(proxied: Proxied) -> None:
    base = _warm_up(proxied)
    piece = b"u" * MiB
    with RssSampler(proxied.worker) as rss, connect(proxied.port, timeout=30) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: s.test\r\nContent-Type: application/octet-stream"
            b"\r\nContent-Length: %d\r\n\r\n" % BIG
        )
        for _ in range(BIG // MiB):
            sock.sendall(piece)
        status, _, body = read_response(sock)
    assert status == 200
    assert f"body-bytes: {BIG}\n".encode() in body
    assert rss.peak - base < RSS_GROWTH_LIMIT, (base, rss.peak)


def test_chunked_upload_of_unknown_length_is_forwarded(proxied: Proxied) -> None:
    sizes = [1, 7, 65536, 1000, MiB, 3 * MiB + 5, 12345] * 4
    digest = hashlib.sha256()
    pieces = []
    for i, size in enumerate(sizes):
        data = bytes([i % 251]) * size
        digest.update(data)
        pieces.append(data)
    total = sum(sizes)

    async def body():  # type: ignore[no-untyped-def]
        for data in pieces:
            yield data

    async def upload() -> tuple[int, str, int, str]:
        echoed = hashlib.sha256()
        count = 0
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{proxied.port}/echo"
            async with session.post(url, data=body()) as resp:
                async for chunk in resp.content.iter_chunked(256 * 1024):
                    echoed.update(chunk)
                    count += len(chunk)
                return resp.status, resp.headers.get("X-Served-By", ""), count, echoed.hexdigest()

    status, served_by, count, echoed = asyncio.run(upload())
    assert (status, served_by) == (200, "b1")
    assert count == total
    assert echoed == digest.hexdigest()


def test_expect_100_continue_raw(proxied: Proxied) -> None:
    body = os.urandom(2 * MiB)
    with connect(proxied.port) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: s.test\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        # The client sends nothing more until the interim response arrives.
        status, _, rest = read_response(sock, head_only=True)
        assert status == 100
        assert rest == b""
        sock.sendall(body)
        status, _, answer = read_response(sock)
    assert status == 200
    assert f"body-bytes: {len(body)}\n".encode() in answer


def test_expect_100_continue_with_curl(proxied: Proxied, tmp_path: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(3 * MiB))
    started = time.monotonic()
    result = subprocess.run(
        [
            curl,
            "-sS",
            "-v",
            "--fail",
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "20",
            "--data-binary",
            f"@{payload}",
            f"http://127.0.0.1:{proxied.port}/upload",
        ],
        capture_output=True,
        timeout=30,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert b"< HTTP/1.1 100 Continue" in result.stderr
    assert f"body-bytes: {3 * MiB}\n".encode() in result.stdout
    # Had the 100 not come through, curl would have waited the whole expect timeout.
    assert elapsed < 15


class CountingServer:
    """Answers one request with `size` bytes (Content-Length), counting what it managed to send."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.sent = 0
        self.done = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        with conn:
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.size)
            piece = b"s" * 65536
            try:
                while self.sent < self.size:
                    conn.sendall(piece)
                    self.sent += len(piece)
            except OSError:
                return
            finally:
                self.done.set()

    def close(self) -> None:
        self._listener.close()
        self._thread.join(10)


def _steady(read: Callable[[], object], quiet: float = 0.5) -> Callable[[], bool]:
    """A condition for wait_for: true once `read()` has not changed for `quiet` seconds."""
    last, since = read(), time.monotonic()

    def check() -> bool:
        nonlocal last, since
        value = read()
        now = time.monotonic()
        if value != last:
            last, since = value, now
            return False
        return now - since >= quiet

    return check


def test_slow_reader_makes_the_proxy_stop_reading_from_the_server(tmp_path: Path) -> None:
    server = CountingServer(BIG)
    proxy = ProxyProcess(simple_config(server.port), tmp_path)
    try:
        (worker,) = wait_for(lambda: child_pids(proxy.proc.pid), 5, "the worker")
        base = rss_bytes(worker)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", proxy.port("plain")))
        with sock:
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: s.test\r\n\r\n")
            first = b""
            while b"\r\n\r\n" not in first or len(first) < 64 * 1024:
                first += sock.recv(65536)
            head, _, start = first.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            received = len(start)
            # The client now pauses. The server soon cannot send any more: the proxy has
            # stopped reading from it, holding only its buffers.
            wait_for(_steady(lambda: server.sent), 20, "the server to be blocked")
            held = server.sent - received
            assert held < 48 * MiB, held
            assert not server.done.is_set()
            assert rss_bytes(worker) - base < RSS_GROWTH_LIMIT
            # Reading again resumes the flow; every byte arrives.
            buf = bytearray(MiB)
            while received < BIG:
                n = sock.recv_into(buf)
                assert n, "connection closed early"
                received += n
            assert received == BIG
        wait_for(server.done.is_set, 10, "the server to finish")
        assert server.sent == BIG
    finally:
        assert proxy.stop() == 0
        server.close()


def _sized(req: Received, sock: socket.socket) -> bytes:
    """`GET /...?n=SIZE` gets SIZE bytes (Content-Length) in one send."""
    size = int(req.request_line.split(b" ")[1].rpartition(b"n=")[2])
    return http_response(200, b"z" * size)


def _queued_towards_proxy(server_port: int) -> tuple[int, int]:
    """Bytes the server's connections still hold (its send queues, the proxy's receive queues).

    Both are zero once the proxy has read all the server sent (from /proc/net/tcp).
    """
    unsent = unread = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        remote_port = int(fields[2].rsplit(":", 1)[1], 16)
        tx, rx = (int(v, 16) for v in fields[4].split(":"))
        if local_port == server_port:
            unsent += tx
        elif remote_port == server_port:
            unread += rx
    return unsent, unread


def test_a_server_connection_paused_for_a_slow_client_reads_again_when_kept(
    tmp_path: Path,
) -> None:
    # A client that reads nothing fills the proxy's buffers towards it until the proxy
    # stops reading the server. For responses of about the size that fills them, the read
    # that pushes the proxy's write buffer over its high mark is also the one that ends the
    # response: the server connection is then kept for reuse while paused. It must read
    # again, or the next request sent on it (here from another client) is never answered.
    # Where that size lies depends on the kernel's buffers: it is searched for.
    server = ScriptedServer(responder=_sized).start()
    proxy = ProxyProcess(simple_config(server.port), tmp_path)
    port = proxy.port("plain")

    def probe(size: int) -> bool:
        """Whether the proxy read all of a `size`-byte response for a client not reading."""
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.settimeout(10)
        slow.connect(("127.0.0.1", port))
        with slow:
            slow.sendall(b"GET /big?n=%d HTTP/1.1\r\nHost: s.test\r\n\r\n" % size)
            queued = _steady(lambda: _queued_towards_proxy(server.port), quiet=0.2)
            wait_for(queued, 10, "the proxy to stop reading")
            read_all = _queued_towards_proxy(server.port) == (0, 0)
            if read_all:
                # The kept server connection is the one this request gets.
                with connect(port, timeout=5) as other:
                    other.sendall(b"GET /small?n=10 HTTP/1.1\r\nHost: s.test\r\n\r\n")
                    status, _, body = read_response(other)
                    assert status == 200 and body == b"z" * 10, size
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MiB)  # drain it quickly
            status, _, body = read_response(slow)
            assert status == 200 and len(body) == size
        return read_all

    try:
        low, high = 64 * 1024, 16 * MiB
        assert probe(low) and not probe(high)
        while high - low > 16 * 1024:  # bounded: ten rounds
            middle = (low + high) // 2
            if probe(middle):
                low = middle
            else:
                high = middle
        read_all = [probe(size) for size in range(low - 64 * 1024, high + 64 * 1024, 4096)]
        assert any(read_all) and not all(read_all)
    finally:
        assert proxy.stop() == 0
        server.stop()


class PausingSink:
    """Reads a request head and 64 KiB of its body, then stops reading until released."""

    def __init__(self) -> None:
        self.received = 0
        self.release = threading.Event()
        self.status_sent = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        with conn:
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, _, body = buf.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n")[0])
            self.received = len(body)
            while self.received < 64 * 1024:
                self.received += len(conn.recv(65536))
            self.release.wait(30)
            chunk = bytearray(MiB)
            while self.received < length:
                n = conn.recv_into(chunk)
                if not n:
                    return
                self.received += n
            answer = b"got %d" % self.received
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
            self.status_sent.set()

    def close(self) -> None:
        self.release.set()
        self._listener.close()
        self._thread.join(10)


def test_slow_server_makes_the_proxy_stop_reading_the_upload(tmp_path: Path) -> None:
    sink = PausingSink()
    proxy = ProxyProcess(simple_config(sink.port), tmp_path)
    sent = [0]
    try:
        (worker,) = wait_for(lambda: child_pids(proxy.proc.pid), 5, "the worker")
        base = rss_bytes(worker)
        with connect(proxy.port("plain"), timeout=30) as sock:
            sock.sendall(b"PUT /up HTTP/1.1\r\nHost: s.test\r\nContent-Length: %d\r\n\r\n" % BIG)
            piece = b"p" * 65536

            def send_all() -> None:
                try:
                    while sent[0] < BIG:
                        sock.sendall(piece)
                        sent[0] += len(piece)
                except OSError:
                    return

            sender = threading.Thread(target=send_all, daemon=True)
            sender.start()
            # The server reads nothing more: the proxy must stop reading from the client.
            wait_for(_steady(lambda: sent[0]), 20, "the client to be blocked")
            assert sent[0] < BIG
            assert sent[0] - sink.received < 48 * MiB, (sent[0], sink.received)
            assert rss_bytes(worker) - base < RSS_GROWTH_LIMIT
            sink.release.set()
            sender.join(30)
            assert sent[0] == BIG
            status, _, body = read_response(sock)
        assert (status, body) == (200, b"got %d" % BIG)
    finally:
        assert proxy.stop() == 0
        sink.close()
