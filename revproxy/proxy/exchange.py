"""The state of one client connection's exchange, its timers, and how an exchange ends.

A client connection is three layers of one object: this state with its timers and
endings; the server side (choosing a server, retries, relaying the response) in
serverside.py; and the client side (asyncio callbacks, request heads and bodies) in
client.py, which puts them together.

Timers: one lazy timer per connection. Activity only records a timestamp;
when the timer fires it compares against the deadline of the current phase
and sleeps again if there was activity, so per-chunk bookkeeping is one
float store instead of cancelling and creating timers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Any, Final

from revproxy.balance.pool import Server
from revproxy.http.chunked import ChunkedReader
from revproxy.http.errors import error_response
from revproxy.http.head import (
    Request,
    Response,
)
from revproxy.http.rules import BodyReplacer, ResponseEdits
from revproxy.proxy.runtime import Listener, Service
from revproxy.proxy.upstream import ServerConnection

log = logging.getLogger("revproxy.proxy")

# Phases of a client connection.
HEAD: Final = 0
EXCHANGE: Final = 1
TUNNEL: Final = 2
CLOSED: Final = 3
# Reasons to stop reading from the client (bit mask).
P_UPSTREAM: Final = 1  # the server connection's write buffer is full
P_PIPELINE: Final = 2  # pipelined bytes are waiting for the current exchange
P_PENDING: Final = 4  # request bytes are waiting for a server connection to open

RATE_WINDOW: Final = 10.0  # seconds over which client_body_min_rate is averaged
_RESET_ON_CLOSE: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends a reset
LINGER: Final = 2.0  # seconds unread client bytes are drained after an early close
DRAIN_LINGER: Final = 1.0  # seconds an idle keep-alive connection stays open once draining
REPLAY_LIMIT: Final = 64 * 1024  # request bytes kept to resend on a fresh connection
PENDING_LIMIT: Final = 256 * 1024
MAX_RESPONSE_HEAD: Final = 64 * 1024
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
RETRY_AFTER = b"Retry-After: 5\r\n"


class ExchangeState:
    """Everything one client connection knows about the exchange in progress."""

    def __init__(self, listener: Listener, registry: set[Any]) -> None:
        self._listener = listener
        self._registry = registry
        self._stats = listener.stats
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._ip = b"-"
        self._ip_str = ""
        # The client's and the listener's addresses as a PROXY header named them (None:
        # the socket's own, looked up when a server connection needs a header).
        self._client_addr: tuple[str, int] | None = None
        self._local_addr: tuple[str, int] | None = None
        self._buf = bytearray()
        self._phase = HEAD
        self._served = 0
        self._pause = 0
        self._client_write_paused = False
        self._draining = False
        self._close_after = False
        self._eof = False  # the client has half-closed
        # Timer state.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._active = 0.0
        self._progress = 0  # client write buffer size at the last check while paused
        # The exchange in progress.
        self._req: Request | None = None
        self._svc: Service | None = None
        self._last_svc: Service | None = None
        self._req_done = True
        self._req_left = 0
        self._req_chunks: ChunkedReader | None = None
        self._req_bytes = 0
        self._rate_at = 0.0  # start of the current minimum-rate window, and bytes then
        self._rate_bytes = 0
        self._server: Server | None = None
        self._tried: list[Server] = []
        self._up: ServerConnection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._pending: list[bytes] | None = None
        self._pending_size = 0
        self._sent: list[bytes] | None = None
        self._sent_size = 0
        self._reused = False
        # Attempts that may have reached a server (a request sent), counted against the
        # service's retries; a connection never made costs none.
        self._replays = 0
        self._resp: Response | None = None
        self._resp_buf = bytearray()
        self._resp_seen = False
        # The server answered in full before the request body ended, and reads the rest
        # (its response keeps the connection): the exchange ends with the request body.
        self._answered = False
        self._resp_left = 0
        self._resp_chunks: ChunkedReader | None = None
        self._dechunk = False
        # The proxy frames the response body in chunks for an HTTP/1.1 client (a rewritten
        # body, or one the server ends by closing: a cut one then shows as cut).
        self._rechunk = False
        self._pinned: ServerConnection | None = None
        self._trusts: dict[str, bool] = {}
        # Persistence: the Set-Cookie of the response in progress, the cookie value this
        # connection was already given.
        self._set_cookie: bytes | None = None
        self._conn_cookie: str | None = None
        # TLS: the name the client asked for and the names of the certificate it got.
        self._sni: str | None = None
        self._cert_names: tuple[str, ...] = ()
        # Content rules of the exchange in progress.
        self._edits: ResponseEdits | None = None
        self._replacer: BodyReplacer | None = None
        # For statistics and the access log.
        self._t0 = 0.0  # when the request head was read
        self._t_resp = -1.0  # seconds from sending the request to the response head
        self._status = 0  # what the client was answered
        self._bytes_out = 0
        self._rid = b""

    # The client side provides these (client.py).

    def _read_heads(self) -> None:
        raise NotImplementedError

    def _send_up(self, data: bytes) -> None:
        raise NotImplementedError

    # The server side provides this (serverside.py).

    def _retry_timed_out(self) -> bool:
        raise NotImplementedError

    # ----------------------------------------------------------------- ending an exchange

    def _end_exchange(self, now: float | None = None) -> None:
        """Count the exchange and drop its state; `now` is the loop time, if already read."""
        req, svc, server = self._req, self._svc, self._server
        if req is not None and svc is not None:
            self._stats.request_done(
                self._listener.name,
                self._ip_str,
                svc.name,
                svc.pool.name,
                self._server_name(),
                req,
                self._status or 499,  # 499: the client went away before an answer
                self._req_bytes,
                self._bytes_out,
                self._t0,
                self._t_resp,
                self._loop.time() if now is None else now,
                self._rid,
            )
        if server is not None:
            server.active -= 1
            self._server = None
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        self._served += 1
        self._req = None
        self._resp = None
        self._answered = False
        if self._resp_buf:
            self._resp_buf.clear()
        self._resp_chunks = None
        self._req_chunks = None
        self._pending = None
        self._pending_size = 0
        self._sent = None
        if self._pause & (P_PENDING | P_UPSTREAM):
            self._set_pause(P_PENDING | P_UPSTREAM, False)

    def _server_name(self) -> str:
        """The server of the exchange, or the last one that failed it; "" before any."""
        server = self._server
        if server is None and self._tried:
            server = self._tried[-1]
        return server.name if server is not None else ""

    def _server_label(self) -> str:
        """The server of the exchange and its pool, for log lines."""
        svc = self._svc
        name = self._server_name() or "-"
        return f"{name} (pool {svc.pool.name})" if svc is not None else name

    def _phase_timeout(self) -> float:
        phase = self._phase
        if phase == HEAD:
            if self._buf or not self._served:
                return self._listener.t_header
            if self._draining:
                return DRAIN_LINGER
            svc = self._last_svc
            return svc.t_keepalive if svc is not None else self._listener.t_header
        svc = self._svc
        assert svc is not None
        if phase == TUNNEL:
            return svc.t_tunnel
        if self._connecting is not None:
            return svc.t_connect + 1.0
        if self._resp is not None and not self._answered:
            return svc.t_server_body
        if not self._req_done:
            return svc.t_body_idle
        return svc.t_response

    def _arm(self, seconds: float) -> None:
        self._arm_at(self._loop.time() + seconds)

    def _arm_at(self, when: float) -> None:
        """Make the timer fire by loop time `when` (a later one is kept, it checks again)."""
        if self._timer_at > when or self._timer is None:
            timer = self._timer
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(when, self._on_timer)
            self._timer_at = when

    def _on_timer(self) -> None:
        self._timer = None
        if self._phase == CLOSED:
            return
        now = self._loop.time()
        if self._client_write_paused:
            # A slow reader: time runs against the client only while nothing drains.
            size = self._transport.get_write_buffer_size()  # type: ignore[union-attr]
            if size != self._progress:
                self._progress = size
                self._active = now
        deadline = self._active + self._phase_timeout()
        svc = self._svc
        if (
            svc is not None
            and svc.min_rate
            and self._phase == EXCHANGE
            and not self._req_done
            and (self._resp is None or self._answered)
        ):
            # Slowloris protection for bodies: a minimum rate over 10 s windows, so a slow
            # but steady upload lives as long as it needs (no total deadline).
            if self._pause & (P_UPSTREAM | P_PENDING):
                self._rate_at, self._rate_bytes = now, self._req_bytes  # the server is slow
            elif now - self._rate_at >= RATE_WINDOW:
                rate = (self._req_bytes - self._rate_bytes) / (now - self._rate_at)
                if rate < svc.min_rate:
                    log.info("client %s: request body slower than %d B/s", self._ip_str, rate)
                    self._stats.timed_out("client_body")
                    self._fail(408)
                    return
                self._rate_at, self._rate_bytes = now, self._req_bytes
            deadline = min(deadline, self._rate_at + RATE_WINDOW)
        if now < deadline:
            self._timer = self._loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline
            return
        self._expired()

    def _expired(self) -> None:
        phase = self._phase
        stats = self._stats
        if phase == HEAD:
            if self._buf:
                stats.timed_out("client_header")
                self._fail(408)
            else:
                stats.timed_out("keepalive")
                self._close()
        elif phase == TUNNEL:
            stats.timed_out("tunnel")
            self._close()
        elif self._client_write_paused:
            # The client takes nothing of what it was sent (this response, or one before
            # it): the server is not to blame for the time that cost.
            log.info("client %s: not reading its responses; connection cut", self._ip_str)
            stats.timed_out("client_send")
            self._abort()
        elif self._resp is not None and not self._answered:
            log.warning("server %s: response body idle timeout", self._server_label())
            stats.timed_out("server_body")
            self._count_server_failure("timeout")
            self._abort()
        elif not self._req_done and self._connecting is None and self._up is not None:
            if self._pause & P_UPSTREAM:
                # The request body waits for the server to read it, not for the client.
                self._server_timed_out("does not read the request body", "server_send")
                return
            log.info("client %s: request body idle timeout", self._ip_str)
            stats.timed_out("client_body")
            self._fail(408)
        elif not self._retry_timed_out():
            self._server_timed_out("no response in time", "server_response")

    def _server_timed_out(self, why: str, kind: str) -> None:
        """Answer 504 for a server that let a deadline pass, and count it against it."""
        log.warning("server %s: %s", self._server_label(), why)
        self._stats.timed_out(kind)
        self._count_server_failure("timeout")
        self._fail(504)

    def _count_server_failure(self, kind: str) -> None:
        """Count a failure against the exchange's server (passive health, metrics)."""
        svc, server = self._svc, self._server
        if svc is not None and server is not None:
            self._stats.server_failed(svc.pool.name, server.name, kind)

    def _set_pause(self, reason: int, on: bool) -> None:
        before = self._pause
        after = before | reason if on else before & ~reason
        if after == before:
            return
        self._pause = after
        transport = self._transport
        if transport is None or self._phase == CLOSED:
            return
        if after and not before:
            transport.pause_reading()
        elif before and not after:
            transport.resume_reading()

    def _fail(self, status: int, extra: bytes = b"") -> None:
        """Answer with an error and close: after an error the framing is not trusted."""
        if self._answered:
            # The response went out whole: the client may still be reading it, so a close,
            # not a reset (the server connection is dropped all the same).
            self._close(linger=True)
            return
        if self._resp is not None or self._phase == TUNNEL:
            self._abort()
            return
        self._status = status
        if self._req is None:
            # Refused before it was routed (bad framing, limits, no service).
            self._count_unserved(None, status, self._loop.time())
        self._abort_exchange()
        transport = self._transport
        if transport is not None and self._phase != CLOSED:
            transport.write(error_response(status, extra=extra))
        self._close(linger=True)

    def _count_unserved(self, req: Request | None, status: int, now: float) -> None:
        """Count (and log) a request answered by the proxy before any service took it."""
        self._stats.request_done(
            self._listener.name, self._ip_str, "", "", "", req, status, 0, 0, now, -1.0, now,
            b"",
        )  # fmt: skip

    def _abort_exchange(self) -> None:
        """Drop the server side of an unfinished exchange."""
        up = self._up
        self._up = None
        if up is not None:
            if up is self._pinned:
                self._pinned = None
            up.abort()
        if self._req is not None or self._connecting is not None:
            self._end_exchange()

    def _close(self, linger: bool = False) -> None:
        """Close after what was written; `linger`: the client may still be sending."""
        if self._phase == TUNNEL and self._up is not None:
            up, self._up = self._up, None
            up.close()
        self._abort_exchange()
        if self._phase == CLOSED:
            return
        self._phase = CLOSED
        transport = self._transport
        if transport is None:
            return
        if linger and transport.can_write_eof():
            # RFC 9112 §9.6: closing with unread bytes from the client answers them with a
            # reset, which can destroy the response the client has not read yet. So: send
            # our FIN, read and discard what still arrives (data_received ignores a closed
            # connection), and close for good a little later.
            if self._pause:
                self._pause = 0
                transport.resume_reading()
            transport.write_eof()
            self._loop.call_later(LINGER, self._close_transport)
        else:
            self._close_transport()

    def _close_transport(self) -> None:
        """Close once what was written is sent; cut a client that stops taking it."""
        transport = self._transport
        assert transport is not None
        transport.close()
        size = transport.get_write_buffer_size()
        if size and self in self._registry:  # (not when the connection is already gone)
            self._progress = size
            self._watch_closing()

    def _watch_closing(self) -> None:
        # The event loop would wait for a client that never reads for ever: it gets the
        # server body idle time (as while a response streams) to take something.
        timer = self._timer
        if timer is not None:
            timer.cancel()
        svc = self._last_svc
        idle = svc.t_server_body if svc is not None else self._listener.t_header
        self._timer = self._loop.call_later(idle, self._closing_timer)
        self._timer_at = self._loop.time() + idle

    def _closing_timer(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None:
            return
        size = transport.get_write_buffer_size()
        if not size:
            return
        if size == self._progress:
            log.info("client %s: not reading; connection cut while closing", self._ip_str)
            self._stats.timed_out("client_send")
            transport.abort()
            return
        self._progress = size
        self._watch_closing()

    def _abort(self) -> None:
        """Cut the client connection: what is unsent is dropped and the client gets a reset,
        the one way to tell it that a response it got part of is not whole (a close would
        end a body delimited by closing as if it were)."""
        self._abort_exchange()
        # Also when already closing: the transport may still be waiting to send.
        self._phase = CLOSED
        transport = self._transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
                except OSError:
                    pass
            transport.abort()
