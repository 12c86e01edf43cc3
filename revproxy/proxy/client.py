"""One client connection: requests in, responses out, one exchange at a time.

The connection reads a request head, routes it to a service, picks a server
and a server connection (idle, pinned or new), and streams the request body
to it while the response streams back. Pipelined requests wait in the buffer
until the response before them is complete, which keeps responses in order.
Reading pauses whenever the other side cannot keep up, so memory per
connection stays bounded by the buffer limits whatever the body sizes.

Timers: one lazy timer per connection. Activity only records a timestamp;
when the timer fires it compares against the deadline of the current phase
and sleeps again if there was activity, so per-chunk bookkeeping is one
float store instead of cancelling and creating timers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from typing import cast

from revproxy.balance.persistence import cookie_from_request, decide
from revproxy.balance.pool import Server
from revproxy.http.chunked import ChunkedReader, ChunkError
from revproxy.http.errors import HttpError, ProtocolError, error_response
from revproxy.http.forward import Forwarding, interim_head, request_head, response_head
from revproxy.http.head import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    Request,
    Response,
    parse_request,
    parse_response,
)
from revproxy.http.rules import Answer, BodyReplacer, HeaderOp, ResponseEdits
from revproxy.proxy.runtime import Listener, Service
from revproxy.proxy.upstream import WRITE_HIGH, WRITE_LOW, ServerConnection
from revproxy.tls.context import served_names_of, sni_host_mismatch, sni_of

log = logging.getLogger("revproxy.proxy")

# Phases of a client connection.
_HEAD, _EXCHANGE, _TUNNEL, _CLOSED = range(4)
# Reasons to stop reading from the client (bit mask).
_P_UPSTREAM = 1  # the server connection's write buffer is full
_P_PIPELINE = 2  # pipelined bytes are waiting for the current exchange
_P_PENDING = 4  # request bytes are waiting for a server connection to open

RATE_WINDOW = 10.0  # seconds over which client_body_min_rate is averaged
DRAIN_LINGER = 1.0  # seconds an idle keep-alive connection stays open once draining
REPLAY_LIMIT = 64 * 1024  # request bytes kept to resend on a fresh connection
PENDING_LIMIT = 256 * 1024
MAX_RESPONSE_HEAD = 64 * 1024
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_RETRY_AFTER = b"Retry-After: 5\r\n"
_FORWARDING_FIELDS = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})


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


class ClientConnection(asyncio.Protocol):
    def __init__(self, listener: Listener, registry: set[ClientConnection]) -> None:
        self._listener = listener
        self._registry = registry
        self._stats = listener.stats
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._ip = b"-"
        self._ip_str = ""
        self._buf = bytearray()
        self._phase = _HEAD
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
        self._stale_retried = False
        self._resp: Response | None = None
        self._resp_buf = bytearray()
        self._resp_seen = False
        self._resp_left = 0
        self._resp_chunks: ChunkedReader | None = None
        self._dechunk = False
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

    # ----------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)
        listener = self._listener
        listener.handshaking.pop(self, None)
        if len(self._registry) >= listener.max_connections:
            # Over the per-worker limit: refuse at once rather than hold it unanswered.
            listener.refuse(transport)
            self._phase = _CLOSED
            return
        transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
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

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase == _TUNNEL:
            self._active = self._loop.time()
            self._send_up(data)
            return
        if phase == _HEAD:
            if not self._buf:
                # The header deadline runs from the first byte of a request.
                self._active = self._loop.time()
                self._arm(self._listener.t_header)
            self._buf += data
            self._read_heads()
        elif phase == _EXCHANGE:
            if not self._req_done:
                self._active = self._loop.time()
                self._request_body(data)
            else:
                self._buf += data
                if len(self._buf) > self._listener.max_header_bytes:
                    self._set_pause(_P_PIPELINE, True)

    def eof_received(self) -> bool | None:
        # Half-closed by the client: what it sent completely is still answered, then the
        # connection closes. (A TLS transport closes on EOF whatever is returned.)
        if self._listener.ssl_context is not None:
            return False
        self._eof = True
        if self._phase == _EXCHANGE and self._req_done:
            return True
        if self._phase == _HEAD and b"\r\n\r\n" in self._buf:
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._phase == _TUNNEL and self._up is not None:
            # Whatever the client sent last still reaches the server.
            up, self._up = self._up, None
            up.close()
        self._phase = _CLOSED
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

    # ----------------------------------------------------------------- request side

    def _read_heads(self) -> None:
        buf = self._buf
        lst = self._listener
        while self._phase == _HEAD and buf:
            # RFC 9112 §2.2: empty lines before a request line are ignored.
            while buf[:2] == b"\r\n":
                del buf[:2]
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                line_end = buf.find(b"\r\n")
                if line_end > lst.max_request_line or (
                    line_end < 0 and len(buf) > lst.max_request_line
                ):
                    self._fail(414)
                elif len(buf) > lst.max_header_bytes:
                    self._fail(431)
                elif self._eof:
                    self._close()
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            try:
                if end > lst.max_header_bytes:
                    raise HttpError(431, "request head too large")
                if head.find(b"\r\n") > lst.max_request_line:
                    raise HttpError(414, "request line too long")
                req = parse_request(head, lst.max_header_count)
                svc = self._route(req)
                if end > svc.max_header_bytes or len(req.headers) > svc.max_header_count:
                    raise HttpError(431, "request head too large")
                if head.find(b"\r\n") > svc.max_request_line:
                    raise HttpError(414, "request line too long")
                if svc.max_body and req.body == LENGTH and req.content_length > svc.max_body:
                    raise HttpError(413, "request body too large")
            except HttpError as exc:
                log.debug("client %s: %s", self._ip_str, exc)
                self._fail(exc.status)
                return
            self._start(req, svc)

    def _route(self, req: Request) -> Service:
        # OPTIONS * asks about the server as a whole: it goes where "/" would go.
        path = req.path if req.path != b"*" else b"/"
        svc, host_known = self._listener.router.route(req.host, path)
        if svc is None:
            raise HttpError(404 if host_known else 421, "no service for this request")
        if self._sni is not None and sni_host_mismatch(self._sni, req.host, self._cert_names):
            # RFC 9110 §7.4: the certificate this connection got does not cover this host.
            raise HttpError(421, "Host is not covered by the connection's certificate")
        return svc

    def _start(self, req: Request, svc: Service) -> None:
        self._phase = _EXCHANGE
        self._req = req
        self._svc = svc
        self._last_svc = svc
        self._tried = []
        self._stale_retried = False
        body = req.body
        self._req_done = body == NO_BODY
        self._req_left = req.content_length
        self._req_chunks = ChunkedReader() if body == CHUNKED else None
        self._req_bytes = 0
        if svc.min_rate and body != NO_BODY:
            self._rate_at, self._rate_bytes = self._loop.time(), 0
            self._arm(RATE_WINDOW)
        self._close_after = self._close_after or not req.keep_alive or self._draining
        trusted = self._trusts.get(svc.name)
        if trusted is None:
            trusted = self._trusts[svc.name] = svc.trusts(self._ip_str)
        self._edits = None
        self._replacer = None
        self._set_cookie = None
        fwd = svc.forwarding
        if svc.rules:
            action = svc.rules.on_request(req.method, req.host, req.target, req.header)
            if action.answer is not None:
                self._answer(req, action.answer)
                return
            if action.target is not None:
                req.target = action.target
            if action.headers:
                req.headers = action.headers.apply(req.headers)
                fwd = _rule_forwarding(fwd, action.headers.ops)
            self._edits = action.response
        self._rid = rid = self._listener.new_request_id()
        head = request_head(req, fwd, self._ip, trusted, self._listener.scheme, rid)
        self._sent = [head]
        self._sent_size = len(head)
        self._active = self._t0 = self._loop.time()
        self._t_resp = -1.0
        self._status = 0
        self._bytes_out = 0
        if not self._choose_upstream(head):
            return
        if not self._req_done and self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            self._request_body(data)
        self._arm(self._phase_timeout())

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
        self._phase = _HEAD
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
            up.transport.write(data)
        elif self._pending is not None:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size > PENDING_LIMIT:
                self._set_pause(_P_PENDING, True)

    # ----------------------------------------------------------------- choosing a server

    def _choose_upstream(self, head: bytes) -> bool:
        svc = self._svc
        assert svc is not None
        pinned = self._pinned
        if pinned is not None:
            if not pinned.closed and pinned.endpoint.server in svc.endpoints:
                self._server = pinned.endpoint.server
                self._server.active += 1
                self._attach(pinned)
                pinned.transport.write(head)  # type: ignore[union-attr]
                return True
            if pinned.closed:
                self._pinned = None
        server = self._pick(svc)
        if server is None:
            self._fail(503, extra=_RETRY_AFTER)
            return False
        self._server = server
        server.active += 1
        conn = svc.endpoints[server].take_idle()
        if conn is not None:
            self._attach(conn)
            conn.transport.write(head)  # type: ignore[union-attr]
        else:
            self._pending = [head]
            self._pending_size = len(head)
            self._connect()
        return True

    def _pick(self, svc: Service) -> Server | None:
        """The server for this request: persistence first, then the pool's balancing."""
        pool = svc.pool
        if not svc.persistence:
            return pool.choose(self._tried, self._ip_str)
        cookie = None
        name = svc.cookie_name
        if name:
            req = self._req
            assert req is not None
            values = [value for lname, value, _ in req.headers if lname == b"cookie"]
            cookie = cookie_from_request(values, name) if values else None
        decision = decide(
            pool, self._ip_str, cookie, self._loop.time(), self._tried, self._conn_cookie
        )
        server = decision.server
        if decision.set_cookie is not None and server is not None:
            self._set_cookie = b"Set-Cookie: %s\r\n" % decision.set_cookie
            self._conn_cookie = server.cookie
        return server

    def _attach(self, conn: ServerConnection) -> None:
        conn.owner = self
        self._up = conn
        self._reused = conn.requests > 0
        conn.requests += 1
        self._resp_seen = False
        if self._client_write_paused and conn.transport is not None:
            conn.transport.pause_reading()

    def _connect(self) -> None:
        svc, server = self._svc, self._server
        assert svc is not None and server is not None
        self._connecting = self._loop.create_task(self._open(svc, server))

    async def _open(self, svc: Service, server: Server) -> None:
        endpoint = svc.endpoints[server]
        try:
            conn = await endpoint.connect(svc.t_connect)
        except asyncio.CancelledError:
            raise
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._connecting = None
            if self._phase == _EXCHANGE and self._server is server:
                self._connect_failed(server, exc)
            return
        self._connecting = None
        if self._phase != _EXCHANGE or self._server is not server or self._pending is None:
            conn.close()
            return
        if conn.closed or conn.transport is None or conn.transport.is_closing():
            # Accepted and dropped before we could use it (a server going away).
            self._connect_failed(server, ConnectionResetError("closed right after connect"))
            return
        self._attach(conn)
        pending = self._pending
        self._pending = None
        self._pending_size = 0
        assert conn.transport is not None
        conn.transport.write(b"".join(pending))
        self._set_pause(_P_PENDING, False)
        self._active = self._loop.time()
        self._arm(self._phase_timeout())

    def _connect_failed(self, server: Server, exc: BaseException) -> None:
        svc = self._svc
        assert svc is not None
        timeout = isinstance(exc, TimeoutError)
        log.warning(
            "server %s (pool %s): connect failed: %s",
            server.name,
            svc.pool.name,
            "timeout" if timeout else (exc or type(exc).__name__),
        )
        if not self._try_another(server, "timeout" if timeout else "connect"):
            self._fail(504 if timeout else 502)

    def _try_another(self, server: Server, kind: str) -> bool:
        """Send the pending request to another server after `server` failed it.

        False when the retry budget (count and window) is spent or no server may take it.
        """
        svc = self._svc
        assert svc is not None
        server.active -= 1
        self._server = None
        self._tried.append(server)
        self._stats.server_failed(svc.pool.name, server.name, kind)
        if len(self._tried) > svc.retries or self._loop.time() - self._t0 >= svc.retry_window:
            return False
        nxt = self._pick(svc)
        if nxt is None:
            return False
        self._stats.retried(svc.pool.name, nxt.name)
        self._server = nxt
        nxt.active += 1
        conn = svc.endpoints[nxt].take_idle()
        if conn is None:
            self._connect()
            return True
        # Nothing reached a server: what is pending is the whole request so far.
        self._attach(conn)
        pending, self._pending = self._pending or [], None
        self._pending_size = 0
        conn.transport.write(b"".join(pending))  # type: ignore[union-attr]
        self._set_pause(_P_PENDING, False)
        return True

    def _retry_unanswered(self) -> bool:
        """Resend a request whose server connection closed before any response byte.

        Only an idempotent request whose bytes are all kept (never a POST whose body went
        out). A reused connection first gets one fresh connection to the same server (the
        server had just closed an idle connection); after that the server counts as failed
        and another one is tried within the service's retry budget.
        """
        req, svc, server = self._req, self._svc, self._server
        if (
            req is None
            or svc is None
            or server is None
            or self._sent is None
            or req.method not in IDEMPOTENT
        ):
            return False
        self._up = None
        self._resp_buf.clear()
        self._pending = list(self._sent)
        self._pending_size = self._sent_size
        if self._reused and not self._stale_retried:
            self._stale_retried = True
            self._stats.retried(svc.pool.name, server.name)
            self._connect()
            return True
        return self._try_another(server, "reset")

    # ----------------------------------------------------------------- response side

    def server_data(self, conn: ServerConnection, data: bytes) -> None:
        if conn is not self._up:
            # Bytes from a pinned connection between requests: it is out of step.
            if conn is self._pinned:
                self._pinned = None
                conn.close()
            return
        self._resp_seen = True
        self._active = self._loop.time()
        if self._phase == _TUNNEL:
            self._transport.write(data)  # type: ignore[union-attr]
            return
        if self._resp is not None:
            self._response_body(data, b"")
            return
        if self._resp_buf:
            self._resp_buf += data
            data = bytes(self._resp_buf)
            self._resp_buf.clear()
        self._response_heads(data)

    def _response_heads(self, data: bytes) -> None:
        """Parse heads: interim ones are passed on, the final one goes out with the body's start."""
        req = self._req
        assert req is not None
        start = 0
        while True:
            end = data.find(b"\r\n\r\n", start)
            if end < 0 or end - start > MAX_RESPONSE_HEAD:
                if len(data) - start > MAX_RESPONSE_HEAD:
                    self._bad_response("response head too large")
                else:
                    self._resp_buf += data[start:]
                return
            try:
                resp = parse_response(data[start:end], req.method)
            except ProtocolError as exc:
                self._bad_response(str(exc))
                return
            start = end + 4
            status = resp.status
            if status == 101:
                if req.upgrade is None:
                    self._bad_response("101 to a request that asked for no upgrade")
                    return
                self._start_tunnel(resp, data[start:])
                return
            if status < 200:
                if req.http11:
                    self._transport.write(interim_head(resp))  # type: ignore[union-attr]
                continue
            # One write for head and the first body bytes: a small response costs one send.
            self._response_body(
                data[start:] if start < len(data) else b"", self._response_head(resp)
            )
            return

    def _response_head(self, resp: Response) -> bytes:
        req, svc = self._req, self._svc
        assert req is not None and svc is not None
        self._resp = resp
        self._status = status = resp.status
        self._t_resp = self._active - self._t0
        server = self._server
        if server is not None:
            if status in svc.passive_statuses:
                self._stats.server_failed(svc.pool.name, server.name, "status")
            else:
                self._stats.server_succeeded(svc.pool.name, server.name)
        if resp.auth_challenge and svc.ntlm_pinning:
            # NTLM and Negotiate authenticate the connection: it now belongs to this client.
            self._pinned = self._up
        dechunk = resp.body == CHUNKED and not req.http11
        extra = b""
        edits = self._edits
        if edits is not None:
            replacer = (
                edits.body_replacer(req.method, status, resp.headers)
                if resp.body != NO_BODY
                else None
            )
            resp.headers = edits.apply_headers(resp.headers, replacing=replacer is not None)
            if replacer is not None:
                # The new body's length is known only at its end: chunked to HTTP/1.1
                # clients, delimited by closing for HTTP/1.0 ones.
                self._replacer = replacer
                dechunk = True
                if req.http11:
                    extra = b"Transfer-Encoding: chunked\r\n"
        self._dechunk = dechunk
        if self._set_cookie is not None:
            extra += self._set_cookie
        if resp.body == UNTIL_CLOSE or (dechunk and not extra) or not self._req_done:
            self._close_after = True
        elif self._draining:
            self._close_after = True
        elif self._eof and b"\r\n\r\n" not in self._buf:
            # The client half-closed and this is its last complete request.
            self._close_after = True
        self._resp_left = resp.content_length
        self._resp_chunks = ChunkedReader() if resp.body == CHUNKED else None
        self._arm(svc.t_server_body)
        return response_head(
            resp,
            close=self._close_after,
            http10_client=not req.http11,
            dechunk=dechunk,
            via=svc.forwarding.via,
            extra=extra,
        )

    def _write(self, head: bytes, piece: bytes) -> None:
        transport = self._transport
        assert transport is not None
        self._bytes_out += len(head) + len(piece)
        if not head:
            if piece:
                transport.write(piece)
        elif len(piece) < 65536:
            transport.write(head + piece)
        else:
            transport.writelines((head, piece))

    def _response_body(self, data: bytes, head: bytes) -> None:
        """Pass on the part of `data` that belongs to the response body (after `head`)."""
        resp = self._resp
        assert resp is not None
        body = resp.body
        replacer = self._replacer
        if body == LENGTH:
            used = min(self._resp_left, len(data))
            self._resp_left -= used
            piece = data if used == len(data) else data[:used]
            if replacer is not None:
                piece = self._replaced(replacer, piece, not self._resp_left)
            self._write(head, piece)
            extra = used < len(data)
        elif body == CHUNKED:
            chunks = self._resp_chunks
            assert chunks is not None
            out: list[bytes] | None = [] if self._dechunk else None
            try:
                used = chunks.feed(data, out)
            except ChunkError as exc:
                if head:
                    self._transport.write(head)  # type: ignore[union-attr]
                self._bad_response(f"bad chunked body: {exc}")
                return
            if out is not None:
                piece = b"".join(out)
                if replacer is not None:
                    piece = self._replaced(replacer, piece, chunks.done)
                self._write(head, piece)
            else:
                self._write(head, data if used == len(data) else data[:used])
            extra = used < len(data)
        elif body == UNTIL_CLOSE:
            self._write(head, data if replacer is None else self._replaced(replacer, data, False))
            return
        else:
            self._write(head, b"")
            extra = bool(data)
        if extra:
            # Bytes past the end of the response: the connection is out of step.
            log.warning("server %s sent bytes past the end of a response", self._server)
            if self._up is not None:
                up, self._up = self._up, None
                if up is self._pinned:
                    self._pinned = None
                up.close()
            self._close_after = self._close_after or not self._req_done
        if self._resp_done_pending():
            self._finish_response()

    def _replaced(self, replacer: BodyReplacer, payload: bytes, done: bool) -> bytes:
        """Body bytes after content-rule replacement, framed for the client."""
        out = replacer.feed(payload) if payload else b""
        if done:
            out += replacer.finish()
        req = self._req
        if req is None or not req.http11:
            return out
        framed = b"%x\r\n%s\r\n" % (len(out), out) if out else b""
        return framed + b"0\r\n\r\n" if done else framed

    def _resp_done_pending(self) -> bool:
        resp = self._resp
        if resp is None:
            return False
        if resp.body == LENGTH:
            return not self._resp_left
        if resp.body == CHUNKED:
            return self._resp_chunks is not None and self._resp_chunks.done
        return resp.body == NO_BODY

    def _finish_response(self) -> None:
        """The response is complete: release the server connection, go on to the next request."""
        resp = self._resp
        up = self._up
        self._up = None
        if up is not None:
            if up is self._pinned:
                if not (resp is not None and resp.keep_alive and self._req_done):
                    self._pinned = None
                    up.close()
            elif resp is not None and resp.keep_alive and self._req_done and not up.closed:
                up.endpoint.put_idle(up)
            else:
                up.close()
        self._end_exchange()
        if self._close_after or not self._req_done:
            self._close()
            return
        if self._eof and b"\r\n\r\n" not in self._buf:
            self._close()
            return
        self._phase = _HEAD
        self._set_pause(_P_PIPELINE, False)
        self._active = self._loop.time()
        # The header deadline is the shorter one and starts with the next request's first
        # byte; arming it now spares a timer reschedule on every request.
        self._arm(min(self._phase_timeout(), self._listener.t_header))
        if self._buf:
            self._read_heads()

    def _end_exchange(self) -> None:
        req, svc, server = self._req, self._svc, self._server
        if req is not None and svc is not None:
            self._stats.request_done(
                self._listener.name,
                self._ip_str,
                svc.name,
                svc.pool.name,
                server.name if server is not None else "",
                req,
                self._status or 499,  # 499: the client went away before an answer
                self._req_bytes,
                self._bytes_out,
                self._t0,
                self._t_resp,
                self._loop.time(),
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
        self._resp_buf.clear()
        self._resp_chunks = None
        self._req_chunks = None
        self._pending = None
        self._pending_size = 0
        self._sent = None
        self._set_pause(_P_PENDING | _P_UPSTREAM, False)

    def server_lost(self, conn: ServerConnection, exc: Exception | None) -> None:
        if conn is self._pinned:
            self._pinned = None
        if conn is not self._up:
            return
        self._up = None
        if self._phase == _TUNNEL:
            self._close()
            return
        if self._resp is None:
            if not self._resp_seen and self._retry_unanswered():
                return
            self._bad_response("server closed the connection before answering", conn_gone=True)
            return
        if self._resp.body == UNTIL_CLOSE:
            if self._replacer is not None:
                self._write(b"", self._replaced(self._replacer, b"", True))
            self._close_after = True
            self._finish_response()
            return
        # A body with a known end stopped short: cut the client connection so the client
        # sees an incomplete response rather than a short one that looks whole.
        log.warning("server %s closed the connection mid-response", self._server)
        self._abort()

    def server_write_paused(self, paused: bool) -> None:
        self._set_pause(_P_UPSTREAM, paused)

    def _bad_response(self, why: str, conn_gone: bool = False) -> None:
        log.warning("server %s: %s", self._server, why)
        svc, server = self._svc, self._server
        if svc is not None and server is not None:
            self._stats.server_failed(
                svc.pool.name, server.name, "reset" if conn_gone else "protocol"
            )
        if not conn_gone and self._up is not None:
            up, self._up = self._up, None
            if up is self._pinned:
                self._pinned = None
            up.abort()
        if self._resp is None:
            self._fail(502)
        else:
            self._abort()

    # ----------------------------------------------------------------- tunnels

    def _start_tunnel(self, resp: Response, rest: bytes) -> None:
        req = self._req
        assert req is not None
        self._phase = _TUNNEL
        self._close_after = True
        upgrade = resp.header(b"upgrade") or req.upgrade
        self._transport.write(  # type: ignore[union-attr]
            response_head(resp, close=False, http10_client=False, upgrade=upgrade)
        )
        if rest:
            self._transport.write(rest)  # type: ignore[union-attr]
        if self._buf:
            early = bytes(self._buf)
            self._buf.clear()
            self._send_up(early)
        self._set_pause(_P_PIPELINE, False)
        self._active = self._loop.time()
        self._arm(self._phase_timeout())

    # ----------------------------------------------------------------- timers

    def _phase_timeout(self) -> float:
        phase = self._phase
        if phase == _HEAD:
            if self._buf or not self._served:
                return self._listener.t_header
            if self._draining:
                return DRAIN_LINGER
            svc = self._last_svc
            return svc.t_keepalive if svc is not None else self._listener.t_header
        svc = self._svc
        assert svc is not None
        if phase == _TUNNEL:
            return svc.t_tunnel
        if self._connecting is not None:
            return svc.t_connect + 1.0
        if self._resp is not None:
            return svc.t_server_body
        if not self._req_done:
            return svc.t_body_idle
        return svc.t_response

    def _arm(self, seconds: float) -> None:
        when = self._loop.time() + seconds
        timer = self._timer
        if timer is None or self._timer_at > when:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(when, self._on_timer)
            self._timer_at = when

    def _on_timer(self) -> None:
        self._timer = None
        if self._phase == _CLOSED:
            return
        now = self._loop.time()
        if self._client_write_paused and self._phase in (_EXCHANGE, _TUNNEL):
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
            and self._phase == _EXCHANGE
            and not self._req_done
            and self._resp is None
        ):
            # Slowloris protection for bodies: a minimum rate over 10 s windows, so a slow
            # but steady upload lives as long as it needs (no total deadline).
            if self._pause & (_P_UPSTREAM | _P_PENDING):
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
        if phase == _HEAD:
            if self._buf:
                stats.timed_out("client_header")
                self._fail(408)
            else:
                stats.timed_out("keepalive")
                self._close()
        elif phase == _TUNNEL:
            stats.timed_out("tunnel")
            self._close()
        elif self._resp is not None:
            log.info("client %s: response body idle timeout", self._ip_str)
            stats.timed_out("server_body")
            self._abort()
        elif not self._req_done and self._connecting is None and self._up is not None:
            log.info("client %s: request body idle timeout", self._ip_str)
            stats.timed_out("client_body")
            self._fail(408)
        else:
            log.warning("server %s: no response in time", self._server)
            stats.timed_out("server_response")
            svc, server = self._svc, self._server
            if svc is not None and server is not None:
                self._stats.server_failed(svc.pool.name, server.name, "timeout")
            self._fail(504)

    # ----------------------------------------------------------------- flow control, ending

    def _set_pause(self, reason: int, on: bool) -> None:
        before = self._pause
        after = before | reason if on else before & ~reason
        if after == before:
            return
        self._pause = after
        transport = self._transport
        if transport is None or self._phase == _CLOSED:
            return
        if after and not before:
            transport.pause_reading()
        elif before and not after:
            transport.resume_reading()

    def _fail(self, status: int, extra: bytes = b"") -> None:
        """Answer with an error and close: after an error the framing is not trusted."""
        if self._resp is not None or self._phase == _TUNNEL:
            self._abort()
            return
        self._status = status
        if self._req is None:
            # Refused before it was routed (bad framing, limits, no service).
            now = self._loop.time()
            self._stats.request_done(
                self._listener.name, self._ip_str, "", "", "", None, status, 0, 0, now, -1.0,
                now, b"",
            )  # fmt: skip
        self._abort_exchange()
        transport = self._transport
        if transport is not None and self._phase != _CLOSED:
            transport.write(error_response(status, extra=extra))
        self._close()

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

    def _close(self) -> None:
        if self._phase == _TUNNEL and self._up is not None:
            up, self._up = self._up, None
            up.close()
        self._abort_exchange()
        if self._phase != _CLOSED:
            self._phase = _CLOSED
            if self._transport is not None:
                self._transport.close()

    def _abort(self) -> None:
        self._abort_exchange()
        if self._phase != _CLOSED:
            self._phase = _CLOSED
            if self._transport is not None:
                self._transport.abort()

    def drain(self) -> None:
        """Answer what the client has sent or is sending with Connection: close, then close.

        An exchange in progress finishes; if its response head already went out without
        Connection: close, the client may be sending its next request right now, so that
        one is still answered (with close) if it arrives within DRAIN_LINGER. A connection
        that has not sent its first request yet gets the usual header deadline.
        """
        self._draining = True
        if self._phase == _HEAD and not self._buf:
            self._active = self._loop.time()
            self._arm(self._phase_timeout())
        elif self._phase == _EXCHANGE and self._resp is None:
            self._close_after = True

    @property
    def idle(self) -> bool:
        return self._phase == _HEAD and not self._buf

    def abort_now(self) -> None:
        """Cut the connection at once (the grace period is over)."""
        self._abort()
