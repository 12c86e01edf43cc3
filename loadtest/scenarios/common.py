"""What every scenario shares: target names, TLS trust, name resolution, think times,
NTLM messages and the per-second timeline the report plots.

The target is given as a base URL, `--host https://demo.test:8443`; each service is a
name below that domain, as published: meet.<domain>, dialin.<domain>,
lyncdiscover.<domain> for Lync/Skype, mail.<domain> and autodiscover.<domain> for
Exchange (LABELS below). `--resolve 127.0.0.1` connects every name under the domain
to that address while TLS still sends and checks the real name, like
`curl --resolve`; without it the names resolve through DNS as usual.

Long polls (UCWA events, ActiveSync Ping) are named with the LONG_POLL prefix: their
response time is the server's hold time by design, so the timeline keeps them apart
from the interactive requests whose latency the objectives judge.
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import threading
import time
from collections import defaultdict
from typing import Any
from urllib.parse import urlsplit

import locust.stats
from locust import HttpUser, events
from locust.runners import WorkerRunner

LONG_POLL = "[long poll] "
LABELS = {
    "web": "meet",  # Lync external web services (UCWA, ABS, WebTicket)
    "meet": "meet",
    "dialin": "dialin",
    "discover": "lyncdiscover",
    "mail": "mail",
    "autodiscover": "autodiscover",
}
NTLM_SIGNATURE = b"NTLMSSP\x00"

# The progress line reads locust's history CSV: flush it every second, not every five.
locust.stats.CSV_STATS_FLUSH_INTERVAL_SEC = 1


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    group = parser.add_argument_group("revproxy scenarios")
    group.add_argument(
        "--ca-file",
        default="",
        env_var="LOADTEST_CA_FILE",
        help="CA certificates (PEM) that verify the proxy; empty = the system's",
    )
    group.add_argument(
        "--resolve",
        default="",
        env_var="LOADTEST_RESOLVE",
        help="connect every name under the target's domain to this address",
    )
    group.add_argument(
        "--think-scale",
        type=float,
        default=1.0,
        env_var="LOADTEST_THINK_SCALE",
        help="multiply every think time by this (0.1 = ten times busier users)",
    )
    group.add_argument(
        "--long-poll-timeout",
        type=int,
        default=180,
        env_var="LOADTEST_LONG_POLL_TIMEOUT",
        help="seconds a long poll asks the server to hold it (the server may hold less)",
    )
    group.add_argument(
        "--generic-name",
        default="mail",
        env_var="LOADTEST_GENERIC_NAME",
        help="the name below the target's domain that the generic scenario uses",
    )
    group.add_argument(
        "--timeline-file",
        default="",
        env_var="LOADTEST_TIMELINE_FILE",
        help="write the per-second timeline (JSON) here when the run ends",
    )


# --- name resolution --------------------------------------------------------------------

_resolve_lock = threading.Lock()
_resolved: dict[str, str] = {}


def resolve_domain(domain: str, address: str) -> None:
    """Make every name under `domain` resolve to `address` in this process."""
    with _resolve_lock:
        if not _resolved:
            real = socket.getaddrinfo

            def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
                if isinstance(host, str):
                    for suffix, target in _resolved.items():
                        if host == suffix or host.endswith("." + suffix):
                            host = target
                            break
                return real(host, *args, **kwargs)

            socket.getaddrinfo = getaddrinfo
        _resolved[domain.lower()] = address


# --- users ------------------------------------------------------------------------------


def think(low: float, high: float) -> Any:
    """A wait time between `low` and `high` seconds, scaled by --think-scale."""

    def wait_time(user: Any) -> float:
        scale = getattr(user.environment.parsed_options, "think_scale", 1.0)
        return random.uniform(low, high) * float(scale)

    return wait_time


class ServiceUser(HttpUser):
    """A user that talks to services named below the target's domain."""

    abstract = True

    def on_start(self) -> None:
        options: Any = self.environment.parsed_options
        parts = urlsplit(self.host or "")
        self.scheme = parts.scheme or "https"
        self.domain = (parts.hostname or "").lower()
        self.port_suffix = f":{parts.port}" if parts.port else ""
        if getattr(options, "resolve", ""):
            resolve_domain(self.domain, options.resolve)
        if getattr(options, "ca_file", ""):
            self.client.verify = options.ca_file
        self.long_poll_timeout = int(getattr(options, "long_poll_timeout", 180) or 180)

    def url(self, service: str, path: str) -> str:
        """Absolute URL of `path` on the name that publishes `service` (a LABELS key)."""
        label = LABELS.get(service, service)
        return f"{self.scheme}://{label}.{self.domain}{self.port_suffix}{path}"


# --- NTLM -------------------------------------------------------------------------------


def ntlm_negotiate() -> str:
    """An NTLM negotiate message (type 1) as an Authorization value.

    Only the framing is real (signature, type, flags); the load test checks that the
    three messages of a handshake travel on one connection, not the cryptography.
    """
    return "NTLM " + base64.b64encode(
        NTLM_SIGNATURE + (1).to_bytes(4, "little") + (0xA2088207).to_bytes(4, "little")
    ).decode("ascii")


def ntlm_authenticate(challenge_header: str, user: str) -> str:
    """The authenticate message (type 3) answering the challenge in `WWW-Authenticate`."""
    nonce = b""
    for offer in challenge_header.split(","):
        scheme, _, token = offer.strip().partition(" ")
        if scheme.lower() == "ntlm" and token:
            raw = base64.b64decode(token)
            if raw.startswith(NTLM_SIGNATURE) and raw[8:12] == (2).to_bytes(4, "little"):
                nonce = raw[24:32]  # the server challenge
    if not nonce:
        raise ValueError(f"no NTLM challenge in {challenge_header!r}")
    body = NTLM_SIGNATURE + (3).to_bytes(4, "little") + nonce + user.encode("utf-16-le")
    return "NTLM " + base64.b64encode(body).decode("ascii")


# --- timeline ---------------------------------------------------------------------------


def round_ms(ms: float) -> int:
    """Response times kept to two significant digits above 100 ms, as locust does."""
    value = int(round(ms))
    if value < 100:
        return value
    if value < 1000:
        return int(round(value, -1))
    if value < 10000:
        return int(round(value, -2))
    return int(round(value, -3))


class Timeline:
    """Requests, failures and a response-time histogram per second and group.

    Groups are "request" (interactive) and "long poll". Workers send what they counted
    to the master with each stats report; the master (or a single process) writes the
    whole timeline to --timeline-file when it quits.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[tuple[int, str], dict[str, Any]] = {}

    def record(self, name: str, response_time: float, failed: bool) -> None:
        group = "long poll" if name.startswith(LONG_POLL) else "request"
        with self._lock:
            self._add(int(time.time()), group, 1, int(failed), {round_ms(response_time): 1})

    def _add(self, second: int, group: str, n: int, fail: int, hist: dict[int, int]) -> None:
        bucket = self._buckets.get((second, group))
        if bucket is None:
            bucket = self._buckets[(second, group)] = {"n": 0, "fail": 0, "rt": defaultdict(int)}
        bucket["n"] += n
        bucket["fail"] += fail
        for ms, count in hist.items():
            bucket["rt"][int(ms)] += count

    def take(self) -> list[list[Any]]:
        """Everything counted so far, as JSON-ready rows; the timeline is emptied."""
        with self._lock:
            rows = [
                [second, group, b["n"], b["fail"], dict(b["rt"])]
                for (second, group), b in sorted(self._buckets.items())
            ]
            self._buckets.clear()
        return rows

    def merge(self, rows: list[list[Any]]) -> None:
        with self._lock:
            for second, group, n, fail, hist in rows:
                self._add(int(second), str(group), int(n), int(fail), hist)

    def write(self, path: str, stats: list[dict[str, Any]]) -> None:
        rows = self.take()
        # JSON keys are strings; response times come back as ints when read.
        data = [[s, g, n, f, {str(k): v for k, v in h.items()}] for s, g, n, f, h in rows]
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump({"version": 1, "rows": data, "stats": stats}, f)
        os.replace(tmp, path)


def final_stats(stats: Any) -> list[dict[str, Any]]:
    """Locust's per-request statistics at the end of the run.

    Locust's own CSV is a snapshot taken every second, so it may miss the last
    requests; these are read when the run has ended.
    """
    out = []
    for entry in [*stats.entries.values(), stats.total]:
        if not entry.num_requests and entry is not stats.total:
            continue
        out.append(
            {
                "method": entry.method or "",
                "name": "Aggregated" if entry is stats.total else entry.name,
                "requests": entry.num_requests,
                "failures": entry.num_failures,
                "p50": entry.get_response_time_percentile(0.5) if entry.num_requests else None,
                "p95": entry.get_response_time_percentile(0.95) if entry.num_requests else None,
                "p99": entry.get_response_time_percentile(0.99) if entry.num_requests else None,
                "max": entry.max_response_time if entry.num_requests else None,
                "rps": entry.total_rps,
            }
        )
    return out


TIMELINE = Timeline()


@events.request.add_listener
def _on_request(name: str, response_time: float, exception: Any, **_: Any) -> None:
    TIMELINE.record(name, response_time or 0.0, exception is not None)


@events.report_to_master.add_listener
def _on_report_to_master(client_id: str, data: dict[str, Any]) -> None:
    data["revproxy_timeline"] = TIMELINE.take()


@events.worker_report.add_listener
def _on_worker_report(client_id: str, data: dict[str, Any]) -> None:
    TIMELINE.merge(data.get("revproxy_timeline", []))


@events.quitting.add_listener
def _on_quitting(environment: Any, **_: Any) -> None:
    path = getattr(environment.parsed_options, "timeline_file", "")
    if path and not isinstance(environment.runner, WorkerRunner):
        TIMELINE.write(path, final_stats(environment.runner.stats))
