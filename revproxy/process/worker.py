"""A worker process: one event loop serving every listener on its own sockets.

The main process binds the listening sockets and hands each worker its own
set, so a worker never binds anything and a reload or a restarted worker
never closes a listening socket. Stopping is a sequence: stop accepting, let
busy connections finish their exchange (the last response says Connection:
close), close idle ones, wait up to the grace period, then cut what is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

import uvloop

from revproxy.config.model import Config
from revproxy.proxy.client import ClientConnection
from revproxy.proxy.runtime import Runtime

log = logging.getLogger("revproxy.worker")

TICK = 1.0  # seconds between housekeeping rounds (idle server connections, parent alive)


def run_worker(config: Config, sockets: dict[str, socket.socket], parent: int) -> int:
    """Serve until SIGTERM/SIGINT (graceful) or until the main process is gone."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve(config, sockets, parent))


async def _serve(config: Config, sockets: dict[str, socket.socket], parent: int) -> int:
    loop = asyncio.get_running_loop()
    runtime = Runtime(config, loop)
    registry: set[ClientConnection] = set()
    servers: list[asyncio.Server] = []
    for listener in runtime.listeners.values():

        def factory(listener=listener) -> ClientConnection:  # type: ignore[no-untyped-def]
            return ClientConnection(listener, registry)

        server = await loop.create_server(
            factory,
            sock=sockets[listener.name],
            ssl=listener.ssl_context,
            ssl_handshake_timeout=listener.t_header if listener.ssl_context else None,
            backlog=listener.config.backlog,
        )
        servers.append(server)

    stop = asyncio.Event()
    grace = {"seconds": config.global_.shutdown_grace}

    def shutdown() -> None:
        grace["seconds"] = config.global_.shutdown_grace
        stop.set()

    def retire() -> None:
        # Replaced by a reload: what this worker already serves may run on much longer.
        if not stop.is_set():
            grace["seconds"] = config.global_.reload_grace
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown)
    loop.add_signal_handler(signal.SIGQUIT, retire)
    log.debug("worker %d serving", os.getpid())

    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), TICK)
        except TimeoutError:
            pass
        runtime.expire_idle(loop.time())
        if os.getppid() != parent:
            log.warning("main process is gone; worker %d stops", os.getpid())
            break

    # Graceful stop: no new connections; busy ones finish (their last response says
    # Connection: close); idle ones close. A SIGTERM while retiring shortens the wait.
    started = loop.time()
    for server in servers:
        server.close()
    for conn in list(registry):
        conn.drain()
    while registry and loop.time() < started + grace["seconds"]:
        await asyncio.sleep(0.05)
        runtime.expire_idle(loop.time())
    if registry:
        log.warning("grace period over: closing %d connections", len(registry))
        for conn in list(registry):
            conn.abort_now()
    runtime.close_idle()
    return 0
