"""deploy/systemd/revproxy.service: checked by systemd's own tools where they are present,
its key directives asserted, and the proxy run under the one hardening setting most
likely to break a Python program (MemoryDenyWriteExecute) to show it still serves."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from deploy_helpers import DEPLOY, REPO, SYSTEMD_UNIT, RunningCommand, tool
from harness import BackendProcess

from revproxy.config.model import GlobalConfig
from revproxy.demo.certs import ensure_dev_certs

INSTALLED = "/opt/revproxy/bin/revproxy"
SYSUSERS = DEPLOY / "systemd" / "revproxy.sysusers"
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def _unit() -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values in order (a key may repeat, as ExecReload does)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in SYSTEMD_UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{raw!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        current.setdefault(key, []).append(value)
    return sections


def _service() -> dict[str, str]:
    """The [Service] section with each key's last value, for keys that do not repeat."""
    return {k: v[-1] for k, v in _unit()["Service"].items()}


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", text)
    assert match, f"not a plain duration: {text!r}"
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


def _local_copy(tmp_path: Path) -> Path:
    """The unit with the binary path pointing at this checkout's revproxy, for verify."""
    revproxy = tool("revproxy")
    if revproxy is None:
        pytest.skip("the revproxy command is not installed in this environment")
    text = SYSTEMD_UNIT.read_text()
    assert INSTALLED in text
    copy = tmp_path / "revproxy.service"
    copy.write_text(text.replace(INSTALLED, revproxy))
    return copy


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    copy = _local_copy(tmp_path)
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    # Unknown keys and bad values are only warnings to systemd; here they fail the test.
    assert result.stderr.strip() == "", result.stderr


def test_systemd_security_exposure_is_low(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    copy = _local_copy(tmp_path)
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=20", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze has no offline security analysis (systemd < 252)")
    # The threshold is in tenths of the printed level: 20 means "2.0 OK" or better.
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


def test_unit_runs_as_a_dedicated_user_with_one_capability() -> None:
    service = _service()
    assert service["User"] == service["Group"] == "revproxy"
    assert service["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert service["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert service["NoNewPrivileges"] == "yes"
    sysusers = [
        line.split()
        for line in SYSUSERS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert [(fields[0], fields[1]) for fields in sysusers] == [("u", "revproxy")]


def test_unit_checks_before_start_and_reload_and_stops_gracefully() -> None:
    unit = _unit()["Service"]
    service = _service()
    config = "-c /etc/revproxy/revproxy.toml"
    assert unit["ExecStart"] == [f"{INSTALLED} run {config}"]
    assert unit["ExecStartPre"] == [f"{INSTALLED} check {config}"]
    assert unit["ExecReload"] == [f"{INSTALLED} check {config}", "/bin/kill -HUP $MAINPID"]
    assert service["KillSignal"] == "SIGTERM"
    assert service["Restart"] == "on-failure"
    assert service["LimitNOFILE"] == "65536"
    # The main process waits shutdown_grace + 5 s for its workers; systemd must wait longer.
    production = tomllib.loads((DEPLOY / "examples" / "production.toml").read_text())
    graces = [GlobalConfig().shutdown_grace, production["global"]["shutdown_grace"]]
    assert _seconds(service["TimeoutStopSec"]) > max(graces) + 5


def test_unit_hardening_directives() -> None:
    service = _service()
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "ReadOnlyPaths": "/etc/revproxy",
    }
    assert {k: service.get(k) for k in expected} == expected
    assert service["RestrictAddressFamilies"].split() == ["AF_INET", "AF_INET6", "AF_UNIX"]


# ---------------------------------------------------------------------- MemoryDenyWriteExecute

_MDWE_LAUNCHER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl({set_mdwe}, {refuse}, 0, 0, 0) != 0:
    sys.exit(f"prctl: {{os.strerror(ctypes.get_errno())}}")
os.execv(sys.argv[1], sys.argv[1:])
"""


_RWX_PROBE = """
import mmap, sys
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    sys.exit(0)
sys.exit(3)
"""


def _launcher() -> str:
    return _MDWE_LAUNCHER.format(set_mdwe=PR_SET_MDWE, refuse=PR_MDWE_REFUSE_EXEC_GAIN)


def _mdwe_unsupported() -> str | None:
    """None when the launcher denies write+execute memory to the program it starts."""
    result = subprocess.run(
        [sys.executable, "-c", _launcher(), sys.executable, "-c", _RWX_PROBE],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode == 3:
        return "PR_SET_MDWE does not outlast execve on this kernel"
    if result.returncode != 0:
        return f"this kernel cannot deny write+execute memory (Linux 6.3+): {result.stderr}"
    return None


def test_proxy_serves_tls_under_memory_deny_write_execute(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute=yes forbids writable+executable memory; the proxy (uvloop,
    OpenSSL, cryptography) must start, terminate TLS, re-encrypt and stop under it."""
    if reason := _mdwe_unsupported():
        pytest.skip(reason)
    certs = ensure_dev_certs(tmp_path / "certs")
    servers = BackendProcess(
        "fe=127.0.0.1:0:tls", cert=certs.internal_server, key=certs.internal_server_key
    )
    config = tmp_path / "revproxy.toml"
    config.write_text(
        f"""
[global]
workers = 1
shutdown_grace = 5

[listeners.https]
bind = "127.0.0.1:0"
tls = true
  [[listeners.https.certificates]]
  cert = "{certs.meet}"
  key = "{certs.meet_key}"
  chain = ["{certs.public_intermediate}"]

[services.meet]
pool = "fe"

[pools.fe]
servers = ["127.0.0.1:{servers.port("fe")}"]
tls = true
ca = "{certs.internal_ca}"
"""
    )
    argv = [sys.executable, "-c", _launcher(), sys.executable, "-m", "revproxy", "run", "-c"]
    proxy = RunningCommand(
        [*argv, str(config)],
        tmp_path / "proxy.log",
        env=dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1"),
        cwd=tmp_path,
    )
    try:
        proxy.wait_for_log(r"revproxy started")
        port = proxy.listener_ports()["https"]
        context = ssl.create_default_context(cafile=str(certs.public_root))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="meet.demo.test") as tls:
                tls.sendall(b"GET /x HTTP/1.1\r\nHost: meet.demo.test\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data[:300]
        assert b"server: fe" in data
        assert proxy.stop(signal.SIGTERM) == 0, proxy.log()
    finally:
        proxy.stop()
        servers.stop()
    assert "Traceback" not in proxy.log(), proxy.log()
