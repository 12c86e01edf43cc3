"""Real servers on 127.0.0.1 for the health-check tests, and a polling helper."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable


class Backend:
    """An asyncio server answering every connection with `answer` (or never, if None).

    It records each request head it receives; `answer` may be changed while it runs.
    """

    def __init__(
        self,
        answer: bytes | None,
        ssl_context: ssl.SSLContext | None = None,
        eager: bool = False,  # answer on connect, without reading a request
    ) -> None:
        self.answer = answer
        self.eager = eager
        self.ssl_context = ssl_context
        self.heads: list[bytes] = []
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self, port: int = 0) -> Backend:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", port, ssl=self.ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.gather(*self._handlers)
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            if self.answer is not None:
                if not self.eager:
                    self.heads.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(self.answer)
                await writer.drain()
            await reader.read()  # hold the connection until the client goes
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self._writers.discard(writer)
            self._handlers.discard(task)
            writer.close()


def response(status: int, body: bytes = b"ok") -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (status, len(body)) + body


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(condition: Callable[[], bool], deadline: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not condition():
        if loop.time() > end:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)
