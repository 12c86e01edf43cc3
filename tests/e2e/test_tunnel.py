"""Upgraded connections through the whole proxy: WebSocket echo, tunnel idle timeout, and an
Upgrade request that the server declines (an ordinary exchange)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from harness import (
    LoopThread,
    ProxyProcess,
    Received,
    ScriptedServer,
    connect,
    read_response,
    simple_config,
    wait_for,
)


@dataclass
class WsServer:
    """An aiohttp server with a WebSocket echo endpoint at /ws, in a thread of its own."""

    loop: LoopThread
    runner: web.AppRunner
    port: int
    upgrade_headers: list[dict[str, str]] = field(default_factory=list)
    closes: list[int | None] = field(default_factory=list)  # close code seen per connection


async def _start_ws_server(server: WsServer) -> None:
    async def ws(request: web.Request) -> web.WebSocketResponse:
        server.upgrade_headers.append(dict(request.headers))
        resp = web.WebSocketResponse(max_msg_size=4 * 1024 * 1024)
        await resp.prepare(request)
        async for msg in resp:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await resp.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await resp.send_bytes(msg.data)
        server.closes.append(resp.close_code)
        return resp

    app = web.Application()
    app.router.add_get("/ws", ws)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.runner = runner
    server.port = runner.addresses[0][1]


@pytest.fixture
def ws_server() -> Iterator[WsServer]:
    loop = LoopThread()
    server = WsServer(loop, None, 0)  # type: ignore[arg-type]
    try:
        loop.run(_start_ws_server(server))
        yield server
    finally:
        if server.runner is not None:
            loop.run(server.runner.cleanup())
        loop.close()


def test_websocket_echo_through_the_proxy(ws_server: WsServer, tmp_path: Path) -> None:
    proxy = ProxyProcess(simple_config(ws_server.port), tmp_path)
    big = os.urandom(1024 * 1024)

    async def client() -> tuple[list[object], int | None]:
        got: list[object] = []
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{proxy.port('plain')}/ws"
            async with session.ws_connect(url, max_msg_size=4 * 1024 * 1024) as ws:
                for i in range(5):
                    await ws.send_str(f"hello {i}")
                    got.append((await ws.receive(timeout=10)).data)
                    await ws.send_bytes(bytes([i]) * (i + 1))
                    got.append((await ws.receive(timeout=10)).data)
                await ws.send_bytes(big)
                got.append((await ws.receive(timeout=10)).data)
                await ws.send_str("é" * 1000)
                got.append((await ws.receive(timeout=10)).data)
                await ws.close()
                return got, ws.close_code

    try:
        got, code = asyncio.run(client())
        expected: list[object] = []
        for i in range(5):
            expected += [f"hello {i}", bytes([i]) * (i + 1)]
        assert got[:-2] == expected
        assert got[-2] == big
        assert got[-1] == "é" * 1000
        assert code == 1000
        wait_for(lambda: ws_server.closes, 5, "the server to see the close")
        assert ws_server.closes == [1000]
        (headers,) = ws_server.upgrade_headers
        assert headers["Upgrade"].lower() == "websocket"
        assert headers["X-Forwarded-For"] == "127.0.0.1"
    finally:
        assert proxy.stop() == 0


def test_idle_tunnel_is_closed_after_tunnel_idle(ws_server: WsServer, tmp_path: Path) -> None:
    config = simple_config(
        ws_server.port, service_extra="[services.main.timeouts]\ntunnel_idle = 1"
    )
    proxy = ProxyProcess(config, tmp_path)

    async def client() -> tuple[float, float, aiohttp.WSMsgType]:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{proxy.port('plain')}/ws"
            async with session.ws_connect(url, autoping=False) as ws:
                # Traffic keeps the tunnel open past the idle timeout.
                start = time.monotonic()
                while time.monotonic() - start < 1.6:
                    await ws.send_str("tick")
                    assert (await ws.receive(timeout=5)).data == "tick"
                    # The echo passed the proxy just before it got here: its idle time
                    # starts no later than this.
                    last = time.monotonic()
                    await asyncio.sleep(0.2)
                active = time.monotonic() - start
                msg = await ws.receive(timeout=10)
                return active, time.monotonic() - last, msg.type

    try:
        active, idle, kind = asyncio.run(client())
        assert active >= 1.6
        assert kind in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        # Closed one tunnel_idle after the last traffic (less the echo's way back and the
        # event loop's millisecond timer granularity).
        assert 0.9 <= idle < 5.0
        # The server side of the tunnel is closed too.
        wait_for(lambda: ws_server.closes, 5, "the server's side of the tunnel to close")
    finally:
        assert proxy.stop() == 0


def _declining(req: Received, sock: socket.socket) -> bytes:
    body = b"no upgrade for " + req.request_line
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def test_upgrade_answered_with_200_stays_http(tmp_path: Path) -> None:
    server = ScriptedServer(_declining).start()
    proxy = ProxyProcess(simple_config(server.port), tmp_path)
    try:
        with connect(proxy.port("plain")) as sock:
            sock.sendall(
                b"GET /chat HTTP/1.1\r\nHost: x.test\r\nConnection: Upgrade\r\n"
                b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            status, headers, body = read_response(sock)
            assert status == 200
            assert body == b"no upgrade for GET /chat HTTP/1.1"
            assert "upgrade" not in headers
            assert "close" not in headers.get("connection", "").lower()
            # The connection goes on as HTTP: the next request is parsed and forwarded with
            # forwarding headers, not passed through raw as a tunnel would.
            sock.sendall(b"GET /next HTTP/1.1\r\nHost: x.test\r\n\r\n")
            status, _, body = read_response(sock)
            assert (status, body) == (200, b"no upgrade for GET /next HTTP/1.1")
        first, second = server.requests
        assert first.header("upgrade") == "websocket"
        assert "upgrade" in (first.header("connection") or "").lower()
        assert second.header("x-forwarded-for") == "127.0.0.1"
        assert second.header("upgrade") is None
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_websocket_survives_a_reload(ws_server: WsServer, tmp_path: Path) -> None:
    from harness import child_pids, process_alive

    config = simple_config(ws_server.port).replace("shutdown_grace = 5", "shutdown_grace = 1")
    proxy = ProxyProcess(config, tmp_path)

    async def client() -> list[object]:
        got: list[object] = []
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{proxy.port('plain')}/ws"
            async with session.ws_connect(url) as ws:
                await ws.send_str("before")
                got.append((await ws.receive(timeout=5)).data)
                (old,) = child_pids(proxy.proc.pid)
                proxy.signal(signal.SIGHUP)
                # Past the old worker's grace period (1 s), whether it has exited or not.
                deadline = time.monotonic() + 2.5
                while process_alive(old) and time.monotonic() < deadline:
                    await ws.send_str("during")
                    got.append((await ws.receive(timeout=5)).data)
                    await asyncio.sleep(0.1)
                await ws.send_str("after")
                got.append((await ws.receive(timeout=5)).data)
                await ws.close()
        return got

    try:
        got = asyncio.run(client())
        assert got[0] == "before"
        assert got[-1] == "after"
        assert set(got[1:-1]) <= {"during"}
    finally:
        assert proxy.stop() == 0
