"""Failover through the real proxy: what a retry costs and what it is given.

A request sent on a reused connection that its server had just closed gets a fresh
connection to that server, once per server; a connection never made (refused, timed out)
spends none of the service's retries; each new attempt starts its own connect deadline; a
response cut by its server counts against that server; an idle server connection older
than the pool's idle_timeout is not reused; an NTLM-pinned connection is given up when its
server is disabled or down (a draining one keeps it); an idempotent request its server does
not answer in time goes to another server within the retry budget; log lines name the server
and pool
after a failed retry; and a non-ASCII TLS server name costs one warning, not a traceback
per connection.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from harness import (
    ProxyProcess,
    Received,
    Responder,
    ResponseReader,
    ScriptedServer,
    TrackingServer,
    admin_url,
    connect,
    dead_port,
    http_call,
    http_response,
    issue_cert,
    read_until_closed,
    simple_config,
    wait_for,
    with_tls,
)

TOKEN = "failover-admin-token"
ADMIN = '\n[admin]\nbind = "127.0.0.1:0"\ntoken_file = "token"\n'


@pytest.fixture
def proxies() -> Iterator[list[ProxyProcess]]:
    started: list[ProxyProcess] = []
    yield started
    for proxy in started:
        proxy.stop()


def _start(proxies: list[ProxyProcess], tmp: Path, config: str) -> ProxyProcess:
    (tmp / "token").write_text(TOKEN + "\n")
    proxy = ProxyProcess(config, tmp)
    proxies.append(proxy)
    return proxy


def _get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: failover.test\r\n{extra}\r\n".encode()


def _exchange(port: int, path: str) -> tuple[int, bytes]:
    """One GET on a new connection: (status, body)."""
    with connect(port) as sock:
        sock.sendall(_get(path, "Connection: close\r\n"))
        resp = ResponseReader(sock).next()
    return resp.status, resp.body


def _named(name: str):  # type: ignore[no-untyped-def]
    """A keep-alive responder answering with its name and the connection's id."""

    def respond(req: Received, sock: socket.socket) -> bytes:
        return http_response(200, f"{name} {req.conn_id}".encode())

    return respond


def _answers_once_per_connection(name: str):  # type: ignore[no-untyped-def]
    """Answers a connection's first request; closes it without answering its second, as a
    server does that drops an idle keep-alive connection just as a request arrives."""
    answered: set[int] = set()

    def respond(req: Received, sock: socket.socket) -> bytes | None:
        if req.conn_id in answered:
            sock.close()
            return None
        answered.add(req.conn_id)
        return http_response(200, f"{name} {req.conn_id}".encode())

    return respond


def _close_without_answer(req: Received, sock: socket.socket) -> None:
    sock.close()


def _servers(admin: str) -> dict[str, dict]:  # type: ignore[type-arg]
    code, body = http_call(admin + "/api/status")
    assert code == 200
    (pool,) = json.loads(body)["pools"]
    return {s["address"]: s for s in pool["servers"]}


# ----------------------------------------------------------------------- stale connections


def test_stale_connection_gets_a_fresh_one_per_server(
    tmp_path: Path, servers: list[ScriptedServer], proxies: list[ProxyProcess]
) -> None:
    a = ScriptedServer(_answers_once_per_connection("a")).start()
    b = ScriptedServer(_answers_once_per_connection("b")).start()
    servers += [a, b]
    proxy = _start(proxies, tmp_path, simple_config(0, servers=[a.port, b.port]))
    port = proxy.port("plain")
    # Two keep-alive responses, one from each server: each leaves an idle pooled connection.
    with connect(port) as sock:
        reader = ResponseReader(sock)
        for path in ("/warm1", "/warm2"):
            sock.sendall(_get(path))
            assert reader.next().status == 200
    assert (len(a.requests), len(b.requests)) == (1, 1)
    # A stops listening (its pooled connection stays open, and closes on the next request);
    # B closes its pooled connection on the next request too.
    a.stop()

    status, body = _exchange(port, "/after")
    assert (status, body) == (200, b"b 2"), proxy.log()
    # The request went to A's stale connection first, then to B's, then to a fresh one of B.
    assert [r.request_line for r in a.requests] == [b"GET /warm1 HTTP/1.1", b"GET /after HTTP/1.1"]
    assert [(r.conn_id, r.request_line) for r in b.requests] == [
        (1, b"GET /warm2 HTTP/1.1"),
        (1, b"GET /after HTTP/1.1"),
        (2, b"GET /after HTTP/1.1"),
    ]


# ----------------------------------------------------------------------- connection failures


@pytest.mark.parametrize("retries", [0, 1])
def test_refused_connections_spend_no_retries(
    tmp_path: Path, servers: list[ScriptedServer], proxies: list[ProxyProcess], retries: int
) -> None:
    live = ScriptedServer(_named("live")).start()
    servers.append(live)
    dead = [dead_port(), dead_port()]
    config = simple_config(0, servers=[*dead, live.port], service_extra=f"retries = {retries}")
    proxy = _start(proxies, tmp_path, config)
    port = proxy.port("plain")

    statuses = [_exchange(port, f"/r{i}")[0] for i in range(9)]
    assert statuses == [200] * 9, proxy.log()
    assert len(live.requests) == 9
    # Both dead servers were tried on the way (round robin puts each first in turn).
    log = proxy.log()
    for p in dead:
        assert f"server 127.0.0.1:{p} (pool p): connect failed" in log, log


class _SlowHandshake(ssl.SSLContext):
    """A server TLS context that starts each handshake only after `delay` seconds: the
    proxy's connect (TCP and TLS) to such a server takes that long."""

    delay = 1.5

    def wrap_socket(self, sock, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        time.sleep(self.delay)  # the behaviour under test: a server slow to accept
        return super().wrap_socket(sock, *args, **kwargs)


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A loopback port whose SYNs are dropped: a listener with a full accept queue."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        with socket.socket() as probe:
            probe.settimeout(0.3)
            try:
                probe.connect(("127.0.0.1", port))
            except TimeoutError:
                pass
            else:
                pytest.skip("the kernel accepts connections beyond a full backlog")
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_next_server_gets_its_own_connect_deadline(
    tmp_path: Path,
    servers: list[ScriptedServer],
    proxies: list[ProxyProcess],
    black_hole: int,
) -> None:
    ca = trustme.CA()
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    context = _SlowHandshake(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    slow = ScriptedServer(_named("slow"), tls=context).start()
    servers.append(slow)
    # A times out after server_connect (2 s); B then takes 1.5 s to connect, more than
    # what would be left of a deadline counted from the request's arrival (2 + 1 s).
    config = simple_config(
        0,
        servers=[black_hole, slow.port],
        service_extra="[services.main.timeouts]\nserver_connect = 2",
        pool_extra=f'tls = true\nca = "{ca_path}"',
    )
    proxy = _start(proxies, tmp_path, config)

    start = time.monotonic()
    status, body = _exchange(proxy.port("plain"), "/slow-accept")
    elapsed = time.monotonic() - start
    assert (status, body) == (200, b"slow 1"), proxy.log()
    assert elapsed >= 3.4, elapsed  # both attempts took their time: A was tried first
    assert f"server 127.0.0.1:{black_hole} (pool p): connect failed: timeout" in proxy.log()


# ----------------------------------------------------------------------- cut responses


def _reset_failures(admin: str) -> float:
    """revproxy_server_failures_total{kind="reset"} as /metrics says it now (0 if absent)."""
    code, metrics = http_call(admin + "/metrics")
    assert code == 200
    m = re.search(rb'revproxy_server_failures_total\{[^}]*kind="reset"[^}]*\} ([0-9.]+)', metrics)
    return float(m.group(1)) if m else 0.0


def _close_mid_body(req: Received, sock: socket.socket) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
    sock.close()


def _reset_mid_body(req: Received, sock: socket.socket) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
    time.sleep(0.05)  # pacing: the first bytes travel on their own before the reset
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _status_or_cut(port: int) -> int | None:
    """The status of a GET on a new connection; None when the response is cut."""
    try:
        return _exchange(port, "/after")[0]
    except (EOFError, ConnectionResetError):
        return None


@pytest.mark.parametrize("cut", [_close_mid_body, _reset_mid_body], ids=["close", "reset"])
def test_responses_cut_mid_body_mark_the_server_down(
    tmp_path: Path, servers: list[ScriptedServer], proxies: list[ProxyProcess], cut: Responder
) -> None:
    server = ScriptedServer(cut).start()
    servers.append(server)
    health = (
        '[pools.p.health]\ntype = "tcp"\ninterval = 30\npassive_failures = 2\nstart_down = false\n'
    )
    proxy = _start(proxies, tmp_path, simple_config(server.port, pool_extra=health) + ADMIN)
    admin = admin_url(proxy)
    address = f"127.0.0.1:{server.port}"
    assert _servers(admin)[address]["up"] is True

    for i in range(2):
        with connect(proxy.port("plain")) as sock:
            sock.sendall(_get(f"/cut{i}"))
            data, how = read_until_closed(sock)
        # The client sees the response cut, never one that looks whole.
        assert how in ("eof", "reset")
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 100" in head, data
        assert len(body) < 100 and body == b"0123456789"[: len(body)]

    wait_for(lambda: _servers(admin)[address]["up"] is False, 5, "the server marked down")
    wait_for(lambda: _reset_failures(admin) >= 2, 5, "two reset failures in the metrics")
    # Down, it takes no more requests: once the worker has heard (within a second; a
    # request before that is cut like the others), the pool has no server left.
    wait_for(lambda: _status_or_cut(proxy.port("plain")) == 503, 3, "a 503")
    seen = len(server.requests)
    assert _status_or_cut(proxy.port("plain")) == 503
    assert len(server.requests) == seen


# ----------------------------------------------------------------------- response timeouts

RESPONSE_TIMEOUT = "\n[services.main.timeouts]\nserver_response_header = 1\n"


def _silent_until(release: threading.Event):  # type: ignore[no-untyped-def]
    """Takes each request and says nothing until `release` is set, then closes."""

    def respond(req: Received, sock: socket.socket) -> None:
        release.wait(20)
        sock.close()

    return respond


@pytest.fixture
def silent_and_live(
    servers: list[ScriptedServer],
) -> Iterator[tuple[ScriptedServer, ScriptedServer]]:
    """A server that never answers (until the test ends) and one that answers at once."""
    release = threading.Event()
    silent = ScriptedServer(_silent_until(release)).start()
    live = ScriptedServer(_named("live")).start()
    servers += [silent, live]
    yield silent, live
    release.set()


def _call(port: int, method: str, path: str) -> tuple[int, bytes, float]:
    """One request on a new connection: (status, body, seconds it took)."""
    body = b"x" if method == "POST" else b""
    extra = f"Content-Length: {len(body)}\r\n" if body else ""
    start = time.monotonic()
    with connect(port) as sock:
        head = f"{method} {path} HTTP/1.1\r\nHost: failover.test\r\n{extra}"
        sock.sendall(head.encode() + b"Connection: close\r\n\r\n" + body)
        resp = ResponseReader(sock).next()
    return resp.status, resp.body, time.monotonic() - start


def test_unanswered_idempotent_request_goes_to_another_server(
    tmp_path: Path,
    proxies: list[ProxyProcess],
    silent_and_live: tuple[ScriptedServer, ScriptedServer],
) -> None:
    silent, live = silent_and_live
    config = simple_config(0, servers=[silent.port, live.port], service_extra=RESPONSE_TIMEOUT)
    proxy = _start(proxies, tmp_path, config)
    port = proxy.port("plain")
    results = [_call(port, "GET", f"/g{i}") for i in range(3)]
    # Round robin gives the silent server one of the first two requests: it answers
    # nothing within the second, and the request is answered by the other server.
    assert [status for status, _, _ in results] == [200, 200, 200], proxy.log()
    assert all(body.startswith(b"live ") for _, body, _ in results)
    assert silent.requests, "the silent server was never tried"
    assert [r.request_line for r in live.requests] == [
        f"GET /g{i} HTTP/1.1".encode() for i in range(3)
    ]
    # Each request the silent server took waited out the response timeout first.
    assert len([t for _, _, t in results if t >= 0.9]) == len(silent.requests)
    log = proxy.log()
    assert f"server 127.0.0.1:{silent.port} (pool p): no response in time; tried" in log


@pytest.mark.parametrize(
    ("method", "service_extra"),
    [
        ("POST", ""),  # not idempotent: the server may have acted on it
        ("GET", "retries = 0"),
        ("GET", "retry_window = 0.5"),  # the timeout ends after the window
    ],
    ids=["post", "no-retries", "past-the-window"],
)
def test_unanswered_request_gets_504_when_no_retry_is_allowed(
    tmp_path: Path,
    proxies: list[ProxyProcess],
    silent_and_live: tuple[ScriptedServer, ScriptedServer],
    method: str,
    service_extra: str,
) -> None:
    silent, live = silent_and_live
    extra = service_extra + RESPONSE_TIMEOUT
    config = simple_config(0, servers=[silent.port, live.port], service_extra=extra)
    proxy = _start(proxies, tmp_path, config)
    port = proxy.port("plain")
    results = [_call(port, method, f"/n{i}") for i in range(2)]
    # One request each (round robin): the silent server's one is answered 504 after
    # the response timeout and never reaches the other server.
    assert sorted(status for status, _, _ in results) == [200, 504], proxy.log()
    timed_out = next(r for r in results if r[0] == 504)
    assert timed_out[2] >= 0.9
    (lost,) = silent.requests
    assert lost.request_line not in [r.request_line for r in live.requests]
    assert len(live.requests) == 1
    assert "tried another" not in proxy.log()


# ----------------------------------------------------------------------- idle connections


def test_idle_connection_older_than_idle_timeout_is_not_reused(
    tmp_path: Path, proxies: list[ProxyProcess]
) -> None:
    server = TrackingServer(_named("s")).start()
    try:
        config = simple_config(server.port, pool_extra="idle_timeout = 0.3")
        proxy = _start(proxies, tmp_path, config)
        port = proxy.port("plain")
        assert _exchange(port, "/first") == (200, b"s 1")
        assert _exchange(port, "/soon") == (200, b"s 1")  # reused while young enough
        time.sleep(0.35)  # the behaviour under test: longer than idle_timeout
        assert _exchange(port, "/later") == (200, b"s 2"), proxy.log()
        # The old connection was closed by the proxy rather than kept.
        wait_for(lambda: 1 in server.ended, 3, "the old server connection to close")
    finally:
        server.stop()


# ----------------------------------------------------------------------- NTLM pinning


def _ntlm(name: str):  # type: ignore[no-untyped-def]
    """A server that authenticates connections with an NTLM-like three-step exchange;
    /public needs no authentication."""
    authed: set[int] = set()

    def respond(req: Received, sock: socket.socket) -> bytes:
        auth = req.header("Authorization") or ""
        tag = f"{name} {req.conn_id}"
        if req.request_line.startswith(b"GET /public"):
            return http_response(200, f"{tag} public".encode())
        if req.conn_id in authed:
            return http_response(200, f"{tag} authed".encode())
        if auth.startswith("NTLM T3"):
            authed.add(req.conn_id)
            return http_response(200, f"{tag} authed-now".encode())
        challenge = "NTLM TlRMTVNTUAACAAAA" if auth.startswith("NTLM T1") else "NTLM"
        return http_response(401, f"{tag} challenge".encode(), (f"WWW-Authenticate: {challenge}",))

    return respond


def _authenticate(sock: socket.socket, reader: ResponseReader) -> str:
    """The three legs on one client connection; the body of the last response."""
    for auth, status in (("", 401), ("Authorization: NTLM T1xx\r\n", 401)):
        sock.sendall(_get("/auth", auth))
        assert reader.next().status == status
    sock.sendall(_get("/auth", "Authorization: NTLM T3xx\r\n"))
    resp = reader.next()
    assert resp.status == 200
    return resp.body.decode()


def _ntlm_servers(servers: list[ScriptedServer]) -> dict[str, TrackingServer]:
    """Two NTLM-like servers, s1 and s2, by name."""
    started = {name: TrackingServer(_ntlm(name)).start() for name in ("s1", "s2")}
    servers += started.values()
    return started


def _pinned(sock: socket.socket, reader: ResponseReader) -> tuple[str, str, str]:
    """Authenticate the connection: (its server's name, that server's connection id, the
    other server's name)."""
    name, conn, word = _authenticate(sock, reader).split()
    assert word == "authed-now"
    return name, conn, "s2" if name == "s1" else "s1"


@pytest.mark.parametrize("how", ["disabled", "down"])
def test_pinned_connection_is_given_up_when_its_server_leaves(
    tmp_path: Path, servers: list[ScriptedServer], proxies: list[ProxyProcess], how: str
) -> None:
    by_name = _ntlm_servers(servers)
    ports = [server.port for server in by_name.values()]
    health = (
        '[pools.p.health]\ntype = "tcp"\ninterval = 0.3\ntimeout = 0.3\n'
        "fall = 1\nrise = 1\nstart_down = false\n"
    )
    config = simple_config(0, servers=ports, pool_extra=health) + ADMIN
    proxy = _start(proxies, tmp_path, config)
    port = proxy.port("plain")
    admin = admin_url(proxy)

    with connect(port) as sock, connect(port) as other:
        reader, other_reader = ResponseReader(sock), ResponseReader(other)
        name, conn, other_name = _pinned(sock, reader)
        pinned = by_name[name]

        # While its server takes traffic, the client keeps its authenticated connection,
        # whatever the balancing does with another client's requests.
        seen_by_other = set()
        for i in range(3):
            other.sendall(_get(f"/public{i}"))
            seen_by_other.add(other_reader.next().body.split()[0].decode())
            sock.sendall(_get(f"/pinned{i}"))
            assert reader.next().body.decode() == f"{name} {conn} authed"
        assert seen_by_other == {"s1", "s2"}

        if how == "disabled":
            address = f"127.0.0.1:{pinned.port}"
            code, _ = http_call(f"{admin}/api/servers/p/{address}/disable", "POST", TOKEN)
            assert code == 200
        else:
            pinned.stop()  # health checks fail; the pinned connection itself stays open

        def reaches_the_other_server() -> bool:
            sock.sendall(_get("/after"))
            resp = reader.next()
            return resp.body.decode().startswith(other_name)

        wait_for(reaches_the_other_server, 5, f"the client's request to reach {other_name}")
        # The connection tied to the client was closed, not pooled for anyone else.
        wait_for(lambda: int(conn) in pinned.ended, 3, "the pinned connection to close")
        # The client authenticates anew with the server that takes traffic.
        new_name, _, word = _authenticate(sock, reader).split()
        assert (new_name, word) == (other_name, "authed-now")


def test_pinned_connection_stays_with_a_draining_server(
    tmp_path: Path, servers: list[ScriptedServer], proxies: list[ProxyProcess]
) -> None:
    by_name = _ntlm_servers(servers)
    ports = [server.port for server in by_name.values()]
    proxy = _start(proxies, tmp_path, simple_config(0, servers=ports) + ADMIN)
    port = proxy.port("plain")
    admin = admin_url(proxy)

    with connect(port) as sock, connect(port) as other:
        reader, other_reader = ResponseReader(sock), ResponseReader(other)
        name, conn, other_name = _pinned(sock, reader)
        address = f"127.0.0.1:{by_name[name].port}"
        code, _ = http_call(f"{admin}/api/servers/p/{address}/drain", "POST", TOKEN)
        assert code == 200

        def other_client_sees_one_server() -> bool:
            """Two requests in a row to the other server: the worker knows of the drain."""
            seen = []
            for i in range(2):
                other.sendall(_get(f"/public{i}"))
                seen.append(other_reader.next().body.split()[0].decode())
            return seen == [other_name, other_name]

        wait_for(other_client_sees_one_server, 5, "the drain to reach the worker")
        # No new requests for the draining server, but the client it holds keeps its
        # authenticated connection.
        for i in range(3):
            sock.sendall(_get(f"/pinned{i}"))
            assert reader.next().body.decode() == f"{name} {conn} authed"


# ----------------------------------------------------------------------- log lines


@pytest.mark.parametrize("second", ["closing", "dead"])
def test_failed_failover_names_server_and_pool_in_the_log(
    tmp_path: Path, servers: list[ScriptedServer], proxies: list[ProxyProcess], second: str
) -> None:
    closing = ScriptedServer(_close_without_answer).start()
    servers.append(closing)
    if second == "closing":
        other = ScriptedServer(_close_without_answer).start()
        servers.append(other)
        other_port = other.port
    else:
        other_port = dead_port()
    proxy = _start(proxies, tmp_path, simple_config(0, servers=[closing.port, other_port]))
    port = proxy.port("plain")
    names = {f"127.0.0.1:{closing.port}", f"127.0.0.1:{other_port}"}

    for i in range(4):
        assert _exchange(port, f"/fail{i}")[0] == 502
    log = wait_for(
        lambda: (text := proxy.log()).count('"GET /fail') == 4 and text, 5, "the access log"
    )
    assert "server None" not in log, log
    # Every warning about a server names it and its pool.
    warnings = [line for line in log.splitlines() if " WARNING revproxy.proxy[" in line]
    assert len(warnings) >= 4, log
    for line in warnings:
        m = re.search(r"\]: server (\S+) \(pool p\)", line)
        assert m is not None and m.group(1) in names, line
    if second == "closing":
        assert "server closed the connection before answering" in log, log
    # The access log names the last server tried.
    for line in log.splitlines():
        if '"GET /fail' in line:
            m = re.search(r" server=(\S+) ", line)
            assert m is not None and m.group(1) in names, line


# ----------------------------------------------------------------------- unraisable errors


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_non_ascii_server_name_is_one_warning_not_tracebacks(
    tmp_path: Path, servers: list[ScriptedServer], proxies: list[ProxyProcess]
) -> None:
    server = ScriptedServer(_named("s")).start()
    servers.append(server)
    ca = trustme.CA()
    config = with_tls(simple_config(server.port), [issue_cert(ca, "localhost", tmp_path)])
    config = config.replace("shutdown_grace = 5", "shutdown_grace = 1")
    proxy = _start(proxies, tmp_path, config)
    port = proxy.port("plain")

    for _ in range(3):
        result = subprocess.run(
            [
                "openssl",
                "s_client",
                "-connect",
                f"127.0.0.1:{port}",
                "-servername",
                "bücher.example.test",
            ],
            input=b"",
            capture_output=True,
            timeout=10,
            check=False,
        )
        assert result.returncode != 0, result.stdout  # the handshake did not go through
    # The listener still serves clients with a proper name; once this request is logged,
    # whatever the three handshakes before it made the worker write is in the log too.
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    with connect(port) as raw, client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(_get("/after-names", "Connection: close\r\n"))
        assert ResponseReader(tls).next().status == 200  # type: ignore[arg-type]
    log = wait_for(
        lambda: '"GET /after-names ' in (text := proxy.log()) and text, 5, "the access log"
    )
    assert "Traceback" not in log, log
    assert log.count("error ignored") <= 1, log


# ---------------------------------------------------------------- the first checks at start


def test_first_requests_after_start_wait_for_the_first_checks(
    tmp_path: Path, servers: list[ScriptedServer], proxies: list[ProxyProcess]
) -> None:
    # Servers start down until a check passed (start_down, the default). Serving before
    # the first results are in would answer 503 for a pool with a healthy server; the
    # workers wait for them (bounded by the check timeout) before they take connections.
    named = _named("live")

    def slow_check(req: Received, sock: socket.socket) -> bytes:
        if req.request_line.startswith(b"GET /check "):
            time.sleep(0.8)  # a server slow to say it is fine
        return named(req, sock)  # type: ignore[no-any-return]

    server = ScriptedServer(slow_check).start()
    servers.append(server)
    config = simple_config(
        server.port,
        servers=[server.port, dead_port()],
        pool_extra='[pools.p.health]\ntype = "http"\npath = "/check"\ninterval = 30\ntimeout = 3\n',
    )
    proxy = _start(proxies, tmp_path, config)
    port = proxy.port("plain")
    statuses = [_exchange(port, f"/first-{i}")[0] for i in range(5)]
    assert statuses == [200] * 5
