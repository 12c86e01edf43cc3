"""One client connection: requests in, responses out, one exchange at a time.

The connection reads a request head, routes it to a service, picks a server
and a server connection (idle, pinned or new), and streams the request body
to it while the response streams back. Pipelined requests wait in the buffer
until the response before them is complete, which keeps responses in order.
Reading pauses whenever the other side cannot keep up, so memory per
connection stays bounded by the buffer limits whatever the body sizes.

This module is the client side: asyncio callbacks, request heads and bodies. The
server side is in serverside.py, the shared state, timers and endings in exchange.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import cast

from revproxy.http.chunked import ChunkedReader, ChunkError
from revproxy.http.errors import HttpError, error_response
from revproxy.http.forward import Forwarding, request_head
from revproxy.http.head import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    Request,
    parse_request,
    routing_path,
)
from revproxy.http.rules import Answer, HeaderOp
from revproxy.proxy.exchange import (
    CLOSED,
    EXCHANGE,
    HEAD,
    P_PENDING,
    P_PIPELINE,
    PENDING_LIMIT,
    RATE_WINDOW,
    REPLAY_LIMIT,
    TUNNEL,
    log,
)
from revproxy.proxy.runtime import Service
from revproxy.proxy.sending import write_out
from revproxy.proxy.serverside import ServerSide
from revproxy.proxy.upstream import WRITE_HIGH, WRITE_LOW
from revproxy.tls.context import served_names_of, sni_host_mismatch, sni_of

_EMPTY_LINE = b"\r\n"  # the bytes of empty lines a request may be preceded by
_FORWARDING_FIELDS = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})


_underscored_requests = 0


def _dropped_underscored(client: str, req: Request) -> None:
    """Log (the first time and every 1000th after) request fields dropped for a "_"."""
    global _underscored_requests
    names = [
        line.partition(b":")[0].decode("latin-1") for name, _, line in req.headers if b"_" in name
    ]
    if names and _underscored_requests % 1000 == 0:
        log.info(
            "client %s: request fields with '_' in their names not forwarded: %s "
            "(underscores_in_headers passes them; %d such requests before)",
            client,
            ", ".join(names)[:200],
            _underscored_requests,
        )
    if names:
        _underscored_requests += 1


def _rule_forwarding(fwd: Forwarding, ops: tuple[HeaderOp, ...]) -> Forwarding:
    """A content rule that sets or removes a forwarding header has the last word on it."""
    names = {op[1] for op in ops}
    if not names & _FORWARDING_FIELDS:
        return fwd
    return dataclasses.replace(
        fwd,
        x_forwarded_for=fwd.x_forwarded_for and b"x-forwarded-for" not in names,
        x_forwarded_proto=fwd.x_forwarded_proto and b"x-forwarded-proto" not in names,
        x_forwarded_host=fwd.x_forwarded_host and b"x-forwarded-host" not in names,
    )


def _line_end(head: bytes) -> int:
    """The length of a request head's first line."""
    end = head.find(b"\r\n")
    return len(head) if end < 0 else end


def _partial_end(buf: bytearray) -> int:
    """How many bytes at the end of `buf` could begin the CRLFCRLF that ends a head."""
    if buf.endswith(b"\r\n\r"):
        return 3
    if buf.endswith(b"\r\n"):
        return 2
    return 1 if buf.endswith(b"\r") else 0


class ClientConnection(ServerSide, asyncio.Protocol):
    """One client connection (see the module docstring)."""

    # ----------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)
        listener = self._listener
        if len(self._registry) >= listener.max_connections:
            # Over the per-worker limit: refuse at once rather than hold it unanswered.
            listener.refuse(transport)
            self._phase = CLOSED
            return
        transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
        if not self._ip_str:
            peer = transport.get_extra_info("peername")
            if peer:
                self._ip_str = str(peer[0])
                self._ip = self._ip_str.encode()
        self._registry.add(self)
        self._stats.connection_opened(self._listener.name)
        if self._listener.sni_reject:
            ssl_object = transport.get_extra_info("ssl_object")
            self._sni = sni_of(ssl_object)
            self._cert_names = served_names_of(ssl_object)
        self._active = self._loop.time()
        self._arm(self._listener.t_header)
        if listener.draining:
            self.drain()

    def set_client(self, source: tuple[str, int], destination: tuple[str, int] | None) -> None:
        """The client's address when the socket's peer is not the client (PROXY protocol)."""
        self._ip_str = source[0]
        self._ip = self._ip_str.encode()
        self._client_addr = source
        self._local_addr = destination

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase == TUNNEL:
            self._active = self._loop.time()
            self._send_up(data)
            return
        if phase == HEAD:
            starts = not self._buf and data[0] not in _EMPTY_LINE
            if starts or (not self._buf and data.strip(b"\r\n")):
                # The header deadline runs from the first byte of a request (empty lines
                # before it do not count: they must not keep a connection open).
                self._active = now = self._loop.time()
                if starts and not self._client_write_paused:
                    head, sep, rest = data.partition(b"\r\n\r\n")
                    if sep and not rest:
                        # The usual case: one whole request head and nothing more. Starting
                        # the exchange arms its own deadline.
                        self._request(head, len(head), now)
                        return
                self._arm_at(now + self._listener.t_header)
            self._buf += data
            self._read_heads()
        elif phase == EXCHANGE:
            if not self._req_done:
                self._active = self._loop.time()
                self._request_body(data)
            else:
                self._buf += data
                if len(self._buf) > self._listener.max_header_bytes:
                    self._set_pause(P_PIPELINE, True)

    def eof_received(self) -> bool | None:
        # Half-closed by the client (a FIN, or TLS's close_notify): what it sent completely
        # is still answered, then the connection closes.
        self._eof = True
        if self._phase == EXCHANGE and self._req_done:
            return True
        if self._phase == HEAD and b"\r\n\r\n" in self._buf:
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._phase == TUNNEL and self._up is not None:
            # Whatever the client sent last still reaches the server.
            up, self._up = self._up, None
            up.close()
        self._phase = CLOSED
        if self in self._registry:
            self._registry.discard(self)
            self._stats.connection_closed(self._listener.name)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._abort_exchange()
        if self._pinned is not None:
            self._pinned.close()
            self._pinned = None

    def pause_writing(self) -> None:
        self._client_write_paused = True
        self._progress = -1
        if self._up is not None and self._up.transport is not None:
            self._up.transport.pause_reading()

    def resume_writing(self) -> None:
        self._client_write_paused = False
        if self._up is not None and self._up.transport is not None:
            self._up.transport.resume_reading()
        if self._phase == HEAD and self._buf:
            # Requests waited for the client to take the answers before them.
            self._read_heads()

    def _read_heads(self) -> None:
        self._take_heads()
        phase = self._phase
        if phase == CLOSED:
            return
        if phase == HEAD:
            # Answers the proxy gives itself (redirects, rule responses) wait for a client
            # that does not read them; what it sends meanwhile waits in the kernel.
            hold = self._client_write_paused and bool(self._buf)
        else:
            # Pipelined bytes beyond one head's worth wait unread in the kernel, not here.
            hold = len(self._buf) > self._listener.max_header_bytes
        if hold or self._pause & P_PIPELINE:
            self._set_pause(P_PIPELINE, hold)

    def _take_heads(self) -> None:
        """Start the exchange of each whole request head in the buffer, one at a time."""
        buf = self._buf
        lst = self._listener
        while self._phase == HEAD and buf and not self._client_write_paused:
            # RFC 9112 §2.2: empty lines before a request line are ignored.
            while buf.startswith(b"\r\n"):
                del buf[:2]
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                # The limits are on the head without its end: a CR, CRLF or CRLFCR at the
                # end of the buffer may be the start of it (the same bytes in one piece or in
                # several get the same answer).
                held = len(buf) - _partial_end(buf)
                line_end = buf.find(b"\r\n")
                if line_end > lst.max_request_line or (
                    line_end < 0 and held > lst.max_request_line
                ):
                    self._fail(414)
                elif held > lst.max_header_bytes:
                    self._fail(431)
                elif self._eof:
                    self._close()
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            self._request(head, end, self._loop.time())

    def _request(self, head: bytes, end: int, now: float) -> None:
        """Check, parse and route one request head (`end` bytes), then start its exchange.

        `now`: the loop time.
        """
        lst = self._listener
        try:
            if end > lst.max_header_bytes:
                raise HttpError(431, "request head too large")
            # The request line is at most the whole head: it is looked for only when that
            # could be too long.
            line_end = end if end <= lst.max_request_line else _line_end(head)
            if line_end > lst.max_request_line:
                raise HttpError(414, "request line too long")
            req = parse_request(head, lst.max_header_count)
            try:
                svc = self._route(req)
            except HttpError as exc:
                if req.body == NO_BODY and req.http11 and req.keep_alive and req.method != b"HEAD":
                    # A well-framed request nothing serves: answered, and the connection
                    # goes on (its next request may be for a service that exists).
                    self._not_served(req, exc.status, now)
                    return
                raise
            if end > svc.max_header_bytes or len(req.headers) > svc.max_header_count:
                raise HttpError(431, "request head too large")
            if line_end > svc.max_request_line and _line_end(head) > svc.max_request_line:
                raise HttpError(414, "request line too long")
            if svc.max_body and req.body == LENGTH and req.content_length > svc.max_body:
                raise HttpError(413, "request body too large")
        except HttpError as exc:
            log.debug("client %s: %s", self._ip_str, exc)
            self._fail(exc.status)
            return
        self._start(req, svc, now)

    def _not_served(self, req: Request, status: int, now: float) -> None:
        log.debug("client %s: %d for %s", self._ip_str, status, req.path[:200])
        self._count_unserved(req, status, now)
        self._served += 1
        self._transport.write(error_response(status, close=self._draining))  # type: ignore[union-attr]
        if self._draining:
            self._close()
            return
        self._arm_at(now + self._phase_timeout())

    def _route(self, req: Request) -> Service:
        # OPTIONS * asks about the server as a whole: it goes where "/" would go.
        path = routing_path(req.path) if req.path != b"*" else b"/"
        svc, host_known = self._listener.router.route(req.host, path)
        if svc is None:
            raise HttpError(404 if host_known else 421, "no service for this request")
        if self._sni is not None and sni_host_mismatch(self._sni, req.host, self._cert_names):
            # RFC 9110 §7.4: the certificate this connection got does not cover this host.
            raise HttpError(421, "Host is not covered by the connection's certificate")
        return svc

    def _start(self, req: Request, svc: Service, now: float) -> None:
        self._phase = EXCHANGE
        self._req = req
        self._svc = self._last_svc = svc
        if self._tried:
            self._tried = []
        self._replays = 0
        body = req.body
        self._req_done = body == NO_BODY
        self._req_left = req.content_length
        self._req_chunks = ChunkedReader() if body == CHUNKED else None
        self._req_bytes = 0
        if svc.min_rate and body != NO_BODY:
            self._rate_at, self._rate_bytes = now, 0
            self._arm_at(now + RATE_WINDOW)
        self._close_after = self._close_after or not req.keep_alive or self._draining
        trusted = self._trusts.get(svc.name)
        if trusted is None:
            trusted = self._trusts[svc.name] = svc.trusts(self._ip_str)
        self._edits = None
        self._replacer = None
        self._set_cookie = None
        fwd = svc.forwarding
        rules = svc.rules
        if rules is not None:
            action = rules.on_request(req.method, req.host, req.target, req.header)
            if action.answer is not None:
                self._answer(req, action.answer)
                return
            if action.target is not None:
                req.target = action.target
            if action.headers:
                req.headers = action.headers.apply(req.headers)
                req.block = None  # the memo of its forwarded lines is not theirs
                req.underscored = True  # the edits may have added some: look at each name
                fwd = _rule_forwarding(fwd, action.headers.ops)
            self._edits = action.response
        lst = self._listener
        if req.underscored and fwd.drop_underscored:
            _dropped_underscored(self._ip_str, req)
        new_id = lst.new_request_id
        self._rid = rid = new_id() if new_id is not None else b""
        head = request_head(req, fwd, self._ip, trusted, lst.scheme, rid)
        self._sent = [head]
        self._sent_size = len(head)
        self._active = self._t0 = now
        self._t_resp = -1.0
        self._status = 0
        self._bytes_out = 0
        if not self._choose_upstream(head):
            return
        if not self._req_done and self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            self._request_body(data)
        self._arm_at(now + self._phase_timeout())

    def _answer(self, req: Request, answer: Answer) -> None:
        """Answer from a content rule (redirect, fixed response) without a server."""
        # A body the client is sending is not read: the connection cannot go on after it.
        close = self._close_after or req.body != NO_BODY
        self._active = self._t0 = self._loop.time()
        self._t_resp = -1.0
        self._status = answer.status
        data = answer.encode(head_only=req.method == b"HEAD", close=close)
        self._bytes_out = len(data)
        self._req_bytes = 0
        self._transport.write(data)  # type: ignore[union-attr]
        self._end_exchange()
        if close:
            self._close()
            return
        self._phase = HEAD
        self._arm(min(self._phase_timeout(), self._listener.t_header))

    def _request_body(self, data: bytes) -> None:
        """Forward the part of `data` that belongs to the current request body."""
        if self._req_chunks is not None:
            try:
                used = self._req_chunks.feed(data)
            except ChunkError as exc:
                log.debug("client %s: bad chunked body: %s", self._ip_str, exc)
                self._fail(400)
                return
            done = self._req_chunks.done
        else:
            used = min(self._req_left, len(data))
            self._req_left -= used
            done = not self._req_left
        piece = data if used == len(data) else data[:used]
        # The body size limit counts payload, not chunk framing.
        self._req_bytes = (
            self._req_chunks.payload if self._req_chunks is not None else (self._req_bytes + used)
        )
        svc = self._svc
        assert svc is not None
        if svc.max_body and self._req_bytes > svc.max_body:
            self._fail(413)
            return
        if piece:
            self._send_up(piece)
            sent = self._sent
            if sent is not None:
                self._sent_size += used
                if self._sent_size > REPLAY_LIMIT:
                    self._sent = None
                else:
                    sent.append(piece)
        if done:
            self._req_done = True
            if used < len(data):
                self._buf += data[used:]
            if self._resp is None:
                # Waiting for the response head from here on.
                self._active = self._loop.time()
                self._arm(self._phase_timeout())
            elif self._resp_done_pending():
                self._finish_response()

    def _send_up(self, data: bytes) -> None:
        up = self._up
        if up is not None and up.transport is not None:
            if up.endpoint.ssl_context is None:
                write_out(up.transport, data)
            else:
                up.transport.write(data)  # (a TLS layer divides what it encrypts)
        elif self._pending is not None:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size > PENDING_LIMIT:
                self._set_pause(P_PENDING, True)

    def drain(self) -> None:
        """Answer what the client has sent or is sending with Connection: close, then close.

        An exchange in progress finishes; if its response head already went out without
        Connection: close, the client may be sending its next request right now, so that
        one is still answered (with close) if it arrives within DRAIN_LINGER. A connection
        that has not sent its first request yet gets the usual header deadline.
        """
        self._draining = True
        if self._phase == HEAD and not self._buf:
            self._active = self._loop.time()
            self._arm(self._phase_timeout())
        elif self._phase == EXCHANGE and self._resp is None:
            self._close_after = True

    @property
    def idle(self) -> bool:
        return self._phase == HEAD and not self._buf

    def abort_now(self) -> None:
        """Cut the connection at once (the grace period is over)."""
        self._abort()
