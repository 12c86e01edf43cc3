"""The demo real servers, exercised with a real HTTP client over loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from revproxy.demo.backends import Backend, ListenSpec, parse_listen, start_backend

ROOT = Path(__file__).resolve().parents[2]


def run(test: Callable[[Backend, aiohttp.ClientSession], Awaitable[Any]], **kwargs: Any) -> Any:
    """Start a backend on a free port, run test(backend, session), stop everything."""

    async def main() -> Any:
        backend = await start_backend("127.0.0.1", 0, "fe1", **kwargs)
        try:
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=20), auto_decompress=False
            ) as session:
                return await test(backend, session)
        finally:
            await backend.close()

    return asyncio.run(main())


def test_describes_the_request() -> None:
    async def check(backend: Backend, session: aiohttp.ClientSession) -> None:
        headers = {"Host": "meet.demo.test", "X-Forwarded-For": "192.0.2.1"}
        async with session.post(
            f"{backend.url}/meet/abc?x=1", headers=headers, data=b"12345"
        ) as response:
            assert response.status == 200
            assert response.headers["X-Served-By"] == "fe1"
            assert response.content_type == "text/plain"
            body = await response.text()
        lines = body.splitlines()
        assert lines[:6] == [
            "server: fe1",
            "host: meet.demo.test",
            "method: POST",
            "path: /meet/abc?x=1",
            "x-forwarded-for: 192.0.2.1",
            "x-forwarded-proto: -",
        ]
        assert "body-bytes: 5" in lines

    run(check)


def test_health_status_and_slow() -> None:
    async def check(backend: Backend, session: aiohttp.ClientSession) -> None:
        async with session.get(f"{backend.url}/health") as response:
            assert (response.status, await response.text()) == (200, "ok")
        for code in (201, 302, 404, 503):
            async with session.get(f"{backend.url}/status?code={code}") as response:
                assert response.status == code
                assert response.headers["X-Served-By"] == "fe1"
                assert "server: fe1" in await response.text()
        async with session.get(f"{backend.url}/status?code=204") as response:
            assert response.status == 204 and await response.read() == b""
        for bad in ("code=99", "code=600", "code=x"):
            async with session.get(f"{backend.url}/status?{bad}") as response:
                assert response.status == 400
        started = time.monotonic()
        async with session.get(f"{backend.url}/slow?ms=150") as response:
            assert response.status == 200
        assert time.monotonic() - started >= 0.15
        async with session.get(f"{backend.url}/slow?ms=60001") as response:
            assert response.status == 400

    run(check)


def test_big_chunked_and_with_length() -> None:
    async def check(backend: Backend, session: aiohttp.ClientSession) -> None:
        size = 3 * 1024 * 1024 + 7
        async with session.get(f"{backend.url}/big?bytes={size}") as response:
            assert response.headers.get("Transfer-Encoding") == "chunked"
            assert "Content-Length" not in response.headers
            received = 0
            async for chunk in response.content.iter_chunked(65536):
                received += len(chunk)
            assert received == size
        async with session.get(f"{backend.url}/big?bytes=1000&cl=1") as response:
            assert response.headers["Content-Length"] == "1000"
            assert "Transfer-Encoding" not in response.headers
            assert len(await response.read()) == 1000
        async with session.head(f"{backend.url}/big?bytes=1000&cl=1") as response:
            assert response.headers["Content-Length"] == "1000"
        async with session.get(f"{backend.url}/big?bytes={2 * 1024**3 + 1}") as response:
            assert response.status == 400

    run(check)


def test_echo_streams_the_body_back() -> None:
    async def check(backend: Backend, session: aiohttp.ClientSession) -> None:
        payload = os.urandom(300_000)
        async with session.put(f"{backend.url}/echo", data=payload) as response:
            assert response.headers["Content-Length"] == str(len(payload))
            assert await response.read() == payload

        async def pieces() -> Any:
            for i in range(5):
                yield bytes([i]) * 1000

        async with session.post(f"{backend.url}/echo", data=pieces()) as response:
            assert response.headers.get("Transfer-Encoding") == "chunked"
            assert await response.read() == b"".join(bytes([i]) * 1000 for i in range(5))

    run(check)


def test_tls_backend(tmp_path: Path) -> None:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)

    async def check(backend: Backend, session: aiohttp.ClientSession) -> None:
        assert backend.url.startswith("https://127.0.0.1:")
        async with session.get(f"{backend.url}/x", ssl=client) as response:
            assert response.status == 200
            assert "path: /x" in await response.text()

    run(check, ssl_context=server)


def test_parse_listen() -> None:
    assert parse_listen("fe1=127.0.0.1:4443:tls") == ListenSpec("fe1", "127.0.0.1", 4443, True)
    assert parse_listen("b=[::1]:0") == ListenSpec("b", "::1", 0, False)
    assert parse_listen("c=localhost:8080") == ListenSpec("c", "localhost", 8080, False)
    for bad in ("fe1", "=1.2.3.4:80", "a=1.2.3.4", "a=1.2.3.4:http", "a=:80", "a=h:70000"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_command_line_runs_until_sigterm(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    client = ssl.create_default_context()
    ca.configure_trust(client)

    async def main() -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "revproxy.demo.backends",
            "--listen", "fe1=127.0.0.1:0:tls", "--listen", "fe1=127.0.0.1:0",
            "--cert", str(cert), "--key", str(key),
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stdout is not None
        try:
            urls = []
            for _ in range(2):
                line = await asyncio.wait_for(process.stdout.readline(), timeout=15)
                assert line.startswith(b"fe1 listening on "), line
                urls.append(line.split()[-1].decode())
            assert urls[0].startswith("https://") and urls[1].startswith("http://")
            async with aiohttp.ClientSession() as session:
                for url in urls:
                    async with session.get(f"{url}/health", ssl=client) as response:
                        assert await response.text() == "ok"
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), timeout=15) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    asyncio.run(main())


def test_command_line_rejects_tls_without_certificate() -> None:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "revproxy.demo.backends", "--listen", "a=127.0.0.1:0:tls"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and b"--cert and --key" in result.stderr
