"""TLS over a plain TCP transport: the listeners' client connections and the connections
to real servers that re-encrypt.

A layer is the protocol of a socket and the transport of the connection above it (a
ClientConnection, or a ServerConnection): bytes from the socket go into OpenSSL through a
memory BIO and the plaintext up; what the connection writes is encrypted at once and handed
to the socket's transport, which does all the buffering. So write flow control,
pause_reading and resume_reading are the socket transport's own, passed through.
`TLSLayer` is the server side, for accepted connections; `ServerTLS` the client side, for
connections to real servers (verifying their certificate and sending SNI as the context and
server name say).

Why not the event loop's TLS transport: per connection it adds a second transport object,
a future and a callback for the handshake and a copy of the context for every write; doing
the same work here costs less CPU per new connection and per request.

On a listener, the handshake has the listener's header timeout. A refused handshake (a
name no certificate serves with unknown_sni = "reject", a protocol version or cipher the
listener does not speak) sends its alert before the connection closes. Closing sends close_notify
and closes the socket once what was written is sent, without waiting for the client's own
close_notify (as nginx does). The peer's FIN or close_notify reaches the connection above after
every record that came before it, and that connection says whether it stays half-open to
answer what it already has (as over plain TCP). The listener counts handshakes under way
(`Listener.tls_handshaking`: a stopping worker waits for them) and failed ones. Towards a
real server, the caller's connect timeout covers TCP and the handshake (`ServerTLS.ready`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, cast

from revproxy.proxy.sending import write_out

if TYPE_CHECKING:
    # (Only a type here: runtime.py reaches this module through upstream.py.)
    from revproxy.proxy.runtime import Listener

# A TLS record carries at most 16 KiB of plaintext, and one read returns one record.
READ_SIZE: Final = 16384

HANDSHAKE: Final = 0
OPEN: Final = 1
CLOSING: Final = 2
CLOSED: Final = 3


class _Layer(asyncio.Protocol):
    """What both sides share: records in and out, and the transport the connection above
    sees (see the module docstring). A side adds how the handshake starts and ends."""

    def __init__(self, context: ssl.SSLContext, app: asyncio.Protocol) -> None:
        self._context = context
        self._app: asyncio.Protocol | None = app  # dropped once the connection is over
        self._app_up = False  # the client connection has had connection_made
        self._tcp: Any = None  # the socket's transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._obj: ssl.SSLObject | None = None
        self._raw: Any = None  # the C object under _obj: its methods, called directly
        self._state = HANDSHAKE
        self._timer: asyncio.TimerHandle | None = None
        self._reading = True  # the client connection has not paused reading
        self._read_soon = False
        self._error: Exception | None = None
        self._peer_eof = False  # the peer's FIN or close_notify has come
        self._eof_told = False  # ... and the connection above has been told

    # ----------------------------------------------------------- the socket's protocol

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == OPEN:
            self._incoming.write(data)
            if self._reading:
                self._read()
        elif state == HANDSHAKE:
            self._incoming.write(data)
            self._handshake()
        # Closing or closed: what the client still sends is read and dropped (a close with
        # unread bytes would reset the connection and could destroy the last response).

    def eof_received(self) -> bool:
        """The peer's FIN. During the handshake, the handshake failed. Once open, the
        connection above hears of it after every record that came before it, and its answer
        says whether the connection stays half-open (to answer what it already has)."""
        if self._state == HANDSHAKE:
            self._handshake_failed(ConnectionResetError("closed during the TLS handshake"))
            return False
        if self._state != OPEN or not self._app_up:
            return False
        self._peer_eof = True
        if self._incoming.pending:
            if not self._reading:
                return True  # told after those records, when reading resumes (_read)
            self._read()  # the complete records left (a cut one is dropped), then told
            return self._state == OPEN
        return self._tell_eof()

    def _tell_eof(self) -> bool:
        """Tell the connection above that the peer sends no more; True if it stays open."""
        app = self._app
        if self._eof_told or app is None:
            return self._state == OPEN
        self._eof_told = True
        return bool(app.eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state == HANDSHAKE:
            self._handshake_failed(exc or ConnectionResetError("closed during the TLS handshake"))
        self._state = CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        app, self._app = self._app, None
        # The client connection holds this layer as its transport: no reference back, so
        # both go when they are done with, without waiting for the cycle collector.
        self._obj = None
        self._raw = None
        if self._app_up and app is not None:
            self._app_up = False
            app.connection_lost(exc if exc is not None else self._error)

    def pause_writing(self) -> None:
        app = self._app
        if self._app_up and app is not None:
            app.pause_writing()

    def resume_writing(self) -> None:
        app = self._app
        if self._app_up and app is not None:
            app.resume_writing()

    # ------------------------------------------------------------------------ handshake

    def _handshake(self) -> None:
        """Go on with the handshake; the side says what its end means."""
        try:
            self._raw.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, OSError, ValueError) as exc:
            # Refused: the alert OpenSSL wrote goes out before the connection closes. (Kept
            # without its traceback, which would hold this frame and so this object.)
            self._error = exc.with_traceback(None)
            self._handshake_failed(self._error)
            tcp = self._tcp
            if tcp is not None:
                self._flush()
                tcp.close()
            return
        self._state = OPEN
        self._flush()  # session tickets (a server), the last handshake message (a client)
        self._handshake_done()
        app = self._app
        assert app is not None
        self._app_up = True
        app.connection_made(cast(asyncio.Transport, self))
        if self._state == OPEN and self._reading and self._incoming.pending:
            # The first request (or session tickets) often come with the handshake's end.
            self._read()

    def _handshake_done(self) -> None:
        """The side's bookkeeping once the handshake is over, before the app is told."""

    def _handshake_failed(self, exc: BaseException) -> None:
        """A handshake that did not complete (each side says what that means)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------- records

    def _read(self) -> None:
        """Decrypt what has arrived and hand the plaintext on in one piece."""
        raw = self._raw
        incoming = self._incoming
        first = b""
        more: list[bytes] | None = None
        closed = False
        try:
            # Each read takes a whole record (READ_SIZE is the largest a record holds), so
            # nothing stays decrypted inside OpenSSL between reads: what is left to read is
            # what the incoming BIO holds. Callers come with bytes in it.
            while True:
                chunk = raw.read(READ_SIZE)
                if not chunk:
                    closed = True  # the client's close_notify
                    break
                if not first:
                    first = chunk
                elif more is None:
                    more = [first, chunk]
                else:
                    more.append(chunk)
                if not incoming.pending:
                    break
        except ssl.SSLWantReadError:
            pass  # the rest of a record is still on its way
        except ssl.SSLError as exc:
            self._fatal(exc)
            return
        app = self._app
        if first and app is not None:
            app.data_received(b"".join(more) if more is not None else first)
        if closed:
            self._peer_eof = True
        if self._peer_eof and self._state == OPEN and not self._eof_told:
            if not self._tell_eof():
                self.close()
            return
        if self._outgoing.pending:
            self._flush()  # a reply to a key update

    def _read_later(self) -> None:
        self._read_soon = False
        if self._state == OPEN and self._reading and self._incoming.pending:
            self._read()

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and self._tcp is not None:
            write_out(self._tcp, data)

    def _fatal(self, exc: Exception) -> None:
        """A broken record or protocol error: the connection is cut."""
        self._error = exc.with_traceback(None)
        self._state = CLOSING
        if self._tcp is not None:
            self._tcp.abort()

    # ---------------------------------------------------- the client connection's transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state != OPEN or not data:
            return
        try:
            # (Want-read cannot happen here: renegotiation is off, context.py; a key update
            # does not hold writes back.)
            self._raw.write(data)
        except ssl.SSLError as exc:
            self._fatal(exc)
            return
        self._send()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        if self._state != OPEN:
            return
        raw = self._raw
        try:
            for data in list_of_data:
                if data:
                    raw.write(data)
        except ssl.SSLError as exc:
            self._fatal(exc)
            return
        self._send()

    def _send(self) -> None:
        """Hand what was just encrypted to the socket's transport."""
        tcp = self._tcp
        assert tcp is not None
        write_out(tcp, self._outgoing.read())

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """close_notify and the TCP FIN after what was written; what still arrives is read
        and dropped until close() (the lingering close of exchange.py)."""
        if self._state != OPEN:
            return
        self._shutdown()
        tcp = self._tcp
        assert tcp is not None
        if not tcp.is_closing():
            tcp.write_eof()

    def close(self) -> None:
        """close_notify, then close once what was written is sent."""
        if self._state == OPEN:
            self._shutdown()
        tcp = self._tcp
        if tcp is not None and not tcp.is_closing():
            tcp.close()

    def _shutdown(self) -> None:
        self._state = CLOSING
        try:
            self._raw.shutdown()
        except (ssl.SSLError, OSError, ValueError):
            pass  # sent ours; the client's is not awaited
        self._flush()

    def abort(self) -> None:
        if self._state == OPEN:
            self._state = CLOSING
        tcp = self._tcp
        if tcp is not None:
            tcp.abort()

    def is_closing(self) -> bool:
        tcp = self._tcp
        return self._state != OPEN or tcp is None or tcp.is_closing()

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            tcp = self._tcp
            if tcp is not None and not tcp.is_closing():
                tcp.pause_reading()

    def resume_reading(self) -> None:
        if self._reading:
            return
        self._reading = True
        tcp = self._tcp
        if tcp is not None and not tcp.is_closing():
            tcp.resume_reading()
        if self._incoming.pending and not self._read_soon and self._state == OPEN:
            # Records that came before the pause: handed on from the loop, not from inside
            # the caller.
            self._read_soon = True
            asyncio.get_running_loop().call_soon(self._read_later)

    def is_reading(self) -> bool:
        return self._reading

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        tcp = self._tcp
        assert tcp is not None
        tcp.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        tcp = self._tcp
        return tcp.get_write_buffer_size() if tcp is not None else 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        obj = self._obj
        if name == "ssl_object":
            return obj
        if obj is not None:
            if name == "sslcontext":
                return obj.context
            if name == "peercert":
                return obj.getpeercert()
            if name == "cipher":
                return obj.cipher()
            if name == "compression":
                return obj.compression()
        tcp = self._tcp
        return tcp.get_extra_info(name, default) if tcp is not None else default


class TLSLayer(_Layer):
    """TLS for one accepted client connection (see the module docstring)."""

    def __init__(self, listener: Listener, app: asyncio.Protocol) -> None:
        context = listener.ssl_context
        assert context is not None
        super().__init__(context, app)
        self._listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tcp = transport
        listener = self._listener
        try:
            obj = self._context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        except (ssl.SSLError, OSError, ValueError, MemoryError):
            self._state = CLOSED
            self._app = None
            transport.abort()  # type: ignore[attr-defined]
            return
        self._obj = obj
        self._raw = obj._sslobj  # type: ignore[attr-defined]
        listener.tls_handshaking += 1
        loop = asyncio.get_running_loop()
        # Until the client connection has the connection: a handshake that fails ends with
        # a close (its alert first), and a client not reading that alert is cut here too.
        self._timer = loop.call_later(listener.t_header, self._handshake_timeout)

    def _handshake_done(self) -> None:
        self._listener.tls_handshaking -= 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _handshake_failed(self, exc: BaseException) -> None:
        """Count a handshake that did not complete, once (the timer stays: see above)."""
        if self._state == HANDSHAKE:
            self._state = CLOSED
            self._listener.tls_handshaking -= 1
            self._listener.stats.tls_handshake_failed(self._listener.name)

    def _handshake_timeout(self) -> None:
        self._timer = None
        if self._app_up:
            return
        self._handshake_failed(TimeoutError("TLS handshake timed out"))
        if self._tcp is not None:
            self._tcp.abort()


class ServerTLS(_Layer):
    """TLS towards one real server: the client side of the handshake.

    Made before the socket connects; `ready` is done when the handshake is (its exception
    when it failed: the certificate did not verify, the server refused or went away). The
    caller's timeout covers it; on a timeout or cancellation the caller calls `give_up`.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        server_hostname: str | None,
        app: asyncio.Protocol,
        preface: bytes = b"",
    ) -> None:
        super().__init__(context, app)
        self._server_hostname = server_hostname
        self._preface = preface  # sent before the handshake: a PROXY protocol header
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tcp = transport
        if self._preface:
            transport.write(self._preface)  # type: ignore[attr-defined]
        try:
            obj = self._context.wrap_bio(
                self._incoming,
                self._outgoing,
                server_side=False,
                server_hostname=self._server_hostname,
            )
        except (ssl.SSLError, OSError, ValueError, MemoryError) as exc:
            self._handshake_failed(exc)
            transport.abort()  # type: ignore[attr-defined]
            return
        self._obj = obj
        self._raw = obj._sslobj  # type: ignore[attr-defined]
        self._handshake()  # the ClientHello

    def _handshake_done(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def _handshake_failed(self, exc: BaseException) -> None:
        if self._state == HANDSHAKE:
            self._state = CLOSED
            self._app = None
            if not self.ready.done():
                self.ready.set_exception(exc)

    def give_up(self) -> None:
        """The caller stopped waiting (timeout, cancellation): drop the connection."""
        if not self.ready.done():
            self.ready.cancel()
        elif not self.ready.cancelled():
            self.ready.exception()  # retrieved: not reported as never retrieved
        if self._state == HANDSHAKE:
            self._state = CLOSED
        tcp = self._tcp
        if tcp is not None:
            tcp.abort()
