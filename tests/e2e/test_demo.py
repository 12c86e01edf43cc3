"""`revproxy demo` (what `make run` starts): development certificates, demo real servers
and the proxy on deploy/examples/demo.toml, driven with curl as its banner suggests."""

from __future__ import annotations

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

DEMO_PORTS = (8443, 8000, 4443, 4444, 8080, 8081)
ROOT_CA = REPO / "certs" / "dev" / "public" / "root.pem"


@dataclass
class Demo:
    proc: subprocess.Popen[bytes]
    log_path: Path
    backends: int  # pid of the demo real servers' process

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _backends_pid(pid: int) -> int | None:
    for child in child_pids(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"revproxy.demo.backends" in cmdline:
            return child
    return None


def _ready(proc: subprocess.Popen[bytes], log_path: Path) -> bool:
    text = log_path.read_text(errors="replace")
    if proc.poll() is not None:
        raise AssertionError(f"revproxy demo exited with {proc.returncode}:\n{text}")
    return "revproxy started" in text and text.count(" listening on ") == 4


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    busy = [p for p in DEMO_PORTS if not port_is_free(p)]
    if busy:
        pytest.skip(f"demo ports in use on 127.0.0.1: {busy}")
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
    backends: int | None = None
    try:
        wait_for(lambda: _ready(proc, log_path), 30, "the demo to start")
        backends = _backends_pid(proc.pid)
        assert backends is not None
        yield Demo(proc, log_path, backends)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if backends is not None and process_alive(backends):
            os.kill(backends, signal.SIGKILL)


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
    assert fields["server"] == "lync-fe1"
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
    assert fields["server"] == "mail1"
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


def test_plain_http_with_host_lyncdiscover(demo: Demo) -> None:
    body = _curl("-H", "Host: lyncdiscover.demo.test", "http://127.0.0.1:8000/")
    fields = _fields(body)
    assert fields["server"] == "lync-fe1"
    assert fields["host"] == "lyncdiscover.demo.test"
    assert fields["x-forwarded-proto"] == "http"


def test_ctrl_c_stops_the_demo_and_its_servers(demo: Demo) -> None:
    workers = [p for p in child_pids(demo.proc.pid) if p != demo.backends]
    assert workers
    # Ctrl-C in a terminal signals the whole foreground process group.
    os.killpg(demo.proc.pid, signal.SIGINT)
    assert demo.proc.wait(20) == 0
    wait_for(lambda: not process_alive(demo.backends), 10, "the demo servers to stop")
    for pid in workers:
        assert not process_alive(pid)
    for port in DEMO_PORTS:
        with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
            sock.connect(("127.0.0.1", port))
