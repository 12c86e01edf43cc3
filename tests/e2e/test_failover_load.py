"""A server killed under load and brought back: no GET fails, health checks mark it down
and up again, and it gets traffic again once it is back.

Three demo servers run in processes of their own so one can be killed with SIGKILL; the
client load is a few threads of keep-alive GET loops through the proxy, bounded in
requests and time.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness import (
    BackendProcess,
    ProxyProcess,
    Received,
    ResponseReader,
    ScriptedServer,
    admin_url,
    connect,
    free_port,
    http_call,
    simple_config,
    wait_for,
)

THREADS = 4
MAX_REQUESTS_PER_THREAD = 4000
MAX_SECONDS = 20.0


@dataclass
class Load:
    """Keep-alive GET loops through the proxy, counting who answered and what failed."""

    port: int
    served: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    requests: int = 0
    # (monotonic time, server) of every answer, to tell traffic after a restart.
    answers: list[tuple[float, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.started = time.monotonic()
        self._deadline = self.started + MAX_SECONDS
        for i in range(THREADS):
            thread = threading.Thread(target=self._run, args=(i,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
        assert not any(t.is_alive() for t in self._threads), "a load thread did not stop"

    def since(self, when: float, server: str) -> int:
        with self._lock:
            return sum(1 for t, name in self.answers if t >= when and name == server)

    def _run(self, index: int) -> None:
        conn: http.client.HTTPConnection | None = None
        for n in range(MAX_REQUESTS_PER_THREAD):
            if self._stop.is_set() or time.monotonic() > self._deadline:
                break
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            # A short wait on the server keeps requests in flight when one is killed.
            path = "/slow?ms=10" if n % 2 else f"/load/{index}/{n}"
            outcome = ""
            try:
                conn.request("GET", path, headers={"Host": "app.test"})
                response = conn.getresponse()
                response.read()
                server = response.getheader("X-Served-By", "?")
                if response.status != 200:
                    outcome = f"{path}: status {response.status} from {server}"
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                outcome = f"{path}: {type(exc).__name__}: {exc}"
                server = "?"
                conn.close()
                conn = None
            with self._lock:
                self.requests += 1
                if outcome:
                    self.failures.append(f"{time.monotonic() - self.started:6.3f} s {outcome}")
                else:
                    self.served[server] += 1
                    self.answers.append((time.monotonic(), server))
        if conn is not None:
            conn.close()


def _who_answers(port: int) -> set[str]:
    """The servers that answered 12 GETs on new connections; empty when one was not a 200."""
    seen = set()
    for _ in range(12):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/", headers={"Host": "app.test"})
            response = conn.getresponse()
            response.read()
        finally:
            conn.close()
        if response.status != 200:
            return set()
        seen.add(response.getheader("X-Served-By", "?"))
    return seen


@pytest.fixture
def backends() -> Iterator[dict[str, BackendProcess]]:
    running: dict[str, BackendProcess] = {}
    yield running
    for backend in running.values():
        backend.stop()


def test_killed_server_under_load_loses_no_get(
    tmp_path: Path, backends: dict[str, BackendProcess]
) -> None:
    ports = {name: free_port() for name in ("s1", "s2", "s3")}
    for name, port in ports.items():
        backends[name] = BackendProcess(f"{name}=127.0.0.1:{port}")
    servers = ", ".join(f'"127.0.0.1:{port}"' for port in ports.values())
    config = f"""
[global]
workers = 2
shutdown_grace = 5

[listeners.plain]
bind = "127.0.0.1:0"

[services.main]
pool = "p"
retries = 2

[pools.p]
servers = [{servers}]

[pools.p.health]
type = "http"
path = "/health"
interval = 0.5
timeout = 0.4
fall = 2
rise = 2

[admin]
bind = "127.0.0.1:0"
"""
    proxy = ProxyProcess(config, tmp_path)
    load = Load(proxy.port("plain"))
    try:
        admin = admin_url(proxy)
        victim = f"127.0.0.1:{ports['s2']}"

        def states() -> dict[str, str]:
            code, body = http_call(admin + "/api/status")
            assert code == 200
            (pool,) = json.loads(body)["pools"]
            return {s["address"]: s["state"] for s in pool["servers"]}

        wait_for(lambda: set(states().values()) == {"up"}, 10, "all three servers up")
        # The workers apply the published state a moment after the status shows it.
        wait_for(lambda: _who_answers(load.port) == set(ports), 5, "all three servers serving")
        load.start()
        # Long enough for every server connection the load needs to be open and reused.
        wait_for(
            lambda: (
                time.monotonic() - load.started >= 1.0 and all(load.served[n] >= 50 for n in ports)
            ),
            10,
            "traffic on every server",
        )

        killed_at = time.monotonic()
        backends["s2"].proc.kill()
        backends["s2"].proc.wait(5)
        wait_for(lambda: states()[victim] == "down", 5, "the killed server marked down")
        down_after = time.monotonic() - killed_at
        # The load goes on without it for a while, past what the active checks need (fall 2).
        wait_for(
            lambda: time.monotonic() - killed_at >= 1.5 and load.since(killed_at + 1.0, "s1") > 0,
            5,
            "load without the killed server",
        )
        assert states()[victim] == "down"
        assert load.since(killed_at + 0.5, "s2") == 0

        backends["s2"].stop()
        backends["s2"] = BackendProcess(f"s2=127.0.0.1:{ports['s2']}")
        restarted_at = time.monotonic()
        wait_for(lambda: states()[victim] == "up", 10, "the restarted server marked up")
        up_after = time.monotonic() - restarted_at
        wait_for(lambda: load.since(restarted_at, "s2") >= 20, 10, "traffic on s2 again")
        load.stop()

        print(
            f"\nrequests {load.requests}, failures {len(load.failures)}, served {dict(load.served)}"
            f"; killed at {killed_at - load.started:.3f} s, down {down_after:.2f} s after the kill,"
            f" restarted at {restarted_at - load.started:.3f} s, up {up_after:.2f} s after"
        )
        for failure in load.failures[:20]:
            print("  failed:", failure)
        if load.failures:
            print("proxy warnings:")
            for line in proxy.log().splitlines():
                if "WARNING" in line or "ERROR" in line or "health" in line:
                    print("  " + line)
        assert load.requests >= 200
        assert states() == {f"127.0.0.1:{port}": "up" for port in ports.values()}
        # Every request is a GET: in flight on the killed server or not, it must be retried
        # on another server, so none may fail.
        assert load.failures == []
    finally:
        load.stop()
        assert proxy.stop() == 0


# --------------------------------------------------------------- the same, deterministic


def _dies_after(answers: int, name: str):  # type: ignore[no-untyped-def]
    """A responder that answers its first `answers` requests, then closes every connection
    as soon as a request arrives, without a byte of response (a server going away)."""
    count = [0]
    lock = threading.Lock()

    def respond(req: Received, sock: socket.socket) -> bytes | None:
        with lock:
            count[0] += 1
            n = count[0]
        if n > answers:
            return None
        body = name.encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    return respond


def _named(name: str):  # type: ignore[no-untyped-def]
    def respond(req: Received, sock: socket.socket) -> bytes:
        body = name.encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    return respond


def _pair_proxy(tmp_path: Path, dying: ScriptedServer, live: ScriptedServer) -> ProxyProcess:
    config = simple_config(0, servers=[dying.port, live.port], service_extra="retries = 2\n")
    return ProxyProcess(config, tmp_path)


def _send(port: int, raw: bytes) -> tuple[int, bytes]:
    with connect(port) as sock:
        sock.sendall(raw)
        resp = ResponseReader(sock).next()
    return resp.status, resp.body


GET = b"GET /page HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"


def test_get_whose_server_dies_after_a_stale_connection_goes_to_another_server(
    tmp_path: Path, servers: list[ScriptedServer]
) -> None:
    # `a` answers once (so the proxy keeps that connection for reuse), then dies: its
    # connections close on every request, the reused one and any new one.
    a = ScriptedServer(_dies_after(1, "a")).start()
    b = ScriptedServer(_named("b")).start()
    servers += [a, b]
    proxy = _pair_proxy(tmp_path, a, b)
    try:
        port = proxy.port("plain")
        answers = [_send(port, GET) for _ in range(6)]
        print(answers, f"a saw {len(a.requests)} requests on {a.connections} connections")
        # The scenario happened: `a` got requests after it stopped answering, on the reused
        # connection and on a new one.
        assert len(a.requests) >= 3 and a.connections >= 2
        assert answers[0] == (200, b"a")
        assert answers[1:] == [(200, b"b")] * 5
    finally:
        assert proxy.stop() == 0


def test_get_in_flight_on_a_new_connection_goes_to_another_server(
    tmp_path: Path, servers: list[ScriptedServer]
) -> None:
    a = ScriptedServer(_dies_after(0, "a")).start()
    b = ScriptedServer(_named("b")).start()
    servers += [a, b]
    proxy = _pair_proxy(tmp_path, a, b)
    try:
        port = proxy.port("plain")
        answers = [_send(port, GET) for _ in range(4)]
        print(answers, f"a saw {len(a.requests)} requests on {a.connections} connections")
        assert len(a.requests) >= 1
        assert answers == [(200, b"b")] * 4
    finally:
        assert proxy.stop() == 0


def test_post_in_flight_when_its_server_dies_is_not_resent(
    tmp_path: Path, servers: list[ScriptedServer]
) -> None:
    a = ScriptedServer(_dies_after(0, "a")).start()
    b = ScriptedServer(_named("b")).start()
    servers += [a, b]
    proxy = _pair_proxy(tmp_path, a, b)
    try:
        port = proxy.port("plain")
        post = b"POST /order HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\r\nitem1"
        # Round robin sends the first request to `a`.
        assert _send(port, post)[0] == 502
        assert [r.body for r in a.requests] == [b"item1"]
        assert b.requests == []
    finally:
        assert proxy.stop() == 0
