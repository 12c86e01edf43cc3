"""The server side of a client connection: which server, retries, and the response.

Chooses a server (persistence, then the pool's balancing), takes an idle, pinned or new
server connection, moves a request to another server when that is safe, and relays the
response: interim responses, the head with the first body bytes in one write, bodies as
they stream (re-framed when a content rule rewrites them), tunnels after a 101.
"""

from __future__ import annotations

import asyncio
import ssl

from revproxy.balance.persistence import cookie_from_request, decide
from revproxy.balance.pool import Server
from revproxy.http.chunked import ChunkedReader, ChunkError
from revproxy.http.errors import ProtocolError
from revproxy.http.forward import interim_head, response_head
from revproxy.http.head import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    Response,
    parse_response,
)
from revproxy.http.proxyproto import build as build_proxy_header
from revproxy.http.rules import BodyReplacer
from revproxy.proxy.exchange import (
    EXCHANGE,
    HEAD,
    IDEMPOTENT,
    MAX_RESPONSE_HEAD,
    P_PENDING,
    P_PIPELINE,
    P_UPSTREAM,
    RETRY_AFTER,
    TUNNEL,
    ExchangeState,
    log,
)
from revproxy.proxy.runtime import Service
from revproxy.proxy.sending import SEND_TARGET, write_out
from revproxy.proxy.upstream import ServerConnection


class ServerSide(ExchangeState):
    """Choosing a server and relaying its response, for one client connection."""

    def _choose_upstream(self, head: bytes) -> bool:
        svc = self._svc
        assert svc is not None
        pinned = self._pinned
        if pinned is not None:
            if self._pinned_serves(pinned, svc):
                self._server = pinned.endpoint.server
                self._server.active += 1
                self._attach(pinned)
                pinned.transport.write(head)  # type: ignore[union-attr]
                return True
            if pinned.closed or not pinned.endpoint.server.accepts_persistent:
                # Its server went down or was disabled: the client authenticates anew
                # with a server that takes traffic.
                self._pinned = None
                pinned.close()
        server = self._pick(svc)
        if server is None:
            self._fail(503, extra=RETRY_AFTER)
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

    def _pinned_serves(self, pinned: ServerConnection, svc: Service) -> bool:
        """Whether the connection tied to this client carries its request for `svc`."""
        endpoint = pinned.endpoint
        server = endpoint.server
        if pinned.closed or server not in svc.endpoints or not server.accepts_persistent:
            # A server down or disabled takes no requests, not even authenticated ones (a
            # draining one keeps the clients it has).
            return False
        if not endpoint.proxy_protocol:
            return True  # NTLM: the connection holds the client's authentication
        # A PROXY-protocol connection is only this client's habit: it ages like an idle
        # pooled connection.
        return self._loop.time() - pinned.idle_since < endpoint.idle_timeout

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
        version = endpoint.proxy_protocol
        header = self._proxy_header(version) if version else b""
        try:
            conn = await endpoint.connect(svc.t_connect, header)
        except asyncio.CancelledError:
            raise
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._connecting = None
            if self._phase == EXCHANGE and self._server is server:
                self._connect_failed(server, exc)
            return
        self._connecting = None
        if self._phase != EXCHANGE or self._server is not server or self._pending is None:
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
        self._set_pause(P_PENDING, False)
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
            "timeout" if timeout else (str(exc) or type(exc).__name__),
        )
        if not self._try_another(server, "timeout" if timeout else "connect", sent=False):
            self._fail(504 if timeout else 502)

    def _try_another(self, server: Server, kind: str, sent: bool = True) -> bool:
        """Send the pending request to another server after `server` failed it.

        `sent`: whether the request may have reached `server`. Such attempts count against
        the service's retries; one whose connection was never made costs nothing, so a
        dead server never costs a request that another server could take. False when the
        budget (count and window) is spent or no server may take it.
        """
        svc = self._svc
        assert svc is not None
        server.active -= 1
        self._server = None
        self._tried.append(server)
        self._stats.server_failed(svc.pool.name, server.name, kind)
        if sent:
            self._replays += 1
        now = self._loop.time()
        if self._retries_spent(svc, self._replays, now):
            return False
        nxt = self._pick(svc)
        if nxt is None:
            return False
        self._stats.retried(svc.pool.name, nxt.name)
        self._server = nxt
        nxt.active += 1
        # The new attempt has its own deadlines (connect, then response).
        self._active = now
        conn = svc.endpoints[nxt].take_idle()
        if conn is None:
            self._connect()
            self._arm(self._phase_timeout())
            return True
        # Nothing reached a server: what is pending is the whole request so far.
        self._attach(conn)
        pending, self._pending = self._pending or [], None
        self._pending_size = 0
        conn.transport.write(b"".join(pending))  # type: ignore[union-attr]
        self._set_pause(P_PENDING, False)
        self._arm(self._phase_timeout())
        return True

    def _retries_spent(self, svc: Service, replays: int, now: float) -> bool:
        """Whether `replays` attempts a server may have seen are over the service's budget,
        or its retry window has passed."""
        return replays > svc.retries or now - self._t0 >= svc.retry_window

    def _resend_kept(self) -> None:
        """Make the request's kept bytes pending again, for a new attempt."""
        assert self._sent is not None
        self._resp_buf.clear()
        self._pending = list(self._sent)
        self._pending_size = self._sent_size

    def _retry_unanswered(self) -> bool:
        """Resend a request whose server connection closed before any response byte.

        Only an idempotent request whose bytes are all kept (never a POST whose body went
        out). A reused connection gets a fresh connection to the same server (the server
        had just closed an idle connection: no fault of its own, and no attempt counted);
        a fresh connection that closes unanswered counts the server as failed, and another
        one is tried within the service's retry budget.
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
        self._resend_kept()
        if self._reused:
            self._stats.retried(svc.pool.name, server.name)
            self._active = self._loop.time()
            self._connect()
            self._arm(self._phase_timeout())
            return True
        label = self._server_label()
        if not self._try_another(server, "reset"):
            return False  # the caller says what failed
        log.warning("server %s: closed the connection before answering; tried another", label)
        return True

    def _retry_timed_out(self) -> bool:
        """Send a request its server did not answer in time to another server, if safe.

        As for a connection closed before any response byte: only an idempotent request
        whose bytes are all kept, not on a connection an NTLM handshake is pinned to, within
        the service's retries and retry_window (a response timeout longer than the window,
        as by default, is answered 504). The silent server's connection is dropped and the
        timeout counts against it. False when there is nothing to try: the caller answers.
        """
        req, svc, server, up = self._req, self._svc, self._server, self._up
        if (
            req is None
            or svc is None
            or server is None
            or up is None
            or self._sent is None
            or self._resp_seen
            or not self._req_done
            or up is self._pinned
            or req.method not in IDEMPOTENT
            or self._retries_spent(svc, self._replays + 1, self._loop.time())
        ):
            return False
        label = self._server_label()
        self._stats.timed_out("server_response")
        self._up = None
        up.abort()
        self._resend_kept()
        if not self._try_another(server, "timeout"):
            log.warning("server %s: no response in time", label)
            self._fail(504)
            return True
        log.warning("server %s: no response in time; tried another", label)
        return True

    def server_data(self, conn: ServerConnection, data: bytes) -> None:
        if conn is not self._up:
            # Bytes from a pinned connection between requests: it is out of step.
            if conn is self._pinned:
                self._pinned = None
                conn.close()
            return
        self._resp_seen = True
        self._active = self._loop.time()
        if self._phase == TUNNEL:
            self._to_client(data)
            return
        if self._resp is not None:
            self._response_body(data, b"")
            return
        buf = self._resp_buf
        if buf:
            seen = len(buf)
            buf += data
            start = max(0, seen - 3)
            if (
                buf.find(b"\r\n\r\n", start) < 0
                and buf.find(b"\n\n", start) < 0
                and len(buf) <= MAX_RESPONSE_HEAD
            ):
                # Still no end of the head: wait for more without copying what came so far
                # (a head trickled in small pieces would cost quadratic time).
                return
            data = bytes(buf)
            buf.clear()
        self._response_heads(data)

    def _response_heads(self, data: bytes) -> None:
        """Parse heads: interim ones are passed on, the final one goes out with the body's start."""
        req, svc = self._req, self._svc
        assert req is not None and svc is not None
        rest = data
        while True:
            head, sep, after = rest.partition(b"\r\n\r\n")
            if not sep or len(head) > MAX_RESPONSE_HEAD:
                if len(rest) > MAX_RESPONSE_HEAD:
                    self._bad_response("response head too large")
                elif b"\n\n" in rest:
                    # Lines ended by LF alone (RFC 9112 §2.2 lets us refuse them): said now,
                    # rather than waiting for a CRLF CRLF that is not coming.
                    self._bad_response("response head with lines ended by LF alone")
                else:
                    self._resp_buf += rest
                return
            try:
                resp = parse_response(head, req.method)
            except ProtocolError as exc:
                self._bad_response(str(exc))
                return
            rest = after
            status = resp.status
            if status == 101:
                if req.upgrade is None:
                    self._bad_response("101 to a request that asked for no upgrade")
                    return
                server = self._server
                if server is not None:
                    # A tunnel never ends like a response: its start is the success.
                    self._stats.server_succeeded(svc.pool.name, server.name)
                self._start_tunnel(resp, rest)
                return
            if status < 200:
                if req.http11:
                    via = svc.forwarding.via_for(resp.http11)
                    self._transport.write(interim_head(resp, via))  # type: ignore[union-attr]
                continue
            # One write for head and the first body bytes: a small response costs one send.
            self._response_body(rest, self._response_head(resp))
            return

    def _response_head(self, resp: Response) -> bytes:
        req, svc = self._req, self._svc
        assert req is not None and svc is not None
        self._resp = resp
        self._status = status = resp.status
        self._t_resp = self._active - self._t0
        server = self._server
        if server is not None and status in svc.passive_statuses:
            self._stats.server_failed(svc.pool.name, server.name, "status")
        if resp.auth_challenge and svc.ntlm_pinning and self._up is not None:
            # NTLM and Negotiate authenticate the connection: it now belongs to this client.
            self._pin(self._up)
        dechunk = resp.body == CHUNKED and not req.http11
        edits = self._edits
        if edits is not None:
            replacer = (
                edits.body_replacer(req.method, status, resp.headers)
                if resp.body != NO_BODY
                else None
            )
            resp.headers = edits.apply_headers(resp.headers, replacing=replacer is not None)
            resp.block = None  # the memo of its forwarded lines is not theirs
            if replacer is not None:
                self._replacer = replacer
                dechunk = True
        self._dechunk = dechunk
        # Bodies whose length is known only at their end, a rewritten one and one the server
        # ends by closing, go chunked to HTTP/1.1 clients (after the server's own codings, if
        # any: "gzip" + this = "gzip, chunked"); HTTP/1.0 clients get them ended by our close.
        rechunk = req.http11 and (self._replacer is not None or resp.body == UNTIL_CLOSE)
        self._rechunk = rechunk
        extra = b"Transfer-Encoding: chunked\r\n" if rechunk else b""
        if self._set_cookie is not None:
            extra += self._set_cookie
        if (resp.body == UNTIL_CLOSE or dechunk) and not req.http11:
            # An HTTP/1.0 client has no chunked coding: the body ends when we close.
            self._close_after = True
        elif not self._req_done and not resp.keep_alive:
            # Answered before the whole request body came, by a server that stops reading
            # it. (One that keeps the connection reads the rest, which the client sends:
            # NTLM clients send a POST body after a 401 to keep their connection.)
            self._close_after = True
        elif self._draining:
            self._close_after = True
        elif self._eof and b"\r\n\r\n" not in self._buf:
            # The client half-closed and this is its last complete request.
            self._close_after = True
        self._resp_left = resp.content_length
        self._resp_chunks = ChunkedReader() if resp.body == CHUNKED else None
        self._arm_at(self._active + svc.t_server_body)
        return response_head(
            resp,
            close=self._close_after,
            http10_client=not req.http11,
            dechunk=dechunk,
            via=svc.forwarding.via_for(resp.http11),
            extra=extra,
        )

    def _write(self, head: bytes, piece: bytes) -> None:
        transport = self._transport
        assert transport is not None
        self._bytes_out += len(head) + len(piece)
        if len(piece) > SEND_TARGET:
            if head:
                transport.write(head)
            self._to_client(piece)
        elif head:
            transport.write(head + piece)
        elif piece:
            transport.write(piece)

    def _to_client(self, data: bytes) -> None:
        """Write to the client, a large piece in several sends (sending.py)."""
        transport = self._transport
        assert transport is not None
        if self._listener.ssl_context is None:
            write_out(transport, data)
        else:
            transport.write(data)  # the TLS layer divides what it encrypts

    def _response_body(self, data: bytes, head: bytes) -> None:
        """Pass on the part of `data` that belongs to the response body (after `head`)."""
        resp = self._resp
        assert resp is not None
        body = resp.body
        replacer = self._replacer
        if body == LENGTH:
            size = len(data)
            left = self._resp_left
            if size <= left:
                used, piece = size, data
            else:
                used, piece = left, data[:left]
            self._resp_left = left = left - used
            if replacer is not None:
                piece = self._replaced(replacer, piece, not left)
            self._write(head, piece)
            extra = used < size
            done = not left
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
            done = chunks.done
        elif body == UNTIL_CLOSE:
            if replacer is not None:
                self._write(head, self._replaced(replacer, data, False))
            else:
                self._write(head, self._framed(data, False))
            return
        else:
            self._write(head, b"")
            extra = bool(data)
            done = True
        if extra:
            # Bytes past the end of the response: the connection is out of step.
            log.warning("server %s sent bytes past the end of a response", self._server_label())
            if self._up is not None:
                up, self._up = self._up, None
                if up is self._pinned:
                    self._pinned = None
                up.close()
            self._close_after = self._close_after or not self._req_done
        if done and self._resp is not None:
            if self._req_done or self._close_after:
                # Only server_data calls this, and it has just set _active to the loop time.
                self._finish_response(self._active)
            else:
                # The rest of the request body goes on to the server; the exchange ends
                # with it (_request_body).
                self._answered = True
                self._arm(self._phase_timeout())

    def _replaced(self, replacer: BodyReplacer, payload: bytes, done: bool) -> bytes:
        """Body bytes after content-rule replacement, framed for the client."""
        out = replacer.feed(payload) if payload else b""
        if done:
            out += replacer.finish()
        return self._framed(out, done)

    def _framed(self, data: bytes, done: bool) -> bytes:
        """Body bytes as the client gets them: as chunks when the proxy frames the body."""
        if not self._rechunk:
            return data
        framed = b"%x\r\n%s\r\n" % (len(data), data) if data else b""
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

    def _finish_response(self, now: float = -1.0) -> None:
        """The response is complete: release the server connection, go on to the next request.

        `now`: the loop time, when the caller has it.
        """
        resp = self._resp
        up = self._up
        self._up = None
        if now < 0:
            now = self._loop.time()
        svc, server = self._svc, self._server
        if server is not None and svc is not None and resp is not None:
            # A whole response: a server failing its responses part-way is not healthy.
            if resp.status not in svc.passive_statuses:
                self._stats.server_succeeded(svc.pool.name, server.name)
        if up is not None:
            if self._client_write_paused and up.transport is not None:
                # Paused for this client's full write buffer: a kept connection reads again
                # (its next request's answer, or the server closing it, must be seen).
                up.transport.resume_reading()
            if up is self._pinned:
                if not (resp is not None and resp.keep_alive and self._req_done):
                    self._pinned = None
                    up.close()
                else:
                    up.idle_since = now
            elif (
                resp is not None
                and resp.keep_alive
                and self._req_done
                and not self._answered
                and not up.closed
            ):
                # (A server that answered before the body ended said it read the rest; if
                # it did not, the rest would be a request to it: that connection is not
                # pooled for other clients. One tied to this client by NTLM stays, above.)
                if up.endpoint.proxy_protocol:
                    # Its PROXY header named this client: kept for this client only (but
                    # an NTLM-authenticated connection this client holds stays first).
                    former = self._pinned
                    if former is None or former.closed or former.endpoint.proxy_protocol:
                        up.idle_since = now
                        self._pin(up)
                    else:
                        up.close()
                else:
                    up.endpoint.put_idle(up, now)
            else:
                up.close()
        self._end_exchange(now)
        if not self._req_done:
            # Answered before the request body was all read: the client may still send it.
            self._close(linger=True)
            return
        if self._close_after:
            self._close()
            return
        if self._eof and b"\r\n\r\n" not in self._buf:
            self._close()
            return
        self._phase = HEAD
        self._active = now
        # The header deadline is the shorter one and starts with the next request's first
        # byte; arming it now spares a timer reschedule on every request.
        self._arm_at(now + min(self._phase_timeout(), self._listener.t_header))
        if self._buf:
            self._read_heads()  # which also says whether reading stays paused
        elif self._pause & P_PIPELINE:
            self._set_pause(P_PIPELINE, False)

    def _pin(self, conn: ServerConnection) -> None:
        """Tie `conn` to this client connection (one at a time: a former one is closed)."""
        former = self._pinned
        if former is not None and former is not conn:
            former.close()
        self._pinned = conn

    def _proxy_header(self, version: str) -> bytes:
        """The PROXY header naming this connection's client to a server."""
        source, destination = self._client_addr, self._local_addr
        transport = self._transport
        if source is None and transport is not None:
            source = transport.get_extra_info("peername")
        if destination is None and transport is not None:
            destination = transport.get_extra_info("sockname")
        return build_proxy_header(version, source, destination)

    def server_lost(self, conn: ServerConnection, exc: Exception | None) -> None:
        if conn is self._pinned:
            self._pinned = None
        if conn is not self._up:
            return
        self._up = None
        if self._phase == TUNNEL:
            self._close()
            return
        if self._answered:
            # A whole response, then the server stopped reading the request body.
            self._finish_response()
            return
        if self._resp is None:
            if not self._resp_seen and self._retry_unanswered():
                return
            self._bad_response("server closed the connection before answering", conn_gone=True)
            return
        if self._resp.body == UNTIL_CLOSE:
            if exc is not None:
                # Reset, not closed: the body may not be whole. No last chunk, and the client
                # connection is cut (an HTTP/1.0 client cannot be told otherwise).
                log.warning(
                    "server %s: connection lost mid-response: %s", self._server_label(), exc
                )
                self._count_server_failure("reset")
                self._abort()
                return
            replacer = self._replacer
            if replacer is not None:
                end = self._replaced(replacer, b"", True)
            else:
                end = self._framed(b"", True)
            self._write(b"", end)
            self._finish_response()
            return
        # A body with a known end stopped short: cut the client connection so the client
        # sees an incomplete response rather than a short one that looks whole.
        log.warning("server %s closed the connection mid-response", self._server_label())
        self._count_server_failure("reset")
        self._abort()

    def server_write_paused(self, paused: bool) -> None:
        self._set_pause(P_UPSTREAM, paused)

    def _bad_response(self, why: str, conn_gone: bool = False) -> None:
        log.warning("server %s: %s", self._server_label(), why)
        self._count_server_failure("reset" if conn_gone else "protocol")
        if not conn_gone and self._up is not None:
            up, self._up = self._up, None
            if up is self._pinned:
                self._pinned = None
            up.abort()
        if self._resp is None:
            self._fail(502)
        else:
            self._abort()

    def _start_tunnel(self, resp: Response, rest: bytes) -> None:
        req = self._req
        assert req is not None
        self._phase = TUNNEL
        self._close_after = True
        upgrade = resp.header(b"upgrade") or req.upgrade
        self._transport.write(  # type: ignore[union-attr]
            response_head(
                resp,
                close=False,
                http10_client=False,
                upgrade=upgrade,
                via=self._svc.forwarding.via_for(True) if self._svc is not None else b"",
            )
        )
        if rest:
            self._transport.write(rest)  # type: ignore[union-attr]
        if self._buf:
            early = bytes(self._buf)
            self._buf.clear()
            self._send_up(early)
        self._set_pause(P_PIPELINE, False)
        self._active = self._loop.time()
        self._arm(self._phase_timeout())
