"""Demo real servers: tiny HTTP/1.1 servers that say who they are and what they saw.

They stand in for Lync front ends and Exchange servers in the demo and in tests.
This is not the forwarding path, so aiohttp's server is good enough here. Every
request is answered 200 text/plain with the server's name, the Host header, the
method, the path and the forwarding headers, plus a few paths that produce the
traffic shapes tests need (large, echoed, slow, any status) and the Lync/Skype and
Exchange endpoints the load-test scenarios in loadtest/ use (discovery, meeting pages,
UCWA and ActiveSync long polls, address-book files, web tickets, an NTLM handshake,
OWA, EWS, Autodiscover). Long polls are held for at most --hold seconds, or until
POST /_demo/release; GET /_demo/held says how many are held right now.

    python -m revproxy.demo.backends --listen lync-fe1=127.0.0.1:4443:tls \\
        --listen lync-fe1=127.0.0.1:8080 --cert server.pem --key server.key
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import signal
import ssl
import sys
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict

MAX_BIG_BYTES = 2 * 1024**3  # /big streams at most 2 GiB
MAX_SLOW_MS = 60_000  # /slow waits at most one minute
CHUNK = 64 * 1024
_ZEROS = b"x" * CHUNK
# Status codes whose responses carry no body (RFC 9110 sections 15.3.5 and 15.4.5).
_NO_BODY = (204, 304)
_NAME = web.AppKey("name", str)
DEFAULT_HOLD = 180.0  # seconds a long poll is held at most (UCWA's usual event timeout)
MAX_HOLD = 3600.0  # ActiveSync heartbeats reach 59 minutes; nothing is held longer


@dataclass
class LongPolls:
    """Long polls held by one demo server, and the event that answers them all at once."""

    hold: float = DEFAULT_HOLD
    held: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    # NTLM authenticates a connection (not a request): the state of each one, by transport.
    ntlm: weakref.WeakKeyDictionary[object, bytes] = field(
        default_factory=weakref.WeakKeyDictionary
    )


_POLLS = web.AppKey("polls", LongPolls)


@dataclass
class Backend:
    """A running demo server; port is the real one when 0 was asked for."""

    name: str
    host: str
    port: int
    tls: bool
    runner: web.AppRunner

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_backend(
    host: str,
    port: int,
    name: str,
    ssl_context: ssl.SSLContext | None = None,
    polls: LongPolls | None = None,
) -> Backend:
    """Start one demo server on host:port (port 0 = any free port) and return it.

    Servers started with the same `polls` share their held long polls and release.
    """
    app = web.Application()
    app[_NAME] = name
    app[_POLLS] = polls if polls is not None else LongPolls()
    app.router.add_route("*", "/{tail:.*}", _handle)
    # Large heads are part of what the proxy is tested with; let them through here.
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=1.0,
        max_line_size=65536,
        max_field_size=65536,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=1024)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1] if port == 0 else port
    return Backend(
        name=name, host=host, port=bound_port, tls=ssl_context is not None, runner=runner
    )


def _query_int(request: web.Request, key: str, default: int, low: int, high: int) -> int:
    text = request.query.get(key)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise web.HTTPBadRequest(text=f"{key} must be an integer from {low} to {high}\n")
    return int(text)


def _describe(request: web.Request, name: str, body_bytes: int) -> str:
    headers = request.headers
    lines = [
        f"server: {name}",
        f"host: {headers.get('Host', '-')}",
        f"method: {request.method}",
        f"path: {request.raw_path}",
        f"x-forwarded-for: {headers.get('X-Forwarded-For', '-')}",
        f"x-forwarded-proto: {headers.get('X-Forwarded-Proto', '-')}",
        f"x-forwarded-host: {headers.get('X-Forwarded-Host', '-')}",
        f"via: {headers.get('Via', '-')}",
        f"body-bytes: {body_bytes}",
    ]
    return "\n".join(lines) + "\n"


async def _handle(request: web.Request) -> web.StreamResponse:
    name = request.app[_NAME]
    served_by = {"X-Served-By": name}
    path = request.path
    if path == "/echo":
        return await _echo(request, served_by)
    # Read whatever body came, so the connection stays usable for the next request.
    body_bytes = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        body_bytes += len(chunk)
    if path == "/health":
        return web.Response(text="ok", headers=served_by)
    if path == "/big":
        return await _big(request, served_by)
    scenario = _SCENARIO_ROUTES.get(_route_key(path))
    if scenario is not None:
        return await scenario(request, served_by)
    status = 200
    if path == "/slow":
        await asyncio.sleep(_query_int(request, "ms", 1000, 0, MAX_SLOW_MS) / 1000)
    elif path == "/status":
        status = _query_int(request, "code", 200, 200, 599)
    if status in _NO_BODY:
        return web.Response(status=status, headers=served_by)
    return web.Response(status=status, text=_describe(request, name, body_bytes), headers=served_by)


async def _big(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    size = _query_int(request, "bytes", 1024 * 1024, 0, MAX_BIG_BYTES)
    response = web.StreamResponse(headers=headers)
    response.content_type = "application/octet-stream"
    # HTTP/1.0 has no chunked coding (RFC 9112 section 7), so it gets the length too.
    if request.query.get("cl") == "1" or request.version < (1, 1):
        response.content_length = size
    else:
        response.enable_chunked_encoding()
    await response.prepare(request)
    if request.method != "HEAD":
        left = size
        while left > 0:  # bounded: size / CHUNK writes
            piece = _ZEROS if left >= CHUNK else _ZEROS[:left]
            await response.write(piece)
            left -= len(piece)
    await response.write_eof()
    return response


async def _echo(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """Send the request body back as it arrives, with its length when it was announced."""
    response = web.StreamResponse(headers=headers)
    response.content_type = request.headers.get("Content-Type", "application/octet-stream")
    if request.content_length is not None:
        response.content_length = request.content_length
    else:
        response.enable_chunked_encoding()
    await response.prepare(request)
    async for chunk in request.content.iter_chunked(CHUNK):
        await response.write(chunk)
    await response.write_eof()
    return response


# --- load-test scenario endpoints ----------------------------------------------------------
# Shapes (sizes, holds) are assumptions made for load tests, documented in docs/loadtest.md;
# the paths are those of the published Lync/Skype and Exchange services.

Handler = Callable[[web.Request, dict[str, str]], Awaitable[web.StreamResponse]]


def _route_key(path: str) -> str:
    """The lower-cased path prefix that picks a scenario endpoint ("" when none does)."""
    lower = path.lower()
    parts = lower.split("/")
    if lower.startswith("/meet/") and len(parts) >= 4 and parts[3]:
        return "/meet/*/*"  # a meeting URL: /meet/<organizer>/<conference id>
    if lower.startswith("/ucwa/") and lower.endswith("/events"):
        return "/ucwa/events"
    if lower.startswith("/ucwa/") and lower.endswith("/applications"):
        return "/ucwa/applications"
    if lower.startswith(("/abs/handler/", "/owa/prem/")):
        return "/".join(parts[:3])
    return lower


def _filler(seed: str, size: int) -> bytes:
    """`size` printable bytes that depend on `seed`, so a body can be checked if wanted."""
    block = hashlib.sha256(seed.encode()).hexdigest().encode() * 64  # 4 KiB
    return (block * (size // len(block) + 1))[:size]


def _json(data: object, headers: dict[str, str], status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(data).encode(),
        content_type="application/json",
        headers=headers,
    )


async def _hold(request: web.Request, wanted: float) -> bool:
    """Hold the request up to min(wanted, the server's hold) seconds; True when released."""
    polls = request.app[_POLLS]
    release = polls.release
    polls.held += 1
    try:
        async with asyncio.timeout(max(0.0, min(wanted, polls.hold))):
            await release.wait()
        return True
    except TimeoutError:
        return False
    finally:
        polls.held -= 1


async def _demo_held(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    return _json({"held": request.app[_POLLS].held}, headers)


async def _demo_release(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """Answer every held long poll now, like a broadcast event reaching all subscribers."""
    polls = request.app[_POLLS]
    count = polls.held
    polls.release.set()
    polls.release = asyncio.Event()
    return _json({"released": count}, headers)


async def _lync_discover(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """The discovery document a Lync/Skype client reads first (lyncdiscover.<domain>)."""
    base = f"https://{request.host}/Autodiscover/AutodiscoverService.svc/root"
    links = {
        "self": {"href": base},
        "user": {"href": f"{base}/oauth/user"},
        "xframe": {"href": f"https://{request.host}/Autodiscover/XFrame/XFrame.html"},
    }
    return _json({"_links": links, "AccessLocation": "External"}, headers)


async def _meeting_page(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """A meeting join page: HTML with inline script, about 12 KiB."""
    title = request.path.rsplit("/", 1)[-1]
    head = f"<!DOCTYPE html><html><head><title>Join meeting {title}</title><script>\n"
    tail = "\n</script></head><body><div id='join'>Joining...</div></body></html>\n"
    body = head.encode() + _filler(request.path, 12 * 1024) + tail.encode()
    return web.Response(body=body, content_type="text/html", headers=headers)


async def _ucwa_application(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """Create a UCWA application: the client gets its own resource, events link included."""
    app_id = hashlib.sha1(os.urandom(8)).hexdigest()[:16]
    base = request.path.rstrip("/") + f"/{app_id}"
    links = {"self": {"href": base}, "events": {"href": f"{base}/events?ack=1"}}
    return _json({"id": app_id, "_links": links}, headers, status=201)


async def _ucwa_events(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """The UCWA event channel: held until something happens or `timeout` seconds pass."""
    wanted = _query_int(request, "timeout", 180, 0, int(MAX_HOLD))
    released = await _hold(request, wanted)
    ack = _query_int(request, "ack", 1, 0, 2**31)
    events = [{"link": {"rel": "communication"}, "type": "updated"}] if released else []
    data = {"_links": {"next": {"href": f"{request.path}?ack={ack + 1}"}}, "sender": events}
    return _json(data, headers)


_ABS_SIZES = {"f-": 1024 * 1024, "d-": 24 * 1024}  # full file / daily delta (assumed sizes)


async def _address_book(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """Address-book files: full (F-xxxx.lsabs) and delta (D-xxxx-yyyy.lsabs) downloads."""
    name = request.path.rsplit("/", 1)[-1].lower()
    size = _ABS_SIZES.get(name[:2], 64 * 1024)
    size = _query_int(request, "bytes", size, 0, 64 * 1024 * 1024)
    return web.Response(
        body=_filler(name, size), content_type="application/octet-stream", headers=headers
    )


async def _web_ticket(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """A web ticket: the SOAP service answers XML, the OAuth endpoint JSON."""
    token = base64.b64encode(_filler(str(random.random()), 900)).decode()
    if request.path.lower().startswith("/webticket/oauthtoken"):
        return _json({"access_token": token, "token_type": "Bearer", "expires_in": 28800}, headers)
    xml = (
        '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>'
        f"<IssueTokenResponse><Token>{token}</Token></IssueTokenResponse></s:Body></s:Envelope>"
    )
    return web.Response(text=xml, content_type="application/soap+xml", headers=headers)


NTLM_SIGNATURE = b"NTLMSSP\x00"


def ntlm_message_type(header: str) -> tuple[int, bytes]:
    """(message type, raw message) of an "NTLM <base64>" Authorization value; (0, b"") if none."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() not in ("ntlm", "negotiate"):
        return 0, b""
    try:
        raw = base64.b64decode(token.strip(), validate=True)
    except ValueError:
        return 0, b""
    if len(raw) < 12 or not raw.startswith(NTLM_SIGNATURE):
        return 0, b""
    return int.from_bytes(raw[8:12], "little"), raw


async def _ntlm(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """NTLM as IIS does it: negotiate, challenge, authenticate, all on one connection.

    The challenge is remembered for this TCP connection only, so an authenticate message
    that arrives on another connection (a proxy that did not keep the client's server
    connection) is refused, as a real server would.
    """
    states = request.app[_POLLS].ntlm
    transport = request.transport
    state = states.get(transport, b"") if transport is not None else b""
    kind, raw = ntlm_message_type(request.headers.get("Authorization", ""))
    if state == b"ok" or (kind == 3 and state and state in raw):
        if transport is not None:
            states[transport] = b"ok"  # the connection is authenticated from now on
        return web.Response(text=f"authenticated: {request.path}\n", headers=headers)
    challenge = ""
    if kind == 1 and transport is not None:
        nonce = os.urandom(8)
        states[transport] = nonce
        challenge = (
            " "
            + base64.b64encode(
                NTLM_SIGNATURE + (2).to_bytes(4, "little") + bytes(12) + nonce + bytes(8)
            ).decode()
        )
    # IIS offers each scheme in a header of its own; a challenge is for NTLM only.
    offers = [] if challenge else [("WWW-Authenticate", "Negotiate")]
    auth = CIMultiDict([*offers, ("WWW-Authenticate", f"NTLM{challenge}"), *headers.items()])
    return web.Response(status=401, text="401 - Unauthorized\n", headers=auth)


async def _owa_logon(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """Forms-based OWA logon: a session cookie and a redirect to the mailbox."""
    response = web.Response(status=302, headers={"Location": "/owa/", **headers})
    response.set_cookie("cadata", hashlib.sha1(os.urandom(8)).hexdigest(), secure=True)
    return response


_OWA_SIZES = {".js": 300 * 1024, ".css": 60 * 1024}  # OWA's script and style bundles (assumed)


async def _owa_resource(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """OWA's static resources: cacheable, answered 304 when the client has them."""
    etag = '"' + hashlib.sha1(request.path.encode()).hexdigest()[:16] + '"'
    cache = {"ETag": etag, "Cache-Control": "public, max-age=86400", **headers}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=cache)
    size = _OWA_SIZES.get(os.path.splitext(request.path)[1].lower(), 8 * 1024)
    kind = {".js": "application/javascript", ".css": "text/css"}
    content_type = kind.get(os.path.splitext(request.path)[1].lower(), "image/png")
    return web.Response(body=_filler(request.path, size), content_type=content_type, headers=cache)


async def _owa_service(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    action = request.query.get("action", "")
    items = [
        {"ItemId": f"{action}-{i}", "Subject": _filler(str(i), 60).decode()} for i in range(40)
    ]
    return _json({"Body": {"ResponseClass": "Success", "Items": items}}, headers)


async def _ews(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """Exchange Web Services: a SOAP answer of about 8 KiB."""
    items = "".join(
        f"<t:Message><t:ItemId Id='{i}'/><t:Subject>{_filler(str(i), 150).decode()}</t:Subject>"
        "</t:Message>"
        for i in range(40)
    )
    xml = (
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
        f"<m:FindItemResponse><m:Items>{items}</m:Items></m:FindItemResponse></s:Body></s:Envelope>"
    )
    return web.Response(text=xml, content_type="text/xml", headers=headers)


async def _activesync(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """ActiveSync: OPTIONS says what is supported; Ping is held like Direct Push."""
    versions = {"MS-ASProtocolVersions": "12.1,14.0,14.1,16.0", **headers}
    if request.method == "OPTIONS":
        return web.Response(headers={"MS-ASProtocolCommands": "Sync,FolderSync,Ping", **versions})
    command = request.query.get("Cmd", "")
    if command == "Ping":
        wanted = _query_int(request, "timeout", int(MAX_HOLD), 0, int(MAX_HOLD))
        released = await _hold(request, wanted)
        # Status 2: something changed (the device syncs next); 1: the heartbeat expired.
        status = 2 if released or random.random() < 0.2 else 1
        return web.Response(
            body=f"<Ping><Status>{status}</Status></Ping>".encode(),
            content_type="application/vnd.ms-sync.wbxml",
            headers=versions,
        )
    size = 2 * 1024 if command in ("Sync", "FolderSync") else 256
    return web.Response(
        body=_filler(command, size), content_type="application/vnd.ms-sync.wbxml", headers=versions
    )


async def _exchange_autodiscover(
    request: web.Request, headers: dict[str, str]
) -> web.StreamResponse:
    xml = (
        "<?xml version='1.0' encoding='utf-8'?><Autodiscover><Response><Account>"
        f"<Protocol><Type>EXCH</Type><Server>{request.host}</Server>"
        f"<EwsUrl>https://{request.host}/EWS/Exchange.asmx</EwsUrl></Protocol>"
        f"<Padding>{_filler('ad', 1500).decode()}</Padding>"
        "</Account></Response></Autodiscover>"
    )
    return web.Response(text=xml, content_type="text/xml", headers=headers)


_SCENARIO_ROUTES: dict[str, Handler] = {
    "/_demo/held": _demo_held,
    "/_demo/release": _demo_release,
    "/autodiscover/autodiscoverservice.svc/root": _lync_discover,
    "/meet/*/*": _meeting_page,
    "/ucwa/applications": _ucwa_application,
    "/ucwa/events": _ucwa_events,
    "/abs/handler": _address_book,
    "/webticket/oauthtoken": _web_ticket,
    "/webticket/webticketservice.svc": _web_ticket,
    "/webticket/webticketservice.svc/auth": _ntlm,
    "/owa/auth.owa": _owa_logon,
    "/owa/prem": _owa_resource,
    "/owa/service.svc": _owa_service,
    "/ews/exchange.asmx": _ews,
    "/microsoft-server-activesync": _activesync,
    "/autodiscover/autodiscover.xml": _exchange_autodiscover,
}


# --- command line ------------------------------------------------------------------------


@dataclass(frozen=True)
class ListenSpec:
    name: str
    host: str
    port: int
    tls: bool


def parse_listen(text: str) -> ListenSpec:
    """Parse NAME=HOST:PORT[:tls], e.g. "lync-fe1=127.0.0.1:4443:tls" or "b=[::1]:8080"."""
    name, sep, address = text.partition("=")
    if not sep or not name:
        raise ValueError(f"{text!r}: expected NAME=HOST:PORT[:tls]")
    tls = address.endswith(":tls")
    if tls:
        address = address[: -len(":tls")]
    if address.startswith("["):
        host, _, port_text = address[1:].partition("]:")
    else:
        host, _, port_text = address.rpartition(":")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: expected NAME=HOST:PORT[:tls]")
    return ListenSpec(name=name, host=host, port=int(port_text), tls=tls)


def server_tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def serve(
    specs: Sequence[ListenSpec], tls: ssl.SSLContext | None, hold: float = DEFAULT_HOLD
) -> None:
    """Run the servers until SIGTERM or SIGINT; print one line per listener when ready."""
    polls = LongPolls(hold=hold)  # one release for every listener of this process
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    backends: list[Backend] = []
    try:
        for spec in specs:
            backend = await start_backend(
                spec.host, spec.port, spec.name, tls if spec.tls else None, polls
            )
            backends.append(backend)
            print(f"{spec.name} listening on {backend.url}", flush=True)
        await stop.wait()
    finally:
        for backend in backends:
            with contextlib.suppress(Exception):
                await backend.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m revproxy.demo.backends",
        description="Run demo real servers that answer every request with what they saw.",
    )
    parser.add_argument(
        "--listen",
        action="append",
        required=True,
        metavar="NAME=HOST:PORT[:tls]",
        help="a server to run; repeat for more (':tls' serves HTTPS with --cert/--key)",
    )
    parser.add_argument("--cert", help="PEM certificate (with chain) for the TLS listeners")
    parser.add_argument("--key", help="PEM private key for the TLS listeners")
    parser.add_argument(
        "--hold",
        type=float,
        default=DEFAULT_HOLD,
        metavar="SECONDS",
        help=f"hold long polls (UCWA events, ActiveSync Ping) at most this long"
        f" (default {DEFAULT_HOLD:g}, at most {MAX_HOLD:g})",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.hold <= MAX_HOLD:
        parser.error(f"--hold must be from 0 to {MAX_HOLD:g} seconds")
    try:
        specs = [parse_listen(text) for text in args.listen]
    except ValueError as exc:
        parser.error(str(exc))
    tls = None
    if any(spec.tls for spec in specs):
        if not args.cert or not args.key:
            parser.error("TLS listeners need --cert and --key")
        try:
            tls = server_tls_context(args.cert, args.key)
        except (OSError, ssl.SSLError) as exc:
            print(f"cannot load {args.cert} / {args.key}: {exc}", file=sys.stderr)
            return 1
    try:
        asyncio.run(serve(specs, tls, args.hold))
    except OSError as exc:
        print(f"cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
