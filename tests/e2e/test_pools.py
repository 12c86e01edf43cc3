"""Pools through the real proxy: cookie and source-IP persistence, the MS-WSMAN cookie form,
weighted round robin and least connections, draining through the admin API, one stream of
health probes however many workers, and the answer when no server is left."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from harness import (
    ProxyProcess,
    Received,
    ResponseReader,
    ScriptedServer,
    admin_url,
    child_pids,
    connect,
    dead_port,
    http_call,
    read_until_closed,
    simple_config,
    wait_for,
)

TOKEN = "pools-admin-token"
ADMIN = '\n[admin]\nbind = "127.0.0.1:0"\ntoken_file = "token"\n'


def _answer(name: str, close: bool = False) -> bytes:
    body = name.encode()
    extra = b"Connection: close\r\n" if close else b""
    return b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (extra, len(body), body)


def named(name: str, close: bool = False, hold: threading.Event | None = None):  # type: ignore[no-untyped-def]
    """A responder answering with its name; `close` ends the connection after each answer
    (so a stopped server is really gone); `hold` keeps requests for /hold until it is set."""

    def respond(req: Received, sock: socket.socket) -> bytes | None:
        if hold is not None and req.request_line.startswith(b"GET /hold "):
            hold.wait(20)
        if close:
            sock.sendall(_answer(name, close=True))
            return None
        return _answer(name)

    return respond


def _holding(*candidates: ScriptedServer) -> list[ScriptedServer]:
    """The servers that received a /hold request."""
    return [
        s for s in candidates if any(r.request_line.startswith(b"GET /hold ") for r in s.requests)
    ]


def _get(
    port: int, path: str = "/", cookie: str | None = None
) -> tuple[int, str, list[str], dict[str, str]]:
    """One GET on a new connection: (status, body, Set-Cookie values, headers)."""
    extra = f"Cookie: {cookie}\r\n" if cookie is not None else ""
    raw = f"GET {path} HTTP/1.1\r\nHost: pools.test\r\n{extra}Connection: close\r\n\r\n"
    with connect(port) as sock:
        sock.sendall(raw.encode())
        resp = ResponseReader(sock).next()
    headers = dict(resp.headers)
    return resp.status, resp.body.decode(), resp.all("set-cookie"), headers


def _action(admin: str, address: str, action: str) -> int:
    return http_call(f"{admin}/api/servers/p/{address}/{action}", "POST", TOKEN)[0]


def _servers(admin: str) -> dict[str, dict]:  # type: ignore[type-arg]
    code, body = http_call(admin + "/api/status")
    assert code == 200
    (pool,) = json.loads(body)["pools"]
    return {s["address"]: s for s in pool["servers"]}


def _proxy(tmp: Path, config: str) -> ProxyProcess:
    (tmp / "token").write_text(TOKEN + "\n")
    return ProxyProcess(config, tmp)


# ----------------------------------------------------------------------- persistence


def test_cookie_persistence_sticks_and_redispatches(
    tmp_path: Path, servers: list[ScriptedServer]
) -> None:
    a = ScriptedServer(named("a", close=True)).start()
    b = ScriptedServer(named("b", close=True)).start()
    servers += [a, b]
    pool = '[pools.p.persistence]\ntype = "cookie"\ncookie_name = "SRV"\n'
    proxy = _proxy(tmp_path, simple_config(0, servers=[a.port, b.port], pool_extra=pool) + ADMIN)
    try:
        port = proxy.port("plain")
        admin = admin_url(proxy)
        status, first, cookies, _ = _get(port)
        assert status == 200
        assert len(cookies) == 1, cookies
        value = cookies[0].removeprefix("SRV=").removesuffix("; Path=/; HttpOnly")
        assert cookies[0] == f"SRV={value}; Path=/; HttpOnly"
        assert value and "=" not in value and ";" not in value
        # With the cookie, every new connection goes to the same server and is not re-told.
        for _ in range(6):
            assert _get(port, cookie=f"SRV={value}")[:3] == (200, first, [])
        # Also when other cookies come along.
        assert _get(port, cookie=f"lang=en; SRV={value}; x=1")[:3] == (200, first, [])
        # Without it, requests are balanced over both servers.
        assert {_get(port)[1] for _ in range(6)} == {"a", "b"}

        # The persisted server disabled through the API: the old cookie goes to the other
        # server and the cookie is rewritten.
        persisted = a if first == "a" else b
        other_name = "b" if first == "a" else "a"
        address = f"127.0.0.1:{persisted.port}"
        assert _action(admin, address, "disable") == 200
        wait_for(
            lambda: _get(port, cookie=f"SRV={value}")[1] == other_name, 3, "redispatch on disable"
        )
        status, body, cookies, _ = _get(port, cookie=f"SRV={value}")
        assert (status, body) == (200, other_name)
        assert len(cookies) == 1 and cookies[0].startswith("SRV=")
        new_value = cookies[0].split(";")[0].removeprefix("SRV=")
        assert new_value != value
        assert cookies[0] == f"SRV={new_value}; Path=/; HttpOnly"
        assert _get(port, cookie=f"SRV={new_value}")[:3] == (200, other_name, [])
        assert _action(admin, address, "enable") == 200
        wait_for(lambda: _get(port, cookie=f"SRV={value}")[1] == first, 3, "the server back")

        # The persisted server stopped: the connect is refused, the request goes to the
        # other server and the cookie is rewritten to name it.
        persisted.stop()
        status, body, cookies, _ = _get(port, cookie=f"SRV={value}")
        assert (status, body) == (200, other_name)
        assert cookies == [f"SRV={new_value}; Path=/; HttpOnly"]
    finally:
        assert proxy.stop() == 0


def test_cookie_with_a_dechunked_body_to_http10_still_ends_by_closing(
    tmp_path: Path, servers: list[ScriptedServer]
) -> None:
    # An HTTP/1.0 client asking for keep-alive gets a chunked response decoded: with no
    # length to give, the body must end by closing, Set-Cookie or not.
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    a = ScriptedServer(lambda req, sock: chunked).start()
    servers.append(a)
    pool = '[pools.p.persistence]\ntype = "cookie"\ncookie_name = "SRV"\n'
    proxy = _proxy(tmp_path, simple_config(0, servers=[a.port], pool_extra=pool))
    try:
        with connect(proxy.port("plain")) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\nHost: pools.test\r\nConnection: keep-alive\r\n\r\n")
            data, how = read_until_closed(sock)
        head, _, body = data.partition(b"\r\n\r\n")
        assert how == "eof" and body == b"hello", data
        assert b"\r\nSet-Cookie: SRV=" in head and b"\r\nConnection: close" in head
        assert b"Transfer-Encoding" not in head and b"Content-Length" not in head
    finally:
        assert proxy.stop() == 0


def test_ms_wsman_cookie_on_every_response_whose_request_lacked_it(
    tmp_path: Path, servers: list[ScriptedServer]
) -> None:
    a = ScriptedServer(named("a")).start()
    b = ScriptedServer(named("b")).start()
    servers += [a, b]
    pool = (
        "[pools.p.persistence]\n"
        'type = "cookie"\n'
        'cookie_name = "MS-WSMAN"\n'
        "cookie_httponly = false\n"
        "cookie_max_age = 0\n"
        "cookie_always = true\n"
    )
    proxy = _proxy(tmp_path, simple_config(0, servers=[a.port, b.port], pool_extra=pool))
    try:
        port = proxy.port("plain")
        plain = b"GET /abs HTTP/1.1\r\nHost: pools.test\r\n\r\n"
        with connect(port) as sock:
            reader = ResponseReader(sock)
            sock.sendall(plain)
            first = reader.next()
            assert first.status == 200
            (cookie,) = first.all("set-cookie")
            value = cookie.removeprefix("MS-WSMAN=").removesuffix("; Path=/")
            assert cookie == f"MS-WSMAN={value}; Path=/", cookie
            lowered = cookie.lower()
            assert "httponly" not in lowered
            assert "max-age" not in lowered and "expires" not in lowered
            # The second request on the same connection still lacks the cookie: it is set
            # again, with the same value, and the same server answers.
            sock.sendall(plain)
            second = reader.next()
            assert second.status == 200
            assert second.all("set-cookie") == [f"MS-WSMAN={value}; Path=/"]
            assert second.body == first.body
            # A request carrying the cookie gets none.
            sock.sendall(
                b"GET /abs HTTP/1.1\r\nHost: pools.test\r\nCookie: MS-WSMAN=%s\r\n\r\n"
                % value.encode()
            )
            third = reader.next()
            assert third.status == 200
            assert third.all("set-cookie") == []
            assert third.body == first.body
        # On a new connection too: without the cookie it is set, with it it is not.
        status, body, cookies, _ = _get(port, "/abs", cookie=f"MS-WSMAN={value}")
        assert (status, body.encode(), cookies) == (200, first.body, [])
        for _ in range(3):
            status, _, cookies, _ = _get(port, "/abs")
            assert status == 200
            assert len(cookies) == 1
            assert cookies[0].startswith("MS-WSMAN=") and cookies[0].endswith("; Path=/")
            assert cookies[0].count(";") == 1
    finally:
        assert proxy.stop() == 0


def test_source_ip_persistence(tmp_path: Path, servers: list[ScriptedServer]) -> None:
    a = ScriptedServer(named("a")).start()
    b = ScriptedServer(named("b")).start()
    servers += [a, b]
    pool = '[pools.p.persistence]\ntype = "source_ip"\ntimeout = 60\n'
    proxy = _proxy(tmp_path, simple_config(0, servers=[a.port, b.port], pool_extra=pool))
    try:
        port = proxy.port("plain")
        answers = [_get(port) for _ in range(8)]
        assert {status for status, *_ in answers} == {200}
        assert len({body for _, body, *_ in answers}) == 1, answers
        assert all(cookies == [] for _, _, cookies, _ in answers)
    finally:
        assert proxy.stop() == 0


# ------------------------------------------------------------------------- balancing


def test_weighted_round_robin_order(tmp_path: Path, servers: list[ScriptedServer]) -> None:
    started = [ScriptedServer(named(n)).start() for n in "abc"]
    servers += started
    config = f"""
[global]
workers = 1
shutdown_grace = 5

[listeners.plain]
bind = "127.0.0.1:0"

[services.main]
pool = "p"

[pools.p]
servers = [
  {{ address = "127.0.0.1:{started[0].port}", weight = 2 }},
  {{ address = "127.0.0.1:{started[1].port}", weight = 1 }},
  {{ address = "127.0.0.1:{started[2].port}", weight = 1 }},
]
"""
    proxy = _proxy(tmp_path, config)
    try:
        port = proxy.port("plain")
        order = "".join(_get(port)[1] for _ in range(8))
        # Smooth weighted round robin: the heavier server's turns are spread, not bunched.
        assert order == "abcaabca", order
    finally:
        assert proxy.stop() == 0


def test_least_conn_avoids_the_busy_server(tmp_path: Path, servers: list[ScriptedServer]) -> None:
    release = threading.Event()
    a = ScriptedServer(named("a", hold=release)).start()
    b = ScriptedServer(named("b", hold=release)).start()
    servers += [a, b]
    config = simple_config(0, servers=[a.port, b.port], pool_extra='balance = "least_conn"\n')
    proxy = _proxy(tmp_path, config)
    slow = None
    try:
        port = proxy.port("plain")
        slow = connect(port)
        slow.sendall(b"GET /hold HTTP/1.1\r\nHost: pools.test\r\n\r\n")
        held = wait_for(
            lambda: _holding(a, b),
            5,
            "the slow request to reach a server",
        )
        (busy,) = held
        idle_name = "b" if busy is a else "a"
        answers = [_get(port)[1] for _ in range(6)]
        assert answers == [idle_name] * 6
        release.set()
        resp = ResponseReader(slow).next()
        assert resp.status == 200
        assert resp.body == (b"a" if busy is a else b"b")
        # With nothing in flight, both servers are used again.
        assert {_get(port)[1] for _ in range(6)} == {"a", "b"}
    finally:
        release.set()
        if slow is not None:
            slow.close()
        assert proxy.stop() == 0


# ----------------------------------------------------------------------------- drain


def test_drain_through_the_api_lets_the_long_request_finish(
    tmp_path: Path, servers: list[ScriptedServer]
) -> None:
    release = threading.Event()
    a = ScriptedServer(named("a", hold=release)).start()
    b = ScriptedServer(named("b", hold=release)).start()
    servers += [a, b]
    proxy = _proxy(tmp_path, simple_config(0, workers=2, servers=[a.port, b.port]) + ADMIN)
    long_conn = None
    try:
        port = proxy.port("plain")
        admin = admin_url(proxy)
        long_conn = connect(port, timeout=20)
        long_conn.sendall(b"GET /hold HTTP/1.1\r\nHost: pools.test\r\n\r\n")
        (busy,) = wait_for(
            lambda: _holding(a, b),
            5,
            "the long request to reach a server",
        )
        busy_name, other_name = ("a", "b") if busy is a else ("b", "a")
        address = f"127.0.0.1:{busy.port}"
        assert _action(admin, address, "drain") == 200
        started = time.monotonic()
        wait_for(
            lambda: {_get(port)[1] for _ in range(6)} == {other_name},
            1.5,
            "new requests to avoid the draining server",
        )
        assert time.monotonic() - started < 1.5
        assert {_get(port)[1] for _ in range(8)} == {other_name}
        server = _servers(admin)[address]
        assert (server["state"], server["admin"]) == ("draining", "draining")
        # The long request on the draining server still completes.
        release.set()
        resp = ResponseReader(long_conn).next()
        assert (resp.status, resp.body) == (200, busy_name.encode())
        assert _action(admin, address, "enable") == 200
        wait_for(lambda: {_get(port)[1] for _ in range(8)} == {"a", "b"}, 3, "both servers again")
    finally:
        release.set()
        if long_conn is not None:
            long_conn.close()
        assert proxy.stop() == 0


# ---------------------------------------------------------------------------- health


def _owner_pid(local_port: int, remote_port: int, candidates: list[int]) -> int | None:
    """The process among `candidates` owning the loopback TCP socket local_port->remote_port."""
    want_local = f"0100007F:{local_port:04X}"
    want_remote = f"0100007F:{remote_port:04X}"
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == want_local and fields[2] == want_remote:
                inode = fields[9]
                break
    if inode is None or inode == "0":
        return None
    target = f"socket:[{inode}]"
    for pid in candidates:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue
    return None


def test_one_probe_stream_whatever_the_worker_count(
    tmp_path: Path, servers: list[ScriptedServer]
) -> None:
    probes: list[float] = []
    owners: list[int | None] = []
    proxy_box: list[ProxyProcess] = []

    def respond(req: Received, sock: socket.socket) -> bytes:
        if req.request_line.startswith(b"GET /health "):
            probes.append(time.monotonic())
            if proxy_box:
                peer_port = sock.getpeername()[1]
                own_port = sock.getsockname()[1]
                owners.append(_owner_pid(peer_port, own_port, child_pids(proxy_box[0].proc.pid)))
        return _answer("a")

    server = ScriptedServer(respond).start()
    servers.append(server)
    health = (
        "[pools.p.health]\n"
        'type = "http"\n'
        'path = "/health"\n'
        "interval = 0.5\n"
        "timeout = 0.4\n"
        "fall = 2\n"
        "rise = 1\n"
    )
    proxy = _proxy(tmp_path, simple_config(server.port, workers=2, pool_extra=health))
    proxy_box.append(proxy)
    try:
        workers = child_pids(proxy.proc.pid)
        assert len(workers) >= 3  # two workers and the control process
        wait_for(lambda: len(probes) >= 2, 5, "the first health probes")
        start, count0 = time.monotonic(), len(probes)
        window = 3.0
        wait_for(lambda: time.monotonic() - start >= window, window + 1, "the window")
        count = len(probes) - count0
        expected = window / 0.5
        print(f"health probes in {window} s: {count} (one prober: about {expected:g}); {owners}")
        assert expected * 0.6 <= count <= expected * 1.5, count
        known = [pid for pid in owners if pid is not None]
        assert len(known) >= len(owners) // 2, owners
        assert len(set(known)) == 1, owners
    finally:
        assert proxy.stop() == 0


def test_all_servers_down_is_503_with_retry_after_at_once(tmp_path: Path) -> None:
    dead = [dead_port(), dead_port()]
    health = (
        "[pools.p.health]\n"
        'type = "tcp"\n'
        "interval = 0.5\n"
        "timeout = 0.4\n"
        "fall = 1\n"
        "rise = 1\n"
        "start_down = false\n"
    )
    service = "[services.main.timeouts]\nserver_connect = 5\n"
    config = simple_config(0, servers=dead, pool_extra=health, service_extra=service) + ADMIN
    proxy = _proxy(tmp_path, config)
    try:
        port = proxy.port("plain")
        admin = admin_url(proxy)
        wait_for(
            lambda: all(not s["up"] and s["checked"] for s in _servers(admin).values()),
            5,
            "both servers marked down",
        )

        def down_answer() -> tuple[int, dict[str, str]]:
            status, _, _, headers = _get(port)
            return status, headers

        wait_for(lambda: down_answer()[0] == 503, 2, "the workers to learn the state")
        for _ in range(3):
            started = time.monotonic()
            status, headers = down_answer()
            elapsed = time.monotonic() - started
            assert status == 503
            assert headers.get("retry-after", "").isdigit(), headers
            assert elapsed < 0.5, elapsed  # well under the 5 s connect timeout
    finally:
        assert proxy.stop() == 0
