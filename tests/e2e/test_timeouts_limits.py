"""Limits (414, 431, 413) and client timeouts (408, keep-alive idle, slow uploads).

The head has a total deadline (client_header = 0.5 s here), so a client trickling header
bytes is cut at that deadline; a body only has an idle limit, so a slow but steady upload
that lasts longer than both limits together still succeeds.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from harness import (
    ProxyProcess,
    ResponseReader,
    TrackingServer,
    connect,
    read_until_closed,
    wait_for,
)

HEADER_DEADLINE = 0.5
KEEPALIVE_IDLE = 0.5
BODY_IDLE = 1.0


@dataclass
class Setup:
    port: int
    proxy: ProxyProcess
    server: TrackingServer


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    server = TrackingServer().start()
    config = f"""
[global]
workers = 1
shutdown_grace = 1

[listeners.plain]
bind = "127.0.0.1:0"

[services.main]
hosts = ["*"]
pool = "p"
  [services.main.timeouts]
  client_header = {HEADER_DEADLINE}
  keepalive_idle = {KEEPALIVE_IDLE}
  client_body_idle = {BODY_IDLE}
  [services.main.limits]
  max_request_line = 1024
  max_header_bytes = 4096
  max_header_count = 20
  max_body_bytes = 1000

[services.big]
hosts = ["big.test"]
pool = "p"
  [services.big.timeouts]
  client_header = {HEADER_DEADLINE}
  [services.big.limits]
  max_request_line = 1024
  max_header_bytes = 16384

[services.short]
hosts = ["short.test"]
pool = "p"
  [services.short.timeouts]
  client_header = {HEADER_DEADLINE}
  [services.short.limits]
  max_request_line = 200
  max_header_bytes = 4096

[pools.p]
servers = ["127.0.0.1:{server.port}"]
"""
    proxy = ProxyProcess(config, tmp_path_factory.mktemp("limits"))
    try:
        yield Setup(proxy.port("plain"), proxy, server)
    finally:
        proxy.stop()
        server.stop()


def _refused(setup: Setup, raw: bytes, status: int) -> bytes:
    """Send `raw`; expect `status` and a close, with nothing of the request on the server."""
    before = setup.server.connections
    with connect(setup.port) as sock:
        sock.sendall(raw)
        data, how = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 %d " % status), data[:200]
    assert how in ("eof", "reset")
    assert setup.server.bytes_since(before) == b""
    return data


def _after(server: TrackingServer, marker: bytes) -> bytes:
    """What the server received from `marker` on, on the connection that carried it."""
    wires = [bytes(w) for w in server.wire.values() if marker in w]
    assert len(wires) <= 1
    return marker + wires[0].split(marker, 1)[1] if wires else b""


def _head(host: str = "example.test", extra: bytes = b"", target: bytes = b"/") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n" + extra + b"\r\n"


def test_header_too_large_is_431(setup: Setup) -> None:
    _refused(setup, _head(extra=b"X-Big: " + b"a" * 5000 + b"\r\n"), 431)


def test_header_limit_is_per_service(setup: Setup) -> None:
    big = b"X-Big: " + b"a" * 6000 + b"\r\n"
    _refused(setup, _head(extra=big), 431)
    with connect(setup.port) as sock:
        sock.sendall(_head("big.test", big))
        assert ResponseReader(sock).next().status == 200
    assert setup.server.requests[-1].header("x-big") == "a" * 6000


def test_unending_head_is_431_before_it_ends(setup: Setup) -> None:
    start = time.monotonic()
    with connect(setup.port) as sock:
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: big.test\r\n" + b"X-Fill: aaaaaaaaaaaaaaaa\r\n" * 800
        )
        data, how = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 431 "), data[:200]
    assert how in ("eof", "reset")
    assert time.monotonic() - start < HEADER_DEADLINE


def test_too_many_headers_is_431(setup: Setup) -> None:
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(20))
    _refused(setup, _head(extra=fields), 431)  # 21 with Host
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(120))
    _refused(setup, _head("big.test", fields), 431)  # over the default of 100


def test_header_count_at_the_limit_is_accepted(setup: Setup) -> None:
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(19))
    with connect(setup.port) as sock:
        sock.sendall(_head(extra=fields))
        assert ResponseReader(sock).next().status == 200


def test_request_line_too_long_is_414(setup: Setup) -> None:
    _refused(setup, _head(target=b"/" + b"a" * 1100), 414)


def test_request_line_too_long_without_header_fields_is_414(setup: Setup) -> None:
    # HTTP/1.0 needs no Host: the head is the request line alone.
    _refused(setup, b"GET /" + b"a" * 1100 + b" HTTP/1.0\r\n\r\n", 414)


def test_request_line_limit_is_per_service(setup: Setup) -> None:
    _refused(setup, _head("short.test", target=b"/" + b"a" * 250), 414)
    # A head longer than the limit whose request line is within it is fine.
    fields = b"X-Fill: " + b"b" * 400 + b"\r\n"
    with connect(setup.port) as sock:
        sock.sendall(_head("short.test", fields, target=b"/" + b"a" * 150))
        assert ResponseReader(sock).next().status == 200
        sock.sendall(_head(target=b"/" + b"a" * 250))  # another service: its limit is 1024
        assert ResponseReader(sock).next().status == 200


def test_unending_request_line_is_414_before_it_ends(setup: Setup) -> None:
    start = time.monotonic()
    with connect(setup.port) as sock:
        sock.sendall(b"GET /" + b"a" * 3000)
        data, how = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 414 "), data[:200]
    assert how in ("eof", "reset")
    assert time.monotonic() - start < HEADER_DEADLINE


def _in_pieces(setup: Setup, pieces: list[bytes]) -> int:
    """The status answering one request sent in `pieces`, each read by the proxy alone."""
    with connect(setup.port) as sock:
        for piece in pieces[:-1]:
            sock.sendall(piece)
            # Apart enough that the proxy reads each piece by itself (well inside the
            # header deadline); sent together the answer must be the same.
            time.sleep(0.05)
        sock.sendall(pieces[-1])
        return ResponseReader(sock).next().status


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_head_at_the_limit_is_accepted_whatever_the_pieces(setup: Setup, cut: int) -> None:
    # big.test allows 16,384 bytes of head, not counting the CRLFCRLF that ends it; that
    # end may arrive split from the head.
    bare = _head("big.test", b"X-Fill: ")[:-2]
    raw = bare + b"a" * (16384 - len(bare)) + b"\r\n\r\n"
    assert len(raw) == 16384 + 4
    assert _in_pieces(setup, [raw]) == 200
    assert _in_pieces(setup, [raw[: -4 + cut], raw[-4 + cut :]]) == 200
    over = raw[:-4] + b"a\r\n\r\n"
    _refused(setup, over, 431)


def test_request_line_at_the_limit_is_accepted_with_its_cr_alone(setup: Setup) -> None:
    line = b"GET /" + b"a" * (1024 - 14) + b" HTTP/1.1"
    assert len(line) == 1024
    rest = b"\nHost: example.test\r\n\r\n"
    assert _in_pieces(setup, [line + b"\r", rest]) == 200
    longer = b"GET /" + b"a" * (1024 - 13) + b" HTTP/1.1"
    assert _in_pieces(setup, [longer + b"\r", rest]) == 414


def test_body_over_the_limit_by_content_length_is_413(setup: Setup) -> None:
    raw = b"POST /big HTTP/1.1\r\nHost: example.test\r\nContent-Length: 1001\r\n\r\n"
    _refused(setup, raw, 413)


def test_body_at_the_limit_is_accepted(setup: Setup) -> None:
    body = b"b" * 1000
    with connect(setup.port) as sock:
        sock.sendall(
            b"POST /limit HTTP/1.1\r\nHost: example.test\r\nContent-Length: 1000\r\n\r\n" + body
        )
        assert ResponseReader(sock).next("POST").status == 200
    assert setup.server.requests[-1].body == body


def test_chunked_body_at_the_limit_is_accepted(setup: Setup) -> None:
    # The same 1000 bytes are accepted with Content-Length (test above): the limit is on
    # the body's content, not on how many chunks it was cut into.
    wire = b"".join(b"64\r\n" + b"%d" % i * 100 + b"\r\n" for i in range(10)) + b"0\r\n\r\n"
    with connect(setup.port) as sock:
        sock.sendall(
            b"POST /limit-chunked HTTP/1.1\r\nHost: example.test\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + wire
        )
        assert ResponseReader(sock).next("POST").status == 200


def test_body_over_the_limit_is_refused_while_it_streams_in(setup: Setup) -> None:
    # The client is still sending when the proxy refuses: it must still read the 413.
    with connect(setup.port) as sock:
        sock.sendall(
            b"POST /flood HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5000000\r\n\r\n"
        )

        def flood() -> None:
            try:
                for _ in range(40):
                    sock.sendall(b"x" * 65536)
            except OSError:
                pass

        sender = threading.Thread(target=flood)
        sender.start()
        data, how = read_until_closed(sock)
        sender.join(10)
    assert data.startswith(b"HTTP/1.1 413 "), data[:100]
    assert how in ("eof", "reset")


def test_chunked_body_over_the_limit_is_refused_or_cut(setup: Setup) -> None:
    chunk = b"190\r\n" + b"c" * 400 + b"\r\n"  # 400 bytes a chunk
    with connect(setup.port) as sock:
        sock.sendall(b"POST /chunked-big HTTP/1.1\r\nHost: example.test\r\n")
        sock.sendall(b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 2)
        try:
            sock.sendall(chunk + b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, how = read_until_closed(sock)
    assert how in ("eof", "reset")
    assert data == b"" or data.startswith(b"HTTP/1.1 413 "), data[:200]
    wait_for(lambda: setup.server.open_connections == 0, 5.0, "server connections to end")
    assert not [r for r in setup.server.requests if b"/chunked-big" in r.request_line]
    assert b"0\r\n\r\n" not in _after(setup.server, b"POST /chunked-big ")


def test_incomplete_head_gets_408_at_the_deadline(setup: Setup) -> None:
    with connect(setup.port) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /half HTTP/1.1\r\nHost: exa")
        data, how = read_until_closed(sock)
        elapsed = time.monotonic() - start
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert how in ("eof", "reset")
    assert HEADER_DEADLINE * 0.8 < elapsed < HEADER_DEADLINE + 1.0, elapsed


def test_trickled_head_gets_408_at_the_total_deadline(setup: Setup) -> None:
    with connect(setup.port) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /slowloris HTTP/1.1\r\nHost: example.test\r\n")
        i = 0
        # One header line every 0.1 s, until the proxy answers (or 3 s pass).
        while time.monotonic() - start < 3.0:
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable:
                break
            try:
                sock.sendall(b"X-Slow-%d: 1\r\n" % i)
            except (BrokenPipeError, ConnectionResetError):
                break
            i += 1
        elapsed = time.monotonic() - start
        data, how = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert how in ("eof", "reset")
    assert HEADER_DEADLINE * 0.8 < elapsed < HEADER_DEADLINE + 1.0, elapsed
    assert i >= 3  # it really was trickling when it was cut


def test_silent_connection_is_closed_without_a_response(setup: Setup) -> None:
    with connect(setup.port) as sock:
        start = time.monotonic()
        data, how = read_until_closed(sock)
        elapsed = time.monotonic() - start
    assert (data, how) == (b"", "eof")
    assert elapsed < HEADER_DEADLINE + 1.0


def test_idle_keep_alive_connection_is_closed(setup: Setup) -> None:
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        sock.sendall(b"GET /ka HTTP/1.1\r\nHost: example.test\r\n\r\n")
        resp = reader.next()
        assert resp.status == 200 and resp.header("connection") is None
        start = time.monotonic()
        data, how = read_until_closed(sock)
        elapsed = time.monotonic() - start
    assert (data, how) == (b"", "eof")
    assert KEEPALIVE_IDLE * 0.8 < elapsed < KEEPALIVE_IDLE + 1.0, elapsed


def test_body_idle_timeout_is_408(setup: Setup) -> None:
    with connect(setup.port) as sock:
        sock.sendall(
            b"POST /stalled HTTP/1.1\r\nHost: example.test\r\nContent-Length: 10\r\n\r\nabc"
        )
        start = time.monotonic()
        data, how = read_until_closed(sock)
        elapsed = time.monotonic() - start
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert how in ("eof", "reset")
    assert BODY_IDLE * 0.8 < elapsed < BODY_IDLE + 1.0, elapsed
    wait_for(lambda: setup.server.open_connections == 0, 5.0, "server connections to end")
    assert not [r for r in setup.server.requests if b"/stalled" in r.request_line]
    # The head and the start of the body were forwarded as they came.
    assert _after(setup.server, b"POST /stalled ").endswith(b"\r\n\r\nabc")


def _pace(sock: socket.socket, seconds: float) -> None:
    """Let `seconds` pass as a slow client would; the proxy must not answer meanwhile."""
    readable, _, _ = select.select([sock], [], [], seconds)
    assert not readable, sock.recv(65536)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_slow_steady_upload_succeeds(setup: Setup, framing: str) -> None:
    pieces = [b"%02d-abcdefg" % i for i in range(7)]  # one every 0.3 s: about 2 s in all
    if framing == "chunked":
        head = b"Transfer-Encoding: chunked\r\n"
        wire = [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces]
        wire[-1] += b"0\r\n\r\n"
    else:
        head = b"Content-Length: %d\r\n" % sum(len(p) for p in pieces)
        wire = pieces
    path = b"/upload-" + framing.encode()
    with connect(setup.port) as sock:
        start = time.monotonic()
        sock.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: example.test\r\n" + head + b"\r\n")
        for piece in wire:
            _pace(sock, 0.3)
            sock.sendall(piece)
        resp = ResponseReader(sock).next("POST")
        elapsed = time.monotonic() - start
    assert resp.status == 200, resp.raw
    assert elapsed > HEADER_DEADLINE + BODY_IDLE
    (req,) = [r for r in setup.server.requests if r.request_line.startswith(b"POST " + path)]
    assert req.body == b"".join(pieces)
