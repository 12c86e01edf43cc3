"""The comparison report and the pacing script (run with: .venv/bin/python -m pytest bench)."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import report
import trustme
from processes import free_port
from run import pacing_script, run_wrk
from wrk_output import parse_wrk


def _run(rps: float, p99: float) -> dict[str, object]:
    return {"ok": True, "rps": rps, "rps_per_cpu_s": rps / 4, "p99_s": p99, "p50_s": p99 / 4}


def test_p99_target_is_judged_at_the_same_load() -> None:
    scenarios = {
        "keepalive-plain": {
            # Flat out revproxy's p99 is 3x nginx's; at the same offered load only 1.2x.
            "nginx": _run(30000, 0.004),
            "revproxy": _run(10000, 0.012),
            "ratios": report.compare(_run(30000, 0.004), _run(10000, 0.012)),
            "same_load": {
                "offered_rps": 5000,
                "nginx": _run(4990, 0.001),
                "revproxy": _run(4980, 0.0012),
                "ratios": report.compare(_run(4990, 0.001), _run(4980, 0.0012)),
            },
        },
        "1mib": {
            "nginx": _run(800, 0.04),
            "revproxy": _run(900, 0.08),
            "ratios": report.compare(_run(800, 0.04), _run(900, 0.08)),
        },
    }
    by_name = {t["target"]: t for t in report.targets(scenarios, [])}
    same = by_name["keepalive-plain: p99 ratio at the same load (5000 rps) <= 1.5"]
    assert same["status"] == "PASS"
    assert same["value"] == pytest.approx(1.2)
    flat = by_name["1mib: p99 ratio (flat out) <= 1.5"]
    assert flat["status"] == "FAIL"
    table = report.same_load_table(scenarios)
    assert "keepalive-plain" in table and "5000" in table and "1.20" in table
    assert "1mib" not in table
    assert report.same_load_table({"1mib": scenarios["1mib"]}) == ""


def test_same_load_table_shows_the_backend_alone_beside_the_proxies() -> None:
    # The backend's own tail (61 ms) is shown; the target still compares the two proxies.
    same = {
        "offered_rps": 490,
        "nginx": _run(489, 0.0611),
        "revproxy": _run(488, 0.0649),
        "backend": _run(490, 0.0612),
        "ratios": report.compare(_run(489, 0.0611), _run(488, 0.0649)),
    }
    flat_out = {"nginx": _run(900, 0.04), "revproxy": _run(1400, 0.03)}
    flat_out["ratios"] = report.compare(flat_out["nginx"], flat_out["revproxy"])
    scenarios = {"1mib": {**flat_out, "same_load": same}}
    lines = report.same_load_table(scenarios).splitlines()
    assert lines[0].endswith("p99 backend alone")
    row = next(line for line in lines if line.startswith("1mib"))
    assert row.split()[-2:] == ["1.06", "61.20ms"]
    by_name = {t["target"]: t for t in report.targets(scenarios, [])}
    target = by_name["1mib: p99 ratio at the same load (490 rps) <= 1.5"]
    assert target["value"] == pytest.approx(0.0649 / 0.0611)
    del same["backend"]  # TLS scenarios: the backend speaks plain HTTP only
    row = next(line for line in report.same_load_table(scenarios).splitlines() if "1mib" in line)
    assert row.split()[-2:] == ["1.06", "-"]


def test_same_load_on_a_prompt_backend_is_judged_and_the_corked_one_shown() -> None:
    # 1 MiB: judged where the backend sends without TCP_CORK; the corked path's tail (the
    # backend's own, 70 ms alone) is a row of its own and no target.
    def paced(path: str, nginx_p99: float, revproxy_p99: float, alone: float) -> dict:
        return {
            "offered_rps": 393,
            "path": path,
            "nginx": _run(380, nginx_p99),
            "revproxy": _run(390, revproxy_p99),
            "backend": _run(392, alone),
            "ratios": report.compare(_run(380, nginx_p99), _run(390, revproxy_p99)),
        }

    same = paced("/1m-prompt", 0.0099, 0.0032, 0.0024)
    same["corked"] = paced("/1m", 0.057, 0.082, 0.070)
    flat_out = {"nginx": _run(787, 0.06), "revproxy": _run(1374, 0.02)}
    flat_out["ratios"] = report.compare(flat_out["nginx"], flat_out["revproxy"])
    scenarios = {"1mib": {**flat_out, "same_load": same}}
    lines = report.same_load_table(scenarios).splitlines()
    judged = next(line for line in lines if line.startswith("1mib "))
    corked = next(line for line in lines if line.startswith("1mib, corked backend"))
    assert judged.split()[-2:] == ["0.32", "2.40ms"]
    assert corked.split()[-2:] == ["1.44", "70.00ms"]
    p99 = [t for t in report.targets(scenarios, []) if "p99" in t["target"]]
    assert [t["target"] for t in p99] == [
        "1mib: p99 ratio at the same load (393 rps, /1m-prompt) <= 1.5"
    ]
    assert p99[0]["value"] == pytest.approx(0.0032 / 0.0099)


def test_cpu_table_splits_user_and_system_time_per_request() -> None:
    measured = {"ok": True, "requests": 20000, "cpu_user_s": 0.3, "cpu_system_s": 0.5}
    before_split = {"ok": True, "requests": 20000, "cpu_s": 0.8}  # a run kept from before
    table = report.cpu_table(
        {
            "keepalive-tls": {"nginx": measured, "revproxy": before_split, "floor": None},
            "tls-new-conn": {"nginx": None, "revproxy": measured},
        }
    )
    lines = table.splitlines()
    assert "user + system" in lines[0] and lines[0].endswith("floor (bare relay)")
    tls = next(line for line in lines if line.startswith("keepalive-tls"))
    assert tls.split()[1:] == ["15.0", "+", "25.0", "-", "-"]
    new_conn = next(line for line in lines if line.startswith("tls-new-conn"))
    assert new_conn.split()[1:] == ["-", "15.0", "+", "25.0", "-"]


def test_pacing_script_sets_the_mean_gap(tmp_path: Path) -> None:
    # 50 connections offering 5,000 requests/s together: 10 ms between one connection's requests.
    text = pacing_script(tmp_path, 50, 5000.0).read_text()
    assert "local mean_ms = 10.000000" in text
    assert "function delay()" in text


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_wrk_with_the_pacing_script_offers_the_set_rate(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (make sysdeps)")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        # Two connections offering 40 requests/s for 2 s: about 80 requests, where unpaced
        # wrk sends thousands.
        text = run_wrk(url, 2, 2.0, False, pacing_script(tmp_path, 2, 40.0))
    finally:
        server.shutdown()
        server.server_close()
    sent = parse_wrk(text).requests
    assert 40 <= sent <= 120, text


def test_floor_relays_plain_and_tls(tmp_path: Path) -> None:
    backend = ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    thread = threading.Thread(target=backend.serve_forever, daemon=True)
    thread.start()
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    plain_port, tls_port = free_port(), free_port()
    relay = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("floor.py")),
            str(plain_port),
            str(tls_port),
            str(backend.server_address[1]),
            str(tmp_path / "cert.pem"),
            str(tmp_path / "key.pem"),
            "1",
        ],
        start_new_session=True,
    )
    try:
        client = ssl.create_default_context()
        ca.configure_trust(client)
        deadline = time.monotonic() + 10
        while True:
            try:
                plain = urllib.request.urlopen(f"http://127.0.0.1:{plain_port}/", timeout=5)
                break
            except OSError:
                assert relay.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        assert plain.read() == b"ok"
        tls = urllib.request.urlopen(f"https://127.0.0.1:{tls_port}/", timeout=5, context=client)
        assert tls.read() == b"ok"
    finally:
        os.killpg(relay.pid, signal.SIGTERM)
        relay.wait(10)
        backend.shutdown()
        backend.server_close()
