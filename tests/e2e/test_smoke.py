"""The proxy forwards a request and the server sees what the client sent."""

from __future__ import annotations

from pathlib import Path

from harness import ProxyProcess, ScriptedServer, exchange, simple_config


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
    finally:
        assert proxy.stop() == 0
        server.stop()
