"""Parsing of wrk reports (run with: .venv/bin/python -m pytest bench/test_parse.py)."""

from __future__ import annotations

import pytest
from wrk_output import WrkParseError, parse_wrk, time_to_seconds

CLEAN = """\
Running 8s test @ http://127.0.0.1:18181/small
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   487.23us  123.45us   5.67ms   89.12%
    Req/Sec    98.12k     2.34k  101.23k    78.00%
  Latency Distribution
     50%  456.00us
     75%  512.00us
     90%  600.00us
     99%    1.02ms
  780000 requests in 8.00s, 100.00MB read
Requests/sec:  97500.00
Transfer/sec:     12.50MB
"""

WITH_ERRORS = """\
Running 8s test @ https://127.0.0.1:18443/small
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20s   300.00ms   2.00s    70.00%
    Req/Sec   177.66     20.00   250.00     72.73%
  Latency Distribution
     50%    1.10s
     75%    1.40s
     90%    1.90s
     99%    1.50m
  1404 requests in 8.10s, 200.00KB read
  Socket errors: connect 3, read 12, write 1, timeout 40
  Non-2xx or 3xx responses: 7
Requests/sec:    173.33
Transfer/sec:     24.69KB
"""


def test_clean_report() -> None:
    r = parse_wrk(CLEAN)
    assert r.requests == 780000
    assert r.duration_s == pytest.approx(8.0)
    assert r.rps == pytest.approx(97500.0)
    assert r.latency_avg_s == pytest.approx(487.23e-6)
    assert r.p50_s == pytest.approx(456e-6)
    assert r.p75_s == pytest.approx(512e-6)
    assert r.p90_s == pytest.approx(600e-6)
    assert r.p99_s == pytest.approx(1.02e-3)
    assert r.errors == 0
    assert r.socket_errors == 0


def test_errors_and_long_units() -> None:
    r = parse_wrk(WITH_ERRORS)
    assert r.requests == 1404
    assert r.duration_s == pytest.approx(8.1)
    assert r.rps == pytest.approx(173.33)
    assert r.latency_avg_s == pytest.approx(1.2)
    assert r.p50_s == pytest.approx(1.1)
    assert r.p99_s == pytest.approx(90.0)
    assert (r.connect_errors, r.read_errors, r.write_errors, r.timeout_errors) == (3, 12, 1, 40)
    assert r.non_2xx == 7
    assert r.socket_errors == 56
    assert r.errors == 63
    d = r.to_dict()
    assert d["errors"] == 63 and d["p99_s"] == pytest.approx(90.0)


def test_rps_falls_back_to_count_over_duration() -> None:
    text = CLEAN.replace("Requests/sec:  97500.00\n", "")
    assert parse_wrk(text).rps == pytest.approx(97500.0)


def test_without_latency_distribution() -> None:
    text = "\n".join(line for line in CLEAN.splitlines() if "%  " not in line)
    r = parse_wrk(text)
    assert r.p99_s is None and r.p50_s is None
    assert r.requests == 780000


@pytest.mark.parametrize(
    "text",
    ["", "unable to connect to 127.0.0.1:18199 Connection refused\n", CLEAN.split("  780000")[0]],
)
def test_incomplete_report_is_an_error(text: str) -> None:
    with pytest.raises(WrkParseError):
        parse_wrk(text)


@pytest.mark.parametrize(
    ("value", "unit", "seconds"),
    [("250", "us", 250e-6), ("1.5", "ms", 1.5e-3), ("2", "s", 2.0), ("1", "m", 60.0)],
)
def test_time_units(value: str, unit: str, seconds: float) -> None:
    assert time_to_seconds(value, unit) == pytest.approx(seconds)
