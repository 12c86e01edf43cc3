"""Demo real servers: tiny HTTP/1.1 servers that say who they are and what they saw.

They stand in for Lync front ends and Exchange servers in the demo and in tests.
This is not the forwarding path, so aiohttp's server is good enough here. Every
request is answered 200 text/plain with the server's name, the Host header, the
method, the path and the forwarding headers, plus a few paths that produce the
traffic shapes tests need (large, echoed, slow, any status).

    python -m revproxy.demo.backends --listen lync-fe1=127.0.0.1:4443:tls \\
        --listen lync-fe1=127.0.0.1:8080 --cert server.pem --key server.key
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

MAX_BIG_BYTES = 2 * 1024**3  # /big streams at most 2 GiB
MAX_SLOW_MS = 60_000  # /slow waits at most one minute
CHUNK = 64 * 1024
_ZEROS = b"x" * CHUNK
# Status codes whose responses carry no body (RFC 9110 sections 15.3.5 and 15.4.5).
_NO_BODY = (204, 304)
_NAME = web.AppKey("name", str)


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
    host: str, port: int, name: str, ssl_context: ssl.SSLContext | None = None
) -> Backend:
    """Start one demo server on host:port (port 0 = any free port) and return it."""
    app = web.Application()
    app[_NAME] = name
    app.router.add_route("*", "/{tail:.*}", _handle)
    # Large heads are part of what the proxy is tested with; let them through here.
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=1.0,
        handler_args={"max_line_size": 65536, "max_field_size": 65536},
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


async def serve(specs: Sequence[ListenSpec], tls: ssl.SSLContext | None) -> None:
    """Run the servers until SIGTERM or SIGINT; print one line per listener when ready."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    backends: list[Backend] = []
    try:
        for spec in specs:
            backend = await start_backend(
                spec.host, spec.port, spec.name, tls if spec.tls else None
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
    args = parser.parse_args(argv)
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
        asyncio.run(serve(specs, tls))
    except OSError as exc:
        print(f"cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
