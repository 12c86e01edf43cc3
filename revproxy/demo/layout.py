"""Where the demo's real servers listen: two sets, like two front ends of a pool.

`make run` starts one process per set, so stopping one process takes one server of
every pool down (and the status page shows it). The ports match deploy/examples/demo.toml.
"""

from __future__ import annotations

import socket
import subprocess
import time

# (address, name of the Lync front end, name of the mailbox server)
SERVER_SETS = (
    ("127.0.0.11", "lync-fe1", "mail1"),
    ("127.0.0.12", "lync-fe2", "mail2"),
)


PORTS = (4443, 8080, 4444, 8081)


def listen_args(address: str, lync: str, mail: str) -> list[str]:
    """`--listen` arguments of revproxy.demo.backends for one set of servers."""
    return [
        "--listen",
        f"{lync}={address}:4443:tls",
        "--listen",
        f"{lync}={address}:8080",
        "--listen",
        f"{mail}={address}:4444:tls",
        "--listen",
        f"{mail}={address}:8081",
    ]


def _accepts(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until_listening(processes: list[subprocess.Popen[bytes]], timeout: float = 20.0) -> None:
    """Wait until every demo server accepts connections, so the proxy's first health
    checks find them up; raise RuntimeError if a server process exits or time runs out."""
    waiting = [(address, port) for address, _, _ in SERVER_SETS for port in PORTS]
    deadline = time.monotonic() + timeout
    while waiting:
        for proc in processes:
            if proc.poll() is not None:
                raise RuntimeError(f"a demo server process exited with status {proc.returncode}")
        waiting = [(address, port) for address, port in waiting if not _accepts(address, port)]
        if not waiting:
            return
        if time.monotonic() > deadline:
            missing = ", ".join(f"{address}:{port}" for address, port in waiting)
            raise RuntimeError(f"demo servers not listening after {timeout:g} s: {missing}")
        time.sleep(0.05)
