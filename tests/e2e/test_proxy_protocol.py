"""Listeners behind another balancer: the PROXY protocol header names the client."""

from __future__ import annotations

import ipaddress
import os
import resource
import signal
import socket
import ssl
import struct
import time
from pathlib import Path

import pytest
import trustme
from harness import (
    ProxyProcess,
    Received,
    Responder,
    ScriptedServer,
    admin_url,
    by_path,
    child_pids,
    closed_by_peer,
    connect,
    exchange,
    http_call,
    http_response,
    issue_cert,
    read_response,
    simple_config,
    wait_for,
    with_tls,
)

from revproxy.http.proxyproto import V2_SIGNATURE

GET = b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n"


def v1(src: str, sport: int = 40000) -> bytes:
    family = "TCP6" if ":" in src else "TCP4"
    dst = "::1" if ":" in src else "127.0.0.1"
    return f"PROXY {family} {src} {dst} {sport} 443\r\n".encode()


def v2(src: str | None, sport: int = 40000) -> bytes:
    if src is None:  # LOCAL: the balancer's own connection, no addresses
        return V2_SIGNATURE + b"\x20\x00\x00\x00"
    packed = ipaddress.ip_address(src).packed
    family = 0x11 if len(packed) == 4 else 0x21
    body = packed + bytes(len(packed)) + struct.pack("!HH", sport, 443)
    return V2_SIGNATURE + bytes((0x21, family)) + struct.pack("!H", len(body)) + body


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serving_worker(proxy: ProxyProcess) -> int:
    """The pid of the proxy's one worker, once it has answered a request."""
    (worker,) = child_pids(proxy.proc.pid)
    with connect(proxy.port("plain")) as sock:
        sock.sendall(v1("192.0.2.1") + GET)
        assert read_response(sock)[0] == 200
    return worker


def proxied_config(backend: int, extra: str = "", header_timeout: float | None = None) -> str:
    timeouts = f"[services.main.timeouts]\nclient_header = {header_timeout}\n"
    return simple_config(
        backend,
        listener_extra="proxy_protocol = true\n" + extra,
        service_extra=timeouts if header_timeout else "",
    )


def test_v1_and_v2_headers_name_the_client_for_every_request(tmp_path: Path) -> None:
    server = ScriptedServer().start()
    proxy = ProxyProcess(proxied_config(server.port), tmp_path)
    try:
        port = proxy.port("plain")
        cases = [
            (v1("203.0.113.7"), "203.0.113.7"),
            (v1("2001:db8::7"), "2001:db8::7"),
            (v2("198.51.100.9"), "198.51.100.9"),
            (v2("2001:db8::9"), "2001:db8::9"),
            (v2(None), "127.0.0.1"),  # LOCAL: the socket's peer stands
            (b"PROXY UNKNOWN\r\n", "127.0.0.1"),
        ]
        for header, client in cases:
            with connect(port) as sock:
                # Header and request in one segment: the proxy must take only the header.
                sock.sendall(header + GET)
                assert read_response(sock)[0] == 200
                # A second request on the same connection is the same client's.
                sock.sendall(GET)
                assert read_response(sock)[0] == 200
            first, second = server.requests[-2:]
            assert first.header("x-forwarded-for") == client, header
            assert second.header("x-forwarded-for") == client, header
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_a_header_arriving_in_pieces_is_waited_for(tmp_path: Path) -> None:
    server = ScriptedServer().start()
    proxy = ProxyProcess(proxied_config(server.port), tmp_path)
    try:
        for header in (v1("192.0.2.44"), v2("192.0.2.45")):
            with connect(proxy.port("plain")) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for i in range(0, len(header), 5):
                    sock.sendall(header[i : i + 5])
                    time.sleep(0.01)  # separate segments, each read on its own
                sock.sendall(GET)
                assert read_response(sock)[0] == 200
        assert [r.header("x-forwarded-for") for r in server.requests] == [
            "192.0.2.44",
            "192.0.2.45",
        ]
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_connections_without_a_valid_header_are_closed_unanswered(tmp_path: Path) -> None:
    server = ScriptedServer().start()
    config = proxied_config(server.port, header_timeout=0.5).replace(
        "[services.main]", '[admin]\nbind = "127.0.0.1:0"\n\n[services.main]'
    )
    proxy = ProxyProcess(config, tmp_path)
    try:
        port = proxy.port("plain")
        for raw in (
            GET,  # no header: a request from a client that bypassed the balancer
            b"PROXY TCP4 192.0.2.1 127.0.0.1 99999 443\r\n" + GET,
            V2_SIGNATURE + b"\x21\x11\x00\x04abcd" + GET,
        ):
            with connect(port) as sock:
                sock.sendall(raw)
                assert closed_by_peer(sock, 5.0)
                assert sock.recv(100) == b""
        # Nothing at all: closed once the header deadline passes.
        with connect(port) as sock:
            started = time.monotonic()
            assert closed_by_peer(sock, 5.0)
            assert time.monotonic() - started < 4.0
        assert server.requests == []
        wait_for(
            lambda: "PROXY protocol header: does not start with a PROXY protocol" in proxy.log(),
            5,
            "the first rejection logged with its reason",
        )
        # The first rejection is logged with its reason; the proxy goes on serving.
        with connect(port) as sock:
            sock.sendall(v1("192.0.2.1") + GET)
            assert read_response(sock)[0] == 200
        # Every refusal is counted by reason.
        admin = admin_url(proxy)
        counted = (
            'revproxy_proxy_protocol_refusals_total{listener="plain",reason="header"} 3.0',
            'revproxy_proxy_protocol_refusals_total{listener="plain",reason="timeout"} 1.0',
        )
        wait_for(
            lambda: all(c in http_call(admin + "/metrics")[1].decode() for c in counted),
            10,
            "the refusals in the metrics",
        )
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_only_the_listed_balancers_may_send_the_header(tmp_path: Path) -> None:
    server = ScriptedServer().start()
    config = proxied_config(server.port, extra='proxy_protocol_from = ["127.0.0.0/8"]\n') + (
        '\n[listeners.other]\nbind = "127.0.0.1:0"\nproxy_protocol = true\n'
        'proxy_protocol_from = ["10.0.0.0/8", "2001:db8::/32"]\n'
    )
    proxy = ProxyProcess(config, tmp_path)
    try:
        with connect(proxy.port("plain")) as sock:
            sock.sendall(v1("192.0.2.8") + GET)
            assert read_response(sock)[0] == 200
        with connect(proxy.port("other")) as sock:
            sock.sendall(v1("192.0.2.9") + GET)
            assert closed_by_peer(sock, 5.0)
        assert [r.header("x-forwarded-for") for r in server.requests] == ["192.0.2.8"]
        wait_for(lambda: "not in proxy_protocol_from" in proxy.log(), 5, "the rejection logged")
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_trusted_proxies_are_asked_about_the_client_the_header_names(tmp_path: Path) -> None:
    """The client a header names is the one trusted_proxies is about: a trusted one's
    X-Forwarded-For is extended, anyone else's replaced (also given IPv4-mapped)."""
    server = ScriptedServer().start()
    headers = '[services.main.headers]\ntrusted_proxies = ["198.51.100.0/24"]\n'
    config = simple_config(
        server.port, listener_extra="proxy_protocol = true\n", service_extra=headers
    )
    proxy = ProxyProcess(config, tmp_path)
    forged = b"GET /x HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 203.0.113.1\r\n\r\n"
    try:
        for header in (v1("198.51.100.5"), v2("::ffff:198.51.100.6"), v1("192.0.2.9")):
            with connect(proxy.port("plain")) as sock:
                sock.sendall(header + forged)
                assert read_response(sock)[0] == 200
        assert [r.header("x-forwarded-for") for r in server.requests] == [
            "203.0.113.1, 198.51.100.5",
            "203.0.113.1, " + str(ipaddress.ip_address("::ffff:198.51.100.6")),
            "192.0.2.9",
        ]
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_tls_follows_the_header_and_sni_still_picks_the_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    certificates = [issue_cert(ca, name, tmp_path) for name in ("a.test", "b.test")]
    server = ScriptedServer().start()
    config = with_tls(simple_config(server.port), certificates, "proxy_protocol = true\n")
    proxy = ProxyProcess(config, tmp_path)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    try:
        for name, header in (("a.test", v1("203.0.113.20")), ("b.test", v2("2001:db8::20"))):
            raw = connect(proxy.port("plain"))
            raw.sendall(header)
            with client.wrap_socket(raw, server_hostname=name) as tls:
                # The certificate verified for `name`: the handshake went by its SNI.
                tls.sendall(b"GET / HTTP/1.1\r\nHost: " + name.encode() + b"\r\n\r\n")
                assert read_response(tls)[0] == 200  # type: ignore[arg-type]
        assert [r.header("x-forwarded-for") for r in server.requests] == [
            "203.0.113.20",
            "2001:db8::20",
        ]
        assert [r.header("x-forwarded-proto") for r in server.requests] == ["https", "https"]
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_failed_handshakes_and_refusals_leave_no_descriptor_open(tmp_path: Path) -> None:
    server = ScriptedServer().start()
    config = with_tls(
        simple_config(server.port, service_extra="[services.main.timeouts]\nclient_header = 0.5\n"),
        [issue_cert(trustme.CA(), "a.test", tmp_path)],
        "proxy_protocol = true\n",
    )
    proxy = ProxyProcess(config, tmp_path)
    try:
        port = proxy.port("plain")
        (worker,) = child_pids(proxy.proc.pid)

        def descriptors() -> int:
            return len(os.listdir(f"/proc/{worker}/fd"))

        with connect(port) as sock:  # the worker is up and has served a connection
            sock.sendall(GET)
            assert closed_by_peer(sock, 5.0)
        baseline = descriptors()
        for _ in range(40):
            with connect(port) as sock:  # a header, then no TLS at all
                sock.sendall(v1("192.0.2.1") + GET)
                assert closed_by_peer(sock, 5.0)
            with connect(port) as sock:  # no header
                sock.sendall(GET)
                assert closed_by_peer(sock, 5.0)
            with connect(port) as sock:  # gone in the middle of the header
                sock.sendall(v1("192.0.2.1")[:10])
        wait_for(
            lambda: descriptors() <= baseline + 2,
            10,
            f"the worker's descriptors to settle at {baseline} (+2)",
        )
    finally:
        assert proxy.stop() == 0
        server.stop()


# ---------------------------------------------------------------- towards the servers


def test_each_client_gets_its_own_server_connection_named_by_a_header(tmp_path: Path) -> None:
    server = ScriptedServer(expect_proxy=True).start()
    config = simple_config(server.port, pool_extra='proxy_protocol = "v1"\n') + (
        '\n[listeners.lb]\nbind = "127.0.0.1:0"\nproxy_protocol = true\n'
    )
    proxy = ProxyProcess(config, tmp_path)
    try:
        first, second = connect(proxy.port("plain")), connect(proxy.port("plain"))
        for sock in (first, second, first, second):
            sock.sendall(GET)
            assert read_response(sock)[0] == 200
        # One server connection per client connection, reused only for that client.
        assert server.connections == 2
        assert [r.conn_id for r in server.requests] == [1, 2, 1, 2]
        port = proxy.port("plain")
        for conn_id, sock in ((1, first), (2, second)):
            header = server.proxy_headers[conn_id]
            assert header.source == ("127.0.0.1", sock.getsockname()[1])
            assert header.destination == ("127.0.0.1", port)
        # A client that leaves takes its server connection with it.
        first.close()
        wait_for(lambda: 1 in server.ended, 10, "the first client's server connection to close")
        assert 2 not in server.ended
        second.close()
        # Behind a balancer the client its header named is the one named onwards.
        with connect(proxy.port("lb")) as sock:
            sock.sendall(v2("2001:db8::5", sport=4242) + GET)
            assert read_response(sock)[0] == 200
        header = server.proxy_headers[3]
        assert header.source == ("2001:db8::5", 4242)
        assert header.destination == ("::", 443)  # as the balancer named it
    finally:
        assert proxy.stop() == 0
        server.stop()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_header_comes_before_tls_and_checks_send_one_too(tmp_path: Path, version: str) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("app.internal")
    server = ScriptedServer(expect_proxy=True)
    server.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(server.tls)
    server.start()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    pool = (
        f'proxy_protocol = "{version}"\ntls = true\nca = "{ca_file}"\n'
        'server_name = "app.internal"\n'
        "[pools.p.health]\n"
        'type = "https"\npath = "/health"\ninterval = 0.5\ntimeout = 0.5\nrise = 1\nfall = 2\n'
    )
    proxy = ProxyProcess(simple_config(server.port, pool_extra=pool), tmp_path)
    try:
        # New servers start down until a check passes: the check's header was accepted.
        def served() -> bool:
            with connect(proxy.port("plain")) as sock:
                sock.sendall(GET)
                return read_response(sock)[0] == 200

        wait_for(served, 15, "a request served once the check passed")
        checks = [r.conn_id for r in server.requests if r.request_line.startswith(b"GET /health")]
        assert checks
        for conn_id in checks:
            check = server.proxy_headers[conn_id]
            if version == "v2":
                assert check.source is None  # LOCAL: the proxy's own connection
            else:
                # Version 1 has no LOCAL (and UNKNOWN may be refused): the check's own ends.
                assert check.source is not None and check.source[0] == "127.0.0.1"
                assert check.destination == ("127.0.0.1", server.port)
        (forwarded,) = [r for r in server.requests if r.request_line.startswith(b"GET /x")][-1:]
        header = server.proxy_headers[forwarded.conn_id]
        assert header.source is not None and header.source[0] == "127.0.0.1"
        assert forwarded.header("x-forwarded-proto") == "http"
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_a_server_closing_the_clients_connection_gets_a_new_one_with_a_header(
    tmp_path: Path,
) -> None:
    def answer_then_close(req: Received, sock: socket.socket) -> bytes | None:
        sock.sendall(http_response(200, b"bye"))
        sock.close()  # without saying so: the kept connection is simply gone
        return None

    server = ScriptedServer(
        expect_proxy=True, responder=by_path({"/bye": answer_then_close})
    ).start()
    proxy = ProxyProcess(simple_config(server.port, pool_extra='proxy_protocol = "v2"\n'), tmp_path)
    try:
        with connect(proxy.port("plain")) as sock:
            for path in (b"/bye", b"/x", b"/bye", b"/x"):
                sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: a.test\r\n\r\n")
                assert read_response(sock)[0] == 200
            client_port = sock.getsockname()[1]
        assert [r.conn_id for r in server.requests] == [1, 2, 2, 3]
        for conn_id in (1, 2, 3):
            assert server.proxy_headers[conn_id].source == ("127.0.0.1", client_port)
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_a_clients_connection_yields_when_its_server_goes_down(tmp_path: Path) -> None:
    healthy = {"a": True, "b": True}

    def health_of(name: str) -> Responder:
        def respond(req: Received, sock: socket.socket) -> bytes | None:
            return http_response(200 if healthy[name] else 503, name.encode())

        return respond

    def named(name: str) -> Responder:
        return by_path({"/health": health_of(name)}, lambda r, s: http_response(200, name.encode()))

    servers = {n: ScriptedServer(expect_proxy=True, responder=named(n)).start() for n in "ab"}
    pool = (
        'proxy_protocol = "v1"\n[pools.p.health]\n'
        'type = "http"\npath = "/health"\ninterval = 0.3\ntimeout = 0.3\nrise = 1\nfall = 1\n'
    )
    config = simple_config(0, pool_extra=pool, servers=[s.port for s in servers.values()])
    proxy = ProxyProcess(config, tmp_path)
    try:

        def answer(sock: socket.socket) -> bytes:
            sock.sendall(GET)
            status, _, body = read_response(sock)
            assert status == 200
            return body

        # New servers start down until checked; a fresh connection per try.
        wait_for(lambda: exchange(proxy.port("plain"), GET)[0] == 200, 15, "a server up")
        with connect(proxy.port("plain")) as sock:
            first = answer(sock)
            assert {answer(sock) for _ in range(4)} == {first}  # kept for this client
            healthy[first.decode()] = False
            other = b"b" if first == b"a" else b"a"
            wait_for(lambda: answer(sock) == other, 10, "the client's requests to move")
    finally:
        assert proxy.stop() == 0
        for server in servers.values():
            server.stop()


def test_a_header_cut_short_by_the_client_closes_at_once_and_costs_no_cpu(
    tmp_path: Path,
) -> None:
    server = ScriptedServer().start()
    proxy = ProxyProcess(proxied_config(server.port, header_timeout=5), tmp_path)
    try:
        port = proxy.port("plain")
        worker = serving_worker(proxy)
        # Part of a header, then the end of the stream: closed without waiting 5 s.
        with connect(port) as sock:
            sock.sendall(v1("192.0.2.1")[:12])
            sock.shutdown(socket.SHUT_WR)
            started = time.monotonic()
            assert closed_by_peer(sock, 4.0)
            assert time.monotonic() - started < 2.0
        wait_for(
            lambda: "connection closed before the header was complete" in proxy.log(),
            5,
            "the reason logged",
        )
        # Many connections holding part of a header: nothing runs until more arrives.
        descriptors = len(os.listdir(f"/proc/{worker}/fd"))
        held = [connect(port) for _ in range(200)]
        try:
            for sock in held:
                sock.sendall(b"PROXY TCP4 1")

            wait_for(
                lambda: len(os.listdir(f"/proc/{worker}/fd")) >= descriptors + 200,
                10,
                "the worker to accept them all",
            )
            before = cpu_seconds(worker)
            time.sleep(1.0)  # a span of time to measure the worker's CPU over
            assert cpu_seconds(worker) - before < 0.2
        finally:
            for sock in held:
                sock.close()
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_a_header_on_its_way_at_shutdown_is_still_answered(tmp_path: Path) -> None:
    server = ScriptedServer().start()
    proxy = ProxyProcess(proxied_config(server.port, header_timeout=5), tmp_path)
    try:
        port = proxy.port("plain")
        with connect(port) as idle, connect(port) as late:
            idle.sendall(v1("192.0.2.1") + GET)
            assert read_response(idle)[0] == 200
            header = v1("192.0.2.77")
            late.sendall(header[:10])
            proxy.signal(signal.SIGTERM)
            # The idle connection closing shows the worker is stopping.
            assert closed_by_peer(idle, 4.0)
            late.sendall(header[10:] + GET)
            status, headers, _ = read_response(late)
            assert (status, headers.get("connection")) == (200, "close")
        assert proxy.proc.wait(10) == 0
        assert server.requests[-1].header("x-forwarded-for") == "192.0.2.77"
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_an_ntlm_authenticated_connection_outranks_a_proxy_protocol_one(tmp_path: Path) -> None:
    def challenge_first(req: Received, sock: socket.socket) -> bytes | None:
        if req.request_line.startswith(b"GET /login "):
            return http_response(401, b"", ("WWW-Authenticate: NTLM",))
        return http_response(200, b"in")

    ntlm = ScriptedServer(responder=challenge_first).start()
    proxied = ScriptedServer(expect_proxy=True).start()
    config = simple_config(proxied.port, pool_extra='proxy_protocol = "v1"\n') + (
        f'\n[services.intranet]\nhosts = ["ntlm.test"]\npool = "ntlm"\n'
        f'\n[pools.ntlm]\nservers = ["127.0.0.1:{ntlm.port}"]\n'
    )
    proxy = ProxyProcess(config, tmp_path)

    def get(sock: socket.socket, path: str, host: str) -> int:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        return read_response(sock)[0]

    try:
        with connect(proxy.port("plain")) as sock:
            assert get(sock, "/login", "ntlm.test") == 401  # the connection is now this client's
            assert get(sock, "/x", "a.test") == 200  # through a PROXY-protocol connection
            assert get(sock, "/x", "a.test") == 200
            assert get(sock, "/step2", "ntlm.test") == 200
        # The NTLM handshake went on over the connection it started on.
        assert [r.conn_id for r in ntlm.requests] == [1, 1]
        assert len(proxied.requests) == 2
    finally:
        assert proxy.stop() == 0
        ntlm.stop()
        proxied.stop()


def test_a_clients_server_connection_ages_like_a_pooled_one(tmp_path: Path) -> None:
    server = ScriptedServer(expect_proxy=True).start()
    pool = 'proxy_protocol = "v2"\nidle_timeout = 0.5\n'
    proxy = ProxyProcess(simple_config(server.port, pool_extra=pool), tmp_path)
    try:
        with connect(proxy.port("plain")) as sock:
            for _ in range(2):
                sock.sendall(GET)
                assert read_response(sock)[0] == 200
            time.sleep(0.7)  # idle for longer than the pool's idle_timeout
            sock.sendall(GET)
            assert read_response(sock)[0] == 200
        assert [r.conn_id for r in server.requests] == [1, 1, 2]
        wait_for(lambda: 1 in server.ended, 5, "the aged connection to be closed")
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_out_of_descriptors_the_accept_loop_waits_instead_of_spinning(tmp_path: Path) -> None:
    server = ScriptedServer().start()
    proxy = ProxyProcess(proxied_config(server.port), tmp_path)
    try:
        port = proxy.port("plain")
        worker = serving_worker(proxy)
        limits = resource.prlimit(worker, resource.RLIMIT_NOFILE)
        in_use = len(os.listdir(f"/proc/{worker}/fd"))
        resource.prlimit(worker, resource.RLIMIT_NOFILE, (in_use, limits[1]))
        waiting = connect(port)  # in the backlog: accepting it fails with EMFILE
        try:
            waiting.sendall(v1("192.0.2.2") + GET)
            wait_for(lambda: "accepting again in" in proxy.log(), 10, "the failure logged")

            before = cpu_seconds(worker)
            time.sleep(1.0)  # a span of time to measure the worker's CPU over
            assert cpu_seconds(worker) - before < 0.2
            assert proxy.log().count("accept failed") == 1  # one line, not a flood
            resource.prlimit(worker, resource.RLIMIT_NOFILE, limits)
            # Descriptors again: the waiting connection is taken in and answered.
            assert read_response(waiting)[0] == 200
        finally:
            waiting.close()
    finally:
        assert proxy.stop() == 0
        server.stop()
