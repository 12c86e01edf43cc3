"""Process management through the real proxy: workers, graceful stop, worker restart,
reload with a good and with a broken configuration, and `revproxy check`."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import trustme
from harness import (
    REPO,
    ProxyProcess,
    Received,
    ScriptedServer,
    child_pids,
    closed_by_peer,
    connect,
    exchange,
    free_port,
    process_alive,
    read_response,
    simple_config,
    wait_for,
)


def _named(name: str):  # type: ignore[no-untyped-def]
    def respond(req: Received, sock: socket.socket) -> bytes:
        body = b"%s %s" % (name.encode(), req.request_line)
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    return respond


def _get(port: int, path: str = "/", close: bool = True) -> tuple[int, dict[str, str], bytes]:
    extra = "Connection: close\r\n" if close else ""
    return exchange(port, f"GET {path} HTTP/1.1\r\nHost: p.test\r\n{extra}\r\n".encode())


def _refused(port: int) -> bool:
    """Whether a connection to the loopback port is refused (nothing listens there)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False  # not an answer either way: asked again
    return False


def _workers(proxy: ProxyProcess, count: int) -> list[int]:
    return wait_for(
        lambda: (pids := child_pids(proxy.proc.pid)) and len(pids) == count and pids,
        10,
        f"{count} workers",
    )


def test_two_workers_serve_requests(tmp_path: Path) -> None:
    server = ScriptedServer(_named("s1")).start()
    proxy = ProxyProcess(simple_config(server.port, workers=2), tmp_path)
    try:
        workers = _workers(proxy, 2)
        assert proxy.proc.pid not in workers
        for i in range(50):
            status, _, body = _get(proxy.port("plain"), f"/r{i}")
            assert (status, body) == (200, f"s1 GET /r{i} HTTP/1.1".encode())
        assert len(server.requests) == 50
        assert child_pids(proxy.proc.pid) == workers
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_sigterm_closes_idle_keepalive_connections(tmp_path: Path) -> None:
    server = ScriptedServer(_named("s1")).start()
    proxy = ProxyProcess(simple_config(server.port), tmp_path)
    try:
        with connect(proxy.port("plain")) as idle:
            idle.sendall(b"GET /first HTTP/1.1\r\nHost: p.test\r\n\r\n")
            status, headers, _ = read_response(idle)
            assert status == 200 and "connection" not in headers
            started = time.monotonic()
            proxy.signal(signal.SIGTERM)
            assert closed_by_peer(idle, 4.0)
        # Nothing was in flight: the proxy does not wait for its grace period (5 s).
        assert proxy.proc.wait(10) == 0
        assert time.monotonic() - started < 4.0
    finally:
        assert proxy.stop() == 0
        server.stop()


_TLS_LISTENER = 'tls = true\n[[listeners.plain.certificates]]\ncert = "a.pem"\nkey = "a.key"'


def _tls_setup(tmp_path: Path, grace: int) -> tuple[trustme.CA, ScriptedServer, str]:
    """A CA, a server and the config of a TLS listener for a.test (files in tmp_path)."""
    ca = trustme.CA()
    leaf = ca.issue_cert("a.test")
    (tmp_path / "a.pem").write_bytes(leaf.cert_chain_pems[0].bytes())
    (tmp_path / "a.key").write_bytes(leaf.private_key_pem.bytes())
    server = ScriptedServer(_named("s1")).start()
    config = simple_config(server.port, listener_extra=_TLS_LISTENER).replace(
        "shutdown_grace = 5", f"shutdown_grace = {grace}"
    )
    return ca, server, config


def test_sigterm_does_not_wait_for_failed_tls_handshakes(tmp_path: Path) -> None:
    _, server, config = _tls_setup(tmp_path, 20)
    proxy = ProxyProcess(config, tmp_path)
    try:
        with connect(proxy.port("plain")) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")  # not a ClientHello
            assert closed_by_peer(sock, 5.0)
        started = time.monotonic()
        proxy.signal(signal.SIGTERM)
        # The failed handshake is over, not in progress: nothing to wait the 20 s for.
        assert proxy.proc.wait(15) == 0
        assert time.monotonic() - started < 4.0
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_sigterm_does_not_wait_for_a_tls_client_keeping_a_closed_connection(
    tmp_path: Path,
) -> None:
    ca, server, config = _tls_setup(tmp_path, 30)
    proxy = ProxyProcess(config, tmp_path)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    try:
        raw = socket.create_connection(("127.0.0.1", proxy.port("plain")), timeout=10)
        with client.wrap_socket(raw, server_hostname="a.test") as sock:
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            status, _, body = read_response(sock)  # type: ignore[arg-type]
            assert (status, body) == (200, b"s1 GET /x HTTP/1.1")
            # The proxy closed its side (close_notify); this client neither answers nor
            # closes its socket. The proxy waits a few seconds for it, not its grace.
            started = time.monotonic()
            proxy.signal(signal.SIGTERM)
            assert proxy.proc.wait(20) == 0
            assert time.monotonic() - started < 8.0
    finally:
        assert proxy.stop() == 0
        server.stop()


class Gate:
    """A responder that holds requests for /hold until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def __call__(self, req: Received, sock: socket.socket) -> bytes:
        if req.request_line.startswith(b"GET /hold "):
            self.release.wait(20)
        body = b"done " + req.request_line
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def test_sigterm_lets_the_request_in_flight_finish_with_connection_close(
    tmp_path: Path,
) -> None:
    gate = Gate()
    server = ScriptedServer(gate).start()
    proxy = ProxyProcess(simple_config(server.port), tmp_path)
    try:
        port = proxy.port("plain")
        with connect(port) as busy, connect(port) as idle:
            # `idle` proves below that the worker has begun its graceful stop.
            idle.sendall(b"GET /quick HTTP/1.1\r\nHost: p.test\r\n\r\n")
            assert read_response(idle)[0] == 200
            # A keep-alive request (no Connection: close) is in flight at the server.
            busy.sendall(b"GET /hold HTTP/1.1\r\nHost: p.test\r\n\r\n")
            wait_for(lambda: len(server.requests) == 2, 5, "the request to reach the server")
            proxy.signal(signal.SIGTERM)
            assert closed_by_peer(idle, 4.0)
            assert proxy.proc.poll() is None
            gate.release.set()
            status, headers, body = read_response(busy)
            assert status == 200
            assert body == b"done GET /hold HTTP/1.1"
            assert headers.get("connection", "").lower() == "close"
            assert closed_by_peer(busy, 4.0)
        assert proxy.proc.wait(10) == 0
        assert "grace period over" not in proxy.log()
    finally:
        gate.release.set()
        assert proxy.stop() == 0
        server.stop()


def test_sigterm_stops_accepting_at_once_while_a_request_finishes(tmp_path: Path) -> None:
    """From the stop signal on, the listening port refuses connections (so that a new
    instance bound to it, or a client retrying, is not left waiting in an accept queue
    nobody reads), while the request in flight still gets its answer."""
    gate = Gate()
    server = ScriptedServer(gate).start()
    proxy = ProxyProcess(simple_config(server.port, workers=2), tmp_path)
    try:
        port = proxy.port("plain")
        _workers(proxy, 2)
        with connect(port) as busy:
            busy.sendall(b"GET /hold HTTP/1.1\r\nHost: p.test\r\n\r\n")
            wait_for(lambda: len(server.requests) == 1, 5, "the request to reach the server")
            proxy.signal(signal.SIGTERM)
            wait_for(
                lambda: _refused(port), 5, "the port to refuse connections during the graceful stop"
            )
            assert proxy.proc.poll() is None  # still finishing the request in flight
            gate.release.set()
            status, _, body = read_response(busy)
            assert (status, body) == (200, b"done GET /hold HTTP/1.1")
        assert proxy.proc.wait(10) == 0
    finally:
        gate.release.set()
        assert proxy.stop() == 0
        server.stop()


class SlowBody:
    """Answers /stream with its head and half its body, then the rest once released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def __call__(self, req: Received, sock: socket.socket) -> bytes:
        if not req.request_line.startswith(b"GET /stream "):
            body = b"next " + req.request_line
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
        self.release.wait(20)
        return b"67890"


def test_sigterm_during_a_streamed_response_does_not_lose_the_next_request(
    tmp_path: Path,
) -> None:
    slow = SlowBody()
    server = ScriptedServer(slow).start()
    proxy = ProxyProcess(simple_config(server.port), tmp_path)
    try:
        port = proxy.port("plain")
        with connect(port) as busy, connect(port) as idle:
            idle.sendall(b"GET /quick HTTP/1.1\r\nHost: p.test\r\n\r\n")
            assert read_response(idle)[0] == 200
            busy.sendall(b"GET /stream HTTP/1.1\r\nHost: p.test\r\n\r\n")
            wait_for(lambda: len(server.requests) == 2, 5, "the request to reach the server")
            busy.settimeout(10)
            head = b""
            while b"12345" not in head:
                head += busy.recv(65536)
            # The head went out before the stop: it could not say Connection: close.
            assert b"connection: close" not in head.lower()
            proxy.signal(signal.SIGTERM)
            assert closed_by_peer(idle, 4.0)
            slow.release.set()
            rest = b""
            while len(head.split(b"\r\n\r\n", 1)[1]) + len(rest) < 10:
                rest += busy.recv(65536)
            # A client that saw no Connection: close may send its next request at once; it
            # must be answered (with Connection: close), not dropped.
            busy.sendall(b"GET /after HTTP/1.1\r\nHost: p.test\r\n\r\n")
            status, headers, body = read_response(busy)
        assert (status, body) == (200, b"next GET /after HTTP/1.1")
        assert headers.get("connection", "").lower() == "close"
    finally:
        slow.release.set()
        assert proxy.stop() == 0
        server.stop()


def test_killed_worker_is_replaced(tmp_path: Path) -> None:
    server = ScriptedServer(_named("s1")).start()
    proxy = ProxyProcess(simple_config(server.port, workers=2), tmp_path)
    try:
        before = _workers(proxy, 2)
        victim = before[0]
        os.kill(victim, signal.SIGKILL)
        after = wait_for(
            lambda: (
                (pids := child_pids(proxy.proc.pid))
                and len(pids) == 2
                and victim not in pids
                and pids
            ),
            10,
            "a new worker",
        )
        assert before[1] in after
        wait_for(lambda: not process_alive(victim), 5, "the killed worker to be reaped")
        assert f"worker {victim} (slot 0) exited unexpectedly (signal 9)" in proxy.log()
        for i in range(30):
            status, _, body = _get(proxy.port("plain"), f"/k{i}")
            assert (status, body) == (200, f"s1 GET /k{i} HTTP/1.1".encode())
    finally:
        assert proxy.stop() == 0
        server.stop()


class ClientLoop:
    """Requests on new connections, one after another, until stopped; records every answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: list[bytes] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                status, _, body = _get(self.port, f"/c{i}")
            except (OSError, EOFError) as exc:
                self.failures.append(f"request {i}: {exc!r}")
                continue
            if status != 200:
                self.failures.append(f"request {i}: status {status}")
            self.answers.append(body.split(b" ", 1)[0])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def test_reload_switches_pool_without_refusing_connections(tmp_path: Path) -> None:
    one = ScriptedServer(_named("one")).start()
    two = ScriptedServer(_named("two")).start()
    port = free_port()
    listener = f'bind = "127.0.0.1:{port}"'

    def config(server: ScriptedServer) -> str:
        return simple_config(server.port, workers=2).replace('bind = "127.0.0.1:0"', listener)

    proxy = ProxyProcess(config(one), tmp_path)
    loop: ClientLoop | None = None
    try:
        old = _workers(proxy, 2)
        loop = ClientLoop(port)
        wait_for(lambda: len(loop.answers) >= 20, 10, "requests before the reload")
        proxy.config_path.write_text(config(two))
        proxy.signal(signal.SIGHUP)
        wait_for(lambda: b"two" in loop.answers, 10, "the new configuration to serve")
        wait_for(lambda: not any(process_alive(pid) for pid in old), 10, "the old workers to exit")
        mark = len(loop.answers)
        wait_for(lambda: len(loop.answers) >= mark + 50, 10, "requests after the reload")
        loop.stop()
        assert loop.failures == []
        assert set(loop.answers[:20]) == {b"one"}
        # Once the old workers are gone, every new connection gets the new pool.
        assert set(loop.answers[mark:]) == {b"two"}
        assert "configuration reloaded" in proxy.log()
        new = child_pids(proxy.proc.pid)
        assert len(new) == 2 and not set(new) & set(old)
    finally:
        if loop is not None:
            loop.stop()
        assert proxy.stop() == 0
        one.stop()
        two.stop()


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_reload_answers_a_connection_accepted_before_it(tmp_path: Path) -> None:
    server = ScriptedServer(_named("s1")).start()
    port = free_port()
    config = simple_config(server.port).replace(
        'bind = "127.0.0.1:0"', f'bind = "127.0.0.1:{port}"'
    )
    proxy = ProxyProcess(config, tmp_path)
    try:
        (worker,) = _workers(proxy, 1)
        with connect(port) as idle:
            # `idle` has served a request: closing it at the reload is expected, and shows
            # when the old worker has begun draining.
            idle.sendall(b"GET /first HTTP/1.1\r\nHost: p.test\r\n\r\n")
            assert read_response(idle)[0] == 200
            before = _open_fds(worker)
            with connect(port) as fresh:
                # Accepted by the worker, but the client has not written its request yet
                # (a TLS handshake or a slow client network is enough for that).
                wait_for(lambda: _open_fds(worker) > before, 5, "the connection to be accepted")
                proxy.signal(signal.SIGHUP)
                assert closed_by_peer(idle, 5.0)
                fresh.sendall(b"GET /fresh HTTP/1.1\r\nHost: p.test\r\n\r\n")
                status, headers, body = read_response(fresh)
        assert (status, body) == (200, b"s1 GET /fresh HTTP/1.1")
        assert headers.get("connection", "").lower() == "close"
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_reload_answers_a_tls_connection_still_in_its_handshake(tmp_path: Path) -> None:
    ca, server, config = _tls_setup(tmp_path, 5)
    port = free_port()
    config = config.replace('bind = "127.0.0.1:0"', f'bind = "127.0.0.1:{port}"')
    proxy = ProxyProcess(config, tmp_path)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    try:
        (worker,) = _workers(proxy, 1)
        before = _open_fds(worker)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            # Accepted by the worker, no ClientHello yet: the connection is neither served
            # nor idle when the reload retires the worker.
            wait_for(lambda: _open_fds(worker) > before, 5, "the connection to be accepted")
            proxy.signal(signal.SIGHUP)
            wait_for(lambda: "configuration reloaded" in proxy.log(), 10, "the reload")
            with client.wrap_socket(raw, server_hostname="a.test") as sock:
                sock.sendall(b"GET /late HTTP/1.1\r\nHost: a.test\r\n\r\n")
                status, headers, body = read_response(sock)  # type: ignore[arg-type]
        assert (status, body) == (200, b"s1 GET /late HTTP/1.1")
        assert headers.get("connection", "").lower() == "close"
        wait_for(lambda: not process_alive(worker), 10, "the old worker to exit")
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_reload_with_a_broken_config_keeps_the_running_one(tmp_path: Path) -> None:
    server = ScriptedServer(_named("s1")).start()
    proxy = ProxyProcess(simple_config(server.port), tmp_path)
    try:
        workers = _workers(proxy, 1)
        broken = simple_config(
            server.port, service_extra="[services.main.timeouts]\nclient_headr = 10"
        )
        proxy.config_path.write_text(broken)
        proxy.signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in proxy.log(), 10, "the reload to be refused")
        log = proxy.log()
        assert f"{proxy.config_path}: services.main.timeouts.client_headr: unknown key" in log
        assert "configuration reloaded" not in log
        status, _, body = _get(proxy.port("plain"), "/still")
        assert (status, body) == (200, b"s1 GET /still HTTP/1.1")
        assert child_pids(proxy.proc.pid) == workers
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_reload_with_a_broken_certificate_keeps_the_running_one(tmp_path: Path) -> None:
    ca, server, config = _tls_setup(tmp_path, 5)
    cert = tmp_path / "a.pem"
    proxy = ProxyProcess(config, tmp_path)
    client = ssl.create_default_context()
    ca.configure_trust(client)

    def get() -> bytes:
        with (
            socket.create_connection(("127.0.0.1", proxy.port("plain")), timeout=10) as raw,
            client.wrap_socket(raw, server_hostname="a.test") as sock,
        ):
            sock.sendall(b"GET /tls HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            status, _, body = read_response(sock)  # type: ignore[arg-type]
            assert status == 200
            return body

    try:
        assert get() == b"s1 GET /tls HTTP/1.1"
        cert.write_text("not a certificate\n")
        proxy.signal(signal.SIGHUP)
        wait_for(
            lambda: "reload refused" in proxy.log() or proxy.proc.poll() is not None,
            10,
            "the reload to be refused",
        )
        assert proxy.proc.poll() is None, proxy.log()
        assert str(cert) in proxy.log()
        assert get() == b"s1 GET /tls HTTP/1.1"
    finally:
        proxy.stop()
        server.stop()


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "revproxy", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def test_check_names_file_and_key_of_a_bad_config(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(simple_config(8080))
    result = _check(good)
    assert result.returncode == 0, result.stderr
    assert f"{good}: ok" in result.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text(
        simple_config(8080, service_extra='[services.main.timeouts]\nclient_header = "ten"')
    )
    result = _check(bad)
    assert result.returncode != 0
    assert f"{bad}: services.main.timeouts.client_header:" in result.stderr
    assert "ok" not in result.stdout


def test_reload_that_removes_a_listener_makes_its_port_refuse(tmp_path: Path) -> None:
    server = ScriptedServer(_named("s1")).start()
    extra = free_port()
    base = simple_config(server.port, workers=2)
    with_extra = base + f'\n[listeners.extra]\nbind = "127.0.0.1:{extra}"\n'
    proxy = ProxyProcess(with_extra, tmp_path)
    try:
        old = _workers(proxy, 2)
        assert _get(extra, "/before")[0] == 200
        proxy.config_path.write_text(base)
        proxy.signal(signal.SIGHUP)
        wait_for(lambda: not any(process_alive(pid) for pid in old), 10, "the old workers to exit")

        # No process listens there any more: not even the new workers inherited it.
        wait_for(lambda: _refused(extra), 10, "the removed listener's port to refuse connections")
        assert _get(proxy.port("plain"), "/after")[0] == 200
    finally:
        assert proxy.stop() == 0
        server.stop()
