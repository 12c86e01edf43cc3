"""The CPU one small exchange costs inside revproxy, without sockets or other processes.

A real ClientConnection and ServerConnection (whichever form of the forwarding path is in
place, compiled or pure Python), built from a one-service configuration, are fed a GET
and a 100-byte response through stand-in transports, again and again. It prints the
microseconds of process time per request and response: the best and the median of
twelve batches. Run it under `perf record` to see which functions the time goes to
(compiled functions appear under their own names).

Usage: python bench/exchange.py [EXCHANGES]     (default 240000)

A development tool: the figures to compare with nginx come from `make bench`.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from revproxy import native  # noqa: E402
from revproxy.config.load import load_config  # noqa: E402
from revproxy.proxy.client import ClientConnection  # noqa: E402
from revproxy.proxy.runtime import Runtime  # noqa: E402
from revproxy.proxy.upstream import ServerConnection  # noqa: E402

CONFIG = """
[global]
workers = 1
[access_log]
enabled = false
[listeners.plain]
bind = "127.0.0.1:18000"
[services.bench]
hosts = ["*"]
pool = "backend"
[pools.backend]
servers = ["127.0.0.1:18080"]
"""
REQUEST = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:18000\r\n\r\n"
HEAD = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 29 Nov 2026 09:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n"
)
RESPONSE = HEAD + bytes(100)
BATCHES = 12


class StandInTransport:
    """Takes what is written and answers what a connection asks of its transport."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, chunks: list[bytes]) -> None:
        self.written += sum(map(len, chunks))

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def can_write_eof(self) -> bool:
        return True


async def measure(exchanges: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exchange.toml"
        path.write_text(CONFIG)
        config = load_config(path, check_files=False)
    runtime = Runtime(config, asyncio.get_running_loop())
    endpoint = next(iter(runtime.services["bench"].endpoints.values()))
    server = ServerConnection(endpoint)
    server.connection_made(StandInTransport())  # type: ignore[arg-type]
    endpoint.put_idle(server)
    client = ClientConnection(runtime.listeners["plain"], set())
    out = StandInTransport()
    client.connection_made(out)  # type: ignore[arg-type]
    per_batch = max(exchanges // BATCHES, 1)
    for _ in range(2000):  # warm the caches as a running proxy has them
        client.data_received(REQUEST)
        server.data_received(RESPONSE)
    results = []
    for _ in range(BATCHES):
        before, start = out.written, time.process_time()
        for _ in range(per_batch):
            client.data_received(REQUEST)
            server.data_received(RESPONSE)
        results.append((time.process_time() - start) / per_batch * 1e6)
        if out.written - before < per_batch * (len(RESPONSE) - len(HEAD)):
            raise SystemExit("responses did not come through: the measurement is void")
    if endpoint.idle != [server]:
        raise SystemExit("the server connection did not go back to the idle pool")
    return sorted(results)


def main() -> int:
    exchanges = int(sys.argv[1]) if len(sys.argv) > 1 else 240_000
    results = uvloop.run(measure(exchanges))
    print(
        f"{native.describe()}: {results[0]:.2f} us per exchange at best, "
        f"{results[len(results) // 2]:.2f} median ({BATCHES} batches of {exchanges // BATCHES})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
