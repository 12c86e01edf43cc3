"""The DMZ layout with real network legs: an Internet client, the proxy box with one leg on
the client side and one in the server network, and a real server, each in a network
namespace this test creates and removes.

    inet (client)             dmz-proxy (revproxy)                 servers (demo server)
    198.51.100.10 ---veth--- 198.51.100.2 | 10.99.0.1 ---veth--- 10.99.0.10:8080

The addresses exist only inside these namespaces (TEST-NET-2 on the client side, a private
range on the server side). The proxy box does not forward packets, so the client reaches
the service only through the proxy's published address, and the server sees the proxy's
server-leg address on the connection and the client's real address in X-Forwarded-For.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploy_helpers import REPO, RunningCommand
from harness import wait_for

from revproxy.demo.certs import ensure_dev_certs

CLIENT = "198.51.100.10"
PROXY_PUBLIC = "198.51.100.2"
PROXY_SERVER_LEG = "10.99.0.1"
SERVER = "10.99.0.10"
SERVER_PORT = 8080


def _ip() -> str:
    path = shutil.which("ip")
    if path is None:
        pytest.skip("iproute2 (ip) is not installed")
    return path


def _run(*argv: str, check: bool = True, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result


@dataclass
class Network:
    """The three namespaces and their links; `remove()` deletes everything."""

    inet: str
    dmz: str
    servers: str
    ip: str

    def exec(self, ns: str, *argv: str) -> list[str]:
        return [self.ip, "netns", "exec", ns, *argv]

    def remove(self) -> None:
        for ns in (self.inet, self.dmz, self.servers):
            # Deleting a namespace deletes its veth ends, and so their peers.
            subprocess.run([self.ip, "netns", "del", ns], capture_output=True, timeout=15)


def _build_network() -> Network:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    ip = _ip()
    tag = uuid.uuid4().hex[:6]
    net = Network(f"rp-inet-{tag}", f"rp-dmz-{tag}", f"rp-srv-{tag}", ip)
    first = subprocess.run([ip, "netns", "add", net.inet], capture_output=True, text=True)
    if first.returncode != 0:
        pytest.skip(f"cannot create network namespaces: {first.stderr.strip()}")
    try:
        _run(ip, "netns", "add", net.dmz)
        _run(ip, "netns", "add", net.servers)
        # Client side link: inet/eth0 <-> dmz/public0; server side: dmz/inside0 <-> srv/eth0.
        _run(ip, "link", "add", "eth0", "netns", net.inet, "type", "veth",
             "peer", "name", "public0", "netns", net.dmz)  # fmt: skip
        _run(ip, "link", "add", "inside0", "netns", net.dmz, "type", "veth",
             "peer", "name", "eth0", "netns", net.servers)  # fmt: skip
        for ns, dev, address in (
            (net.inet, "eth0", f"{CLIENT}/24"),
            (net.dmz, "public0", f"{PROXY_PUBLIC}/24"),
            (net.dmz, "inside0", f"{PROXY_SERVER_LEG}/24"),
            (net.servers, "eth0", f"{SERVER}/24"),
        ):
            _run(ip, "-n", ns, "addr", "add", address, "dev", dev)
            _run(ip, "-n", ns, "link", "set", dev, "up")
        for ns in (net.inet, net.dmz, net.servers):
            _run(ip, "-n", ns, "link", "set", "lo", "up")
        # The proxy box is not a router: only the proxy process connects the two legs.
        _run(*net.exec(net.dmz, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0"))
    except BaseException:
        net.remove()
        raise
    return net


@pytest.fixture
def network() -> Iterator[Network]:
    net = _build_network()
    try:
        yield net
    finally:
        net.remove()


_CLIENT_SCRIPT = r"""
import json, socket, ssl, sys

def request(sock, host):
    sock.sendall(f"GET /dmz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return {"status": int(head.split()[1]), "body": body.decode(errors="replace")}

def connect(address, port, timeout=2.0):
    try:
        socket.create_connection((address, port), timeout=timeout).close()
        return "connected"
    except OSError as exc:
        return type(exc).__name__ + ": " + str(exc)

proxy, cafile, server, server_port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
out = {}
with socket.create_connection((proxy, 80), timeout=10) as s:
    out["http"] = request(s, "meet.demo.test")
context = ssl.create_default_context(cafile=cafile)
with socket.create_connection((proxy, 443), timeout=10) as raw:
    with context.wrap_socket(raw, server_hostname="meet.demo.test") as s:
        out["https"] = request(s, "meet.demo.test")
out["server_direct"] = connect(server, server_port)
out["proxy_server_leg"] = connect(sys.argv[5], 80)
print(json.dumps(out))
"""


def _client(net: Network, cafile: Path) -> dict[str, object]:
    argv = net.exec(
        net.inet,
        sys.executable,
        "-c",
        _CLIENT_SCRIPT,
        PROXY_PUBLIC,
        str(cafile),
        SERVER,
        str(SERVER_PORT),
        PROXY_SERVER_LEG,
    )
    result = _run(*argv, timeout=30)
    return json.loads(result.stdout)


def _established_peers(net: Network, port: int) -> set[str]:
    """Remote addresses of established TCP connections to `port` inside the servers ns."""
    table = _run(*net.exec(net.servers, "cat", "/proc/net/tcp")).stdout.splitlines()[1:]
    peers = set()
    for line in table:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if state != "01" or int(local.split(":")[1], 16) != port:
            continue
        address = socket.inet_ntoa(struct.pack("<I", int(remote.split(":")[0], 16)))
        peers.add(address)
    return peers


def test_client_reaches_the_server_only_through_the_proxy(network: Network, tmp_path: Path) -> None:
    net = network
    # Routing on each box, as the administrator would check it.
    route = _run(net.ip, "-n", net.dmz, "route", "get", SERVER).stdout
    assert "dev inside0" in route and f"src {PROXY_SERVER_LEG}" in route, route
    for ns in (net.inet, net.servers):
        other = SERVER if ns == net.inet else CLIENT
        result = _run(net.ip, "-n", ns, "route", "get", other, check=False)
        assert result.returncode != 0 and "unreachable" in result.stderr, result

    certs = ensure_dev_certs(tmp_path / "certs")
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    server = RunningCommand(
        net.exec(
            net.servers,
            sys.executable,
            "-m",
            "revproxy.demo.backends",
            "--listen",
            f"app1={SERVER}:{SERVER_PORT}",
        ),
        tmp_path / "server.log",
        env=env,
    )
    config = tmp_path / "revproxy.toml"
    config.write_text(
        f"""
[global]
workers = 1
shutdown_grace = 5

[listeners.https]
bind = "{PROXY_PUBLIC}:443"
tls = true
  [[listeners.https.certificates]]
  cert = "{certs.meet}"
  key = "{certs.meet_key}"
  chain = ["{certs.public_intermediate}"]

[listeners.http]
bind = "{PROXY_PUBLIC}:80"

[services.app]
hosts = ["meet.demo.test"]
pool = "app"

[pools.app]
servers = ["{SERVER}:{SERVER_PORT}"]
"""
    )
    proxy: RunningCommand | None = None
    try:
        server.wait_for_log(r"app1 listening on")
        proxy = RunningCommand(
            net.exec(net.dmz, sys.executable, "-m", "revproxy", "run", "-c", str(config)),
            tmp_path / "proxy.log",
            env=env,
            cwd=tmp_path,
        )
        proxy.wait_for_log(r"revproxy started")

        seen = _client(net, certs.public_root)
        for scheme in ("http", "https"):
            answer = seen[scheme]
            assert isinstance(answer, dict) and answer["status"] == 200, seen
            body = answer["body"]
            assert "server: app1" in body
            assert "host: meet.demo.test" in body, "the Host header passes unchanged"
            assert f"x-forwarded-for: {CLIENT}\n" in body, body
            assert f"x-forwarded-proto: {scheme}\n" in body, body
        # No route from the Internet side into the server network.
        assert str(seen["server_direct"]).startswith("OSError"), seen
        assert "unreachable" in str(seen["server_direct"]).lower(), seen
        assert "unreachable" in str(seen["proxy_server_leg"]).lower(), seen

        # Even with a route pointing at the proxy box, it does not forward packets.
        _run(net.ip, "-n", net.inet, "route", "add", "10.99.0.0/24", "via", PROXY_PUBLIC)
        again = _client(net, certs.public_root)
        assert again["server_direct"] != "connected", again

        # The server's connections come from the proxy's server-network leg.
        peers = wait_for(
            lambda: _established_peers(net, SERVER_PORT),
            10,
            "the proxy's kept-alive connection on the server",
        )
        assert peers == {PROXY_SERVER_LEG}, peers

        assert proxy.stop(signal.SIGTERM) == 0, proxy.log()
    finally:
        if proxy is not None:
            proxy.stop()
        server.stop()
