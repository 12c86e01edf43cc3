"""sending.py: large writes handed to a real loopback socket in sends of whole segments."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop

from revproxy.proxy.sending import SEND_TARGET, send_size, write_in_sends


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    server.close()
    yield client, accepted
    client.close()
    accepted.close()


def mss_of(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)


def test_send_size_is_whole_segments_within_the_target(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, accepted = pair
    client.sendall(b"x" * 100_000)  # (the MSS grows over the first round trips)
    got = 0
    while got < 100_000:
        got += len(accepted.recv(65536))
    mss = mss_of(client)
    size = send_size(client)
    assert size % mss == 0
    assert size <= SEND_TARGET or size == mss
    assert size + mss > SEND_TARGET  # the most segments that fit


def test_send_size_without_a_socket_or_mss_is_the_target() -> None:
    assert send_size(None) == SEND_TARGET
    closed = socket.socket()
    closed.close()
    assert send_size(closed) == SEND_TARGET  # (getsockopt raises OSError)


class Recording:
    """A real transport, with each write's size noted on the way."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.sizes: list[int] = []
        self.after_closing = 0

    def write(self, data: Any) -> None:
        if self.transport.is_closing():
            self.after_closing += 1
        self.sizes.append(len(data))
        self.transport.write(data)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)


def test_a_large_write_goes_in_order_in_sends_of_whole_segments() -> None:
    payload = bytes(range(256)) * 4000  # 1,024,000 bytes

    async def run() -> tuple[list[int], int, bytes]:
        loop = asyncio.get_running_loop()
        received = bytearray()
        done = loop.create_future()

        class Sink(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                received.extend(data)
                if len(received) >= len(payload) and not done.done():
                    done.set_result(None)

        server = await loop.create_server(Sink, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        mss = mss_of(transport.get_extra_info("socket"))
        recording = Recording(transport)
        write_in_sends(recording, payload)  # type: ignore[arg-type]
        await asyncio.wait_for(done, 10)
        transport.close()
        server.close()
        await server.wait_closed()
        return recording.sizes, mss, bytes(received)

    sizes, mss, received = uvloop.run(run())
    assert received == payload
    assert sum(sizes) == len(payload)
    size = sizes[0]
    assert len(sizes) > 1
    assert size % mss == 0 and size <= max(SEND_TARGET, mss)
    assert all(piece == size for piece in sizes[:-1])
    assert 0 < sizes[-1] <= size


def test_no_more_sends_once_the_connection_is_lost() -> None:
    async def run() -> Recording:
        loop = asyncio.get_running_loop()
        listening = socket.create_server(("127.0.0.1", 0))
        port = listening.getsockname()[1]
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        peer, _ = listening.accept()
        listening.close()
        # The peer resets the connection: the first send fails and the transport closes.
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        recording = Recording(transport)
        write_in_sends(recording, b"x" * (8 * SEND_TARGET))  # type: ignore[arg-type]
        transport.abort()
        return recording

    recording = uvloop.run(run())
    assert recording.after_closing == 0
    assert len(recording.sizes) < 8
