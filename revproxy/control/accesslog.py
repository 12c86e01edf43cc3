"""The access log: one line per request, in combined log format or as JSON lines.

Each worker writes its own lines to standard output or to a file it opens in
append mode. The entries the data plane records are handed over once a second
and formatted and written a slice at a time (SLICE entries per turn of the event
loop, more when many are waiting), so that a busy second's lines never hold up
the requests of the next while the log still keeps up; at exit everything left
is written at once. Lines are written in pieces of at most PIPE_BUF bytes cut at
line ends, so lines of different workers never mix, on a pipe as in a file.

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
from collections import deque

from revproxy.config.model import AccessLogConfig
from revproxy.proxy.stats import AccessEntry

_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')
_CHUNK = getattr(select, "PIPE_BUF", 4096)
_json_string = json.encoder.encode_basestring_ascii
# Entries formatted and written per turn of the event loop: well under a millisecond.
SLICE = 100


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    return "\\" + ch if ch in '"\\' else f"\\x{ord(ch):02x}"


def _text(value: bytes | str | None, default: str = "-") -> str:
    """Printable and quote-safe text for a combined-format field."""
    if not value:
        return default
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text  # the usual case, without the regular expression
    return _UNSAFE.sub(_escape, text)


def _js(value: bytes | str | None) -> str:
    """A JSON string (ASCII only) or null."""
    if value is None:
        return "null"
    return _json_string(value.decode("latin-1") if isinstance(value, bytes) else value)


class _Clock:
    """Wall-clock strings for event-loop times, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""
        self._iso_second = -1
        self._iso_text = ""

    def combined(self, wall: float) -> str:
        """Local time as the combined format writes it: 29/Nov/2026:18:30:24 +0000."""
        second = int(wall)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(second))
        return self._text

    def iso(self, wall: float) -> str:
        """UTC to the second, as the JSON lines write it: 2026-11-29T18:30:24."""
        second = int(wall)
        if second != self._iso_second:
            self._iso_second = second
            self._iso_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._iso_text


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
    upstream_text = f"{upstream:.6f}" if upstream >= 0 else "-"
    return (
        f"{client_ip or '-'} - - [{clock.combined(started + wall_offset)}] "
        f'"{_text(method, "")} {_text(target, "")} HTTP/1.{1 if http11 else 0}" '
        f'{status} {bytes_out or "-"} "{_text(referer)}" "{_text(agent)}" '
        f"listener={_text(listener)} service={_text(service)} server={_text(server)} "
        f"upstream={upstream_text} total={total:.6f} in={bytes_in} rid={_text(request_id)}\n"
    )


def format_json(entry: AccessEntry, wall_offset: float, clock: _Clock | None = None) -> str:
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
    stamp = (clock or _Clock()).iso(wall)
    # Written out by hand: the same text json.dumps gives for the record, in a third of
    # the time (strings through json's own ASCII escaping, floats through repr).
    upstream_text = repr(round(upstream, 6)) if upstream >= 0 else "null"
    return (
        f'{{"time":"{stamp}.{int(wall % 1 * 1000):03d}Z","client":{_js(client_ip)},'
        f'"listener":{_js(listener)},"method":{_js(method)},"target":{_js(target)},'
        f'"protocol":"HTTP/1.{1 if http11 else 0}","host":{_js(host)},"status":{status},'
        f'"bytes_in":{bytes_in},"bytes_out":{bytes_out},"referer":{_js(referer)},'
        f'"user_agent":{_js(agent)},"service":{_js(service)},"pool":{_js(pool)},'
        f'"server":{_js(server)},"upstream_time":{upstream_text},'
        f'"total_time":{round(total, 6)!r},"request_id":{_js(request_id)}}}\n'
    )


class AccessLog:
    """One worker's access-log output."""

    def __init__(self, config: AccessLogConfig) -> None:
        self.json = config.format == "json"
        self._clock = _Clock()
        # Batches handed over and not yet written; _done entries of the first one are.
        self._pending: deque[tuple[list[AccessEntry], float]] = deque()
        self._done = 0
        self._lost = 0  # lines that could not be written, told once a second
        self._lost_why = ""
        if config.path in ("", "-"):
            self._fd = 1
            self._own = False
        else:
            self._fd = os.open(config.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._own = True

    def add(self, entries: list[AccessEntry], wall_offset: float) -> None:
        """Queue `entries` for `drain`; `wall_offset` turns event-loop time into wall time."""
        if entries:
            self._pending.append((entries, wall_offset))

    @property
    def pending(self) -> int:
        """How many queued entries are not written yet."""
        return sum(len(batch) for batch, _ in self._pending) - self._done

    def drain(self, limit: int | None = None) -> bool:
        """Format and write up to `limit` queued entries (all without one), oldest first.

        Returns whether entries are left.
        """
        lines: list[str] = []
        budget = limit
        while self._pending and (budget is None or budget > 0):
            batch, wall_offset = self._pending[0]
            end = len(batch) if budget is None else min(len(batch), self._done + budget)
            part = batch[self._done : end]
            if self.json:
                clock = self._clock
                lines.extend(format_json(e, wall_offset, clock) for e in part)
            else:
                clock = self._clock
                lines.extend(format_combined(e, wall_offset, clock) for e in part)
            if budget is not None:
                budget -= len(part)
            if end == len(batch):
                self._pending.popleft()
                self._done = 0
            else:
                self._done = end
        self._write_lines(lines)
        return bool(self._pending)

    def drain_slice(self) -> bool:
        """Write one turn's share of what is queued; returns whether entries are left.

        At least SLICE entries, and an eighth of the backlog when it is larger: when each
        turn of the event loop finishes many requests the log still keeps up, its backlog
        settling at a few turns' worth instead of growing while the load lasts.
        """
        return self.drain(max(SLICE, self.pending // 8))

    def discard(self) -> int:
        """Drop everything queued (after a failure to format it); returns how many entries."""
        lost = self.pending
        self._pending.clear()
        self._done = 0
        return lost

    def write(self, entries: list[AccessEntry], wall_offset: float) -> None:
        """Format and write `entries` now, after anything queued before them."""
        self.add(entries, wall_offset)
        self.drain()

    def _write_lines(self, lines: list[str]) -> None:
        piece: list[str] = []
        size = 0
        for line in lines:
            if size + len(line) > _CHUNK and piece:
                self._write("".join(piece))
                piece, size = [], 0
            piece.append(line)
            size += len(line)
        if piece:
            self._write("".join(piece))

    def _write(self, text: str) -> None:
        data = text.encode("ascii", "backslashreplace")
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except BlockingIOError:
            # A non-blocking output (a pipe) that is full: the rest is dropped rather than
            # hold up the event loop, and counted.
            self._lose(data, "its output is full")
        except OSError as exc:
            self._lose(data, exc.strerror or str(exc))

    def _lose(self, data: bytes, why: str) -> None:
        self._lost += data.count(b"\n")
        self._lost_why = why

    def take_lost(self) -> tuple[int, str]:
        """How many lines could not be written since the last call, and the last reason."""
        lost, why = self._lost, self._lost_why
        self._lost, self._lost_why = 0, ""
        return lost, why

    def close(self) -> None:
        """Write what is still queued, then close the file."""
        self.drain()
        if self._own:
            os.close(self._fd)
            self._own = False
