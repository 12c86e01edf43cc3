"""The proxy forwards a request and the server sees what the client sent."""

from __future__ import annotations

from pathlib import Path

from harness import (
    ProxyProcess,
    ResponseReader,
    ScriptedServer,
    connect,
    exchange,
    read_until_closed,
    simple_config,
    wait_for,
)

from revproxy import native


def test_get_is_forwarded_with_forwarding_headers(tmp_path: Path) -> None:
    server = ScriptedServer().start()
    proxy = ProxyProcess(simple_config(server.port), tmp_path)
    try:
        status, headers, body = exchange(
            proxy.port("plain"), b"GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\n\r\n"
        )
        assert status == 200
        assert body == b"ok GET /a?b=1 HTTP/1.1"
        (req,) = server.requests
        assert req.header("host") == "example.test"
        assert req.header("x-forwarded-for") == "127.0.0.1"
        assert req.header("x-forwarded-proto") == "http"
        # The proxy runs the same form of the forwarding path as this test run reports.
        wait_for(lambda: "revproxy started" in proxy.log(), 10, "the startup line")
        assert native.describe() in proxy.log()
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_underscored_field_names_are_dropped_unless_allowed(tmp_path: Path) -> None:
    server = ScriptedServer().start()
    config = (
        simple_config(server.port)
        + """
[services.open]
hosts = ["open.test"]
pool = "p"
  [services.open.headers]
  underscores_in_headers = true
"""
    )
    proxy = ProxyProcess(config, tmp_path)
    raw = b"GET / HTTP/1.1\r\nHost: %s\r\nX_Forwarded_For: 10.9.9.9\r\nX-Ok: a_b\r\n\r\n"
    try:
        assert exchange(proxy.port("plain"), raw % b"example.test")[0] == 200
        assert exchange(proxy.port("plain"), raw % b"open.test")[0] == 200
        closed, opened = server.requests
        assert closed.header("x_forwarded_for") is None
        assert closed.header("x-forwarded-for") == "127.0.0.1"
        assert closed.header("x-ok") == "a_b"
        assert opened.header("x_forwarded_for") == "10.9.9.9"
        assert "request fields with '_' in their names not forwarded: X_Forwarded_For" in (
            proxy.log()
        )
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_a_request_no_service_takes_is_answered_and_the_connection_goes_on(
    tmp_path: Path,
) -> None:
    server = ScriptedServer().start()
    config = simple_config(server.port).replace('hosts = ["*"]', 'hosts = ["example.test"]')
    proxy = ProxyProcess(config, tmp_path)
    try:
        with connect(proxy.port("plain")) as sock:
            reader = ResponseReader(sock)
            # Pipelined: a host nothing serves between two that are served.
            sock.sendall(
                b"GET /1 HTTP/1.1\r\nHost: example.test\r\n\r\n"
                b"GET /2 HTTP/1.1\r\nHost: other.test\r\n\r\n"
                b"GET /3 HTTP/1.1\r\nHost: example.test\r\n\r\n"
            )
            first, missed, third = reader.next(), reader.next(), reader.next()
            assert (first.status, missed.status, third.status) == (200, 421, 200)
            assert missed.header("connection") is None
            assert third.body == b"ok GET /3 HTTP/1.1"
            # With a body (not read) or for HEAD (no body to send) the answer closes.
            sock.sendall(b"POST /4 HTTP/1.1\r\nHost: other.test\r\nContent-Length: 3\r\n\r\nabc")
            closing = reader.next()
            assert closing.status == 421 and closing.header("connection") == "close"
            assert read_until_closed(sock)[1] in ("eof", "reset")
        assert [r.request_line for r in server.requests] == [
            b"GET /1 HTTP/1.1",
            b"GET /3 HTTP/1.1",
        ]
    finally:
        assert proxy.stop() == 0
        server.stop()
