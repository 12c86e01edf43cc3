"""Whole-proxy test harness: the real proxy process, scripted servers, raw clients.

The proxy runs as `python -m revproxy run -c FILE` from a configuration written
by the test, on port 0; the ports it bound are read from its log. Scripted
servers run in threads with blocking sockets and record the exact bytes each
connection received, so a test can assert what reached the server.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trustme

from revproxy.http.proxyproto import V2_MAX, ProxyHeader, ProxyHeaderError, needed, parse

REPO = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"listener (\S+) on (\S+):(\d+) ")


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition"):
    """Poll `condition` until it returns something true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class ProxyProcess:
    """A running proxy; `port(name)` is where listener `name` accepts connections."""

    def __init__(self, config_text: str, workdir: Path, name: str = "proxy") -> None:
        self.workdir = workdir
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(config_text)
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "revproxy", "run", "-c", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
            start_new_session=True,
        )
        self.ports: dict[str, int] = {}
        try:
            wait_for(self._started, 15.0, "the proxy to start")
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _started(self) -> bool:
        text = self.log()
        if self.proc.poll() is not None:
            raise AssertionError(f"proxy exited with {self.proc.returncode}:\n{text}")
        if "revproxy started" not in text:
            return False
        for m in _LISTENING.finditer(text):
            self.ports[m.group(1)] = int(m.group(3))
        return True

    def port(self, name: str) -> int:
        return self.ports[name]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


# ---------------------------------------------------------------------- scripted servers


@dataclass
class Received:
    """One request as a scripted server read it."""

    head: bytes  # request line and headers, without the final CRLFCRLF
    body: bytes
    raw: bytes  # exactly the bytes of this request on the wire
    conn_id: int

    @property
    def request_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    def header(self, name: str) -> str | None:
        values = self.headers(name)
        return values[0] if values else None

    def headers(self, name: str) -> list[str]:
        out = []
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                out.append(value.strip().decode("latin-1"))
        return out


Responder = Callable[["Received", socket.socket], "bytes | None"]


def ok_responder(req: Received, sock: socket.socket) -> bytes:
    body = b"ok " + req.request_line
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@dataclass
class ScriptedServer:
    """A keep-alive HTTP/1.1 server that records requests and answers with scripted bytes.

    The responder returns the raw response bytes, or None after handling the socket itself
    (closing it early, sending garbage...). Returning bytes keeps the connection open.
    """

    responder: Responder = ok_responder
    tls: ssl.SSLContext | None = None
    requests: list[Received] = field(default_factory=list)
    connections: int = 0
    # Each connection opens with a PROXY protocol header (before TLS): read, kept by
    # connection id; a connection with a bad one is closed.
    expect_proxy: bool = False
    proxy_headers: dict[int, ProxyHeader] = field(default_factory=dict)
    ended: set[int] = field(default_factory=set)  # connections that are over
    _server: socketserver.ThreadingTCPServer | None = None

    def start(self) -> ScriptedServer:
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock = self.request
                sock.settimeout(30)
                header = _read_proxy_header(sock) if outer.expect_proxy else None
                if outer.expect_proxy and header is None:
                    return
                if outer.tls is not None:
                    try:
                        sock = outer.tls.wrap_socket(sock, server_side=True)
                    except (ssl.SSLError, OSError):
                        return
                with outer._lock:
                    outer.connections += 1
                    conn_id = outer.connections
                    if header is not None:
                        outer.proxy_headers[conn_id] = header
                sock.settimeout(30)
                outer._serve(sock, conn_id)
                with outer._lock:
                    outer.ended.add(conn_id)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._lock = threading.Lock()
        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _serve(self, sock: socket.socket, conn_id: int) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, rest = buf.partition(b"\r\n\r\n")
                body, rest, raw_body = _read_body(sock, head, rest)
                raw = head + b"\r\n\r\n" + raw_body
                buf = rest
                req = Received(head, body, raw, conn_id)
                with self._lock:
                    self.requests.append(req)
                answer = self.responder(req, sock)
                if answer is None:
                    return
                sock.sendall(answer)
        except OSError:
            return
        finally:
            try:
                sock.close()
            except OSError:
                pass


def _read_proxy_header(sock: socket.socket) -> ProxyHeader | None:
    """The PROXY header a connection opens with, taken off the socket exactly; None if bad."""
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            data = sock.recv(V2_MAX, socket.MSG_PEEK)
            if not data:
                return None
            length = needed(data)
            if length and len(data) >= length:
                return parse(sock.recv(length))
            time.sleep(0.005)  # part of it so far: look again shortly
    except (ProxyHeaderError, OSError):
        return None
    return None


def _read_body(sock: socket.socket, head: bytes, buf: bytes) -> tuple[bytes, bytes, bytes]:
    """(decoded body, bytes left after it, the body's raw bytes)."""
    lower = head.lower()
    m = re.search(rb"\r\ncontent-length:[ \t]*([0-9]+)", lower)
    if b"\r\ntransfer-encoding:" in lower and b"chunked" in lower:
        raw = b""
        body = b""
        while True:
            while b"\r\n" not in buf:
                buf += _recv(sock)
            line, _, buf = buf.partition(b"\r\n")
            raw += line + b"\r\n"
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while b"\r\n" not in buf:
                    buf += _recv(sock)
                while not buf.startswith(b"\r\n"):
                    trailer, _, buf = buf.partition(b"\r\n")
                    raw += trailer + b"\r\n"
                    while b"\r\n" not in buf:
                        buf += _recv(sock)
                raw += b"\r\n"
                return body, buf[2:], raw
            while len(buf) < size + 2:
                buf += _recv(sock)
            body += buf[:size]
            raw += buf[: size + 2]
            buf = buf[size + 2 :]
    if m:
        n = int(m.group(1))
        while len(buf) < n:
            buf += _recv(sock)
        return buf[:n], buf[n:], buf[:n]
    return b"", buf, b""


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise OSError("peer closed")
    return data


# ---------------------------------------------------------------------- raw clients


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return sock


def read_response(
    sock: socket.socket, head_only: bool = False
) -> tuple[int, dict[str, str], bytes]:
    """Read one response with Content-Length, chunked or close-delimited framing."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise EOFError(f"connection closed before a response head: {buf!r}")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower().decode()] = v.strip().decode("latin-1")
    if head_only or status in (204, 304) or 100 <= status < 200:
        return status, headers, rest
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(rest) < n:
            data = sock.recv(65536)
            if not data:
                raise EOFError("connection closed inside a body")
            rest += data
        return status, headers, rest[:n]
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body, _, _ = _read_body(sock, b"\r\ntransfer-encoding: chunked", rest)
        return status, headers, body
    while True:
        data = sock.recv(65536)
        if not data:
            return status, headers, rest
        rest += data


def exchange(port: int, raw: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes on a new connection and read one response."""
    with connect(port, timeout) as sock:
        sock.sendall(raw)
        return read_response(sock)


def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True when the peer closes the connection (EOF or reset) within `timeout`."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def simple_config(
    backend_port: int,
    *,
    workers: int = 1,
    service_extra: str = "",
    pool_extra: str = "",
    listener_extra: str = "",
    servers: list[int] | None = None,
) -> str:
    ports = servers if servers is not None else [backend_port]
    server_list = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
    return f"""
[global]
workers = {workers}
shutdown_grace = 5

[listeners.plain]
bind = "127.0.0.1:0"
{listener_extra}

[services.main]
hosts = ["*"]
pool = "p"
{service_extra}

[pools.p]
servers = [{server_list}]
{pool_extra}
"""


def issue_cert(ca: trustme.CA, name: str, folder: Path) -> tuple[Path, Path]:
    """A certificate for `name` signed by `ca`, as PEM files in `folder`: (cert, key)."""
    leaf = ca.issue_cert(name)
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


def with_tls(config: str, certificates: list[tuple[Path, Path]], extra: str = "") -> str:
    """`simple_config` text whose listener terminates TLS with `certificates` (first = default)."""
    entries = "".join(
        f'  [[listeners.plain.certificates]]\n  cert = "{cert}"\n  key = "{key}"\n'
        for cert, key in certificates
    )
    plain = '[listeners.plain]\nbind = "127.0.0.1:0"'
    return config.replace(plain, f"{plain}\ntls = true\n{extra}{entries}")


# ---------------------------------------------------------------------- processes and ports


def child_pids(pid: int) -> list[int]:
    """The direct children of process `pid` (the proxy's workers, for the main process)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
        except FileNotFoundError:
            continue
        out.extend(int(p) for p in text.split())
    return sorted(out)


def process_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid`, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class RssSampler:
    """Samples a process's RSS in a thread until stopped; `peak` is the largest seen."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(rss_bytes(self.pid))
            except (FileNotFoundError, ProcessLookupError):
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def peak(self) -> int:
        return max(self.samples)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, for configurations that need a fixed one."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


_BACKEND_READY = re.compile(r"(\S+) listening on (https?)://[^\s]*:(\d+)")


class BackendProcess:
    """Demo real servers (`python -m revproxy.demo.backends`) in their own process.

    A process of its own keeps the test's client and the server from sharing one
    interpreter, which matters for transfers of hundreds of megabytes.
    `listen` entries are NAME=HOST:PORT[:tls]; `port(name)` is the bound port.
    """

    def __init__(self, *listen: str, cert: Path | None = None, key: Path | None = None) -> None:
        args = [sys.executable, "-m", "revproxy.demo.backends"]
        for spec in listen:
            args += ["--listen", spec]
        if cert is not None and key is not None:
            args += ["--cert", str(cert), "--key", str(key)]
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
        )
        self.ports: dict[str, int] = {}
        assert self.proc.stdout is not None
        try:
            while len(self.ports) < len(listen):
                line = self.proc.stdout.readline()
                if not line:
                    raise AssertionError(f"demo backends exited with {self.proc.wait()}")
                m = _BACKEND_READY.search(line)
                if m:
                    self.ports[m.group(1)] = int(m.group(3))
        except BaseException:
            self.stop()
            raise

    def port(self, name: str) -> int:
        return self.ports[name]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class LoopThread:
    """An asyncio event loop in a thread, for servers written with asyncio (aiohttp)."""

    def __init__(self) -> None:
        import asyncio

        self._asyncio = asyncio
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro, timeout: float = 30.0):  # type: ignore[no-untyped-def]
        return self._asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


# ---------------------------------------------------------------------- wire-level helpers
#
# Used by the framing, backend-error, keep-alive and limits tests: a server that keeps
# every byte it received per connection, responders chosen by path, and a client-side
# reader that keeps the bytes following each response.


class _RecordingSocket:
    """A server-side socket whose received bytes are also appended to `sink`."""

    def __init__(self, sock: socket.socket, sink: bytearray) -> None:
        self._sock = sock
        self._sink = sink

    def recv(self, size: int) -> bytes:
        data = self._sock.recv(size)
        self._sink += data
        return data

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


@dataclass
class TrackingServer(ScriptedServer):
    """A ScriptedServer that also keeps each connection's raw input and knows which ended.

    `wire[conn_id]` is every byte received on that connection, complete requests or not;
    `ended` holds the ids of connections that are closed on the server's side.
    """

    wire: dict[int, bytearray] = field(default_factory=dict)
    ended: set[int] = field(default_factory=set)

    def _serve(self, sock: socket.socket, conn_id: int) -> None:
        sink = bytearray()
        with self._lock:
            self.wire[conn_id] = sink
        try:
            super()._serve(_RecordingSocket(sock, sink), conn_id)  # type: ignore[arg-type]
        finally:
            with self._lock:
                self.ended.add(conn_id)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return self.connections - len(self.ended)

    def bytes_since(self, conn_id: int) -> bytes:
        """Everything received on connections with an id above `conn_id`."""
        with self._lock:
            return b"".join(bytes(v) for k, v in sorted(self.wire.items()) if k > conn_id)


def by_path(routes: dict[str, Responder], default: Responder = ok_responder) -> Responder:
    """A responder that hands each request to the one whose path prefix matches, longest first."""
    ordered = sorted(routes.items(), key=lambda item: -len(item[0]))

    def respond(req: Received, sock: socket.socket) -> bytes | None:
        target = req.request_line.split(b" ")[1].decode("latin-1")
        for prefix, responder in ordered:
            if target.startswith(prefix):
                return responder(req, sock)
        return default(req, sock)

    return respond


def http_response(status: int, body: bytes = b"", headers: tuple[str, ...] = ()) -> bytes:
    """A complete HTTP/1.1 response delimited by Content-Length."""
    lines = [f"HTTP/1.1 {status} X"] + list(headers) + [f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def dead_port() -> int:
    """A loopback port nothing listens on (connecting to it is refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, str]:
    """Read until the peer ends the connection: (bytes read, "eof" | "reset" | "open").

    "open" means the peer kept the connection open for `timeout` seconds.
    """
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data, "eof"
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        return data, "reset"
    except TimeoutError:
        return data, "open"


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]  # (lower-case name, value) in order
    body: bytes  # decoded for chunked responses
    raw: bytes  # exactly the bytes of this response on the wire

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


class ResponseReader:
    """Reads successive responses from one connection, keeping the bytes after each one."""

    def __init__(self, sock: socket.socket, timeout: float = 10.0) -> None:
        self.sock = sock
        self.buf = b""
        sock.settimeout(timeout)

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"connection closed; unread bytes: {self.buf[:200]!r}")
        self.buf += data

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._more()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def next(self, method: str = "GET") -> RawResponse:
        """The next response (interim ones included) to a request with `method`."""
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        raw = head + b"\r\n\r\n"
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = []
        for line in lines[1:]:
            key, _, value = line.partition(b":")
            headers.append((key.strip().lower().decode(), value.strip().decode("latin-1")))
        resp = RawResponse(status, headers, b"", raw)
        if method == "HEAD" or status < 200 or status in (204, 304):
            return resp
        te = resp.header("transfer-encoding")
        cl = resp.header("content-length")
        if te is not None and te.lower() == "chunked":
            while True:
                line = self._line()
                resp.raw += line + b"\r\n"
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while True:
                        trailer = self._line()
                        resp.raw += trailer + b"\r\n"
                        if not trailer:
                            return resp
                data = self._take(size + 2)
                resp.body += data[:size]
                resp.raw += data
        if cl is not None:
            resp.body = self._take(int(cl))
            resp.raw += resp.body
            return resp
        rest, how = read_until_closed(self.sock)
        if how == "open":
            raise AssertionError("close-delimited response did not end")
        resp.body = self.buf + rest
        resp.raw += resp.body
        self.buf = b""
        return resp


# ---------------------------------------------------------------------- admin server

_ADMIN = re.compile(r"admin on (\S+):(\d+)")


def admin_url(proxy: ProxyProcess, timeout: float = 10.0) -> str:
    """The base URL of the proxy's admin server (bound to port 0), read from its log."""
    m = wait_for(lambda: _ADMIN.search(proxy.log()), timeout, "the admin server")
    return f"http://{m.group(1)}:{m.group(2)}"


def http_call(
    url: str, method: str = "GET", token: str | None = None, timeout: float = 10.0
) -> tuple[int, bytes]:
    """One plain HTTP request with urllib: (status, body), error statuses included."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()
