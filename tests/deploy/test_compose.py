"""deploy/compose.yaml: its structure, its agreement with the image and the container
configuration, and the commands it runs (the demo servers' command line and health check,
the proxy's configuration as mounted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import COMPOSE, CONTAINER_CONFIG, REPO, parse_dockerfile
from harness import BackendProcess

from revproxy.demo.certs import ensure_dev_certs

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install pyyaml)")


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)s", str(text))
    assert match, f"expected a duration like 35s, got {text!r}"
    return float(match.group(1))


def _mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Bind mounts by target; every one must be read-only."""
    out = {}
    for volume in service.get("volumes", []):
        assert isinstance(volume, dict) and volume["type"] == "bind", volume
        assert volume.get("read_only") is True, f"{volume['target']} must be mounted read-only"
        out[volume["target"]] = volume
    return out


def test_two_services_proxy_and_demo_servers() -> None:
    services = _compose()["services"]
    assert set(services) == {"proxy", "backends"}
    for name, service in services.items():
        assert service.get("read_only") is True, f"{name}: root filesystem must be read-only"
        assert service.get("cap_drop") == ["ALL"], name
        assert "healthcheck" in service, name


def test_proxy_service_matches_the_image_and_the_container_config() -> None:
    proxy = _compose()["services"]["proxy"]
    context = (COMPOSE.parent / proxy["build"]["context"]).resolve()
    assert context == REPO
    assert (context / proxy["build"]["dockerfile"]).is_file()

    config = tomllib.loads(CONTAINER_CONFIG.read_text())
    inside = {int(l["bind"].rsplit(":", 1)[1]) for l in config["listeners"].values()}  # noqa: E741
    published = {}
    for mapping in proxy["ports"]:
        host, _, container = mapping.partition(":")
        published[int(container)] = int(host)
    assert published == {8443: 443, 8080: 80}
    assert set(published) == inside, "published ports must be the listeners' ports"

    image = parse_dockerfile()
    config_path = image.exec_form("CMD")[-1]
    mounts = _mounts(proxy)
    assert (COMPOSE.parent / mounts[config_path]["source"]).resolve() == CONTAINER_CONFIG
    assert (COMPOSE.parent / mounts["/etc/revproxy/certs"]["source"]).resolve() == (
        REPO / "certs" / "dev"
    )
    _, check = image.healthcheck()
    assert proxy["healthcheck"]["test"] == ["CMD", *check]
    assert proxy["stop_signal"] == "SIGTERM"
    grace = config["global"]["shutdown_grace"]
    # The main process waits shutdown_grace plus 5 s for its workers before killing them.
    assert _seconds(proxy["stop_grace_period"]) > grace + 5
    assert proxy["depends_on"]["backends"]["condition"] == "service_healthy"


def test_networks_keep_the_servers_off_the_published_side() -> None:
    compose = _compose()
    services = compose["services"]
    assert sorted(services["proxy"]["networks"]) == ["dmz", "servers"]
    assert list(services["backends"]["networks"]) == ["servers"]
    assert "ports" not in services["backends"], "real servers are not published"
    assert compose["networks"]["servers"]["internal"] is True
    assert services["backends"]["pull_policy"] == "never"
    assert services["backends"]["image"] == services["proxy"]["image"]


def _backend_listens(service: dict[str, Any]) -> list[tuple[str, str, int, bool]]:
    """(name, host, port, tls) of each --listen of the backends' command."""
    command = service["command"]
    out = []
    for flag, value in zip(command, command[1:], strict=False):
        if flag == "--listen":
            name, _, rest = value.partition("=")
            host, port, *tls = rest.split(":")
            out.append((name, host, int(port), tls == ["tls"]))
    return out


def test_pool_servers_are_the_demo_servers_by_their_aliases() -> None:
    backends = _compose()["services"]["backends"]
    aliases = set(backends["networks"]["servers"]["aliases"])
    listens = _backend_listens(backends)
    config = tomllib.loads(CONTAINER_CONFIG.read_text())
    for name, pool in config["pools"].items():
        for server in pool["servers"]:
            host, _, port = server.rpartition(":")
            assert host in aliases, f"pools.{name}: {host} is no alias of the demo servers"
            match = [lst for lst in listens if lst[2] == int(port)]
            assert match, f"pools.{name}: no demo server listens on {port}"
            assert match[0][3] == pool.get("tls", False), f"pools.{name}: TLS mismatch"
            assert host.split(".")[0] == match[0][0], f"pools.{name}: {host} is not {match[0][0]}"


def test_container_config_as_mounted_passes_check(tmp_path: Path) -> None:
    etc = tmp_path / "etc" / "revproxy"
    etc.mkdir(parents=True)
    ensure_dev_certs(etc / "certs")  # the layout of certs/dev, mounted as /etc/revproxy/certs
    (etc / "revproxy.toml").write_text(CONTAINER_CONFIG.read_text())
    result = subprocess.run(
        [sys.executable, "-m", "revproxy", "check", "-c", str(etc / "revproxy.toml")],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        cwd=etc,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr, result.stderr


def test_demo_servers_command_and_health_check_work(tmp_path: Path) -> None:
    """The backends' entrypoint and command, on loopback ports, answer their health check."""
    backends = _compose()["services"]["backends"]
    assert backends["entrypoint"][:3] == ["python", "-m", "revproxy.demo.backends"]
    certs = ensure_dev_certs(tmp_path / "certs")
    command = list(backends["command"])
    mount = "/etc/revproxy/certs"
    assert mount in _mounts(backends)
    files = {"--cert": certs.internal_server, "--key": certs.internal_server_key}
    for flag, local in files.items():
        in_container = command[command.index(flag) + 1]
        assert in_container.startswith(mount + "/")
        assert local == tmp_path / "certs" / in_container.removeprefix(mount + "/")
    listens = _backend_listens(backends)
    specs = [f"{name}:{port}=127.0.0.1:0{':tls' if tls else ''}" for name, _, port, tls in listens]
    servers = BackendProcess(*specs, cert=certs.internal_server, key=certs.internal_server_key)
    try:
        check = backends["healthcheck"]["test"]
        assert check[:3] == ["CMD", "python", "-c"]
        url = re.search(r"'(http://127\.0\.0\.1:(\d+)/[^']*)'", check[3])
        assert url is not None, check[3]
        name = next(f"{n}:{p}" for n, _, p, tls in listens if p == int(url.group(2)) and not tls)
        script = check[3].replace(f":{url.group(2)}/", f":{servers.port(name)}/")
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=15)
        assert result.returncode == 0, result.stderr
    finally:
        servers.stop()
