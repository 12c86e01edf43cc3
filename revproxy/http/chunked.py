"""The chunked transfer coding (RFC 9112 §7.1), tracked as bytes stream past.

The proxy forwards chunked bodies as they are, byte for byte; this reader only
finds where the body ends and refuses anything malformed, so that a body never
ends in a different place for the proxy than for the server behind it. For an
HTTP/1.0 recipient it can also hand out the decoded payload.
"""

from __future__ import annotations

import re
from typing import Final

from revproxy.http.head import _FIELD, _TOKEN

_QUOTED = rb'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\t\x20-\x7e\x80-\xff])*"'
MAX_CHUNK_SIZE: Final = (1 << 62) - 1  # far beyond any body; well inside a signed int64
# RFC 9112 §7.1: chunk-size [ chunk-ext ] CRLF
# chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS val ] )
_SIZE_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})((?:[ \t]*;[ \t]*"
    + _TOKEN
    + rb"(?:[ \t]*=[ \t]*(?:"
    + _TOKEN
    + rb"|"
    + _QUOTED
    + rb"))?)*)"
)

_SIZE: Final = 0
_DATA: Final = 1
_DATA_END: Final = 2
_TRAILER: Final = 3
_DONE: Final = 4
MAX_LINE: Final = 4096  # one size line or trailer field
MAX_TRAILERS: Final = 16384  # all trailer fields together


class ChunkError(ValueError):
    """The chunked body is malformed."""


class ChunkedReader:
    __slots__ = ("_state", "_remaining", "_line", "_crlf", "_trailer_bytes", "payload")

    def __init__(self) -> None:
        self._state = _SIZE
        self._remaining = 0
        self._line = bytearray()
        self._crlf = 0  # bytes of the CRLF after chunk data seen so far
        self._trailer_bytes = 0
        self.payload = 0  # body bytes seen so far, without the chunk framing

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes | memoryview, out: list[bytes] | None = None) -> int:
        """Consume what belongs to this body; return how many bytes of `data` that was.

        Fewer than len(data) only when the body ended inside `data`. With `out`,
        payload pieces are appended to it (the decoded body). Raises ChunkError.
        """
        pos = 0
        n = len(data)
        while pos < n:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, n - pos)
                if out is not None:
                    out.append(bytes(data[pos : pos + take]))
                pos += take
                self._remaining -= take
                self.payload += take
                if not self._remaining:
                    self._state = _DATA_END
                    self._crlf = 0
            elif state == _DATA_END:
                expected = b"\r\n"[self._crlf]
                if data[pos] != expected:
                    raise ChunkError("chunk data not followed by CRLF")
                pos += 1
                self._crlf += 1
                if self._crlf == 2:
                    self._state = _SIZE
            elif state == _DONE:
                break
            else:
                i = bytes(data[pos : pos + MAX_LINE + 2]).find(b"\n")
                if i < 0:
                    self._line += data[pos:]
                    # The line and its CR may be pending; the same limit as for a whole line.
                    if len(self._line) > MAX_LINE + 1:
                        raise ChunkError("chunk line too long")
                    return n
                self._line += data[pos : pos + i + 1]
                pos += i + 1
                line = bytes(self._line)
                self._line.clear()
                if len(line) > MAX_LINE + 2:
                    raise ChunkError("chunk line too long")
                # RFC 9112 §2.2: a bare LF is not accepted as a line end here.
                if line[-2:-1] != b"\r":
                    raise ChunkError("line not ended by CRLF")
                line = line[:-2]
                if state == _SIZE:
                    self._size_line(line)
                else:
                    self._trailer_line(line)
        return pos

    def _size_line(self, line: bytes) -> None:
        m = _SIZE_LINE.fullmatch(line)
        if m is None:
            raise ChunkError("invalid chunk size line")
        size = int(m.group(1), 16)
        if size > MAX_CHUNK_SIZE:
            # Passed on as sent, a size a server reads as a signed 64-bit number could be
            # negative there (nginx and Apache refuse the same).
            raise ChunkError("chunk size too large")
        if size:
            self._remaining = size
            self._state = _DATA
        else:
            self._state = _TRAILER

    def _trailer_line(self, line: bytes) -> None:
        if not line:
            self._state = _DONE
            return
        self._trailer_bytes += len(line) + 2
        if self._trailer_bytes > MAX_TRAILERS:
            raise ChunkError("trailer section too large")
        if _FIELD.fullmatch(line) is None:
            raise ChunkError("invalid trailer field")
