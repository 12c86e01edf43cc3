"""Active probes against real servers on 127.0.0.1 (plain, TLS with trustme)."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import replace
from pathlib import Path

import pytest
import trustme
from probe_servers import Backend, closed_port, response

from revproxy.balance.health import (
    ProbeResult,
    parse_expect,
    probe,
    probe_target,
    status_expected,
)
from revproxy.config.model import HealthCheckConfig, PoolConfig, ServerConfig


def check(
    port: int,
    health: HealthCheckConfig,
    pool_changes: dict[str, object] | None = None,
) -> ProbeResult:
    server = ServerConfig("127.0.0.1", port)
    pool = PoolConfig("p", (server,), health=health, **(pool_changes or {}))  # type: ignore[arg-type]
    return asyncio.run(probe(probe_target(pool, server)))


def with_backend(answer: bytes | None, health: HealthCheckConfig) -> tuple[ProbeResult, Backend]:
    async def main() -> tuple[ProbeResult, Backend]:
        backend = await Backend(answer).start()
        server = ServerConfig("127.0.0.1", backend.port)
        pool = PoolConfig("p", (server,), health=health)
        try:
            return await probe(probe_target(pool, server)), backend
        finally:
            await backend.stop()

    return asyncio.run(main())


HTTP = HealthCheckConfig(type="http", timeout=2.0)


@pytest.mark.parametrize(
    "expect, status, ok",
    [
        (("200-299", "301", "302", "401"), 200, True),
        (("200-299", "301", "302", "401"), 299, True),
        (("200-299", "301", "302", "401"), 401, True),
        (("200-299", "301", "302", "401"), 303, False),
        (("200-299", "301", "302", "401"), 503, False),
        (("204",), 200, False),
        (("100-599",), 503, True),
    ],
)
def test_status_expected(expect: tuple[str, ...], status: int, ok: bool) -> None:
    assert status_expected(status, parse_expect(expect)) is ok


@pytest.mark.parametrize("bad", ["2xx", "300-200", "99", "200-", "700"])
def test_parse_expect_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_expect((bad,))


def test_tcp_up_and_refused() -> None:
    async def main() -> None:
        backend = await Backend(None).start()
        server = ServerConfig("127.0.0.1", backend.port)
        pool = PoolConfig("p", (server,), health=HealthCheckConfig(type="tcp", timeout=2.0))
        result = await probe(probe_target(pool, server))
        assert result == ProbeResult(True, "TCP connect ok", result.duration)
        await until_accepted(backend)
        await backend.stop()

    asyncio.run(main())
    port = closed_port()
    result = check(port, HealthCheckConfig(type="tcp", timeout=2.0))
    assert not result.ok and result.detail == f"connect refused to 127.0.0.1:{port}"


async def until_accepted(backend: Backend) -> None:
    from probe_servers import until

    await until(lambda: backend.accepted == 1)


def test_tcp_check_on_its_own_port() -> None:
    async def main() -> None:
        check_port = await Backend(None).start()
        traffic_port = closed_port()
        server = ServerConfig("127.0.0.1", traffic_port)
        health = HealthCheckConfig(type="tcp", timeout=2.0, port=check_port.port)
        result = await probe(probe_target(PoolConfig("p", (server,), health=health), server))
        assert result.ok
        await until_accepted(check_port)
        await check_port.stop()

    asyncio.run(main())


def test_http_check_on_its_own_port_refused() -> None:
    async def main() -> None:
        traffic = await Backend(response(200)).start()
        port = closed_port()
        server = ServerConfig("127.0.0.1", traffic.port)
        health = replace(HTTP, port=port)
        result = await probe(probe_target(PoolConfig("p", (server,), health=health), server))
        assert result.detail == f"connect refused to 127.0.0.1:{port}"
        assert traffic.accepted == 0
        await traffic.stop()

    asyncio.run(main())


def test_http_expected_status_and_request_sent() -> None:
    result, backend = with_backend(response(200), HTTP)
    assert result.ok and result.detail == "HTTP 200"
    head = backend.heads[0]
    assert head.startswith(b"GET / HTTP/1.1\r\n")
    assert f"\r\nHost: 127.0.0.1:{backend.port}\r\n".encode() in head
    assert b"\r\nConnection: close\r\n" in head


def test_http_head_path_and_host_header() -> None:
    health = replace(HTTP, method="HEAD", path="/meet/health?x=1", host="meet.example.com")
    result, backend = with_backend(response(401, b""), health)
    assert result.ok and result.detail == "HTTP 401"
    head = backend.heads[0]
    assert head.startswith(b"HEAD /meet/health?x=1 HTTP/1.1\r\n")
    assert b"\r\nHost: meet.example.com\r\n" in head


def test_http_unexpected_status() -> None:
    result, _ = with_backend(response(503), HTTP)
    assert not result.ok
    assert result.detail == "HTTP 503 not in expected 200-299,301,302,401"


def test_http_custom_expect() -> None:
    result, _ = with_backend(response(200), replace(HTTP, expect=("204",)))
    assert result.detail == "HTTP 200 not in expected 204"


def test_http_interim_response_then_final() -> None:
    result, _ = with_backend(b"HTTP/1.1 100 Continue\r\n\r\n" + response(302), HTTP)
    assert result.ok and result.detail == "HTTP 302"


def test_http_body_is_never_read() -> None:
    # A huge body that never comes: the head is enough, long before the timeout.
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\npartial"
    result, _ = with_backend(answer, replace(HTTP, timeout=5.0))
    assert result.ok and result.duration < 2.0


@pytest.mark.parametrize(
    "answer, detail",
    [
        (
            b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
            "not an HTTP response: b'SSH-2.0-OpenSSH_9.6\\r\\n\\r\\n' from",
        ),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 20000, "response head too large from"),
    ],
)
def test_http_bad_response(answer: bytes, detail: str) -> None:
    result, _ = with_backend(answer, HTTP)
    assert not result.ok and result.detail.startswith(detail)


def test_http_connection_closed_without_answer() -> None:
    async def main() -> ProbeResult:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        server = ServerConfig("127.0.0.1", port)
        try:
            return await probe(probe_target(PoolConfig("p", (server,), health=HTTP), server))
        finally:
            srv.close()
            await srv.wait_closed()

    result = asyncio.run(main())
    assert not result.ok and result.detail.startswith("connection closed before a response")


def test_timeout_when_server_never_answers() -> None:
    health = replace(HTTP, timeout=0.3)
    result, backend = with_backend(None, health)
    assert not result.ok
    assert result.detail == f"timeout after 0.3 s: no response from 127.0.0.1:{backend.port}"
    assert 0.25 < result.duration < 1.5


# ------------------------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, ssl.SSLContext, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "pool.example.com")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ca_file = tmp_path_factory.mktemp("pki") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return ca, ctx, ca_file


def tls_probe(server_ctx: ssl.SSLContext, health: HealthCheckConfig, **pool: object) -> ProbeResult:
    async def main() -> ProbeResult:
        backend = await Backend(response(200), server_ctx).start()
        server = ServerConfig("127.0.0.1", backend.port)
        cfg = PoolConfig("p", (server,), health=health, **pool)  # type: ignore[arg-type]
        try:
            return await probe(probe_target(cfg, server))
        finally:
            await backend.stop()

    return asyncio.run(main())


HTTPS = HealthCheckConfig(type="https", timeout=3.0)


def test_https_verified_against_check_ca(pki: tuple[trustme.CA, ssl.SSLContext, Path]) -> None:
    _, ctx, ca_file = pki
    assert tls_probe(ctx, replace(HTTPS, ca=ca_file)).detail == "HTTP 200"


def test_https_falls_back_to_pool_ca_and_server_name(
    pki: tuple[trustme.CA, ssl.SSLContext, Path],
) -> None:
    _, ctx, ca_file = pki
    result = tls_probe(ctx, HTTPS, ca=ca_file, server_name="pool.example.com")
    assert result.detail == "HTTP 200"
    wrong_name = tls_probe(ctx, HTTPS, ca=ca_file, server_name="other.example.com")
    assert not wrong_name.ok and "TLS certificate of 127.0.0.1:" in wrong_name.detail


def test_https_wrong_ca_fails(pki: tuple[trustme.CA, ssl.SSLContext, Path], tmp_path: Path) -> None:
    _, ctx, _ = pki
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    result = tls_probe(ctx, replace(HTTPS, ca=other))
    assert not result.ok
    assert result.detail.startswith("TLS certificate of 127.0.0.1:")
    assert "certificate verify failed" in result.detail or "unable to get" in result.detail


def test_https_without_verification(
    pki: tuple[trustme.CA, ssl.SSLContext, Path], tmp_path: Path
) -> None:
    _, ctx, _ = pki
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    assert tls_probe(ctx, replace(HTTPS, ca=other, verify=False)).ok


def test_https_against_plain_server_fails(pki: tuple[trustme.CA, ssl.SSLContext, Path]) -> None:
    _, _, ca_file = pki

    async def main() -> ProbeResult:
        backend = await Backend(response(400), eager=True).start()
        server = ServerConfig("127.0.0.1", backend.port)
        cfg = PoolConfig("p", (server,), health=replace(HTTPS, ca=ca_file))
        try:
            return await probe(probe_target(cfg, server))
        finally:
            await backend.stop()

    result = asyncio.run(main())
    assert not result.ok and result.detail.startswith("TLS with 127.0.0.1:")


def test_target_rejects_unsafe_path() -> None:
    server = ServerConfig("127.0.0.1", 80)
    bad = PoolConfig("p", (server,), health=replace(HTTP, path="/a b\r\nX: y"))
    with pytest.raises(ValueError):
        probe_target(bad, server)
