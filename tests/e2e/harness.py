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
    _server: socketserver.ThreadingTCPServer | None = None

    def start(self) -> ScriptedServer:
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock = self.request
                if outer.tls is not None:
                    try:
                        sock = outer.tls.wrap_socket(sock, server_side=True)
                    except (ssl.SSLError, OSError):
                        return
                with outer._lock:
                    outer.connections += 1
                    conn_id = outer.connections
                sock.settimeout(30)
                outer._serve(sock, conn_id)

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


def read_response(sock: socket.socket, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
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
