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


def format_combined(entry: AccessEntry, wall_offset: float, clock: _Clock) -> str:
    (
        listener,
        client_ip,
        service,
        _pool,
        server,
        method,
        target,
        http11,
        _host,
        referer,
        agent,
        status,
        bytes_in,
        bytes_out,
        started,
        upstream,
        total,
        request_id,
    ) = entry
    request = f"{_text(method, '')} {_text(target, '')} HTTP/1.{1 if http11 else 0}"
    upstream_text = f"{upstream:.6f}" if upstream >= 0 else "-"
    return (
        f"{client_ip or '-'} - - [{clock.combined(started + wall_offset)}] "
        f'"{request}" {status} {bytes_out or "-"} "{_text(referer)}" "{_text(agent)}" '
        f"listener={_text(listener)} service={_text(service)} server={_text(server)} "
        f"upstream={upstream_text} total={total:.6f} in={bytes_in} rid={_text(request_id)}\n"
    )


def format_json(entry: AccessEntry, wall_offset: float) -> str:
    (
        listener,
        client_ip,
        service,
        pool,
        server,
        method,
        target,
        http11,
        host,
        referer,
        agent,
        status,
        bytes_in,
        bytes_out,
        started,
        upstream,
        total,
        request_id,
    ) = entry
    wall = started + wall_offset
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall))
    record = {
        "time": f"{stamp}.{int(wall % 1 * 1000):03d}Z",
        "client": client_ip,
        "listener": listener,
        "method": _plain(method),
        "target": _plain(target),
        "protocol": "HTTP/1.1" if http11 else "HTTP/1.0",
        "host": _plain(host),
        "status": status,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "referer": _plain(referer),
        "user_agent": _plain(agent),
        "service": service,
        "pool": pool,
        "server": server,
        "upstream_time": round(upstream, 6) if upstream >= 0 else None,
        "total_time": round(total, 6),
        "request_id": _plain(request_id),
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
