"""Clients that send without reading, and servers that do not read: memory and time stay bounded.

A client that pipelines requests but never reads the answers is stopped from sending (the
proxy stops reading it), whether the answers come from a server or from the proxy itself.
A connection being closed does not wait for ever for a client that never reads. A client
that does not read its responses does not get a healthy server marked down, and a server
that does not read a request body is a server problem (504), not a client one (408).
Empty lines before a request do not keep a connection open past its deadlines.

Each test starts its own proxy (one worker) with short timeouts.
"""

from __future__ import annotations

import re
import select
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import (
    ProxyProcess,
    ResponseReader,
    child_pids,
    connect,
    read_until_closed,
    rss_bytes,
    simple_config,
    wait_for,
)

MIB = 1024 * 1024
FLOOD_LIMIT = 32 * MIB  # what a flood may send at most
FLOOD_BOUND = 16 * MIB  # loopback socket buffers and the proxy's own bounded buffers
STALL = 2.0  # a send that takes nothing for this long: the proxy stopped reading
TCP_ESTABLISHED = 1
IDLE = 1.0  # the timeouts that matter in each test
REQUEST = b"GET /p HTTP/1.1\r\nHost: example.test\r\n\r\n"


class Backend:
    """A keep-alive HTTP/1.1 server in threads.

    `/sized?n=N` answers N bytes, `/hold` reads the request head and then nothing more
    (until `stop`), `/upgrade` switches to an echo tunnel, anything else answers "ok".
    """

    def __init__(self) -> None:
        self.release = threading.Event()
        self.heads: list[bytes] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(20)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                self.heads.append(head)
                target = head.split(b" ", 2)[1]
                if target.startswith(b"/hold"):
                    self.release.wait(20)
                    return
                if target.startswith(b"/upgrade"):
                    sock.sendall(
                        b"HTTP/1.1 101 Switching Protocols\r\n"
                        b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n" + buf
                    )
                    while data := sock.recv(65536):
                        sock.sendall(data)
                    return
                m = re.search(rb"\r\ncontent-length:[ \t]*([0-9]+)", head.lower())
                need = int(m.group(1)) if m else 0
                while len(buf) < need:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                buf = buf[need:]
                m = re.search(rb"[?&]n=([0-9]+)", target)
                body = b"y" * int(m.group(1)) if m else b"ok"
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        except OSError:
            return
        finally:
            sock.close()


@pytest.fixture
def backend() -> Iterator[Backend]:
    server = Backend()
    try:
        yield server
    finally:
        server.stop()


def _timeouts(**values: float) -> str:
    return "  [services.main.timeouts]\n" + "".join(f"  {k} = {v}\n" for k, v in values.items())


def _small_window(port: int) -> socket.socket:
    """A client connection with a tiny receive buffer: what it does not read stays put."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def _reset_close(sock: socket.socket) -> None:
    """Close with a reset, so that the proxy is rid of the connection at once."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _push_until_blocked(sock: socket.socket, data: bytes, limit: int = FLOOD_LIMIT) -> int:
    """Send `data` again and again until nothing is taken for STALL seconds, the peer ends
    the connection, `limit` bytes went or 30 s passed: the number of bytes taken."""
    sock.settimeout(STALL)
    view = memoryview(data)
    sent = offset = 0
    deadline = time.monotonic() + 30
    while sent < limit and time.monotonic() < deadline:
        try:
            n = sock.send(view[offset:])
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            break
        sent += n
        offset = (offset + n) % len(data)
    return sent


def _proxy_side_state(proxy_port: int, client: socket.socket) -> int | None:
    """TCP state of the proxy's socket for `client` (1 = established), None once it is gone."""
    client_port = client.getsockname()[1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if (
            int(local.rsplit(":", 1)[1], 16) == proxy_port
            and int(remote.rsplit(":", 1)[1], 16) == client_port
        ):
            return int(fields[3], 16)
    return None


def _appears(condition: Callable[[], object], seconds: float) -> bool:
    """True if `condition` becomes true within `seconds` (polled)."""
    try:
        wait_for(condition, seconds, "the condition")
    except AssertionError:
        return False
    return True


def _status(port: int, host: str = "example.test", target: str = "/ok") -> int:
    with connect(port, timeout=5) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        return ResponseReader(sock, 5).next().status


# ---------------------------------------------------------------------- 1. pipelining


def test_pipelining_client_that_does_not_read_is_stopped(backend: Backend, tmp_path: Path) -> None:
    proxy = ProxyProcess(simple_config(backend.port, workers=1), tmp_path)
    try:
        sock = _small_window(proxy.port("plain"))
        try:
            # Answers of 16 kB fill the way back to the client after a few hundred.
            request = b"GET /sized?n=16384 HTTP/1.1\r\nHost: example.test\r\n\r\n"
            sent = _push_until_blocked(sock, request * 2000)
        finally:
            _reset_close(sock)
        # Unbounded buffering takes the whole FLOOD_LIMIT.
        assert sent < FLOOD_BOUND, f"the proxy took {sent} bytes of requests it did not answer"
    finally:
        assert proxy.stop() == 0


def test_pipelining_client_that_reads_keeps_the_worker_small(
    backend: Backend, tmp_path: Path
) -> None:
    proxy = ProxyProcess(simple_config(backend.port, workers=1), tmp_path)
    try:
        (worker,) = wait_for(lambda: child_pids(proxy.proc.pid), 10, "the worker")
        before = peak = rss_bytes(worker)
        sock = connect(proxy.port("plain"), timeout=5)
        received = [0]

        def read() -> None:
            try:
                while data := sock.recv(1 << 20):
                    received[0] += len(data)
            except OSError:
                pass

        reader = threading.Thread(target=read)
        reader.start()
        try:
            batch = REQUEST * 2000
            sent = 0
            deadline = time.monotonic() + 2.5
            while sent < 100_000_000 and time.monotonic() < deadline:
                try:
                    sock.sendall(batch)
                except OSError:
                    break
                sent += len(batch)
                peak = max(peak, rss_bytes(worker))
        finally:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            reader.join(10)
            _reset_close(sock)
        assert received[0] > 0
        assert peak - before < 64 * MIB, f"worker RSS {before} -> {peak} for {sent} bytes sent"
    finally:
        assert proxy.stop() == 0


# ---------------------------------------------------------------------- 2. own answers

OWN_ANSWERS = """
[services.redirect]
hosts = ["redirect.test"]
pool = "p"
redirect_https = true

[services.answer]
hosts = ["answer.test"]
pool = "p"

  [[services.answer.rules]]
  match = { path = "/" }
  respond = { status = 200, body = "answered by the proxy\\n" }
"""


@pytest.mark.parametrize("host", ["redirect.test", "answer.test"])
def test_client_not_reading_the_proxys_own_answers_is_stopped(
    backend: Backend, tmp_path: Path, host: str
) -> None:
    proxy = ProxyProcess(simple_config(backend.port, workers=1) + OWN_ANSWERS, tmp_path)
    try:
        sock = _small_window(proxy.port("plain"))
        try:
            request = b"GET /x HTTP/1.1\r\nHost: %s\r\n\r\n" % host.encode()
            sent = _push_until_blocked(sock, request * 2000)
        finally:
            _reset_close(sock)
        assert sent < FLOOD_BOUND, f"the proxy took {sent} bytes of requests it did not answer"
        assert not backend.heads  # answered by the proxy alone
    finally:
        assert proxy.stop() == 0


# ---------------------------------------------------------------------- 3. closing

BIG = 3_000_000


@pytest.mark.parametrize("how", ["connection-close", "keepalive-idle", "tunnel-idle"])
def test_closing_connection_to_a_client_that_never_reads_is_cut(
    backend: Backend, tmp_path: Path, how: str
) -> None:
    timeouts = _timeouts(server_body_idle=IDLE, keepalive_idle=IDLE, tunnel_idle=IDLE)
    proxy = ProxyProcess(simple_config(backend.port, workers=1, service_extra=timeouts), tmp_path)
    try:
        port = proxy.port("plain")
        sock = _small_window(port)
        try:
            if how == "tunnel-idle":
                sock.sendall(
                    b"GET /upgrade HTTP/1.1\r\nHost: example.test\r\n"
                    b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                )
                assert _proxy_side_state(port, sock) == TCP_ESTABLISHED
                # Echoed back and never read, until everything on the way is full.
                _push_until_blocked(sock, b"e" * 65536)
            else:
                close = b"Connection: close\r\n" if how == "connection-close" else b""
                sock.sendall(
                    b"GET /sized?n=%d HTTP/1.1\r\nHost: example.test\r\n%s\r\n" % (BIG, close)
                )
                assert _proxy_side_state(port, sock) == TCP_ESTABLISHED
            # Ended (the connection is gone, or only the kernel still holds its last
            # bytes) once the client took nothing for server_body_idle.
            cut = _appears(lambda: _proxy_side_state(port, sock) != TCP_ESTABLISHED, 3 * IDLE + 3)
            data, end = read_until_closed(sock, 2.0)
        finally:
            _reset_close(sock)
        assert cut, "the proxy still holds the connection to a client that never reads"
        assert end in ("eof", "reset")
        if how != "tunnel-idle":
            assert len(data) < BIG, "the whole response arrived: the connection was not cut"
    finally:
        assert proxy.stop() == 0


# ---------------------------------------------------------------------- 4. server health

HEALTH = """
  [pools.p.health]
  type = "tcp"
  interval = 60
  timeout = 2
  passive_failures = 3
"""


def test_client_not_reading_does_not_get_a_healthy_server_marked_down(
    backend: Backend, tmp_path: Path
) -> None:
    timeouts = _timeouts(server_response_header=IDLE, server_body_idle=IDLE)
    config = simple_config(backend.port, workers=1, service_extra=timeouts, pool_extra=HEALTH)
    proxy = ProxyProcess(config, tmp_path)
    try:
        port = proxy.port("plain")
        wait_for(lambda: _status(port) == 200, 10, "the server to be up")
        socks = []
        try:
            for _ in range(3):
                sock = _small_window(port)
                socks.append(sock)
                sock.sendall(b"GET /sized?n=100000 HTTP/1.1\r\nHost: example.test\r\n\r\n" * 60)

            def blamed() -> bool:
                log = proxy.log()
                return "is down" in log or "no response in time" in log

            # Long enough for three server timeouts and the control process to hear of them.
            blamed_server = _appears(blamed, 2 * IDLE + 1)
        finally:
            for sock in socks:
                _reset_close(sock)
        log = proxy.log()
        assert not blamed_server, [
            line for line in log.splitlines() if "is down" in line or "in time" in line
        ]
        assert _status(port) == 200
        assert "is down" not in proxy.log()
    finally:
        assert proxy.stop() == 0


# ---------------------------------------------------------------------- 5. server not reading


def test_server_not_reading_the_request_body_is_504(backend: Backend, tmp_path: Path) -> None:
    timeouts = _timeouts(client_body_idle=IDLE, server_response_header=IDLE)
    proxy = ProxyProcess(simple_config(backend.port, workers=1, service_extra=timeouts), tmp_path)
    try:
        with connect(proxy.port("plain")) as sock:
            sock.sendall(
                b"POST /hold HTTP/1.1\r\nHost: example.test\r\nContent-Length: %d\r\n\r\n"
                % (1 << 30)
            )

            def upload() -> None:
                try:
                    for _ in range(FLOOD_LIMIT // 65536):
                        sock.sendall(b"u" * 65536)
                except OSError:
                    pass

            sender = threading.Thread(target=upload)
            sender.start()
            data, end = read_until_closed(sock, IDLE + 5)
            sender.join(10)
        assert data.startswith(b"HTTP/1.1 504 "), data[:100]
        assert end in ("eof", "reset")
        assert "request body idle timeout" not in proxy.log()
    finally:
        assert proxy.stop() == 0


# ---------------------------------------------------------------------- 6. empty lines


@pytest.mark.parametrize("when", ["before-the-first-request", "between-requests"])
def test_empty_lines_do_not_keep_a_connection_open(
    backend: Backend, tmp_path: Path, when: str
) -> None:
    timeouts = _timeouts(client_header=IDLE, keepalive_idle=IDLE)
    proxy = ProxyProcess(simple_config(backend.port, workers=1, service_extra=timeouts), tmp_path)
    try:
        with connect(proxy.port("plain")) as sock:
            if when == "between-requests":
                sock.sendall(b"GET /ok HTTP/1.1\r\nHost: example.test\r\n\r\n")
                assert ResponseReader(sock).next().status == 200
            start = time.monotonic()
            ended_after = None
            # An empty line every 0.3 s for up to 4.5 s, until the proxy answers or closes.
            for _ in range(15):
                readable, _, _ = select.select([sock], [], [], 0.3)
                if readable:
                    ended_after = time.monotonic() - start
                    break
                try:
                    sock.sendall(b"\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    ended_after = time.monotonic() - start
                    break
            data, end = read_until_closed(sock, 2.0)
        assert ended_after is not None, "empty lines kept the connection open"
        assert ended_after < IDLE + 1.5, ended_after
        assert end in ("eof", "reset")
        assert data == b"" or data.startswith(b"HTTP/1.1 408 "), data[:100]
    finally:
        assert proxy.stop() == 0
