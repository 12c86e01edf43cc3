"""The validated configuration, as the running proxy sees it.

Everything here is frozen: a configuration is built once by the loader, checked
as a whole, and then swapped in whole on reload. Durations are seconds (float),
sizes are bytes (int). Defaults live here and only here; docs/configuration.md
documents each key with the same values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-service timeouts, in seconds."""

    client_header: float = 10.0  # whole request head must arrive within this (408)
    client_body_idle: float = 60.0  # longest silence inside a request body
    client_body_min_rate: int = 0  # bytes/s averaged per 10 s window; 0 = no rate check
    keepalive_idle: float = 75.0  # idle client connection between requests
    server_connect: float = 5.0  # TCP (+TLS) connect to a real server (504 on expiry)
    server_response_header: float = 60.0  # first response head after request sent (504)
    server_body_idle: float = 60.0  # longest silence inside a response body
    tunnel_idle: float = 3600.0  # upgraded (WebSocket) connection with no bytes either way


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-service request limits."""

    max_request_line: int = 8192  # 414 above this
    max_header_bytes: int = 32768  # whole head; 431 above this
    max_header_count: int = 100  # 431 above this
    max_body_bytes: int = 0  # 413 above this; 0 = unlimited


@dataclass(frozen=True, slots=True)
class HeaderOptions:
    """Forwarding headers added to requests sent to real servers."""

    x_forwarded_for: bool = True
    x_forwarded_proto: bool = True
    x_forwarded_host: bool = True
    via: bool = False
    via_name: str = "revproxy"
    # Addresses/networks whose X-Forwarded-For we extend; from anyone else it is replaced.
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CertificateConfig:
    """One certificate on a TLS listener: PEM files for now."""

    cert: Path
    key: Path
    chain: tuple[Path, ...] = ()  # extra intermediate files, leaf's issuer first


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    name: str
    host: str  # bind address: "127.0.0.1", "0.0.0.0", "::"
    port: int
    tls: bool = False
    certificates: tuple[CertificateConfig, ...] = ()  # first one is the default certificate
    min_tls_version: str = "1.2"  # "1.0", "1.1", "1.2", "1.3"
    ciphers: str = ""  # OpenSSL cipher string for TLS <= 1.2; "" = built-in modern list
    unknown_sni: str = "default"  # "default" (serve the first certificate) or "reject"
    backlog: int = 1024
    # Service names reachable on this listener; empty = every service that names this
    # listener in ServiceConfig.listeners or names no listener at all.
    services: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    name: str
    pool: str
    hosts: tuple[str, ...] = ("*",)  # exact names, "*.example.com" wildcards, or "*"
    paths: tuple[str, ...] = ("/",)  # path prefixes; the longest match wins
    listeners: tuple[str, ...] = ()  # empty = all listeners
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    headers: HeaderOptions = field(default_factory=HeaderOptions)
    retries: int = 1  # extra attempts on another connection/server when it is safe
    ntlm_pinning: bool = True  # tie a server connection to its client after NTLM/Negotiate


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """One real server of a pool."""

    host: str
    port: int
    weight: int = 1

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PoolConfig:
    name: str
    servers: tuple[ServerConfig, ...]
    tls: bool = False  # re-encrypt towards the servers
    ca: Path | None = None  # CA bundle to verify servers; None = system store
    verify: bool = True
    server_name: str = ""  # SNI and name checked; "" = the server's host
    min_tls_version: str = "1.2"
    ciphers: str = ""
    max_idle_per_server: int = 64  # idle keep-alive connections kept per server
    idle_timeout: float = 60.0  # idle server connection is closed after this


@dataclass(frozen=True, slots=True)
class GlobalConfig:
    workers: int = 0  # 0 = one per CPU core
    log_level: str = "info"
    shutdown_grace: float = 30.0  # in-flight requests may finish within this on stop
    # On reload, old workers keep serving what they have (long polls, WebSockets) this long.
    reload_grace: float = 3600.0
    max_connections: int = 10000  # per worker; beyond this, new connections wait in the backlog


@dataclass(frozen=True, slots=True)
class Config:
    source: Path  # the file it was loaded from
    global_: GlobalConfig
    listeners: tuple[ListenerConfig, ...]
    services: tuple[ServiceConfig, ...]
    pools: tuple[PoolConfig, ...]

    def pool(self, name: str) -> PoolConfig:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)

    def services_for(self, listener: ListenerConfig) -> tuple[ServiceConfig, ...]:
        """The services a listener routes to, in configuration order."""
        if listener.services:
            return tuple(s for s in self.services if s.name in listener.services)
        return tuple(s for s in self.services if not s.listeners or listener.name in s.listeners)
