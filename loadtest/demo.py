"""The demo as a load-test target: certificates, demo real servers and the proxy.

These are the pieces `revproxy demo` runs, started as separate processes on free
ports so that a load test never clashes with a demo (or another test) already
running: the demo configuration (deploy/examples/demo.toml) is copied with every
listener on port 0, the pools pointed at the real servers' actual ports, relative
file names made absolute, and the worker count, admin address and grace period the
run asks for. The proxy prints the ports it bound; they are read from its log.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from revproxy.demo.certs import DevCerts

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "deploy" / "examples" / "demo.toml"
DEV_CERTS = REPO / "certs" / "dev"
DOMAIN = "demo.test"

# The demo real servers as `revproxy demo` runs them: (name, port in demo.toml, TLS).
DEMO_SERVERS = (
    ("lync-fe1", 4443, True),
    ("lync-fe1", 8080, False),
    ("mail1", 4444, True),
    ("mail1", 8081, False),
)
# Configuration keys that hold file names, resolved against the configuration's folder.
_FILE_KEYS = frozenset({"cert", "key", "chain", "ca", "password_file", "chain_dir", "token_file"})
_LISTENING = re.compile(r"listener (\S+) on (\S+):(\d+) ")
_BACKEND_READY = re.compile(r"(\S+) listening on (https?)://[^\s]*:(\d+)")

T = TypeVar("T")


def wait_for(condition: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll `condition` until it returns something true; raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for servers that cannot report a port 0 bind)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# --- configuration ----------------------------------------------------------------------


def to_toml(data: dict[str, Any]) -> str:
    """Write the subset of TOML a revproxy configuration uses (tables, arrays of tables)."""
    lines: list[str] = []

    def is_table_array(value: object) -> bool:
        return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)

    def emit(table: dict[str, Any], path: list[str]) -> None:
        for key, value in table.items():
            if not isinstance(value, dict) and not is_table_array(value):
                lines.append(f"{_key(key)} = {_value(value)}")
        for key, value in table.items():
            if isinstance(value, dict):
                lines.extend(["", f"[{'.'.join(_key(k) for k in [*path, key])}]"])
                emit(value, [*path, key])
            elif is_table_array(value):
                for item in value:
                    lines.extend(["", f"[[{'.'.join(_key(k) for k in [*path, key])}]]"])
                    emit(item, [*path, key])

    emit(data, [])
    return "\n".join(lines).lstrip("\n") + "\n"


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def _absolute(node: Any, base: Path) -> Any:
    """Copy of a configuration tree with the file names under _FILE_KEYS made absolute."""
    if isinstance(node, list):
        return [_absolute(item, base) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _FILE_KEYS and isinstance(value, str):
            out[key] = str((base / value).resolve())
        elif key in _FILE_KEYS and isinstance(value, list):
            out[key] = [str((base / v).resolve()) if isinstance(v, str) else v for v in value]
        else:
            out[key] = _absolute(value, base)
    return out


def demo_config(
    servers: dict[int, list[int]],
    *,
    workers: int = 1,
    admin_port: int | None = None,
    shutdown_grace: float = 2.0,
    source: Path = DEMO_CONFIG,
) -> str:
    """The demo configuration on free ports, as TOML text.

    `servers` maps each real-server port of demo.toml to the ports of the processes that
    now play that server (several when the demo servers run as several processes).
    """
    data = _absolute(tomllib.loads(source.read_text()), source.parent)
    data.setdefault("global", {}).update(workers=workers, shutdown_grace=shutdown_grace)
    for listener in data.get("listeners", {}).values():
        host = listener.get("bind", "127.0.0.1:0").rpartition(":")[0] or "127.0.0.1"
        listener["bind"] = f"{host}:0"
    for pool in data.get("pools", {}).values():
        moved: list[Any] = []
        for server in pool.get("servers", []):
            address = server if isinstance(server, str) else server.get("address", "")
            host, _, port = address.rpartition(":")
            if not port.isdigit() or int(port) not in servers:
                moved.append(server)
                continue
            # demo.toml's servers on 127.0.0.11 and .12 are played by the processes
            # started here, all on 127.0.0.1.
            for new_port in servers[int(port)]:
                address = f"127.0.0.1:{new_port}"
                if any(
                    address in (m, m.get("address") if isinstance(m, dict) else m) for m in moved
                ):
                    continue
                if isinstance(server, str):
                    moved.append(address)
                else:
                    moved.append({**server, "address": address})
        pool["servers"] = moved
    if admin_port is not None:
        data["admin"] = {"bind": f"127.0.0.1:{admin_port}"}
    return to_toml(data)


# --- processes --------------------------------------------------------------------------


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL the process group it leads."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)


@dataclass
class DemoServers:
    """Running demo real servers: `processes` copies, each playing every DEMO_SERVERS port."""

    processes: list[subprocess.Popen[str]]
    ports: list[dict[int, int]]  # per process: demo.toml port -> real port
    certs: DevCerts
    _logs: list[Any] = field(default_factory=list)

    def playing(self) -> dict[int, list[int]]:
        """demo.toml port -> the real ports of every process that plays it."""
        return {port: [p[port] for p in self.ports] for _, port, _ in DEMO_SERVERS}

    def stop(self) -> None:
        for proc in self.processes:
            stop_process(proc)
            if proc.stdout is not None:
                proc.stdout.close()
        for log in self._logs:
            log.close()


@dataclass
class Demo:
    """A running demo: where its proxy listens and which processes to watch."""

    workdir: Path
    proxy: subprocess.Popen[bytes]
    servers: DemoServers
    ports: dict[str, int]  # proxy listener name -> port
    admin_port: int | None
    ca: Path = DEV_CERTS / "public" / "root.pem"
    _logs: list[Any] = field(default_factory=list)

    @property
    def https_url(self) -> str:
        """The base URL for scenarios: https://demo.test:PORT (names below it: meet., mail.)."""
        return f"https://{DOMAIN}:{self.ports['https']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}/metrics" if self.admin_port else ""

    def proxy_log(self) -> str:
        return (self.workdir / "proxy.log").read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proxy)
        self.servers.stop()
        for log in self._logs:
            log.close()

    def __enter__(self) -> Demo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _start_backends(
    workdir: Path, index: int, hold: float, cert: Path, key: Path, logs: list[Any]
) -> tuple[subprocess.Popen[str], dict[int, int]]:
    args = [sys.executable, "-m", "revproxy.demo.backends", "--hold", str(hold)]
    for name, _, tls in DEMO_SERVERS:
        args += ["--listen", f"{name}=127.0.0.1:0{':tls' if tls else ''}"]
    args += ["--cert", str(cert), "--key", str(key)]
    log = open(workdir / f"backends-{index}.log", "wb")  # noqa: SIM115 (closed by DemoServers.stop)
    logs.append(log)
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=log, env=_env(), text=True, start_new_session=True
    )
    assert proc.stdout is not None
    ports: dict[int, int] = {}
    try:
        for demo_port in (port for _, port, _ in DEMO_SERVERS):  # printed in this order
            line = proc.stdout.readline()
            match = _BACKEND_READY.search(line)
            if not match:
                raise RuntimeError(f"demo servers did not start (see {log.name}): {line!r}")
            ports[demo_port] = int(match.group(3))
    except BaseException:
        stop_process(proc)
        raise
    return proc, ports


def start_demo_servers(workdir: Path, *, hold: float = 20.0, processes: int = 1) -> DemoServers:
    """Start `processes` copies of the demo real servers on free ports; logs go to `workdir`.

    `hold` is how long the servers hold long polls. The development certificates are
    created first when missing (certs/dev, as `make run` does).
    """
    from revproxy.demo.certs import ensure_dev_certs

    workdir.mkdir(parents=True, exist_ok=True)
    servers = DemoServers([], [], ensure_dev_certs(DEV_CERTS))
    try:
        for index in range(processes):
            proc, ports = _start_backends(
                workdir,
                index,
                hold,
                servers.certs.internal_server,
                servers.certs.internal_server_key,
                servers._logs,
            )
            servers.processes.append(proc)
            servers.ports.append(ports)
    except BaseException:
        servers.stop()
        raise
    return servers


def start_demo(
    workdir: Path,
    *,
    hold: float = 20.0,
    workers: int = 1,
    backend_processes: int = 1,
    admin: bool = True,
    timeout: float = 30.0,
) -> Demo:
    """Start the demo real servers and the proxy on free ports; logs go to `workdir`.

    `hold` is how long the servers hold long polls; `backend_processes` runs that many
    copies of the demo servers (each pool then has one real server per copy).
    """
    servers = start_demo_servers(workdir, hold=hold, processes=backend_processes)
    logs: list[Any] = []
    try:
        admin_port = free_port() if admin else None
        config = workdir / "proxy.toml"
        config.write_text(demo_config(servers.playing(), workers=workers, admin_port=admin_port))
        log = open(workdir / "proxy.log", "wb")  # noqa: SIM115 (closed by Demo.stop)
        logs.append(log)
        proxy = subprocess.Popen(
            [sys.executable, "-m", "revproxy", "run", "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(),
            cwd=workdir,
            start_new_session=True,
        )
    except BaseException:
        servers.stop()
        for log in logs:
            log.close()
        raise
    demo = Demo(workdir, proxy, servers, {}, admin_port, servers.certs.public_root, logs)

    def started() -> bool:
        text = demo.proxy_log()
        if proxy.poll() is not None:
            raise RuntimeError(f"the proxy exited with {proxy.returncode}:\n{text[-3000:]}")
        if "revproxy started" not in text:
            return False
        demo.ports.update((m.group(1), int(m.group(3))) for m in _LISTENING.finditer(text))
        return True

    try:
        wait_for(started, timeout, "the proxy to start")
        # The pools' servers take traffic once their first health check passed.
        wait_for(lambda: _serving(demo), timeout, "the demo servers to pass their checks")
    except BaseException:
        demo.stop()
        raise
    return demo


def answers(port: int, host: str, ca: Path | None) -> bool:
    """Whether GET / for `host` on 127.0.0.1:`port` is answered 200 (TLS verified by `ca`,
    plain HTTP without one)."""
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            if ca is not None:
                context = ssl.create_default_context(cafile=str(ca))
                sock = context.wrap_socket(sock, server_hostname=host)
            sock.sendall(request)
            head = sock.recv(64)
        finally:
            sock.close()
    except OSError:
        return False
    return head.startswith(b"HTTP/1.1 200")


def _serving(demo: Demo) -> bool:
    """Every pool answers, three rounds in a row (each worker has learnt the checks)."""
    return all(
        answers(
            demo.ports["https" if tls else "http"], f"{name}.{DOMAIN}", demo.ca if tls else None
        )
        for _ in range(3)
        for name in ("meet", "mail")
        for tls in (True, False)
    )


def workers_for(connections: int, fd_limit: int, per_connection: int = 2) -> int:
    """Processes needed so that each holds its share of `connections` within 80% of its fds."""
    return max(1, math.ceil(connections * per_connection / (0.8 * fd_limit)))
