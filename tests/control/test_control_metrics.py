"""/metrics through the real proxy with two workers: totals summed over workers and kept
across a killed worker, a bad reload counted while serving continues, certificate expiry."""

from __future__ import annotations

import datetime
import os
import re
import signal
from pathlib import Path

import trustme
from harness import (
    ProxyProcess,
    ScriptedServer,
    admin_url,
    child_pids,
    exchange,
    http_call,
    simple_config,
    wait_for,
)

ADMIN = '\n[admin]\nbind = "127.0.0.1:0"\n'


def _metrics(admin: str) -> str:
    code, body = http_call(admin + "/metrics")
    assert code == 200
    return body.decode()


def _value(text: str, name: str, **labels: str) -> float | None:
    """The sample `name{labels...}` (labels given must match; others are ignored) summed."""
    total = None
    for m in re.finditer(rf"^{re.escape(name)}(?:{{(.*?)}})? (\S+)$", text, re.M):
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total = (total or 0.0) + float(m.group(2))
    return total


def _get(port: int, path: str = "/") -> int:
    raw = f"GET {path} HTTP/1.1\r\nHost: p.test\r\nConnection: close\r\n\r\n".encode()
    return exchange(port, raw)[0]


def _pids(proxy: ProxyProcess, admin: str) -> tuple[int, list[int]]:
    """(control process pid, worker pids) among the main process's children."""
    import json

    control = json.loads(http_call(admin + "/api/status")[1])["control_pid"]
    return control, [p for p in child_pids(proxy.proc.pid) if p != control]


def test_metrics_sum_over_workers_and_survive_a_killed_worker(tmp_path: Path) -> None:
    server = ScriptedServer().start()
    proxy = ProxyProcess(simple_config(server.port, workers=2) + ADMIN, tmp_path)
    try:
        admin = admin_url(proxy)
        port = proxy.port("plain")
        control, workers = wait_for(
            lambda: (p := _pids(proxy, admin)) and len(p[1]) == 2 and p, 10, "two workers"
        )
        for i in range(20):
            assert _get(port, f"/r{i}") == 200
        labels = {"service": "main", "pool": "p", "server": f"127.0.0.1:{server.port}"}

        def requests() -> float | None:
            return _value(_metrics(admin), "revproxy_requests_total", code="2xx", **labels)

        wait_for(lambda: requests() == 20, 5, "20 requests counted")
        text = _metrics(admin)
        # Both workers served some (new connections are spread by the kernel).
        assert len(server.requests) == 20
        assert _value(text, "revproxy_request_duration_seconds_count", service="main") == 20
        assert _value(text, "revproxy_upstream_response_seconds_count", pool="p") == 20
        assert _value(text, "revproxy_request_duration_seconds_bucket", le="+Inf") == 20
        assert (_value(text, "revproxy_sent_bytes_total", service="main") or 0) > 20 * 20
        assert _value(text, "revproxy_received_bytes_total", service="main") is not None
        assert _value(text, "revproxy_client_connections_accepted_total", listener="plain") == 20
        assert _value(text, "revproxy_client_connections", listener="plain") == 0
        assert _value(text, "revproxy_server_up", pool="p") == 1
        assert _value(text, "revproxy_server_admin_state", state="enabled") == 1
        assert _value(text, "revproxy_workers") == 2
        assert _value(text, "revproxy_reloads_total", result="ok") == 0

        # A killed worker's requests stay counted; its replacement adds to them.
        os.kill(workers[0], signal.SIGKILL)
        wait_for(
            lambda: (p := _pids(proxy, admin)[1]) and len(p) == 2 and workers[0] not in p,
            10,
            "the worker replaced",
        )
        for i in range(5):
            assert _get(port, f"/again{i}") == 200
        wait_for(lambda: requests() == 25, 8, "25 requests counted")
        assert control == _pids(proxy, admin)[0]
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_bad_reload_is_counted_while_serving_continues(tmp_path: Path) -> None:
    server = ScriptedServer().start()
    proxy = ProxyProcess(simple_config(server.port, workers=2) + ADMIN, tmp_path)
    try:
        admin = admin_url(proxy)
        good = proxy.config_path.read_text()
        proxy.config_path.write_text(good + "\n[pools.p]\nbroken = \n")
        proxy.signal(signal.SIGHUP)
        wait_for(
            lambda: _value(_metrics(admin), "revproxy_reloads_total", result="failed") == 1,
            5,
            "the failed reload counted",
        )
        text = _metrics(admin)
        assert _value(text, "revproxy_last_reload_success") == 0
        assert _value(text, "revproxy_config_generation") == 1
        for _ in range(5):
            assert _get(proxy.port("plain")) == 200
        import json

        state = json.loads(http_call(admin + "/api/status")[1])
        assert state["reloads"]["failed"] == 1 and not state["reloads"]["last_ok"]
        assert "proxy.toml" in state["reloads"]["last_error"]
        proxy.config_path.write_text(good)
        proxy.signal(signal.SIGHUP)
        wait_for(
            lambda: _value(_metrics(admin), "revproxy_reloads_total", result="ok") == 1,
            5,
            "the good reload counted",
        )
        assert _value(_metrics(admin), "revproxy_config_generation") == 2
        assert _get(proxy.port("plain")) == 200
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_certificate_expiry_days(tmp_path: Path) -> None:
    ca = trustme.CA()
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=40)
    leaf = ca.issue_cert("www.p.test", not_after=expires)
    leaf.private_key_pem.write_to_path(str(tmp_path / "leaf.key"))
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "leaf.pem"))
    server = ScriptedServer().start()
    listener = '[listeners.tls]\nbind = "127.0.0.1:0"\ntls = true\n'
    listener += '  [[listeners.tls.certificates]]\n  cert = "leaf.pem"\n  key = "leaf.key"\n'
    proxy = ProxyProcess(simple_config(server.port) + ADMIN + listener, tmp_path)
    try:
        text = _metrics(admin_url(proxy))
        days = _value(text, "revproxy_certificate_expiry_days", listener="tls")
        assert days is not None and 39 < days <= 40
    finally:
        assert proxy.stop() == 0
        server.stop()
