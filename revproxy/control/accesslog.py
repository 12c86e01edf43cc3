"""The access log: one line per request, in combined log format or as JSON lines.

Each worker writes its own lines, batched once a second and at exit, to standard
output or to a file it opens in append mode. A batch is written in pieces of at
most PIPE_BUF bytes cut at line ends, so lines of different workers never mix,
on a pipe as in a file.

Combined format, with our fields after the usual ones:
    client - - [time] "request line" status bytes_out "referer" "user agent"
    listener=.. service=.. server=.. upstream=secs total=secs in=bytes_in rid=request_id
"""

from __future__ import annotations

import json
import os
import re
import select
import time
from collections.abc import Iterable
from typing import Any

from revproxy.config.model import AccessLogConfig
from revproxy.proxy.stats import AccessEntry

_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')
_CHUNK = getattr(select, "PIPE_BUF", 4096)


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    return "\\" + ch if ch in '"\\' else f"\\x{ord(ch):02x}"


def _text(value: bytes | str | None, default: str = "-") -> str:
    """Printable and quote-safe text for a combined-format field."""
    if not value:
        return default
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return _UNSAFE.sub(_escape, text)


def _plain(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode("latin-1") if isinstance(value, bytes) else value


class _Clock:
    """Wall-clock strings for event-loop times, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def combined(self, wall: float) -> str:
        second = int(wall)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(second))
        return self._text


# The fields of an access-log entry, in the order revproxy/proxy/stats.py records them.
ENTRY_FIELDS = (
    "listener",
    "client_ip",
    "service",
    "pool",
    "server",
    "method",
    "target",
    "http11",
    "host",
    "referer",
    "agent",
    "status",
    "bytes_in",
    "bytes_out",
    "started",
    "upstream",
    "total",
    "request_id",
)


def _fields(entry: AccessEntry) -> dict[str, Any]:
    return dict(zip(ENTRY_FIELDS, entry, strict=True))


def format_combined(entry: AccessEntry, wall_offset: float, clock: _Clock) -> str:
    f = _fields(entry)
    upstream = f["upstream"]
    request = f"{_text(f['method'], '')} {_text(f['target'], '')} HTTP/1.{1 if f['http11'] else 0}"
    upstream_text = f"{upstream:.6f}" if upstream >= 0 else "-"
    return (
        f"{f['client_ip'] or '-'} - - [{clock.combined(f['started'] + wall_offset)}] "
        f'"{request}" {f["status"]} {f["bytes_out"] or "-"} "{_text(f["referer"])}" '
        f'"{_text(f["agent"])}" listener={_text(f["listener"])} service={_text(f["service"])} '
        f"server={_text(f['server'])} upstream={upstream_text} total={f['total']:.6f} "
        f"in={f['bytes_in']} rid={_text(f['request_id'])}\n"
    )


def format_json(entry: AccessEntry, wall_offset: float) -> str:
    f = _fields(entry)
    wall = f["started"] + wall_offset
    upstream = f["upstream"]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall))
    record = {
        "time": f"{stamp}.{int(wall % 1 * 1000):03d}Z",
        "client": f["client_ip"],
        "listener": f["listener"],
        "method": _plain(f["method"]),
        "target": _plain(f["target"]),
        "protocol": "HTTP/1.1" if f["http11"] else "HTTP/1.0",
        "host": _plain(f["host"]),
        "status": f["status"],
        "bytes_in": f["bytes_in"],
        "bytes_out": f["bytes_out"],
        "referer": _plain(f["referer"]),
        "user_agent": _plain(f["agent"]),
        "service": f["service"],
        "pool": f["pool"],
        "server": f["server"],
        "upstream_time": round(upstream, 6) if upstream >= 0 else None,
        "total_time": round(f["total"], 6),
        "request_id": _plain(f["request_id"]),
    }
    return json.dumps(record, separators=(",", ":"), ensure_ascii=True) + "\n"


class AccessLog:
    """One worker's access-log output."""

    def __init__(self, config: AccessLogConfig) -> None:
        self.json = config.format == "json"
        self._clock = _Clock()
        if config.path in ("", "-"):
            self._fd = 1
            self._own = False
        else:
            self._fd = os.open(config.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._own = True

    def write(self, entries: Iterable[AccessEntry], wall_offset: float) -> None:
        """Format and write `entries`; `wall_offset` turns event-loop time into wall time."""
        if self.json:
            lines = [format_json(e, wall_offset) for e in entries]
        else:
            clock = self._clock
            lines = [format_combined(e, wall_offset, clock) for e in entries]
        if not lines:
            return
        piece: list[str] = []
        size = 0
        for line in lines:
            if size + len(line) > _CHUNK and piece:
                self._write("".join(piece))
                piece, size = [], 0
            piece.append(line)
            size += len(line)
        self._write("".join(piece))

    def _write(self, text: str) -> None:
        data = text.encode("ascii", "backslashreplace")
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except BlockingIOError:
            pass  # a non-blocking output that is full: drop the rest rather than stall
        except OSError:
            pass

    def close(self) -> None:
        if self._own:
            os.close(self._fd)
            self._own = False
