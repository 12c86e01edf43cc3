"""What one worker counts, for metrics, the status page, passive health and the access log.

The data plane calls these methods on its hot path, so they only update plain
Python containers; a snapshot is taken once a second and sent to the control
process, which aggregates all workers.

Counters are totals since the worker started, so a lost snapshot loses nothing
(the next one carries the same totals and more) and the control process keeps
the last snapshot per worker pid. Access-log entries are kept as raw values and
formatted in batches by the sink the worker installs (`access_log`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from revproxy.http.head import Request

# Upper bounds (seconds) of the latency histogram buckets; one more bucket counts the rest.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
)  # fmt: skip

# One access-log entry, as request_done saw it: (listener, client_ip, service, pool, server,
# method, target, http11, host, referer, user agent, status, bytes_in, bytes_out, started,
# upstream_time, total_time, request_id).
AccessEntry = tuple[Any, ...]

Event = dict[str, Any]


class WorkerStats:
    """Counters of one worker process. Every method is cheap and never raises."""

    def __init__(
        self,
        access_log: bool = False,
        events: Callable[[Event], None] | None = None,
    ) -> None:
        # (service, pool, server) -> the counters a request answered there adds to
        self._routes: dict[tuple[str, str, str], _Route] = {}
        # service -> [bytes in, bytes out]
        self.bytes: dict[str, list[int]] = {}
        # service -> bucket counts + [sum]; (pool, server) -> the same for upstream time
        self.total_latency: dict[str, list[float]] = {}
        self.upstream_latency: dict[tuple[str, str], list[float]] = {}
        # listener -> [open, accepted]
        self.connections: dict[str, list[int]] = {}
        # (pool, server, kind) -> count
        self.server_failures: dict[tuple[str, str, str], int] = {}
        self.retries: dict[tuple[str, str], int] = {}
        self.timeouts: dict[str, int] = {}
        self.tls_failures: dict[str, int] = {}
        self.proxy_refusals: dict[tuple[str, str], int] = {}
        # Servers with a passive failure not yet followed by a success.
        self._failing: set[tuple[str, str]] = set()
        # The route of the last request; this first one matches none.
        self._last = _Route("\0", "\0", "\0", [0, 0], [])
        self._events = events
        self.access_log: list[AccessEntry] | None = [] if access_log else None

    # ------------------------------------------------------------------ hot path

    def request_done(
        self,
        listener: str,
        client_ip: str,
        service: str,
        pool: str,
        server: str,
        req: Request | None,
        status: int,
        bytes_in: int,
        bytes_out: int,
        started: float,
        upstream_time: float,
        finished: float,
        request_id: bytes,
    ) -> None:
        """One request answered (also by the proxy itself: 4xx, 502, 503, 504).

        Times are event-loop times in seconds; `upstream_time` is from sending the request
        to the server to the response head, or -1 when no server answered. `server` is ""
        when no server was chosen.
        """
        route = self._last
        if route.service is not service or route.server is not server or route.pool is not pool:
            # Requests come in runs to the same place: the last route is kept at hand.
            found = self._routes.get((service, pool, server))
            route = found if found is not None else self._route(service, pool, server)
            self._last = route
        route.statuses[status // 100 if 0 < status < 600 else 0] += 1
        b = route.bytes
        b[0] += bytes_in
        b[1] += bytes_out
        total = finished - started
        h = route.total
        h[_bucket(total)] += 1
        h[-1] += total
        if upstream_time >= 0:
            u = route.upstream
            if u is None:
                u = route.upstream = self._upstream_histogram(pool, server)
            u[_bucket(upstream_time)] += 1
            u[-1] += upstream_time
        entries = self.access_log
        if entries is not None and req is not None:
            header = req.header
            entries.append(
                (
                    listener,
                    client_ip,
                    service,
                    pool,
                    server,
                    req.method,
                    req.target,
                    req.http11,
                    req.host,
                    header(b"referer"),
                    header(b"user-agent"),
                    status,
                    bytes_in,
                    bytes_out,
                    started,
                    upstream_time,
                    total,
                    request_id,
                )
            )

    def _route(self, service: str, pool: str, server: str) -> _Route:
        """The counters of a (service, pool, server) seen for the first time."""
        b = self.bytes.get(service)
        if b is None:
            b = self.bytes[service] = [0, 0]
        total = self.total_latency.get(service)
        if total is None:
            total = self.total_latency[service] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        route = self._routes[(service, pool, server)] = _Route(service, pool, server, b, total)
        return route

    def _upstream_histogram(self, pool: str, server: str) -> list[float]:
        h = self.upstream_latency.get((pool, server))
        if h is None:
            h = self.upstream_latency[(pool, server)] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        return h

    def connection_opened(self, listener: str) -> None:
        """A client connection was accepted (after its TLS handshake)."""
        c = self.connections.get(listener)
        if c is None:
            c = self.connections[listener] = [0, 0]
        c[0] += 1
        c[1] += 1

    def connection_closed(self, listener: str) -> None:
        """A client connection ended."""
        c = self.connections.get(listener)
        if c is not None and c[0] > 0:
            c[0] -= 1

    def server_failed(self, pool: str, server: str, kind: str) -> None:
        """A real server failed live traffic: kind is "connect", "timeout", "reset",
        "protocol" or "status" (a configured passive-failure status)."""
        key = (pool, server, kind)
        self.server_failures[key] = self.server_failures.get(key, 0) + 1
        self._failing.add((pool, server))
        if self._events is not None:
            self._events({"event": "failure", "pool": pool, "server": server, "kind": kind})

    def server_succeeded(self, pool: str, server: str) -> None:
        """A real server answered (resets consecutive passive failures)."""
        # Only the first success after failures is news for passive health.
        if self._failing and (pool, server) in self._failing:
            self._failing.discard((pool, server))
            if self._events is not None:
                self._events({"event": "success", "pool": pool, "server": server})

    def retried(self, pool: str, server: str) -> None:
        """A request was sent again (to `server`) after a failure."""
        key = (pool, server)
        self.retries[key] = self.retries.get(key, 0) + 1

    def timed_out(self, kind: str) -> None:
        """A timeout fired: "client_header", "client_body", "client_send" (a client that
        does not read), "server_send" (a server that does not read the request body),
        "server_response", "server_body", "keepalive", "tunnel"."""
        self.timeouts[kind] = self.timeouts.get(kind, 0) + 1

    def tls_handshake_failed(self, listener: str) -> None:
        """A client's TLS handshake on `listener` failed (bad client, unknown SNI, timeout)."""
        self.tls_failures[listener] = self.tls_failures.get(listener, 0) + 1

    def proxy_refused(self, listener: str, reason: str) -> None:
        """A connection to a `proxy_protocol` listener was closed before HTTP: reason is
        "header" (missing or malformed), "timeout", "source" (not a listed balancer) or
        "limit" (max_connections)."""
        key = (listener, reason)
        self.proxy_refusals[key] = self.proxy_refusals.get(key, 0) + 1

    # ------------------------------------------------------------------ once a second

    def take_access_log(self) -> list[AccessEntry]:
        """The access-log entries since the last call."""
        entries = self.access_log
        if not entries:
            return []
        self.access_log = []
        return entries

    def snapshot(self) -> dict[str, Any]:
        """Every total as JSON-ready lists: {"counters", "gauges", "histograms"}.

        Each is {metric: [[label values..., value]]}; a histogram's value is its bucket
        counts followed by the sum.
        """
        counters: dict[str, list[list[Any]]] = {
            "requests": [
                [*k, _STATUS_CLASS[i], n]
                for k, route in self._routes.items()
                for i, n in enumerate(route.statuses)
                if n
            ],
            "bytes_in": [[k, v[0]] for k, v in self.bytes.items()],
            "bytes_out": [[k, v[1]] for k, v in self.bytes.items()],
            "connections_accepted": [[k, v[1]] for k, v in self.connections.items()],
            "server_failures": [[*k, v] for k, v in self.server_failures.items()],
            "retries": [[*k, v] for k, v in self.retries.items()],
            "timeouts": [[k, v] for k, v in self.timeouts.items()],
            "tls_handshake_failures": [[k, v] for k, v in self.tls_failures.items()],
            "proxy_refusals": [[*k, v] for k, v in self.proxy_refusals.items()],
        }
        gauges: dict[str, list[list[Any]]] = {
            "client_connections": [[k, v[0]] for k, v in self.connections.items()],
        }
        histograms: dict[str, list[list[Any]]] = {
            "request_duration": [[k, list(v)] for k, v in self.total_latency.items()],
            "upstream_duration": [[*k, list(v)] for k, v in self.upstream_latency.items()],
        }
        return {"counters": counters, "gauges": gauges, "histograms": histograms}


def _bucket(seconds: float) -> int:
    """The histogram bucket of a duration: the first bound it does not exceed."""
    # (Typed tuple[float, ...]: as a fixed-size tuple, compiled code would unpack all
    # thirteen values on every call.)
    i = 0
    for bound in LATENCY_BUCKETS:
        if seconds <= bound:
            return i
        i += 1
    return i


_STATUS_CLASS = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")


class _Route:
    """The counters one (service, pool, server) adds to, found with one lookup per request.

    The byte and latency lists are shared with every route of the same service (and the
    upstream histogram with every route to the same server), so the totals stay per
    service and per server.
    """

    __slots__ = ("service", "pool", "server", "statuses", "bytes", "total", "upstream")

    def __init__(
        self, service: str, pool: str, server: str, bytes_: list[int], total: list[float]
    ) -> None:
        self.service = service
        self.pool = pool
        self.server = server
        self.statuses = [0] * len(_STATUS_CLASS)  # requests by status class
        self.bytes = bytes_
        self.total = total
        self.upstream: list[float] | None = None
