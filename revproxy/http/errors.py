"""Errors raised by the framing layer, and the small responses that answer them.

A framing error always carries the status the proxy answers with. Error bodies
are tiny, fixed and contain nothing from the request (no reflection).
"""

from __future__ import annotations

REASONS: dict[int, bytes] = {
    100: b"Continue",
    101: b"Switching Protocols",
    200: b"OK",
    204: b"No Content",
    301: b"Moved Permanently",
    302: b"Found",
    304: b"Not Modified",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    411: b"Length Required",
    413: b"Content Too Large",
    414: b"URI Too Long",
    417: b"Expectation Failed",
    421: b"Misdirected Request",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


class HttpError(Exception):
    """A message that cannot be processed; `status` is what the client is told."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class ProtocolError(Exception):
    """A server broke HTTP framing; the client gets 502 (or, mid-body, a cut connection)."""


def reason(status: int) -> bytes:
    return REASONS.get(status, b"Unknown")


def error_response(status: int, *, close: bool = True, extra: bytes = b"") -> bytes:
    """A complete, minimal response for errors the proxy itself generates.

    `extra` is already-serialized header lines (each ending in CRLF), e.g. Retry-After.
    """
    text = reason(status)
    body = b"%d %s\n" % (status, text)
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, text),
            b"Content-Type: text/plain; charset=utf-8\r\n",
            b"Content-Length: %d\r\n" % len(body),
            b"Cache-Control: no-store\r\n",
            b"Connection: close\r\n" if close else b"",
            extra,
            b"\r\n",
            body,
        )
    )
