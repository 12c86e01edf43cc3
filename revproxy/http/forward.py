"""Heads as the proxy sends them on: hop-by-hop rules and forwarding headers.

RFC 9110 §7.6.1: Connection and the fields it names belong to one hop and are
removed, as are the classic hop-by-hop fields. Framing fields and Host are never
removed on a Connection header's say-so: dropping Content-Length that way would
let a client split one request into two on the server's side.
"""

from __future__ import annotations

from dataclasses import dataclass

from revproxy.http.errors import reason
from revproxy.http.head import CHUNKED, UNTIL_CLOSE, Request, Response

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
# Never dropped because a Connection header names them.
_PROTECTED = frozenset({b"host", b"content-length", b"transfer-encoding"})


@dataclass(frozen=True, slots=True)
class Forwarding:
    """What a service adds to requests it forwards."""

    x_forwarded_for: bool = True
    x_forwarded_proto: bool = True
    x_forwarded_host: bool = True
    via: bytes = b""  # the Via line's value ("1.1 revproxy"), or empty for none
    # Header carrying the proxy's request id to the server ("" = none); one the client sent
    # under that name is replaced.
    request_id_header: bytes = b""


def _drop_set(tokens: frozenset[bytes]) -> frozenset[bytes]:
    if not tokens:
        return HOP_BY_HOP
    return HOP_BY_HOP | (tokens - _PROTECTED)


def request_head(
    req: Request,
    fwd: Forwarding,
    client_ip: bytes,
    extend_xff: bool,
    scheme: bytes,
    request_id: bytes = b"",
) -> bytes:
    """The request head sent to a real server (always HTTP/1.1).

    `extend_xff`: the client is a trusted proxy, so its X-Forwarded-For is kept and
    extended; from anyone else the header is replaced, since it could be forged.
    """
    drop = _drop_set(req.connection_tokens)
    out = [req.method, b" ", req.target, b" HTTP/1.1\r\n"]
    append = out.append
    prior_xff: list[bytes] = []
    rid_name = fwd.request_id_header.lower() if request_id else b""
    for lname, value, line in req.headers:
        if lname in drop or lname == rid_name:
            continue
        if lname[:12] == b"x-forwarded-":
            if lname == b"x-forwarded-for" and fwd.x_forwarded_for:
                if extend_xff and value:
                    prior_xff.append(value)
                continue
            if lname == b"x-forwarded-proto" and fwd.x_forwarded_proto:
                continue
            if lname == b"x-forwarded-host" and fwd.x_forwarded_host:
                continue
        elif lname == b"host" and req.absolute_authority is not None:
            continue
        append(line)
        append(b"\r\n")
    if req.absolute_authority is not None:
        append(b"Host: %s\r\n" % req.absolute_authority)
    elif not req.http11 and not req.host and req.header(b"host") is None:
        # RFC 9112 §3.2: an HTTP/1.1 request always has Host, empty when there is no authority.
        append(b"Host: \r\n")
    if req.body == CHUNKED:
        append(b"Transfer-Encoding: chunked\r\n")
    if req.upgrade is not None:
        append(b"Connection: upgrade\r\nUpgrade: %s\r\n" % req.upgrade)
    if fwd.x_forwarded_for:
        if prior_xff:
            append(b"X-Forwarded-For: %s, %s\r\n" % (b", ".join(prior_xff), client_ip))
        else:
            append(b"X-Forwarded-For: %s\r\n" % client_ip)
    if fwd.x_forwarded_proto:
        append(b"X-Forwarded-Proto: %s\r\n" % scheme)
    if fwd.x_forwarded_host and req.host:
        append(b"X-Forwarded-Host: %s\r\n" % req.host)
    if fwd.via:
        append(b"Via: %s\r\n" % fwd.via)
    if request_id:
        append(b"%s: %s\r\n" % (fwd.request_id_header, request_id))
    append(b"\r\n")
    return b"".join(out)


_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}


def _status_line(status: int, text: bytes) -> bytes:
    key = (status, text)
    line = _STATUS_LINES.get(key)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, text or reason(status))
        if len(_STATUS_LINES) < 256:
            _STATUS_LINES[key] = line
    return line


def response_head(
    resp: Response,
    *,
    close: bool,
    http10_client: bool,
    dechunk: bool = False,
    upgrade: bytes | None = None,
    via: bytes = b"",
    extra: bytes = b"",
) -> bytes:
    """The response head sent to the client.

    `close`: this is the last response on the client connection. `dechunk`: the
    body is not sent with the server's transfer codings (it goes decoded, or re-framed by
    the caller). `upgrade`: the Upgrade value of a 101 that turns into a tunnel. `extra`:
    serialized field lines to add, each ending in CRLF.
    """
    drop = _drop_set(resp.connection_tokens)
    # The body goes out with the server's transfer codings (e.g. "gzip, chunked"), so they
    # are passed on as sent; a body read until close goes to an HTTP/1.0 client without them
    # (RFC 9112 §6.1), and a dechunked one has none left.
    body = resp.body
    keep_te = not dechunk and (body == CHUNKED or (body == UNTIL_CLOSE and not http10_client))
    out = [_status_line(resp.status, resp.reason)]
    append = out.append
    for lname, _, line in resp.headers:
        if lname in drop:
            if keep_te and lname == b"transfer-encoding":
                append(line)
                append(b"\r\n")
            continue
        append(line)
        append(b"\r\n")
    if upgrade is not None:
        append(b"Connection: upgrade\r\nUpgrade: %s\r\n" % upgrade)
    elif close:
        append(b"Connection: close\r\n")
    elif http10_client:
        append(b"Connection: keep-alive\r\n")
    if via:
        append(b"Via: %s\r\n" % via)
    if extra:
        append(extra)
    append(b"\r\n")
    return b"".join(out)


def interim_head(resp: Response) -> bytes:
    """A 1xx response passed on to the client as it came, minus hop-by-hop fields."""
    drop = _drop_set(resp.connection_tokens)
    out = [_status_line(resp.status, resp.reason)]
    for lname, _, line in resp.headers:
        if lname not in drop:
            out.append(line)
            out.append(b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)
