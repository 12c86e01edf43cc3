"""The admin API through the real proxy: token checks, enable/disable/drain reaching every
worker within a second, the status page, health and readiness, the CLI commands."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import (
    REPO,
    ProxyProcess,
    Received,
    ScriptedServer,
    admin_url,
    exchange,
    http_call,
    simple_config,
    wait_for,
)

TOKEN = "correct-horse-battery-staple"


def _named(name: str):  # type: ignore[no-untyped-def]
    def respond(req: Received, sock: object) -> bytes:
        body = name.encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    return respond


@dataclass
class Setup:
    proxy: ProxyProcess
    admin: str
    a: ScriptedServer
    b: ScriptedServer

    def get(self) -> bytes:
        """Who answered: the server's name, or the proxy's status when it answered itself."""
        status, _, body = exchange(
            self.proxy.port("plain"), b"GET / HTTP/1.1\r\nHost: p.test\r\nConnection: close\r\n\r\n"
        )
        return body if status == 200 else str(status).encode()

    def status(self) -> dict:  # type: ignore[type-arg]
        code, body = http_call(self.admin + "/api/status")
        assert code == 200
        return json.loads(body)

    def server(self, address: str) -> dict:  # type: ignore[type-arg]
        (pool,) = self.status()["pools"]
        return next(s for s in pool["servers"] if s["address"] == address)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("admin")
    (tmp / "token").write_text(TOKEN + "\n")
    a = ScriptedServer(_named("a")).start()
    b = ScriptedServer(_named("b")).start()
    config = simple_config(0, workers=2, servers=[a.port, b.port]) + (
        '\n[admin]\nbind = "127.0.0.1:0"\ntoken_file = "token"\n'
    )
    proxy = ProxyProcess(config, tmp)
    try:
        yield Setup(proxy, admin_url(proxy), a, b)
    finally:
        assert proxy.stop() == 0
        a.stop()
        b.stop()


def _action(setup: Setup, address: str, action: str, token: str | None = TOKEN) -> int:
    return http_call(f"{setup.admin}/api/servers/p/{address}/{action}", "POST", token)[0]


def test_health_and_readiness(setup: Setup) -> None:
    assert http_call(setup.admin + "/healthz") == (200, b"ok\n")
    wait_for(lambda: http_call(setup.admin + "/readyz")[0] == 200, 5, "readiness")
    state = setup.status()
    assert state["ready"] is True
    assert len(state["workers"]) == 2
    assert state["listeners"][0]["address"].endswith(f":{setup.proxy.port('plain')}")


def test_actions_need_the_token(setup: Setup) -> None:
    address = f"127.0.0.1:{setup.a.port}"
    assert _action(setup, address, "disable", token=None) == 401
    assert _action(setup, address, "disable", token="wrong") == 403
    assert http_call(setup.admin + "/api/reload", "POST", None)[0] == 401
    assert setup.server(address)["admin"] == "enabled"
    assert _action(setup, "127.0.0.1:1", "disable") == 404
    assert _action(setup, address, "explode") == 404


def test_drain_reaches_every_worker_within_a_second(setup: Setup) -> None:
    a, b = f"127.0.0.1:{setup.a.port}", f"127.0.0.1:{setup.b.port}"
    assert {setup.get() for _ in range(8)} == {b"a", b"b"}
    assert _action(setup, a, "drain") == 200
    server = setup.server(a)
    assert (server["admin"], server["state"]) == ("draining", "draining")
    # Both workers stop sending new requests to `a` within about a second.
    wait_for(lambda: {setup.get() for _ in range(8)} == {b"b"}, 3, "a drained on every worker")
    assert _action(setup, a, "disable") == 200
    assert _action(setup, b, "disable") == 200
    wait_for(
        lambda: exchange(setup.proxy.port("plain"), b"GET / HTTP/1.1\r\nHost: p\r\n\r\n")[0] == 503,
        3,
        "no server left",
    )
    page = http_call(setup.admin + "/")[1].decode()
    assert page.count('class="state disabled"') == 2
    assert _action(setup, a, "enable") == 200
    assert _action(setup, b, "enable") == 200
    wait_for(lambda: {setup.get() for _ in range(8)} == {b"a", b"b"}, 3, "both servers back")


def test_status_page_shows_states_in_colour(setup: Setup) -> None:
    a = f"127.0.0.1:{setup.a.port}"
    assert _action(setup, a, "drain") == 200
    try:
        code, body = http_call(setup.admin + "/")
        page = body.decode()
        assert code == 200
        assert "<title>revproxy status</title>" in page
        assert '<span class="state draining">draining</span>' in page
        assert '<span class="state up">up</span>' in page
        for colour in ("#2e7d32", "#c62828", "#757575", "#ff8f00"):
            assert colour in page
        assert "plain" in page and "main" in page and a in page
        assert "http://" not in page and "https://" not in page  # no external assets
        if shutil.which("curl"):
            out = subprocess.run(
                ["curl", "-sS", "--max-time", "5", setup.admin + "/"],
                capture_output=True,
                check=True,
            )
            assert b"draining" in out.stdout
    finally:
        assert _action(setup, a, "enable") == 200


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "revproxy", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )


def test_cli_status_server_and_reload(setup: Setup) -> None:
    config = str(setup.proxy.config_path)
    admin = setup.admin.removeprefix("http://")
    a = f"127.0.0.1:{setup.a.port}"
    out = _cli("server", "drain", "p", a, "-c", config, "--admin", admin)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"p {a}: draining"
    out = _cli("status", "-c", config, "--admin", admin)
    assert out.returncode == 0, out.stderr
    assert "POOL p" in out.stdout and "draining" in out.stdout and "ready" in out.stdout
    wrong = setup.proxy.workdir / "wrong-token"
    wrong.write_text("nope\n")
    out = _cli(
        "server", "enable", "p", a, "-c", config, "--admin", admin, "--token-file", str(wrong)
    )
    assert out.returncode == 1 and "refused (403)" in out.stderr
    out = _cli("server", "enable", "p", a, "-c", config, "--admin", admin)
    assert out.returncode == 0, out.stderr
    generation = setup.status()["generation"]
    out = _cli("reload", "-c", config, "--admin", admin)
    assert out.returncode == 0, out.stderr
    assert setup.status()["generation"] == generation + 1
    # The drained-then-enabled state of `a` survives the reload.
    assert setup.server(a)["admin"] == "enabled"


def test_actions_refused_without_a_token_file(tmp_path: Path) -> None:
    server = ScriptedServer(_named("a")).start()
    proxy = ProxyProcess(simple_config(server.port) + '\n[admin]\nbind = "127.0.0.1:0"\n', tmp_path)
    try:
        admin = admin_url(proxy)
        url = f"{admin}/api/servers/p/127.0.0.1:{server.port}/disable"
        assert http_call(url, "POST", None)[0] == 403
        assert http_call(url, "POST", "anything")[0] == 403
        assert http_call(admin + "/api/reload", "POST", "anything")[0] == 403
        assert http_call(admin + "/api/status")[0] == 200
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_health_checks_show_up_and_down(tmp_path: Path) -> None:
    from harness import dead_port

    alive = ScriptedServer(_named("a")).start()
    dead = dead_port()
    # A generous timeout: on a loaded machine a 0.2 s connect check can fail for the live one.
    pool = '[pools.p.health]\ntype = "tcp"\ninterval = 1\ntimeout = 0.9\nfall = 1\nrise = 1\n'
    config = simple_config(0, servers=[alive.port, dead], pool_extra=pool) + (
        '\n[admin]\nbind = "127.0.0.1:0"\n'
    )
    proxy = ProxyProcess(config, tmp_path)
    try:
        admin = admin_url(proxy)

        def states() -> dict[str, tuple[str, bool]]:
            (p,) = json.loads(http_call(admin + "/api/status")[1])["pools"]
            return {s["address"]: (s["state"], s["checked"]) for s in p["servers"]}

        want = {f"127.0.0.1:{alive.port}": ("up", True), f"127.0.0.1:{dead}": ("down", True)}
        wait_for(lambda: states() == want, 10, "one server up, one down")
        page = http_call(admin + "/")[1].decode()
        assert '<span class="state up">up</span>' in page
        assert '<span class="state down">down</span>' in page
        assert "passed" in page and "failed" in page
        metrics = http_call(admin + "/metrics")[1].decode()
        assert f'revproxy_server_up{{pool="p",server="127.0.0.1:{dead}"}} 0.0' in metrics
        # Workers learn the published state within a second; from then on every request
        # goes to the server that is up.
        port = proxy.port("plain")
        raw = b"GET / HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
        wait_for(lambda: exchange(port, raw)[2] == b"a", 2, "the worker to apply the state")
        assert {exchange(port, raw)[2] for _ in range(6)} == {b"a"}, proxy.log()
    finally:
        assert proxy.stop() == 0
        alive.stop()
