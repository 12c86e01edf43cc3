"""A lean long-poll client: many TLS connections from one process, one GET on each.

Locust spends a greenlet, a requests session and tens of kilobytes per user; a
broadcast-sized run needs thousands of held connections per core, so this client is
a bare asyncio protocol on uvloop: connect (TLS with SNI and verification), send one
long-poll GET, wait for the answer, check it, close. Connections open at a steady
rate with a bounded number of handshakes in flight. Progress and the final result
are JSON lines on standard output, read by loadtest/broadcast.py.

    python -m loadtest.broadcast_client --connect 127.0.0.1:8443 --name meet.demo.test \\
        --ca certs/dev/public/root.pem --count 2500 --rate 125 --deadline 300 \\
        --path '/ucwa/oauth/v1/applications/b/events?ack=1&timeout=600'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import cast

import uvloop

HANDSHAKE_TIMEOUT = 30.0


class Tally:
    def __init__(self) -> None:
        self.connected = 0
        self.answered = 0
        self.errors: Counter[str] = Counter()
        self.first_answer = 0.0
        self.last_answer = 0.0
        self.finished = asyncio.Event()
        self.expected = 0

    def error(self, kind: str) -> None:
        self.errors[kind] += 1
        self._check()

    def answer(self) -> None:
        now = time.time()
        self.first_answer = self.first_answer or now
        self.last_answer = now
        self.answered += 1
        self._check()

    def _check(self) -> None:
        if self.answered + sum(self.errors.values()) >= self.expected:
            self.finished.set()

    def line(self, done: bool = False) -> str:
        return json.dumps(
            {
                "done": done,
                "connected": self.connected,
                "answered": self.answered,
                "errors": dict(self.errors),
                "first_answer": self.first_answer,
                "last_answer": self.last_answer,
            }
        )


class LongPoll(asyncio.Protocol):
    """One connection: send the request, read one response with a Content-Length."""

    __slots__ = ("tally", "request", "buffer", "transport", "finished")

    def __init__(self, tally: Tally, request: bytes) -> None:
        self.tally = tally
        self.request = request
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.finished = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but it is one.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self.buffer[:head_end].decode("latin-1").lower()
        length = None
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip() == "content-length":
                length = int(value.strip())
        if length is None:
            self._finish("response without Content-Length")
            return
        if len(self.buffer) - head_end - 4 < length:
            return
        status = head.split(" ", 2)[1] if " " in head else "?"
        if status != "200":
            self._finish(f"status {status}")
        elif b'"_links"' not in self.buffer[head_end:]:
            self._finish("unexpected body")
        else:
            self._finish("")

    def _finish(self, error: str) -> None:
        if self.finished:
            return
        self.finished = True
        if error:
            self.tally.error(error)
        else:
            self.tally.answer()
        if self.transport is not None:
            self.transport.close()
        self.buffer = b""

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished:
            self._finish("closed before the answer")


async def run(args: argparse.Namespace) -> Tally:
    loop = asyncio.get_running_loop()
    host, _, port_text = args.connect.rpartition(":")
    context: ssl.SSLContext | None = None
    if not args.plain:
        context = ssl.create_default_context(cafile=args.ca or None)
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: {args.name}\r\nUser-Agent: loadtest-broadcast\r\n"
        "Accept: application/json\r\n\r\n"
    ).encode()
    tally = Tally()
    tally.expected = args.count
    in_flight = asyncio.Semaphore(args.concurrency)
    transports: list[asyncio.Transport] = []
    deadline = time.monotonic() + args.deadline

    async def open_one() -> None:
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                transport, _ = await loop.create_connection(
                    lambda: LongPoll(tally, request),
                    host,
                    int(port_text),
                    ssl=context,
                    server_hostname=args.name if context else None,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT if context else None,
                )
            transports.append(cast(asyncio.Transport, transport))
            tally.connected += 1
        except TimeoutError:
            tally.error("connect timeout")
        except (OSError, ssl.SSLError) as exc:
            tally.error(f"connect: {type(exc).__name__}: {exc}"[:120])
        finally:
            in_flight.release()

    async def report() -> None:
        while True:
            print(tally.line(), flush=True)
            await asyncio.sleep(1.0)

    reporter = asyncio.create_task(report())
    tasks = set()
    started = time.monotonic()
    for i in range(args.count):  # bounded: args.count connections
        await asyncio.sleep(max(0.0, started + i / args.rate - time.monotonic()))
        await in_flight.acquire()
        task = asyncio.create_task(open_one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if time.monotonic() > deadline:
            break
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            await tally.finished.wait()
    except TimeoutError:
        missing = args.count - tally.answered - sum(tally.errors.values())
        tally.errors["no answer before the deadline"] += missing
    reporter.cancel()
    for transport in transports:
        transport.abort()
    return tally


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.broadcast_client")
    parser.add_argument("--connect", required=True, help="HOST:PORT of the proxy")
    parser.add_argument("--name", required=True, help="host name (SNI, Host header)")
    parser.add_argument("--ca", default="", help="CA file that verifies the proxy")
    parser.add_argument("--plain", action="store_true", help="HTTP instead of HTTPS")
    parser.add_argument("--path", required=True, help="the long-poll request target")
    parser.add_argument("--count", type=int, required=True, help="connections to open")
    parser.add_argument("--rate", type=float, default=100.0, help="new connections per second")
    parser.add_argument("--concurrency", type=int, default=64, help="handshakes in flight")
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds, then give up")
    args = parser.parse_args(argv)
    tally = uvloop.run(run(args))
    print(tally.line(done=True), flush=True)
    return 0 if not tally.errors else 1


if __name__ == "__main__":
    sys.exit(main())
