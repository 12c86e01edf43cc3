"""What the control process knows about the running proxy, in one place.

The configuration (swapped whole on reload), the admin state of every server
(set by the configuration, changed through the API), health as the monitor
reports it, the workers' aggregated statistics, the reload history and the
listener certificates' expiry. The status page, the JSON API and /metrics are
all drawn from `status()` and the aggregator; the workers get
`server_state()` through shared memory.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from revproxy.config.model import Config
from revproxy.control.aggregate import Aggregator, Rates

log = logging.getLogger("revproxy.control")

ACTIONS = {"enable": "enabled", "disable": "disabled", "drain": "draining"}


@dataclass
class ReloadRecord:
    """Reloads the main process attempted, as it reports them."""

    ok: int = 0
    failed: int = 0
    last_time: float = 0.0  # wall clock
    last_ok: bool = True
    last_error: str = ""

    @property
    def attempts(self) -> int:
        return self.ok + self.failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "succeeded": self.ok,
            "failed": self.failed,
            "last_time": self.last_time or None,
            "last_ok": self.last_ok,
            "last_error": self.last_error,
        }


@dataclass
class Certificate:
    listener: str
    name: str
    file: str
    not_after: float | None  # wall clock; None when it could not be read
    problem: str = ""

    def days_left(self, now: float) -> float | None:
        return None if self.not_after is None else (self.not_after - now) / 86400.0


@dataclass
class Health:
    up: bool = True
    checked: bool = False  # False: no active checks for this server
    last_time: float | None = None  # wall clock of the last check
    last_result: str = ""
    pending: bool = False  # down until its first check, not run yet


def read_certificates(config: Config) -> list[Certificate]:
    """Each listener certificate's expiry, read once per configuration."""
    from revproxy.tls.certificates import load_certificate

    out: list[Certificate] = []
    for listener in config.listeners:
        for cert in listener.certificates:
            try:
                loaded = load_certificate(cert)
            except Exception as exc:  # a config that loaded once may have changed on disk
                out.append(
                    Certificate(listener.name, cert.cert.name, str(cert.cert), None, str(exc))
                )
                continue
            name = loaded.names[0] if loaded.names else loaded.leaf.subject.rfc4514_string()
            out.append(
                Certificate(listener.name, name, str(cert.cert), loaded.not_after.timestamp(), "")
            )
    return out


@dataclass
class ControlView:
    config: Config
    main_pid: int
    generation: int = 0
    ports: dict[str, int] = field(default_factory=dict)  # listener -> port actually bound
    admin: dict[tuple[str, str], str] = field(default_factory=dict)
    health: dict[tuple[str, str], Health] = field(default_factory=dict)
    reloads: ReloadRecord = field(default_factory=ReloadRecord)
    certificates: list[Certificate] = field(default_factory=list)
    stats: Aggregator = field(default_factory=Aggregator)
    rates: Rates = field(default_factory=Rates)
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.set_config(self.config, self.generation, self.ports, initial=True)

    # ------------------------------------------------------------------ changes

    def set_config(
        self, config: Config, generation: int, ports: dict[str, int], initial: bool = False
    ) -> None:
        """A new configuration: admin states set through the API survive for servers that
        remain and whose configured state did not change."""
        old = {} if initial else _configured_states(self.config)
        admin: dict[tuple[str, str], str] = {}
        for key, state in _configured_states(config).items():
            if key in old and old[key] == state and key in self.admin:
                admin[key] = self.admin[key]
            else:
                admin[key] = state
        self.admin = admin
        self.health = {k: v for k, v in self.health.items() if k in admin}
        self.config = config
        self.generation = generation
        self.ports = dict(ports)
        self.certificates = read_certificates(config)

    def set_admin(self, pool: str, server: str, action: str) -> str:
        """Apply an API action; returns the new admin state. KeyError: no such server."""
        key = (pool, server)
        if key not in self.admin:
            raise KeyError(f"{pool}/{server}")
        state = ACTIONS[action]
        if self.admin[key] != state:
            log.warning("server %s of pool %s: %s -> %s", server, pool, self.admin[key], state)
        self.admin[key] = state
        return state

    def set_health(self, snapshot: Any) -> None:
        """Health as the monitor's snapshot() reports it: {(pool, server): ServerHealth}
        (also accepted: {pool: {server: entry}}). An entry has `up`, `checked`,
        `last_check_at` (wall time) and `last_result`, as attributes or keys."""
        if not isinstance(snapshot, dict):
            return
        for key, entry in snapshot.items():
            if isinstance(key, tuple) and len(key) == 2:
                self._set_health((str(key[0]), str(key[1])), entry)
            elif isinstance(entry, dict):
                for server, value in entry.items():
                    self._set_health((str(key), str(server)), value)

    def _set_health(self, key: tuple[str, str], entry: Any) -> None:
        if key in self.admin:
            self.health[key] = _health(entry)

    # ------------------------------------------------------------------ views

    def server_state(self) -> dict[str, Any]:
        """What the workers apply: {pool: {server: {"up", "admin"}}}."""
        out: dict[str, Any] = {}
        for (pool, server), admin in self.admin.items():
            health = self.health.get((pool, server))
            up = True if health is None else health.up
            entry: dict[str, Any] = {"up": up, "admin": admin}
            if health is not None and health.pending:
                entry["pending"] = True
            out.setdefault(pool, {})[server] = entry
        return {"generation": self.generation, "servers": out}

    def ready(self) -> bool:
        return self.stats.listening()

    def sample_rates(self) -> None:
        self.rates.sample(self._request_totals())

    def _request_totals(self) -> dict[Any, float]:
        totals: dict[Any, float] = {}
        for (name, labels), value in self.stats.counters().items():
            if name != "requests":
                continue
            service, pool, server, _ = labels
            totals[("service", service)] = totals.get(("service", service), 0.0) + value
            totals[("server", pool, server)] = totals.get(("server", pool, server), 0.0) + value
        return totals

    def status(self) -> dict[str, Any]:
        """Everything the status page shows, as JSON-ready data."""
        now = time.time()
        counters = self.stats.counters()
        gauges = self.stats.gauges()
        per_service: dict[str, list[float]] = {}  # requests, errors (5xx)
        per_server: dict[tuple[str, str], list[float]] = {}  # requests, errors
        for (name, labels), value in counters.items():
            if name == "requests":
                service, pool_name, server, cls = labels
                svc_totals = per_service.setdefault(service, [0.0, 0.0])
                svc_totals[0] += value
                if cls == "5xx":
                    svc_totals[1] += value
                if server:
                    r = per_server.setdefault((pool_name, server), [0.0, 0.0])
                    r[0] += value
                    if cls == "5xx":
                        r[1] += value
            elif name == "server_failures":
                per_server.setdefault((labels[0], labels[1]), [0.0, 0.0])[1] += value
        open_conns = {
            labels[0]: value
            for (name, labels), value in gauges.items()
            if name == "client_connections"
        }
        active: dict[tuple[str, str], float] = {}
        for (name, labels), value in gauges.items():
            if name == "server_active":
                key = (labels[0], labels[1])
                active[key] = active.get(key, 0.0) + value
        config = self.config
        listeners = []
        for lst in config.listeners:
            listeners.append(
                {
                    "name": lst.name,
                    "address": f"{lst.host}:{self.ports.get(lst.name, lst.port)}",
                    "tls": lst.tls,
                    "services": [s.name for s in config.services_for(lst)],
                    "open_connections": int(open_conns.get(lst.name, 0)),
                    "certificates": [
                        {
                            "name": c.name,
                            "file": c.file,
                            "days_left": _round(c.days_left(now)),
                            "problem": c.problem,
                        }
                        for c in self.certificates
                        if c.listener == lst.name
                    ],
                }
            )
        services = []
        for svc in config.services:
            totals = per_service.get(svc.name, [0.0, 0.0])
            services.append(
                {
                    "name": svc.name,
                    "hosts": list(svc.hosts),
                    "paths": list(svc.paths),
                    "listeners": [
                        lst.name for lst in config.listeners if svc in config.services_for(lst)
                    ],
                    "pool": svc.pool,
                    "requests": int(totals[0]),
                    "errors": int(totals[1]),
                    "rps": round(self.rates.rate(("service", svc.name)), 2),
                }
            )
        pools = []
        for pool in config.pools:
            servers = []
            for s in pool.servers:
                key = (pool.name, s.address)
                admin = self.admin.get(key, s.state)
                health = self.health.get(key, Health())
                totals = per_server.get(key, [0.0, 0.0])
                servers.append(
                    {
                        "address": s.address,
                        "weight": s.weight,
                        "state": display_state(health.up, admin),
                        "up": health.up,
                        "admin": admin,
                        "checked": health.checked,
                        "last_check": health.last_time,
                        "last_result": health.last_result,
                        "active": int(active.get(key, 0)),
                        "requests": int(totals[0]),
                        "errors": int(totals[1]),
                        "rps": round(self.rates.rate(("server", pool.name, s.address)), 2),
                    }
                )
            pools.append(
                {
                    "name": pool.name,
                    "balance": pool.balance,
                    "health_check": pool.health.type,
                    "tls": pool.tls,
                    "servers": servers,
                }
            )
        return {
            "time": now,
            "pid": self.main_pid,
            "control_pid": os.getpid(),
            "config": str(config.source),
            "generation": self.generation,
            "ready": self.ready(),
            "uptime": round(now - self.started, 1),
            "workers": [
                {"pid": w.pid, "generation": w.generation, "listening": w.listening}
                for w in sorted(self.stats.workers.values(), key=lambda w: w.pid)
            ],
            "reloads": self.reloads.as_dict(),
            "listeners": listeners,
            "services": services,
            "pools": pools,
        }


def display_state(up: bool, admin: str) -> str:
    """One word per server: disabled and draining (set by hand) win over health."""
    if admin in ("disabled", "draining"):
        return admin
    return "up" if up else "down"


def _configured_states(config: Config) -> dict[tuple[str, str], str]:
    return {(p.name, s.address): s.state for p in config.pools for s in p.servers}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _health(entry: Any) -> Health:
    if isinstance(entry, bool):
        return Health(up=entry, checked=True)

    def get(name: str, default: Any = None) -> Any:
        if isinstance(entry, dict):
            return entry.get(name, default)
        return getattr(entry, name, default)

    last = get("last_check_at")
    if isinstance(last, datetime.datetime):
        last = last.timestamp()
    return Health(
        up=bool(get("up", True)),
        checked=bool(get("checked", True)),
        last_time=float(last) if isinstance(last, int | float) else None,
        last_result=str(get("last_result", "") or ""),
        pending=bool(get("pending", False)),
    )
