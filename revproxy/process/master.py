"""The main process: listening sockets, worker processes, signals.

It binds every listener once, and every worker accepts from that one socket:
a new connection goes to whichever worker takes it first, so a busy worker
leaves it to an idle one (separate SO_REUSEPORT sockets would hash it to a
worker whatever that worker is doing, and with few connections leave one
worker most of them). It keeps the sockets open until it is told to stop: a
worker that dies or is replaced on reload leaves the others accepting, and no
listening socket ever closes, so no connection attempt is refused. On stop
they close at once, so the ports refuse new connections while the workers
finish what they have. The main process runs no event loop; it waits for
signals synchronously (they are blocked and taken with sigtimedwait).

Signals: SIGTERM/SIGINT stop gracefully; SIGHUP reloads the configuration
(validated first; a bad one is reported and the running one kept).

When the configuration has an admin server or active health checks, a control
process runs next to the workers (process/control.py). Everything that links
it to the workers is made here before forking: the shared state region and
the workers' statistics socket; a new configuration and each reload's result
reach it over a socket of its own. It is restarted when it dies.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import sys
import time
from dataclasses import dataclass

from revproxy import native
from revproxy.config.load import ConfigError, load_config
from revproxy.config.model import Config, ListenerConfig
from revproxy.control.view import ReloadRecord
from revproxy.process.control import ControlProcess, control_needed, run_control, send_message
from revproxy.process.shared import SharedState
from revproxy.process.worker import WorkerLinks, run_worker
from revproxy.tls.certificates import TLSConfigError
from revproxy.tls.context import build_listener_context, build_pool_context

log = logging.getLogger("revproxy.main")

_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT}
_RESTART_BACKOFF = 1.0  # a worker that dies sooner than this after start waits this long


def worker_count(config: Config) -> int:
    return config.global_.workers or os.cpu_count() or 1


def prepare(config: Config) -> dict[str, ssl.SSLContext]:
    """Build what a worker would build from `config`, so errors surface before forking.

    Returns the listeners' TLS contexts by name. The workers forked afterwards share them,
    and with them one set of session ticket keys: a client resumes its session on any
    worker. (The keys are made when a context is, so a reload changes them.)
    """
    contexts = {}
    for listener in config.listeners:
        if listener.tls:
            contexts[listener.name] = build_listener_context(listener)
    for pool in config.pools:
        if pool.tls:
            build_pool_context(pool)
    return contexts


def _bind(listener: ListenerConfig, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((listener.host, port))
        sock.listen(listener.backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class _Listening:
    """One listener's socket, which every worker accepts from."""

    key: tuple[str, int]
    sock: socket.socket

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])


class Master:
    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self.config: Config | None = None
        self.contexts: dict[str, ssl.SSLContext] = {}  # the listeners' TLS contexts, by name
        self.listening: dict[str, _Listening] = {}
        self.workers: dict[int, tuple[int, float]] = {}  # pid -> (slot, started)
        self.retiring: set[int] = set()
        self.stopping = False
        self.generation = 0  # configurations loaded: 1 after start, +1 per good reload
        self.reloads = ReloadRecord()
        # Links to the control process, made before the first fork.
        self.shared: SharedState | None = None
        self.stats_rx: socket.socket | None = None
        self.stats_tx: socket.socket | None = None
        self.control: int | None = None  # its pid
        self.control_started = 0.0
        self.control_channel: socket.socket | None = None
        self.control_stopping: set[int] = set()

    # ------------------------------------------------------------------ sockets

    def _open_sockets(self, config: Config) -> dict[str, _Listening]:
        """Sockets for `config`, reusing those already bound to the same address."""
        # A listener keeps its sockets when its address is unchanged; one on "any free
        # port" (port 0) keeps them when its name and host are unchanged.
        reused: dict[object, _Listening] = {}
        for name, old in self.listening.items():
            reused[old.key if old.key[1] else (name, old.key[0])] = old
        result: dict[str, _Listening] = {}
        try:
            for listener in config.listeners:
                key = (listener.host, listener.port)
                listening = reused.pop(
                    key if listener.port else (listener.name, listener.host), None
                )
                if listening is None:
                    listening = _Listening(key, _bind(listener, listener.port))
                port = listening.port
                result[listener.name] = listening
                log.info(
                    "listener %s on %s:%d (%s)",
                    listener.name,
                    listener.host,
                    port,
                    "tls" if listener.tls else "plain",
                )
        except OSError:
            for name, listening in result.items():
                if self.listening.get(name) is not listening:
                    listening.sock.close()
            raise
        return result

    # ------------------------------------------------------------------ workers

    def _spawn(self, slot: int) -> None:
        assert self.config is not None
        sockets = {name: s.sock for name, s in self.listening.items()}
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _reset_signals()
                for link in (self.stats_rx, self.control_channel):
                    if link is not None:
                        link.close()
                # Without a control process nobody reads statistics or publishes state.
                linked = control_needed(self.config)
                links = WorkerLinks(
                    self.generation,
                    self.stats_tx if linked else None,
                    self.shared if linked else None,
                )
                code = run_worker(self.config, sockets, parent, links, self.contexts)
            except BaseException:
                log.exception("worker failed")
            finally:
                logging.shutdown()
                os._exit(code)
        self.workers[pid] = (slot, time.monotonic())

    # ------------------------------------------------------------------ control process

    def _ports(self) -> dict[str, int]:
        return {name: listening.port for name, listening in self.listening.items()}

    def _spawn_control(self) -> None:
        assert self.config is not None and self.shared is not None
        assert self.stats_rx is not None and self.stats_tx is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        parent = os.getpid()
        ports = self._ports()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _reset_signals()
                ours.close()
                self.stats_tx.close()
                if self.control_channel is not None:
                    self.control_channel.close()
                for listening in self.listening.values():
                    listening.sock.close()
                process = ControlProcess(
                    self.config,
                    self.generation,
                    ports,
                    self.reloads,
                    theirs,
                    self.stats_rx,
                    self.shared,
                    parent,
                )
                code = run_control(process)
            except BaseException:
                log.exception("control process failed")
            finally:
                logging.shutdown()
                os._exit(code)
        theirs.close()
        ours.settimeout(5.0)
        if self.control_channel is not None:
            self.control_channel.close()
        self.control_channel = ours
        self.control = pid
        self.control_started = time.monotonic()

    def _stop_control(self) -> None:
        if self.control is not None:
            self._signal_workers([self.control], signal.SIGTERM)
            self.control_stopping.add(self.control)
            self.control = None
        if self.control_channel is not None:
            self.control_channel.close()
            self.control_channel = None

    def _tell_control(self, kind: str, payload: dict[str, object]) -> None:
        if self.control_channel is not None and not send_message(
            self.control_channel, kind, payload
        ):
            # It is stuck or gone: a new one starts from the current state.
            if self.control is not None:
                self._signal_workers([self.control], signal.SIGKILL)
                self.control_stopping.add(self.control)
                self.control = None
            if self.config is not None and control_needed(self.config) and not self.stopping:
                self._spawn_control()

    def _signal_workers(self, pids: set[int] | list[int], sig: int) -> None:
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.control_stopping:
                self.control_stopping.discard(pid)
                continue
            if pid == self.control:
                self.control = None
                if not self.stopping:
                    log.error(
                        "control process %d exited (%s); starting a new one", pid, _describe(status)
                    )
                    if time.monotonic() - self.control_started < _RESTART_BACKOFF:
                        time.sleep(_RESTART_BACKOFF)
                    self._spawn_control()
                continue
            info = self.workers.pop(pid, None)
            if pid in self.retiring:
                self.retiring.discard(pid)
                continue
            if info is None or self.stopping:
                continue
            slot, started = info
            log.error(
                "worker %d (slot %d) exited unexpectedly (%s); starting a new one",
                pid,
                slot,
                _describe(status),
            )
            if time.monotonic() - started < _RESTART_BACKOFF:
                time.sleep(_RESTART_BACKOFF)
            self._spawn(slot)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        config = load_config(self.config_path)
        self.contexts = prepare(config)
        self.config = config
        self.listening = self._open_sockets(config)
        self.generation = 1
        self.shared = SharedState()
        self.stats_rx, self.stats_tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.stats_tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        except OSError:
            pass
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        if control_needed(config):
            self._spawn_control()
        for slot in range(worker_count(config)):
            self._spawn(slot)
        log.info(
            "revproxy started: %d workers, pid %d, %s",
            len(self.workers),
            os.getpid(),
            native.describe(),
        )

    def reload(self) -> bool:
        """Load and check the configuration again; switch to it only if it is good."""
        try:
            config = load_config(self.config_path)
            contexts = prepare(config)
            count = worker_count(config)
            listening = self._open_sockets(config)
        except (ConfigError, TLSConfigError, OSError, ValueError) as exc:
            log.error("reload refused, the running configuration stays:\n%s", exc)
            self._reloaded(False, str(exc))
            return False
        old_listening = self.listening
        kept = {id(s) for s in listening.values()}
        old_workers = set(self.workers)
        self.config = config
        self.contexts = contexts
        self.listening = listening
        self.generation += 1
        if control_needed(config):
            if self.control is None:
                self._spawn_control()  # it starts from the new configuration
            else:
                self._tell_control(
                    "config",
                    {"config": config, "generation": self.generation, "ports": self._ports()},
                )
        else:
            self._stop_control()
        # Sockets no longer listened on close before the new workers are forked, or those
        # would inherit them: a removed listener's port would then take connections that
        # nobody accepts, instead of refusing them. (The old workers hold their own copies
        # until SIGQUIT tells them to stop accepting.)
        for name, s in old_listening.items():
            if id(s) not in kept:
                log.info("listener %s closed", name)
                s.sock.close()
        for slot in range(count):
            self._spawn(slot)
        self.retiring |= old_workers
        # SIGQUIT: stop accepting and finish what is open, within reload_grace.
        self._signal_workers(old_workers, signal.SIGQUIT)
        log.info("configuration reloaded: %d workers", count)
        self._reloaded(True, "")
        return True

    def _reloaded(self, ok: bool, error: str) -> None:
        record = self.reloads
        if ok:
            record.ok += 1
        else:
            record.failed += 1
        record.last_ok, record.last_error, record.last_time = ok, error, time.time()
        self._tell_control("reload", {"ok": ok, "error": error, "time": record.last_time})

    def run(self) -> int:
        """Wait for signals until stopped; returns the exit status."""
        while True:
            info = signal.sigtimedwait(_SIGNALS, 1.0)
            if info is None:
                self._reap()
                continue
            sig = info.si_signo
            if sig == signal.SIGCHLD:
                self._reap()
            elif sig == signal.SIGHUP:
                self.reload()
            elif sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                return self.stop()

    def stop(self) -> int:
        self.stopping = True
        log.info("stopping: waiting for workers to finish their requests")
        everyone = set(self.workers) | self.retiring
        if self.control is not None:
            everyone.add(self.control)
            self.control = None
        everyone |= self.control_stopping
        self._signal_workers(everyone, signal.SIGTERM)
        # The workers close their copies of the listening sockets on the signal; ours go now
        # too, not after the grace period: a socket still open here stays in the port's
        # SO_REUSEPORT group, and the kernel would keep queueing connections on it that
        # nobody accepts (a new instance on the same port would lose them).
        self._close_listening()
        grace = self.config.global_.shutdown_grace if self.config else 30.0
        deadline = time.monotonic() + grace + 5.0
        while everyone and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                everyone.discard(pid)
            else:
                signal.sigtimedwait({signal.SIGCHLD}, 0.2)
        if everyone:
            log.warning("workers still running after the grace period: killing them")
            self._signal_workers(everyone, signal.SIGKILL)
        log.info("stopped")
        return 0

    def _close_listening(self) -> None:
        for listening in self.listening.values():
            listening.sock.close()


def _reset_signals() -> None:
    """In a new child: default handling of the signals the main process blocks and takes."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"status {os.waitstatus_to_exitcode(status)}"


def serve(config_path: str, pid_file: str | None = None) -> int:
    """Run the proxy in the foreground; the return value is the process exit status.

    With `pid_file`, the main process's pid is written there once it listens (for
    `revproxy reload --pid-file`) and removed when it stops.
    """
    master = Master(config_path)
    try:
        master.start()
    except (ConfigError, TLSConfigError) as exc:
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"revproxy: cannot listen: {exc}", file=sys.stderr)
        return 2
    if pid_file:
        try:
            with open(pid_file, "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError as exc:
            log.error("cannot write the pid file %s: %s", pid_file, exc)
            pid_file = None
    try:
        return master.run()
    finally:
        if pid_file:
            try:
                os.unlink(pid_file)
            except OSError:
                pass
