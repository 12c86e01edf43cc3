"""The control process: one per proxy, next to the workers.

It runs the admin server, the health monitor (one set of probes however many
workers there are), the sum of the workers' statistics, and publishes server
state to the workers through shared memory. Its links, all made by the main
process before forking:

- a stream socket from the main process carrying length-prefixed pickled
  messages: ("config", {"config", "generation", "ports"}) after each good reload
  and ("reload", {"ok", "error", "time"}) after each attempt;
- the receiving end of the workers' datagram socket: JSON snapshots once a
  second per worker, and passive-health events as they happen;
- the shared state region it writes.

It holds no listening socket of the proxy, so it can die and be restarted
without any effect on traffic.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import os
import pickle
import signal
import socket
import struct
import time
from typing import Any

import uvloop

from revproxy.config.model import Config
from revproxy.control.admin import AdminServer
from revproxy.control.view import ControlView, ReloadRecord
from revproxy.process.shared import SharedState

log = logging.getLogger("revproxy.control")

TICK = 1.0
RELOAD_WAIT = 60.0  # longest an API reload waits for the main process's answer
_FRAME = struct.Struct("<I")


# ---------------------------------------------------------------------- main-process side


def send_message(sock: socket.socket, kind: str, payload: dict[str, Any]) -> bool:
    """Send one message to the control process (blocking, with the socket's timeout)."""
    data = pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
    try:
        sock.sendall(_FRAME.pack(len(data)) + data)
    except (OSError, TimeoutError) as exc:
        log.error("cannot reach the control process: %s", exc)
        return False
    return True


def health_monitor_class() -> Any:
    """The health monitor's class, or None while revproxy.balance.health lacks it."""
    try:
        module = importlib.import_module("revproxy.balance.health")
    except ImportError:
        return None
    return getattr(module, "HealthMonitor", None)


def control_needed(config: Config) -> bool:
    """A control process runs when there is an admin server or active health checks."""
    if config.admin.enabled:
        return True
    return health_monitor_class() is not None and any(p.health.type != "none" for p in config.pools)


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


# ---------------------------------------------------------------------- the process


class ControlProcess:
    def __init__(
        self,
        config: Config,
        generation: int,
        ports: dict[str, int],
        reloads: ReloadRecord,
        channel: socket.socket,
        stats: socket.socket,
        shared: SharedState,
        main_pid: int,
    ) -> None:
        self.view = ControlView(config, main_pid, generation, ports, reloads=reloads)
        self.channel = channel
        self.stats = stats
        self.shared = shared
        self.main_pid = main_pid
        self.stop = asyncio.Event()
        self.admin = AdminServer(self.view, self.request_reload, self.publish)
        self.monitor: Any = None
        self._buffer = b""
        self._published = ""
        self._reload_waiters: list[asyncio.Future[dict[str, Any]]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._messages: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    # ------------------------------------------------------------------ state out

    def publish(self) -> None:
        """Write the server state to shared memory when it changed."""
        document = self.view.server_state()
        text = json.dumps(document, sort_keys=True)
        if text != self._published and self.shared.publish(document):
            self._published = text

    # ------------------------------------------------------------------ health

    async def _start_monitor(self) -> None:
        cls = health_monitor_class()
        if cls is None:
            return
        try:
            self.monitor = cls(
                self.view.config, self._health_changed, on_first_result=self._health_changed
            )
            await _maybe_await(self.monitor.start())
        except Exception:
            log.exception("health monitor failed to start; running without health checks")
            self.monitor = None
            return
        await self._refresh_health()

    def _health_changed(self, *args: Any, **kwargs: Any) -> None:
        self._spawn(self._refresh_health())

    async def _refresh_health(self) -> None:
        if self.monitor is None:
            return
        try:
            snapshot = await _maybe_await(self.monitor.snapshot())
        except Exception:
            log.exception("health monitor snapshot failed")
            return
        self.view.set_health(snapshot)
        self.publish()

    def _passive(self, event: dict[str, Any]) -> None:
        if self.monitor is None:
            return
        pool, server = str(event["pool"]), str(event["server"])
        failed = event.get("event") == "failure"
        method = "passive_failure" if failed else "passive_success"
        try:
            if failed:
                result = self.monitor.passive_failure(pool, server, str(event.get("kind", "")))
            else:
                result = self.monitor.passive_success(pool, server)
        except Exception:
            log.exception("health monitor %s failed", method)
            return
        if inspect.isawaitable(result):
            self._spawn(result)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ messages in

    def _on_channel(self) -> None:
        try:
            data = self.channel.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            log.info("main process closed its channel; control process stops")
            self.stop.set()
            return
        self._buffer += data
        while len(self._buffer) >= _FRAME.size:
            (length,) = _FRAME.unpack_from(self._buffer)
            if len(self._buffer) < _FRAME.size + length:
                break
            frame = self._buffer[_FRAME.size : _FRAME.size + length]
            self._buffer = self._buffer[_FRAME.size + length :]
            self._messages.put_nowait(pickle.loads(frame))

    async def _consume(self) -> None:
        # One at a time, in order: a reload's "config" is applied before its "reload".
        while True:
            kind, payload = await self._messages.get()
            try:
                await self._handle(kind, payload)
            except Exception:
                log.exception("control message %s failed", kind)

    async def _handle(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == "config":
            config: Config = payload["config"]
            self.view.set_config(config, payload["generation"], payload["ports"])
            if self.monitor is not None:
                try:
                    await _maybe_await(self.monitor.update(config))
                except Exception:
                    log.exception("health monitor update failed")
                await self._refresh_health()
            await self.admin.apply(config.admin)
            self.publish()
        elif kind == "reload":
            record = self.view.reloads
            if payload["ok"]:
                record.ok += 1
            else:
                record.failed += 1
            record.last_ok = bool(payload["ok"])
            record.last_error = str(payload.get("error", ""))
            record.last_time = float(payload.get("time", time.time()))
            waiters, self._reload_waiters = self._reload_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(
                        {
                            "ok": record.last_ok,
                            "error": record.last_error,
                            "generation": self.view.generation,
                            "reloads": record.as_dict(),
                        }
                    )

    def _on_stats(self) -> None:
        for _ in range(256):
            try:
                data = self.stats.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                return
            try:
                message = json.loads(data)
                if "event" in message:
                    self._passive(message)
                else:
                    self.view.stats.receive(message)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("bad statistics message ignored: %s", exc)

    # ------------------------------------------------------------------ API actions

    async def request_reload(self) -> dict[str, Any]:
        """Ask the main process to reload (SIGHUP) and wait for its answer."""
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._reload_waiters.append(waiter)
        try:
            os.kill(self.main_pid, signal.SIGHUP)
        except OSError as exc:
            self._reload_waiters.remove(waiter)
            return {"ok": False, "error": f"cannot signal the main process: {exc}"}
        try:
            return await asyncio.wait_for(waiter, RELOAD_WAIT)
        except TimeoutError:
            return {"ok": False, "error": "the main process did not answer"}

    # ------------------------------------------------------------------ the loop

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            loop.add_signal_handler(sig, self.stop.set)
        self.channel.setblocking(False)
        self.stats.setblocking(False)
        loop.add_reader(self.channel.fileno(), self._on_channel)
        loop.add_reader(self.stats.fileno(), self._on_stats)
        self._spawn(self._consume())
        # The first state published already has the health checks' view (servers that
        # start down are pending until their first check): workers wait for it.
        await self._start_monitor()
        self.publish()
        await self.admin.apply(self.view.config.admin)
        while not self.stop.is_set():
            try:
                await asyncio.wait_for(self.stop.wait(), TICK)
            except TimeoutError:
                pass
            self.view.stats.prune()
            self.view.sample_rates()
            self.publish()
            if os.getppid() != self.main_pid:
                log.warning("main process is gone; control process stops")
                break
        loop.remove_reader(self.channel.fileno())
        loop.remove_reader(self.stats.fileno())
        await self.admin.stop()
        if self.monitor is not None:
            try:
                await _maybe_await(self.monitor.stop())
            except Exception:
                log.exception("health monitor stop failed")
        for task in list(self._tasks):
            task.cancel()
        return 0


def run_control(process: ControlProcess) -> int:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads go to the main process
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(process.run())
