"""Access-log lines as pure functions, and the queue that writes them a slice at a time."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from revproxy.config.model import AccessLogConfig
from revproxy.control.accesslog import (
    ENTRY_FIELDS,
    SLICE,
    AccessLog,
    _Clock,
    format_combined,
    format_json,
)

WALL = 1_764_441_024.0 - 100.0  # event-loop time 100.0 is 2025-11-29T18:30:24 UTC

BASE: dict[str, Any] = {
    "listener": "tls",
    "client_ip": "192.0.2.7",
    "service": "meet",
    "pool": "lync",
    "server": "10.0.0.5:4443",
    "method": b"GET",
    "target": b"/meet/abc?x=1",
    "http11": True,
    "host": b"meet.example.com",
    "referer": b"https://r.example/",
    "agent": b"curl/8.0",
    "status": 200,
    "bytes_in": 12,
    "bytes_out": 345,
    "started": 100.25,
    "upstream": 0.0123456789,
    "total": 0.02,
    "request_id": b"0a1b2c3d4e5f-1f",
}


def entry(**changes: Any) -> tuple[Any, ...]:
    fields = {**BASE, **changes}
    return tuple(fields[name] for name in ENTRY_FIELDS)


def combined(**changes: Any) -> str:
    return format_combined(entry(**changes), WALL, _Clock())


def test_combined_line_has_every_field_in_place() -> None:
    line = combined()
    assert line.endswith("\n") and line.count("\n") == 1
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(WALL + 100.25))
    assert line == (
        f'192.0.2.7 - - [{stamp}] "GET /meet/abc?x=1 HTTP/1.1" 200 345 '
        '"https://r.example/" "curl/8.0" listener=tls service=meet server=10.0.0.5:4443 '
        "upstream=0.012346 total=0.020000 in=12 rid=0a1b2c3d4e5f-1f\n"
    )


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b'say "hi"', r"say \"hi\""),
        (b"back\\slash", r"back\\slash"),
        (b"esc\x1b[31m", r"esc\x1b[31m"),
        (b"nul\x00del\x7f", r"nul\x00del\x7f"),
        ("caf\u00e9".encode("latin-1"), r"caf\xe9"),
        ("caf\u00e9".encode(), r"caf\xc3\xa9"),
        (b"tab\there", r"tab\x09here"),
        (b"plain text, (ok) ~!", "plain text, (ok) ~!"),
    ],
)
def test_combined_escapes_what_could_break_or_forge_a_line(raw: bytes, shown: str) -> None:
    line = combined(agent=raw, target=raw)
    assert f'"GET {shown} HTTP/1.1"' in line
    assert f'"{shown}"\n'[:-1] in line
    assert line.isascii() and line.count("\n") == 1


def test_combined_marks_what_is_missing() -> None:
    line = combined(client_ip="", referer=None, agent=b"", bytes_out=0, upstream=-1.0, http11=False)
    assert line.startswith("- - - [")
    assert '" 200 - "-" "-" ' in line
    assert "HTTP/1.0" in line and "upstream=- " in line


TRICKY: list[Any] = [None, "", "x", "caf\u00e9", 'a"b', "\x00\x1b", "\u65e5\u672c"]


@pytest.mark.parametrize("value", TRICKY + [b"\xff\xfe", b'q"\\', b"GET"])
@pytest.mark.parametrize("upstream", [-1.0, 0.0, 0.1234567891, 1e-7])
def test_json_line_is_what_json_dumps_gives(value: Any, upstream: float) -> None:
    text = value if not isinstance(value, bytes) else value.decode("latin-1")
    as_str = None if isinstance(value, bytes) else value
    e = entry(
        client_ip=as_str,
        service=as_str,
        method=value,
        target=value,
        host=value,
        referer=value,
        agent=value,
        request_id=value,
        upstream=upstream,
        total=3.3333333,
    )
    line = format_json(e, WALL, _Clock())
    expected = {
        "time": "2025-11-29T18:30:24.250Z",
        "client": as_str,
        "listener": "tls",
        "method": text,
        "target": text,
        "protocol": "HTTP/1.1",
        "host": text,
        "status": 200,
        "bytes_in": 12,
        "bytes_out": 345,
        "referer": text,
        "user_agent": text,
        "service": as_str,
        "pool": "lync",
        "server": "10.0.0.5:4443",
        "upstream_time": round(upstream, 6) if upstream >= 0 else None,
        "total_time": 3.333333,
        "request_id": text,
    }
    assert line == json.dumps(expected, separators=(",", ":"), ensure_ascii=True) + "\n"
    assert json.loads(line) == expected


def _log(tmp_path: Path, fmt: str = "combined") -> tuple[AccessLog, Path]:
    path = tmp_path / "access.log"
    return AccessLog(AccessLogConfig(format=fmt, path=str(path))), path


def _ids(path: Path) -> list[str]:
    return [line.rsplit("rid=", 1)[1] for line in path.read_text().splitlines()]


def test_queued_entries_are_written_a_slice_at_a_time_in_order(tmp_path: Path) -> None:
    log, path = _log(tmp_path)
    first = [entry(request_id=f"a{i}".encode()) for i in range(150)]
    second = [entry(request_id=f"b{i}".encode()) for i in range(70)]
    log.add(first, WALL)
    log.add(second, WALL)
    log.add([], WALL)
    assert log.pending == 220 and not path.read_text()
    assert log.drain(100) is True
    assert _ids(path) == [f"a{i}" for i in range(100)] and log.pending == 120
    assert log.drain(100) is True  # the rest of the first batch and 50 of the second
    assert _ids(path)[100:] == [f"a{i}" for i in range(100, 150)] + [f"b{i}" for i in range(50)]
    assert log.drain(100) is False and log.pending == 0
    assert len(_ids(path)) == 220 and _ids(path)[-1] == "b69"
    assert log.drain(100) is False and len(_ids(path)) == 220
    log.close()


def test_a_slice_grows_with_the_backlog(tmp_path: Path) -> None:
    log, path = _log(tmp_path)
    log.add([entry() for _ in range(8000)], WALL)
    assert log.drain_slice() is True
    assert log.pending == 7000  # an eighth of the backlog
    while log.pending > 400:
        log.drain_slice()
    before = log.pending
    assert log.drain_slice() is (before > SLICE)
    assert log.pending == max(0, before - SLICE)  # never less than SLICE at a time
    log.close()
    assert len(path.read_text().splitlines()) == 8000


def test_write_and_close_write_what_is_queued_first(tmp_path: Path) -> None:
    log, path = _log(tmp_path, "json")
    log.add([entry(request_id=b"queued")], WALL)
    log.write([entry(request_id=b"now")], WALL)
    assert [json.loads(line)["request_id"] for line in path.read_text().splitlines()] == [
        "queued",
        "now",
    ]
    log.add([entry(request_id=b"at-exit")], WALL)
    log.close()
    assert json.loads(path.read_text().splitlines()[-1])["request_id"] == "at-exit"


def test_discard_drops_the_queue_and_says_how_much(tmp_path: Path) -> None:
    log, path = _log(tmp_path)
    log.add([entry() for _ in range(30)], WALL)
    log.drain(10)
    assert log.discard() == 20 and log.pending == 0
    assert log.drain() is False and len(path.read_text().splitlines()) == 10
    log.close()


def test_lines_that_cannot_be_written_are_counted(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here to fail writes with ENOSPC")
    log = AccessLog(AccessLogConfig(path="/dev/full"))
    log.write([entry() for _ in range(3)], WALL)
    lost, why = log.take_lost()
    assert lost == 3 and why
    assert log.take_lost() == (0, "")
    log.close()
