"""The access log through the real proxy: combined format on standard output and JSON
lines in a file, with service, server, timings, bytes and the request id."""

from __future__ import annotations

import json
import re
from pathlib import Path

from harness import ProxyProcess, ScriptedServer, dead_port, exchange, simple_config, wait_for

REQUEST = (
    b'GET /meet/abc?x=1 HTTP/1.1\r\nHost: p.test\r\nUser-Agent: tester "7"\r\n'
    b"Referer: https://r.test/\r\nConnection: close\r\n\r\n"
)

COMBINED = re.compile(
    r"^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "
    r'"GET /meet/abc\?x=1 HTTP/1\.1" 200 (\d+) "https://r\.test/" "tester \\"7\\"" '
    r"listener=plain service=main server=127\.0\.0\.1:(\d+) upstream=(\d+\.\d+) "
    r"total=(\d+\.\d+) in=(\d+) rid=(\S+)$",
    re.M,
)


def test_combined_format_on_standard_output(tmp_path: Path) -> None:
    server = ScriptedServer().start()
    proxy = ProxyProcess(simple_config(server.port, workers=2), tmp_path)
    try:
        for _ in range(3):
            assert exchange(proxy.port("plain"), REQUEST)[0] == 200
        lines = wait_for(
            lambda: (found := COMBINED.findall(proxy.log())) and len(found) == 3 and found,
            5,
            "three access-log lines",
        )
        ids = {req.header("X-Request-ID") for req in server.requests}
        for size, port, upstream, total, _in, rid in lines:
            assert int(port) == server.port
            assert int(size) > 0
            assert float(upstream) <= float(total) < 5
            assert rid in ids
        assert len({line[-1] for line in lines}) == 3
    finally:
        assert proxy.stop() == 0
        server.stop()


def test_json_lines_in_a_file(tmp_path: Path) -> None:
    server = ScriptedServer().start()
    log_file = tmp_path / "access.jsonl"
    config = simple_config(server.port, workers=2) + (
        f'\n[access_log]\nformat = "json"\npath = "{log_file}"\n'
        f'\n[services.dead]\nhosts = ["dead.test"]\npool = "d"\n'
        f'\n[pools.d]\nservers = ["127.0.0.1:{dead_port()}"]\n'
    )
    proxy = ProxyProcess(config, tmp_path)
    try:
        for _ in range(4):
            assert exchange(proxy.port("plain"), REQUEST)[0] == 200
        missing = b"GET /x HTTP/1.1\r\nHost: dead.test\r\nConnection: close\r\n\r\n"

        def records() -> list[dict]:  # type: ignore[type-arg]
            if not log_file.exists():
                return []
            return [json.loads(line) for line in log_file.read_text().splitlines()]

        wait_for(lambda: len(records()) == 4, 5, "four JSON access-log lines")
        # A request no server answers: logged with the proxy's status and no upstream time.
        assert exchange(proxy.port("plain"), missing)[0] == 502
        wait_for(lambda: len(records()) == 5, 5, "the 502 logged")
    finally:
        assert proxy.stop() == 0
        server.stop()
    entries = records()
    ids = {req.header("X-Request-ID") for req in server.requests}
    for entry in entries[:4]:
        assert entry["method"] == "GET" and entry["target"] == "/meet/abc?x=1"
        assert entry["status"] == 200 and entry["protocol"] == "HTTP/1.1"
        assert entry["service"] == "main" and entry["pool"] == "p"
        assert entry["server"] == f"127.0.0.1:{server.port}"
        assert entry["user_agent"] == 'tester "7"' and entry["referer"] == "https://r.test/"
        assert entry["client"] == "127.0.0.1" and entry["listener"] == "plain"
        assert 0 <= entry["upstream_time"] <= entry["total_time"]
        assert entry["bytes_out"] > 0 and entry["request_id"] in ids
        assert entry["time"].endswith("Z")
    failed = entries[4]
    assert failed["status"] == 502 and failed["upstream_time"] is None
    assert failed["service"] == "dead" and failed["pool"] == "d"
