"""A tiny HTTP/1.1 server that reads request bodies and throws them away.

The bench uploads 1 GiB through each proxy to this sink to see whether the proxy
streams the body or holds it. The sink itself keeps nothing: it counts the body
bytes (Content-Length or chunked framing, RFC 9112 sections 6 and 7.1) and answers
200 with the count, so the bench can check the whole body arrived.

Usage: python bench/sink.py PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

_MAX_HEAD = 64 * 1024


class SinkProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.state = "head"  # head, length, chunk_size, chunk_data, trailers
        self.remaining = 0
        self.received = 0
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.state in ("length", "chunk_data") and not self.buf:
            data = self._consume_body(data)
            if not data:
                return
        self.buf += data
        while self.buf and self.transport is not None:
            if self.state == "head":
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > _MAX_HEAD:
                        self._fail(b"431 Request Header Fields Too Large")
                    return
                head = bytes(self.buf[:end])
                del self.buf[: end + 4]
                if not self._start_request(head):
                    return
            elif self.state in ("length", "chunk_data"):
                rest = self._consume_body(bytes(self.buf))
                self.buf = bytearray(rest)
                if not rest:
                    return
            else:  # chunk_size or trailers: line based
                end = self.buf.find(b"\r\n")
                if end < 0:
                    if len(self.buf) > _MAX_HEAD:
                        self._fail(b"400 Bad Request")
                    return
                line = bytes(self.buf[:end])
                del self.buf[: end + 2]
                self._line(line)

    def _start_request(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        version = lines[0].rsplit(b" ", 1)[-1]
        connection = headers.get(b"connection", b"").lower()
        self.close_after = connection == b"close" or (
            version == b"HTTP/1.0" and connection != b"keep-alive"
        )
        self.received = 0
        if headers.get(b"expect", b"").lower() == b"100-continue" and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            self.state = "chunk_size"
            return True
        try:
            self.remaining = int(headers.get(b"content-length", b"0"))
        except ValueError:
            self._fail(b"400 Bad Request")
            return False
        if self.remaining > 0:
            self.state = "length"
        else:
            self._respond()
        return True

    def _consume_body(self, data: bytes) -> bytes:
        """Discard up to self.remaining bytes of data; returns what follows them."""
        take = min(self.remaining, len(data))
        before = self.remaining
        self.remaining -= take
        if self.state == "length":
            self.received += take
            if self.remaining == 0:
                self._respond()
        else:
            # chunk_data also swallows the CRLF after the chunk, counted in remaining.
            self.received += max(0, before - 2) - max(0, self.remaining - 2)
            if self.remaining == 0:
                self.state = "chunk_size"
        return data[take:]

    def _line(self, line: bytes) -> None:
        if self.state == "trailers":
            if not line:
                self._respond()
            return
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            self._fail(b"400 Bad Request")
            return
        if size == 0:
            self.state = "trailers"
        else:
            self.state = "chunk_data"
            self.remaining = size + 2

    def _respond(self) -> None:
        assert self.transport is not None
        body = f"received {self.received} bytes\n".encode()
        extra = b"Connection: close\r\n" if self.close_after else b""
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            + extra
            + b"Content-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        self.state = "head"
        if self.close_after:
            self.transport.close()
            self.transport = None

    def _fail(self, status: bytes) -> None:
        if self.transport is not None:
            self.transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
            self.transport.close()
            self.transport = None
        self.buf.clear()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(SinkProtocol, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    port = int(sys.argv[1])
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    try:
        run(serve(port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
