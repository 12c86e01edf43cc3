"""`revproxy demo` (what `make run` starts): development certificates, demo real servers
and the proxy on deploy/examples/demo.toml, driven with curl as its banner suggests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import REPO, child_pids, port_is_free, process_alive, wait_for

PROXY_ADDRESSES = (("127.0.0.1", 8443), ("127.0.0.1", 8000), ("127.0.0.1", 9000))
SERVER_ADDRESSES = tuple(
    (host, port) for host in ("127.0.0.11", "127.0.0.12") for port in (4443, 4444, 8080, 8081)
)
DEMO_ADDRESSES = PROXY_ADDRESSES + SERVER_ADDRESSES
ROOT_CA = REPO / "certs" / "dev" / "public" / "root.pem"
LYNC = {"lync-fe1", "lync-fe2"}
MAIL = {"mail1", "mail2"}


@dataclass
class Demo:
    proc: subprocess.Popen[bytes]
    log_path: Path
    backends: list[int]  # pids of the demo real servers' processes (one per server set)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _backends_pids(pid: int) -> list[int]:
    found = []
    for child in child_pids(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"revproxy.demo.backends" in cmdline:
            found.append(child)
    return found


def _ready(proc: subprocess.Popen[bytes], log_path: Path) -> bool:
    text = log_path.read_text(errors="replace")
    if proc.poll() is not None:
        raise AssertionError(f"revproxy demo exited with {proc.returncode}:\n{text}")
    return (
        "revproxy started" in text
        and text.count(" listening on ") == 8
        and "admin on 127.0.0.1:9000" in text
    )


def _states() -> dict[str, str]:
    """Every server's state on the status API: "pool address" -> "up", "down"..."""
    status = json.loads(_curl("http://127.0.0.1:9000/api/status"))
    return {
        f"{pool['name']} {server['address']}": server["state"]
        for pool in status["pools"]
        for server in pool["servers"]
    }


def _serving() -> bool:
    """Every pool has passed a health check: both names answer over HTTPS and HTTP."""
    try:
        for name in ("meet", "mail"):
            _curl(
                "--resolve", f"{name}.demo.test:8443:127.0.0.1", "--cacert", str(ROOT_CA),
                f"https://{name}.demo.test:8443/",
            )  # fmt: skip
            _curl("-H", f"Host: {name}.demo.test", "http://127.0.0.1:8000/")
    except AssertionError:
        return False
    return True


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    busy = [f"{h}:{p}" for h, p in DEMO_ADDRESSES if not port_is_free(p, h)]
    if busy:
        pytest.skip(f"demo addresses in use: {busy}")
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    log_path = tmp_path_factory.mktemp("demo") / "demo.log"
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "revproxy", "demo"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
            start_new_session=True,
        )
    backends: list[int] = []
    try:
        wait_for(lambda: _ready(proc, log_path), 30, "the demo to start")
        backends = _backends_pids(proc.pid)
        assert len(backends) == 2
        # New servers take traffic once their first health check passed, and the workers
        # learn of it within a second.
        wait_for(
            lambda: set(_states().values()) == {"up"}, 30, "every server to pass a health check"
        )
        wait_for(_serving, 10, "the workers to send traffic to the servers")
        yield Demo(proc, log_path, backends)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for pid in backends:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)


def _curl(*args: str) -> str:
    result = subprocess.run(
        ["curl", "-sS", "--fail", *args], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _fields(body: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in body.splitlines() if ": " in line)


def test_meet_over_https_reaches_the_lync_front_end(demo: Demo) -> None:
    body = _curl(
        "--resolve",
        "meet.demo.test:8443:127.0.0.1",
        "--cacert",
        str(ROOT_CA.relative_to(REPO)),
        "https://meet.demo.test:8443/meet/abc",
    )
    fields = _fields(body)
    assert fields["server"] in LYNC
    assert fields["host"] == "meet.demo.test:8443"
    assert fields["path"] == "/meet/abc"
    assert fields["x-forwarded-proto"] == "https"
    assert fields["x-forwarded-for"] == "127.0.0.1"


def test_mail_over_https_reaches_the_exchange_server(demo: Demo) -> None:
    body = _curl(
        "--resolve",
        "mail.demo.test:8443:127.0.0.1",
        "--cacert",
        str(ROOT_CA),
        "https://mail.demo.test:8443/owa/",
    )
    fields = _fields(body)
    assert fields["server"] in MAIL
    assert fields["host"] == "mail.demo.test:8443"
    assert fields["path"] == "/owa/"


def _certificate(name: str) -> bytes:
    ctx = ssl.create_default_context(cafile=str(ROOT_CA))
    with (
        socket.create_connection(("127.0.0.1", 8443), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_meet_and_mail_get_different_certificates(demo: Demo) -> None:
    assert _certificate("meet.demo.test") != _certificate("mail.demo.test")
    # Both verify against the development root: the chain is complete.
    assert _certificate("dialin.demo.test") == _certificate("meet.demo.test")


def test_servers_listen_before_the_proxy_starts(demo: Demo) -> None:
    # The first health checks run as the proxy starts; servers already listening pass them,
    # so the first requests are not refused with 503 while the pools come up.
    log = demo.log()
    started = log.index("revproxy started")
    listening = [i for i in range(len(log)) if log.startswith(" listening on ", i)]
    assert len(listening) == 8
    assert max(listening) < started


def test_plain_http_with_host_lyncdiscover(demo: Demo) -> None:
    body = _curl("-H", "Host: lyncdiscover.demo.test", "http://127.0.0.1:8000/")
    fields = _fields(body)
    assert fields["server"] in LYNC
    assert fields["host"] == "lyncdiscover.demo.test"
    assert fields["x-forwarded-proto"] == "http"


def test_requests_are_balanced_over_both_front_ends(demo: Demo) -> None:
    def round_of_four() -> list[str]:
        return [
            _fields(_curl("-H", "Host: meet.demo.test", "http://127.0.0.1:8000/"))["server"]
            for _ in range(4)
        ]

    # Workers learn the health checks' results within a second; then requests alternate.
    def alternating() -> list[str] | None:
        servers = round_of_four()
        return servers if set(servers) == LYNC else None

    order = wait_for(alternating, 10, "requests to reach both front ends")
    assert order[0] != order[1] and order[0] == order[2] and order[1] == order[3]


def test_a_stopped_server_goes_down_and_traffic_stays_on_the_other(demo: Demo) -> None:
    # The second process plays the servers on 127.0.0.12 (lync-fe2, mail2).
    second = next(
        pid for pid in demo.backends if b"127.0.0.12" in Path(f"/proc/{pid}/cmdline").read_bytes()
    )
    os.kill(second, signal.SIGTERM)
    wait_for(lambda: not process_alive(second), 10, "the second server set to stop")
    # Requests keep succeeding: a refused connection is retried on the live server.
    for _ in range(6):
        body = _curl("-H", "Host: meet.demo.test", "http://127.0.0.1:8000/")
        assert _fields(body)["server"] == "lync-fe1"

    # The health checks mark it down (2 failed checks, 3 s apart) and the status API says so.
    wait_for(lambda: _states()["lync-http 127.0.0.12:8080"] == "down", 20, "a server down")
    final = _states()
    assert final["lync-http 127.0.0.11:8080"] == "up"
    assert final["exchange-https 127.0.0.12:4444"] in ("down", "up")  # its check may lag
    assert "127.0.0.12:8080" in demo.log() and "is down" in demo.log()


def test_ctrl_c_stops_the_demo_and_its_servers(demo: Demo) -> None:
    workers = [p for p in child_pids(demo.proc.pid) if p not in demo.backends]
    assert workers
    # Ctrl-C in a terminal signals the whole foreground process group.
    os.killpg(demo.proc.pid, signal.SIGINT)
    assert demo.proc.wait(20) == 0
    for pid in demo.backends:
        wait_for(lambda pid=pid: not process_alive(pid), 10, "the demo servers to stop")
    for pid in workers:
        assert not process_alive(pid)
    for host, port in DEMO_ADDRESSES:
        with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
            sock.connect((host, port))
