"""A worker process: one event loop serving every listener, on the sockets all workers share.

The main process binds the listening sockets and every worker accepts from the
same ones, so a worker never binds anything and a reload or a restarted worker
never closes a listening socket. Stopping is a sequence: stop accepting, let
busy connections finish their exchange (the last response says Connection:
close), close idle ones, wait up to the grace period, then cut what is left.

Once a second a worker also applies the server state the control process
published (health, enable/disable/drain), sends its statistics' totals to the
control process, and writes its access-log lines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import uvloop

from revproxy.config.model import Config
from revproxy.control.accesslog import AccessLog
from revproxy.process.shared import (
    SharedState,
    any_pending,
    apply_server_state,
    config_server_state,
)
from revproxy.proxy.client import ClientConnection
from revproxy.proxy.proxied import ProxyProtocolServer
from revproxy.proxy.runtime import Runtime
from revproxy.proxy.stats import WorkerStats
from revproxy.proxy.tlslayer import TLSLayer

log = logging.getLogger("revproxy.worker")

TICK = 1.0  # seconds between housekeeping rounds (idle server connections, parent alive)
STATE_POLL = 0.1  # seconds between looks at the server state the control process publishes


@dataclass
class WorkerLinks:
    """What connects a worker to the control process; made by the main process."""

    generation: int = 0
    stats: socket.socket | None = None  # datagrams to the control process
    shared: SharedState | None = None  # server state the control process publishes


class Reporter:
    """Statistics and events to the control process, the access log to its output."""

    def __init__(self, config: Config, links: WorkerLinks) -> None:
        self.links = links
        self.started = time.time()
        self.listening = False
        self._warned = False
        if links.stats is not None:
            links.stats.setblocking(False)
        self.stats = WorkerStats(
            access_log=config.access_log.enabled,
            events=self._send if links.stats is not None else None,
        )
        self.access: AccessLog | None = None
        self._draining = False  # a slice of the access log is due on the event loop
        if config.access_log.enabled:
            try:
                self.access = AccessLog(config.access_log)
            except OSError as exc:
                log.error("access log %s cannot be opened: %s", config.access_log.path, exc)
                self.stats.access_log = None

    def _send(self, message: dict[str, Any]) -> None:
        sock = self.links.stats
        if sock is None:
            return
        try:
            sock.send(json.dumps(message, separators=(",", ":")).encode())
        except (BlockingIOError, ConnectionRefusedError, TimeoutError):
            pass  # the control process is busy or restarting; totals go again next second
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("statistics not sent: %s", exc)

    def report(self, runtime: Runtime, loop: asyncio.AbstractEventLoop, final: bool) -> None:
        """Write the access log gathered so far and send the totals (never raises)."""
        try:
            self._report(runtime, loop, final)
        except Exception:
            if not self._warned:
                self._warned = True
                log.exception("statistics report failed")

    def _report(self, runtime: Runtime, loop: asyncio.AbstractEventLoop, final: bool) -> None:
        if self.access is not None:
            lost, why = self.access.take_lost()
            if lost:
                log.warning("access log: %d lines could not be written: %s", lost, why)
            entries = self.stats.take_access_log()
            if final:
                self.access.write(entries, time.time() - loop.time())
            elif entries:
                self.access.add(entries, time.time() - loop.time())
                if not self._draining:
                    self._draining = True
                    loop.call_soon(self._drain_access_log, loop)
        if self.links.stats is None:
            return
        snapshot = self.stats.snapshot()
        active: list[list[Any]] = []
        idle: list[list[Any]] = []
        for pool in runtime.pools.values():
            for server in pool.servers:
                active.append([pool.name, server.name, server.active])
        for ep in runtime.endpoints:
            idle.append([ep.pool_config.name, ep.server.name, len(ep.idle)])
        snapshot["gauges"]["server_active"] = active
        snapshot["gauges"]["server_idle"] = idle
        if final:
            # The last totals of this worker must arrive: wait a little if the queue is full.
            self.links.stats.settimeout(1.0)
        self._send(
            {
                "pid": os.getpid(),
                "generation": self.links.generation,
                "started": self.started,
                "listening": self.listening and not final,
                "final": final,
                "stats": snapshot,
            }
        )

    def _drain_access_log(self, loop: asyncio.AbstractEventLoop) -> None:
        # A slice per turn of the loop: a second's lines (thousands at full load) written
        # at once would hold every connection of this worker up for tens of milliseconds.
        assert self.access is not None
        more = False
        try:
            more = self.access.drain_slice()
        except Exception:
            log.exception("access log: %d lines lost", self.access.discard())
        if more:
            loop.call_soon(self._drain_access_log, loop)
        else:
            self._draining = False

    def close(self) -> None:
        if self.access is not None:
            self.access.close()


def apply_shared_state(runtime: Runtime, shared: SharedState | None, initial: bool) -> None:
    """Server state from the configuration (at start), then as the control process says."""
    if initial:
        apply_server_state(runtime, config_server_state(runtime.config))
    if shared is None:
        return
    document = shared.read() if initial else shared.read_if_changed()
    if document and isinstance(document.get("servers"), dict):
        if apply_server_state(runtime, document["servers"]):
            log.debug("worker %d: server state applied", os.getpid())


class UnraisableLog:
    """Errors Python can only report as "ignored" (sys.unraisablehook), as log lines.

    An exception inside a TLS callback is one: a client sending a server name that is not
    ASCII fails in the ssl module before the proxy's own callback runs. Each would print
    a traceback on stderr, outside the log's levels, as often as clients send it; here it
    is one warning, and for each kind of error at most one a minute after that, with the
    count of those not reported.
    """

    EVERY = 60.0

    def __init__(self) -> None:
        # exception type name -> (when last reported, how many since)
        self._kinds: dict[str, tuple[float, int]] = {}

    def __call__(self, info: Any) -> None:
        now = time.monotonic()
        exc = info.exc_value
        kind = type(exc).__name__ if exc is not None else "?"
        last, quiet = self._kinds.get(kind, (-self.EVERY, 0))
        if now - last < self.EVERY:
            self._kinds[kind] = (last, quiet + 1)
            return
        where = f" in {info.object!r}" if info.object is not None else ""
        more = f" ({quiet} more since the last report)" if quiet else ""
        log.warning("error ignored%s: %s: %s%s", where, kind, exc, more)
        self._kinds[kind] = (now, 0)


async def first_checks(config: Config, shared: SharedState | None) -> None:
    """Wait until the servers that start down have had their first check, or a timeout.

    Such a server takes traffic once a check passed: serving before the first results
    are known would answer 503 for a pool whose servers are all fine. The wait is bounded
    by the longest check timeout (plus a second); connections wait in the listening
    socket's backlog meanwhile. After a reload, servers that remain keep their state and
    nothing is waited for.
    """
    pools = [p for p in config.pools if p.health.type != "none" and p.health.start_down]
    if shared is None or not pools:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(p.health.timeout for p in pools) + 1.0
    while any_pending(shared.read()) is not False:
        if loop.time() >= deadline:
            log.info("worker %d: serving before every server's first health check", os.getpid())
            return
        await asyncio.sleep(0.02)


def run_worker(
    config: Config,
    sockets: dict[str, socket.socket],
    parent: int,
    links: WorkerLinks | None = None,
    contexts: Mapping[str, ssl.SSLContext] | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT (graceful) or until the main process is gone.

    `contexts`: the listeners' TLS contexts, built by the main process before forking.
    """
    sys.unraisablehook = UnraisableLog()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve(config, sockets, parent, links or WorkerLinks(), contexts))


async def _serve(
    config: Config,
    sockets: dict[str, socket.socket],
    parent: int,
    links: WorkerLinks,
    contexts: Mapping[str, ssl.SSLContext] | None,
) -> int:
    reporter = Reporter(config, links)
    try:
        return await _serve_with(config, sockets, parent, links, reporter, contexts)
    finally:
        reporter.close()


async def _serve_with(
    config: Config,
    sockets: dict[str, socket.socket],
    parent: int,
    links: WorkerLinks,
    reporter: Reporter,
    contexts: Mapping[str, ssl.SSLContext] | None,
) -> int:
    loop = asyncio.get_running_loop()
    await first_checks(config, links.shared)
    runtime = Runtime(config, loop, stats=reporter.stats, listener_contexts=contexts)
    apply_shared_state(runtime, links.shared, initial=True)
    registry: set[ClientConnection] = set()
    servers: list[asyncio.AbstractServer | ProxyProtocolServer] = []
    for listener in runtime.listeners.values():
        if listener.config.proxy_protocol:
            # TLS starts after the PROXY header (ProxyProtocolServer puts the layer on).

            def factory(listener=listener) -> ClientConnection:  # type: ignore[no-untyped-def]
                return ClientConnection(listener, registry)

            servers.append(ProxyProtocolServer(loop, sockets[listener.name], listener, factory))
            continue
        if listener.ssl_context is not None:

            def accept(listener=listener) -> asyncio.Protocol:  # type: ignore[no-untyped-def]
                return TLSLayer(listener, ClientConnection(listener, registry))

        else:

            def accept(listener=listener) -> asyncio.Protocol:  # type: ignore[no-untyped-def]
                return ClientConnection(listener, registry)

        server = await loop.create_server(
            accept, sock=sockets[listener.name], backlog=listener.config.backlog
        )
        servers.append(server)
    reporter.listening = True
    reporter.report(runtime, loop, final=False)

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

    async def follow_state() -> None:
        # A version number in shared memory: looking is cheap, so a health or admin
        # change reaches every worker within a tenth of a second.
        while True:
            await asyncio.sleep(STATE_POLL)
            apply_shared_state(runtime, links.shared, initial=False)

    follower = loop.create_task(follow_state()) if links.shared is not None else None

    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), TICK)
        except TimeoutError:
            pass
        runtime.expire_idle(loop.time())
        apply_shared_state(runtime, links.shared, initial=False)
        reporter.report(runtime, loop, final=False)
        if os.getppid() != parent:
            log.warning("main process is gone; worker %d stops", os.getpid())
            break

    # Graceful stop: no new connections; busy ones finish (their last response says
    # Connection: close); idle ones close. A SIGTERM while retiring shortens the wait.
    started = loop.time()
    listeners = list(runtime.listeners.values())
    for listener in listeners:
        listener.draining = True
    for accepting in servers:
        accepting.close()
    # A connection accepted just before the close meets its protocol on the next turn of
    # the loop; a TLS one only once its handshake completes. Both are waited for too.
    await asyncio.sleep(0)
    for conn in list(registry):
        conn.drain()
    reporter.listening = False
    next_report = loop.time() + TICK

    proxied = [s for s in servers if isinstance(s, ProxyProtocolServer)]

    def busy() -> bool:
        return (
            bool(registry)
            or any(listener.tls_handshaking for listener in listeners)
            or any(s.pending for s in proxied)
        )

    while busy() and loop.time() < started + grace["seconds"]:
        await asyncio.sleep(0.05)
        runtime.expire_idle(loop.time())
        if loop.time() >= next_report:
            # Draining for a long time (reload_grace): still counted and logged.
            next_report = loop.time() + TICK
            apply_shared_state(runtime, links.shared, initial=False)
            reporter.report(runtime, loop, final=False)
    if follower is not None:
        follower.cancel()
    for accepting in proxied:
        accepting.abort()
    if registry:
        log.warning("grace period over: closing %d connections", len(registry))
        for conn in list(registry):
            conn.abort_now()
    runtime.close_idle()
    reporter.report(runtime, loop, final=True)
    return 0
