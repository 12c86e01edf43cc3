"""Minimum upload rate, the per-worker connection cap, failed TLS handshakes counted."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import trustme
from harness import (
    ProxyProcess,
    ScriptedServer,
    admin_url,
    closed_by_peer,
    connect,
    exchange,
    http_call,
    issue_cert,
    read_response,
    read_until_closed,
    simple_config,
    wait_for,
    with_tls,
)


def _upload(port: int, rate: int, seconds: float, result: dict[str, object]) -> None:
    """Send a body of rate*seconds bytes at `rate` bytes/s in 10 pieces a second."""
    size = int(rate * seconds)
    piece = max(1, rate // 10)
    with connect(port, timeout=30) as sock:
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
        sent = 0
        start = time.monotonic()
        try:
            while sent < size:
                n = min(piece, size - sent)
                sock.sendall(b"x" * n)
                sent += n
                # Pace by the clock, not by sleeping a fixed step, so the rate holds.
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
        except OSError:
            pass
        try:
            result["status"] = read_response(sock)[0]
        except (OSError, EOFError) as exc:
            result["status"] = repr(exc)
        result["sent"] = sent


def test_a_steady_slow_upload_lives_and_a_slower_one_gets_408(tmp_path: Path) -> None:
    server = ScriptedServer().start()
    config = simple_config(
        server.port,
        service_extra="[services.main.timeouts]\nclient_body_min_rate = 200\n"
        "client_body_idle = 30\n",
    )
    proxy = ProxyProcess(config, tmp_path)
    try:
        port = proxy.port("plain")
        steady: dict[str, object] = {}
        crawling: dict[str, object] = {}
        # 1000 B/s for 12 s passes a 200 B/s minimum; 50 B/s fails it after one window.
        threads = [
            threading.Thread(target=_upload, args=(port, 1000, 12.0, steady)),
            threading.Thread(target=_upload, args=(port, 50, 14.0, crawling)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(40)
        assert steady.get("status") == 200, steady
        assert crawling.get("status") == 408, crawling
        assert int(crawling["sent"]) < 50 * 14  # type: ignore[call-overload]
        assert any(len(r.body) == 12000 for r in server.requests)
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_connections_beyond_max_connections_are_closed_at_once(tmp_path: Path) -> None:
    server = ScriptedServer().start()
    config = simple_config(server.port).replace(
        "shutdown_grace = 5", "shutdown_grace = 5\nmax_connections = 2"
    )
    proxy = ProxyProcess(config, tmp_path)
    try:
        port = proxy.port("plain")
        first, second = connect(port), connect(port)
        raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        for sock in (first, second):
            sock.sendall(raw)
            assert read_response(sock)[0] == 200
        third = connect(port)
        assert closed_by_peer(third, 5.0)
        third.close()
        first.close()
        # A place is free again once the proxy has seen the close.
        wait_for(lambda: exchange(port, raw)[0] == 200, 5, "a new connection to be served")
        second.close()
        assert "refused beyond max_connections" in proxy.log()
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_failed_tls_handshakes_are_counted(tmp_path: Path) -> None:
    server = ScriptedServer().start()
    config = with_tls(
        simple_config(server.port, service_extra="[services.main.timeouts]\nclient_header = 0.5\n"),
        [issue_cert(trustme.CA(), "a.test", tmp_path)],
    ).replace("[services.main]", '[admin]\nbind = "127.0.0.1:0"\n\n[services.main]')
    proxy = ProxyProcess(config, tmp_path)
    try:
        port = proxy.port("plain")
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")  # not a ClientHello
                closed_by_peer(sock, 5.0)
        admin = admin_url(proxy)

        def counted() -> bool:
            text = http_call(admin + "/metrics")[1].decode()
            return 'revproxy_tls_handshake_failures_total{listener="plain"} 3.0' in text

        wait_for(counted, 10, "three failed handshakes in the metrics")
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_an_early_answer_ends_with_a_fin_not_a_reset(tmp_path: Path) -> None:
    # The proxy answers 413 as soon as it sees the declared length, while body bytes it will
    # never forward are already on their way. Closing with them unread would send a reset,
    # which can destroy the 413 in the client's buffers before the client reads it; the
    # proxy half-closes instead and drains them, so the client sees the answer, then EOF.
    server = ScriptedServer().start()
    config = simple_config(
        server.port, service_extra="[services.main.limits]\nmax_body_bytes = 1000\n"
    )
    proxy = ProxyProcess(config, tmp_path)
    try:
        with connect(proxy.port("plain")) as sock:
            sock.sendall(
                b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 50000000\r\n\r\n" + b"x" * 262144
            )
            status, headers, _ = read_response(sock)
            assert status == 413
            assert headers.get("connection") == "close"
            # More of the body may still arrive; it is read and dropped, not reset.
            sock.sendall(b"x" * 65536)
            assert read_until_closed(sock, 10.0)[1] == "eof"
        assert server.requests == []
    finally:
        assert proxy.stop() == 0
        server.stop()
