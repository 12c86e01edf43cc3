"""Active health checks and the monitor that runs them.

A probe is one attempt: TCP connect, or an HTTP(S) request whose status line
and headers are read (the body never is), all within the check's timeout, so
a server that accepts and then says nothing cannot hold a probe longer than
that. The verdict logic lives in health_state.py; this module is the I/O.

`HealthMonitor` runs one probe loop per server of every pool with checks. It
is meant to run once per proxy (in the control process), so a server sees one
set of probes however many workers serve traffic; workers learn the verdicts
through `on_change`. Loops start at a random offset and each interval carries
a little random jitter, so a pool's servers are not probed in lockstep.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import re
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from revproxy.balance.health_state import Change, HealthState, StateKey, carry_over
from revproxy.config.model import Config, PoolConfig, ServerConfig
from revproxy.http.proxyproto import build as build_header
from revproxy.http.proxyproto import local as local_header
from revproxy.tls.context import build_pool_context, server_hostname

log = logging.getLogger("revproxy.health")

JITTER = 0.1  # +-10% on every interval after the first check
MAX_RESPONSE_HEAD = 16384  # a check response head longer than this fails the check
CLOSE_WAIT = 1.0  # how long a TLS close may take before the connection is cut
_STATUS_LINE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: [^\r\n]*)?\r?\n")
_PATH_OK = re.compile(r"/[\x21-\x7e]*")


# ------------------------------------------------------------------------ expectations


def parse_expect(expect: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """("200-299", "301") -> ((200, 299), (301, 301)); raises ValueError on bad entries."""
    ranges = []
    for item in expect:
        low, dash, high = item.partition("-")
        try:
            first = int(low)
            last = int(high) if dash else first
        except ValueError:
            raise ValueError(f"expected status {item!r} is not a status or a range") from None
        if not 100 <= first <= last <= 599:
            raise ValueError(f"expected status {item!r} is not within 100-599")
        ranges.append((first, last))
    return tuple(ranges)


def status_expected(status: int, ranges: Sequence[tuple[int, int]]) -> bool:
    return any(low <= status <= high for low, high in ranges)


# ------------------------------------------------------------------------------ probes


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    detail: str  # "HTTP 200", "connect refused to 10.0.0.5:4443", "timeout after 4.0 s: ..."
    duration: float  # seconds


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """Everything one server's probes need, worked out once."""

    kind: str  # "tcp", "http" or "https"
    host: str
    port: int
    address: str  # host:port as shown in messages
    timeout: float
    request: bytes = b""  # http and https
    expect: tuple[tuple[int, int], ...] = ()
    expect_text: str = ""
    ssl: ssl.SSLContext | None = None
    server_hostname: str | None = None
    # "v1"/"v2": a PROXY protocol header goes first, before TLS, as on the pool's own
    # connections ("" = none).
    proxy_protocol: str = ""


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_ssl_context(pool: PoolConfig) -> ssl.SSLContext:
    """The client context for https checks: the check's CA (else the pool's) and verify."""
    health = pool.health
    return build_pool_context(
        dataclasses.replace(pool, ca=health.ca or pool.ca, verify=health.verify)
    )


def probe_target(
    pool: PoolConfig, server: ServerConfig, ssl_context: ssl.SSLContext | None = None
) -> ProbeTarget:
    """The probe for `server` under `pool.health`; https builds a context unless given one.

    Raises ValueError (or the TLS layer's errors) when the check cannot be set up.
    """
    health = pool.health
    port = health.port or server.port
    address = _address(server.host, port)
    # Where requests go, a PROXY header is expected: a check sends one too.
    proxy = pool.proxy_protocol if _sends_proxy(pool, server, port) else ""
    if health.type == "tcp":
        return ProbeTarget("tcp", server.host, port, address, health.timeout, proxy_protocol=proxy)
    if health.type not in ("http", "https"):
        raise ValueError(f"no probe for health check type {health.type!r}")
    if not _PATH_OK.fullmatch(health.path):
        raise ValueError(f"health check path {health.path!r} is not a plain request target")
    host_header = health.host or address
    if not _PATH_OK.fullmatch("/" + host_header):
        raise ValueError(f"health check host {host_header!r} is not a plain host name")
    request = (
        f"{health.method} {health.path} HTTP/1.1\r\n"
        f"Host: {host_header}\r\n"
        "User-Agent: revproxy-health-check\r\n"
        "Accept: */*\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    tls = health.type == "https"
    if tls and ssl_context is None:
        ssl_context = check_ssl_context(pool)
    return ProbeTarget(
        health.type,
        server.host,
        port,
        address,
        health.timeout,
        request,
        parse_expect(health.expect),
        ",".join(health.expect),
        ssl_context if tls else None,
        server_hostname(pool, server) if tls else None,
        proxy,
    )


def _sends_proxy(pool: PoolConfig, server: ServerConfig, port: int) -> bool:
    return pool.proxy_protocol != "off" and port == server.port


async def probe(target: ProbeTarget) -> ProbeResult:
    """Run one check; never raises (but cancellation) and never outlasts the timeout."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer: asyncio.StreamWriter | None = None
    phase = "connect to"
    try:
        async with asyncio.timeout(target.timeout):
            if target.proxy_protocol:
                reader, writer = await asyncio.open_connection(
                    target.host, target.port, limit=MAX_RESPONSE_HEAD
                )
                writer.write(_check_header(target.proxy_protocol, writer))
                if target.ssl is not None:
                    await writer.start_tls(target.ssl, server_hostname=target.server_hostname)
            else:
                reader, writer = await asyncio.open_connection(
                    target.host,
                    target.port,
                    ssl=target.ssl,
                    server_hostname=target.server_hostname,
                    limit=MAX_RESPONSE_HEAD,
                )
            if target.kind == "tcp":
                ok, detail = True, "TCP connect ok"
            else:
                phase = "no response from"
                writer.write(target.request)
                status = await _read_status(reader)
                if status_expected(status, target.expect):
                    ok, detail = True, f"HTTP {status}"
                else:
                    ok, detail = False, f"HTTP {status} not in expected {target.expect_text}"
    except TimeoutError:
        ok, detail = False, f"timeout after {float(target.timeout)} s: {phase} {target.address}"
    except ConnectionRefusedError:
        ok, detail = False, f"connect refused to {target.address}"
    except ssl.SSLCertVerificationError as exc:
        ok, detail = False, f"TLS certificate of {target.address} rejected: {exc.verify_message}"
    except ssl.SSLError as exc:
        ok, detail = False, f"TLS with {target.address} failed: {exc.reason or exc}"
    except ConnectionResetError:
        ok, detail = False, f"connection reset by {target.address}"
    except _BadResponse as exc:
        ok, detail = False, f"{exc} from {target.address}"
    except OSError as exc:
        ok, detail = False, f"{phase} {target.address} failed: {exc.strerror or exc}"
    except asyncio.CancelledError:
        if writer is not None:
            writer.transport.abort()
            writer = None
        raise
    except Exception as exc:  # anything else still makes a failed check, not a dead loop
        ok, detail = False, f"check of {target.address} failed: {exc!r}"
    finally:
        duration = loop.time() - started
        if writer is not None:
            await _close(writer)
    return ProbeResult(ok, detail, duration)


def _check_header(version: str, writer: asyncio.StreamWriter) -> bytes:
    """The PROXY header of a check: v2 says LOCAL (the proxy's own connection); v1 has
    no such word (UNKNOWN may be refused), so it names the check's own two ends."""
    if version == "v2":
        return local_header(version)
    return build_header(
        version, writer.get_extra_info("sockname"), writer.get_extra_info("peername")
    )


class _BadResponse(Exception):
    pass


async def _read_status(reader: asyncio.StreamReader) -> int:
    """The final status of the response; reads its head, never its body."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _BadResponse("connection closed before a response") from None
            head = exc.partial  # a head cut short still has a usable status line
        except asyncio.LimitOverrunError:
            raise _BadResponse("response head too large") from None
        match = _STATUS_LINE.match(head)
        if match is None:
            raise _BadResponse(f"not an HTTP response: {head[:40]!r}")
        status = int(match[3])
        # RFC 9110 section 15.2: interim 1xx responses precede the final one.
        if 100 <= status < 200 and status != 101 and head.endswith(b"\r\n\r\n"):
            continue
        return status


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        async with asyncio.timeout(CLOSE_WAIT):
            await writer.wait_closed()
    except asyncio.CancelledError:
        writer.transport.abort()
        raise
    except Exception:  # no TLS close_notify in time, or a reset while closing
        writer.transport.abort()


# ----------------------------------------------------------------------------- monitor


@dataclass(frozen=True, slots=True)
class ServerHealth:
    """What the status page and admin API show for one server of one pool."""

    up: bool
    checked: bool  # active checks run for it
    last_check_at: float | None  # wall-clock time of the last active check
    last_result: str
    last_duration: float | None  # seconds the last active check took
    successes: int  # consecutive
    failures: int  # consecutive
    passive_failures: int  # consecutive
    last_change_at: float | None  # wall-clock time of the last transition
    last_change_reason: str
    pending: bool = False  # down until its first check, which has not run yet


OnChange = Callable[[str, str, bool, str], None]  # (pool name, server address, up, reason)


class _Watch:
    """One server of one pool: its state and probe loop."""

    __slots__ = (
        "pool",
        "server",
        "state",
        "task",
        "last_check_at",
        "last_result",
        "last_duration",
        "last_change_at",
        "last_change_reason",
    )

    def __init__(self, pool: PoolConfig, server: ServerConfig, state: HealthState) -> None:
        self.pool = pool
        self.server = server
        self.state = state
        self.task: asyncio.Task[None] | None = None
        self.last_check_at: float | None = None
        self.last_result = "not checked yet" if pool.health.type != "none" else "not checked"
        self.last_duration: float | None = None
        self.last_change_at: float | None = None
        self.last_change_reason = ""

    @property
    def checked(self) -> bool:
        return self.pool.health.type != "none"

    def probe_settings(self) -> tuple[object, ...]:
        """What a probe depends on: a loop restarts on reload only when this changed."""
        return (_tls_settings(self.pool), self.pool.server_name, self.server.host, self.server.port)


def _tls_settings(pool: PoolConfig) -> tuple[object, ...]:
    return (pool.name, pool.health, pool.ca, pool.verify, pool.min_tls_version, pool.ciphers)


def _pending(watch: _Watch) -> bool:
    """Down until a first check, which has not had a result yet (state carried over a
    reload keeps its results)."""
    state = watch.state
    return watch.checked and state.awaiting_first and not (state.successes or state.failures)


class HealthMonitor:
    """Active checks for every server of a configuration, plus passive reports.

    `on_change(pool_name, server_address, up, reason)` is called once per transition,
    from the event loop; it should not block.
    """

    def __init__(
        self,
        config: Config,
        on_change: OnChange,
        *,
        rng: random.Random | None = None,
        on_first_result: Callable[[], None] | None = None,
    ) -> None:
        self._on_change = on_change
        # Called when a server's first check result changed nothing (a server that
        # starts down and fails it): it is no longer pending all the same.
        self._on_first_result = on_first_result
        self._rng = rng or random.Random()
        self._running = False
        self._stopping: set[asyncio.Task[None]] = set()
        self._watches: dict[StateKey, _Watch] = {}
        self._contexts: dict[tuple[object, ...], ssl.SSLContext] = {}  # one per pool
        self._config = config
        states = carry_over({}, config)
        for pool in config.pools:
            for server in pool.servers:
                key = (pool.name, server.address)
                self._watches[key] = _Watch(pool, server, states[key])

    # ---------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        for watch in self._watches.values():
            self._start_loop(watch)

    async def stop(self) -> None:
        self._running = False
        for watch in self._watches.values():
            self._stop_loop(watch)
        pending = list(self._stopping)
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._stopping.clear()

    def update(self, config: Config) -> None:
        """Switch to a new configuration; servers that remain keep their health state."""
        old = self._watches
        states = carry_over({k: w.state for k, w in old.items()}, config)
        watches: dict[StateKey, _Watch] = {}
        for pool in config.pools:
            for server in pool.servers:
                key = (pool.name, server.address)
                previous = old.pop(key, None)
                watch = _Watch(pool, server, states[key])
                if previous is not None:
                    watch.last_check_at = previous.last_check_at
                    watch.last_result = previous.last_result
                    watch.last_duration = previous.last_duration
                    watch.last_change_at = previous.last_change_at
                    watch.last_change_reason = previous.last_change_reason
                    if previous.task is not None and previous.probe_settings() == (
                        watch.probe_settings()
                    ):
                        watch.task, previous.task = previous.task, None
                        # The running loop reads its watch through the dict, by key.
                    else:
                        self._stop_loop(previous)
                watches[key] = watch
        for gone in old.values():
            self._stop_loop(gone)
        self._watches = watches
        self._config = config
        self._contexts.clear()  # a reload rereads CA files
        if self._running:
            for watch in watches.values():
                if watch.task is None:
                    self._start_loop(watch)

    def _start_loop(self, watch: _Watch) -> None:
        if watch.checked and watch.task is None:
            key = (watch.pool.name, watch.server.address)
            watch.task = asyncio.get_running_loop().create_task(
                self._loop(key, watch.pool, watch.server), name=f"health {key[0]} {key[1]}"
            )

    def _stop_loop(self, watch: _Watch) -> None:
        task = watch.task
        if task is not None:
            watch.task = None
            task.cancel()
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    async def _loop(self, key: StateKey, pool: PoolConfig, server: ServerConfig) -> None:
        health = pool.health
        rng = self._rng
        target: ProbeTarget | None = None
        setup_error = ""
        try:
            target = probe_target(pool, server, self._context_for(pool))
        except Exception as exc:  # a CA file that cannot be read, a bad path: fail checks
            setup_error = f"check cannot run: {exc}"
        # The first check runs at once (a new server takes no traffic until it passed);
        # the jitter below keeps later checks of many servers from running in lockstep.
        while True:
            if target is None:
                result = ProbeResult(False, setup_error, 0.0)
            else:
                result = await probe(target)
            watch = self._watches.get(key)
            if watch is None:
                return
            self._record(watch, result)
            await asyncio.sleep(health.interval * rng.uniform(1 - JITTER, 1 + JITTER))

    def _context_for(self, pool: PoolConfig) -> ssl.SSLContext | None:
        if pool.health.type != "https":
            return None
        key = _tls_settings(pool)
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._contexts[key] = check_ssl_context(pool)
        return ctx

    # ------------------------------------------------------------------------ results

    def _record(self, watch: _Watch, result: ProbeResult) -> None:
        watch.last_check_at = time.time()
        watch.last_result = result.detail
        watch.last_duration = result.duration
        first = _pending(watch)
        change = watch.state.active(result.ok, result.detail)
        if change is not None:
            self._transition(watch, change)
        elif first and self._on_first_result is not None:
            try:
                self._on_first_result()
            except Exception:
                log.exception("health first-result handler failed")

    def _transition(self, watch: _Watch, change: Change) -> None:
        pool, address = watch.pool.name, watch.server.address
        watch.last_change_at = time.time()
        watch.last_change_reason = change.reason
        if change.up:
            log.info("server %s of pool %s is up: %s", address, pool, change.reason)
        else:
            log.warning("server %s of pool %s is down: %s", address, pool, change.reason)
        try:
            self._on_change(pool, address, change.up, change.reason)
        except Exception:
            log.exception("health change handler failed for %s of pool %s", address, pool)

    def passive_failure(self, pool: str, server_address: str, kind: str) -> None:
        """Live traffic failed on a server: `kind` says how ("connect refused", ...)."""
        watch = self._watches.get((pool, server_address))
        if watch is not None and watch.checked:
            change = watch.state.passive_failure(kind)
            if change is not None:
                self._transition(watch, change)

    def passive_success(self, pool: str, server_address: str) -> None:
        """Live traffic got a response from a server."""
        watch = self._watches.get((pool, server_address))
        if watch is not None:
            watch.state.passive_success()

    def passive_response(self, pool: str, server_address: str, status: int) -> None:
        """A response reached live traffic; the pool's passive_statuses count as failures."""
        watch = self._watches.get((pool, server_address))
        if watch is not None and watch.checked:
            change = watch.state.passive_response(status)
            if change is not None:
                self._transition(watch, change)

    # ------------------------------------------------------------------------ reading

    def is_up(self, pool: str, server_address: str) -> bool:
        watch = self._watches.get((pool, server_address))
        return watch is not None and watch.state.up

    def up_states(self, pool: str) -> dict[str, bool]:
        """Server address -> up for one pool, the shape `Pool(health=...)` takes."""
        return {k[1]: w.state.up for k, w in self._watches.items() if k[0] == pool}

    def snapshot(self) -> dict[StateKey, ServerHealth]:
        return {
            key: ServerHealth(
                up=w.state.up,
                checked=w.checked,
                last_check_at=w.last_check_at,
                last_result=w.last_result,
                last_duration=w.last_duration,
                successes=w.state.successes,
                failures=w.state.failures,
                passive_failures=w.state.passive_failures,
                last_change_at=w.last_change_at,
                last_change_reason=w.last_change_reason,
                pending=_pending(w),
            )
            for key, w in self._watches.items()
        }
