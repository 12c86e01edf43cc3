"""The load-test harness against the demo on free ports: every scenario briefly, the
distributed mode with two workers, and a small broadcast run through revproxy and
through nginx.

Locust is an optional extra (`pip install -e '.[loadtest]'`); without it these tests are
skipped. Locust runs in subprocesses, so its gevent monkey-patching never touches the
test process and needs no warning filter here.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.demo import DEMO_CONFIG, Demo, demo_config, start_demo, to_toml
from loadtest.nginx import find_nginx, nginx_config
from revproxy.config.load import parse_config

REPO = Path(__file__).resolve().parents[2]
MISSING = [m for m in ("locust", "matplotlib") if importlib.util.find_spec(m) is None]
needs_locust = pytest.mark.skipif(
    bool(MISSING), reason=f"{', '.join(MISSING)} not installed (pip install -e '.[loadtest]')"
)
NGINX = find_nginx()
needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (not on PATH nor in /usr/sbin; make sysdeps)"
)
PLOTS = ("requests.png", "latency.png", "errors.png", "proxy.png")
# Request names each scenario makes at least once in a few seconds (on_start requests).
EXPECTED = {
    "lync": ("NTLM 3 authenticate", "GET lyncdiscover root", "[long poll] GET ucwa events"),
    "exchange": ("POST owa logon", "GET owa resource", "[long poll] POST ActiveSync Ping"),
    "generic": ("GET page", "GET static"),
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    with start_demo(tmp_path_factory.mktemp("demo"), hold=0.5) as running:
        yield running


def loadtest(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "revproxy.commands.loadtest", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
    )


def check_results(results: Path, scenario: str) -> dict[str, object]:
    for name in (
        "locust_stats.csv",
        "locust_stats_history.csv",
        "report.html",
        "proxy.csv",
        "timeline.json",
        "summary.txt",
        *PLOTS,
    ):
        assert (results / name).stat().st_size > 0, name
    summary = json.loads((results / "summary.json").read_text())
    assert summary["requests"] > 0
    assert summary["failures"] == 0, summary["per_request"]
    for name in EXPECTED[scenario]:
        assert summary["per_request"][name]["requests"] > 0, name
    # The timeline (plots) counted exactly what locust counted.
    groups = summary["groups"]
    assert sum(g["requests"] for g in groups.values()) == summary["requests"]
    assert summary["proxy"]["rss_max"] > 0
    return summary


@needs_locust
@pytest.mark.parametrize("scenario", ["lync", "exchange", "generic"])
def test_scenario_against_the_demo(demo: Demo, tmp_path: Path, scenario: str) -> None:
    result = loadtest(
        "--scenario", scenario,
        "--host", demo.https_url,
        "--ca-file", str(demo.ca),
        "--resolve", "127.0.0.1",
        "--proxy-pid", str(demo.proxy.pid),
        "--metrics-url", demo.metrics_url,
        "-u", "6", "-r", "6", "-t", "3",
        "--think-scale", "0.05",
        "--max-error-ratio", "0",
        "--max-p99-ms", "5000",
        "--results", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "objective: error ratio 0.00%" in result.stdout
    check_results(tmp_path, scenario)


@needs_locust
def test_distributed_with_two_workers_starts_its_own_demo(tmp_path: Path) -> None:
    result = loadtest(
        "--scenario", "generic",
        "--workers", "2",
        "-u", "6", "-r", "6", "-t", "3",
        "--think-scale", "0.1",
        "--results", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    check_results(tmp_path, "generic")
    assert (tmp_path / "locust-worker-1.log").exists()
    assert (tmp_path / "locust-worker-2.log").exists()
    assert "2 workers connected" in (tmp_path / "locust.log").read_text()
    assert (tmp_path / "demo" / "proxy.log").exists()  # the command started the demo


@needs_locust
def test_missed_objective_fails_the_run(demo: Demo, tmp_path: Path) -> None:
    result = loadtest(
        "--scenario", "generic",
        "--host", demo.https_url,
        "--ca-file", str(demo.ca),
        "--resolve", "127.0.0.1",
        "-u", "2", "-r", "2", "-t", "2",
        "--think-scale", "0.05",
        "--max-p99-ms", "0.001",
        "--results", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "MISSED" in result.stdout


def test_small_broadcast(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.broadcast", "--clients", "60", "--rate", "200",
         "--client-processes", "2", "--proxy-workers", "2", "--settle", "0.5",
         "--deadline", "60", "--max-kib", "100000", "--results", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["held"] == 60 and summary["answered"] == 60
    assert summary["errors"] == {}


@needs_nginx
def test_small_broadcast_through_nginx(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.broadcast", "--proxy", "nginx", "--clients", "40",
         "--rate", "200", "--client-processes", "2", "--proxy-workers", "2", "--settle", "0.5",
         "--deadline", "60", "--max-kib", "100000", "--results", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["proxy"] == "nginx"
    assert summary["held"] == 40 and summary["answered"] == 40
    assert summary["errors"] == {} and summary["warmup_errors"] == {}
    assert summary["kib_per_connection"] > 0
    # The master and its two workers were measured.
    assert len(summary["processes"]) == 3
    assert "nginx RSS" in result.stdout


def test_nginx_config_mirrors_the_demo_service(tmp_path: Path) -> None:
    config = parse_config(
        tomllib.loads(demo_config({4443: [1111, 2222], 8080: [3333]}, workers=3)), DEMO_CONFIG
    )
    text = nginx_config(
        config,
        listener="https",
        host="meet.demo.test",
        port=5555,
        connections=10_000,
        workdir=tmp_path,
        certificate=tmp_path / "chain.pem",
        key=tmp_path / "key.pem",
        ip_name="lync-fe1.internal.test",
    )
    directives = {line.strip() for line in text.splitlines()}
    ca = REPO / "certs" / "dev" / "internal" / "ca.pem"
    for expected in (
        "worker_processes 3;",
        "worker_connections 20256;",  # two fds per connection, all of them on one worker
        "listen 127.0.0.1:5555 ssl reuseport backlog=1024;",
        "ssl_protocols TLSv1.2 TLSv1.3;",
        "server 127.0.0.1:1111 max_fails=2 fail_timeout=3s;",
        "server 127.0.0.1:2222 max_fails=2 fail_timeout=3s;",
        "proxy_pass https://lync_https;",
        "proxy_http_version 1.1;",
        "proxy_ssl_verify on;",
        f"proxy_ssl_trusted_certificate {ca};",
        "proxy_ssl_server_name on;",
        "proxy_ssl_name lync-fe1.internal.test;",
        "proxy_read_timeout 1800s;",
        "proxy_buffering on;",
        "access_log off;",
        f"error_log {tmp_path / 'error.log'} notice;",
        f"pid {tmp_path / 'nginx.pid'};",
    ):
        assert expected in directives, expected
    assert "127.0.0.1:3333" not in text  # the plain pool is another service's


def test_demo_config_on_free_ports_is_valid(tmp_path: Path) -> None:
    original = tomllib.loads(DEMO_CONFIG.read_text())
    assert tomllib.loads(to_toml(original)) == original
    text = demo_config({4443: [1111, 2222], 8080: [3333]}, workers=3, admin_port=4444)
    config = tomllib.loads(text)
    assert config["global"]["workers"] == 3
    assert all(listener["bind"].endswith(":0") for listener in config["listeners"].values())
    assert config["pools"]["lync-https"]["servers"] == ["127.0.0.1:1111", "127.0.0.1:2222"]
    assert config["pools"]["lync-http"]["servers"] == ["127.0.0.1:3333"]
    assert Path(config["pools"]["lync-https"]["ca"]).is_absolute()
    path = tmp_path / "proxy.toml"
    path.write_text(text)
    check = subprocess.run(
        [sys.executable, "-m", "revproxy", "check", "-c", str(path)],
        capture_output=True, text=True, cwd=REPO, timeout=30,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr


def test_tls_memory_reports_each_side_of_each_variant() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.tls_memory", "--connections", "200"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.endswith("KiB")]
    assert len(rows) == 3
    for row in rows:
        server, client = (float(v) for v in row.split()[-4::2])
        # An established TLS connection holds at least a few KiB on either side.
        assert 2 < server < 200 and 2 < client < 200, row
