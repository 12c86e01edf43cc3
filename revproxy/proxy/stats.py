"""What one worker counts, for metrics, the status page, passive health and the access log.

The data plane calls these methods on its hot path, so they only update plain
Python containers; a snapshot is taken once a second and sent to the control
process, which aggregates all workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from revproxy.http.head import Request


class WorkerStats:
    """Counters of one worker process. Every method is cheap and never raises."""

    def request_done(
        self,
        listener: str,
        client_ip: str,
        service: str,
        pool: str,
        server: str,
        req: Request,
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

    def connection_opened(self, listener: str) -> None:
        """A client connection was accepted (after its TLS handshake)."""

    def connection_closed(self, listener: str) -> None:
        """A client connection ended."""

    def server_failed(self, pool: str, server: str, kind: str) -> None:
        """A real server failed live traffic: kind is "connect", "timeout", "reset",
        "protocol" or "status" (a configured passive-failure status)."""

    def server_succeeded(self, pool: str, server: str) -> None:
        """A real server answered (resets consecutive passive failures)."""

    def retried(self, pool: str, server: str) -> None:
        """A request was sent again (to `server`) after a failure."""

    def timed_out(self, kind: str) -> None:
        """A timeout fired: "client_header", "client_body", "server_connect",
        "server_response", "server_body", "keepalive", "tunnel"."""
