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
    # Pass request fields whose names contain "_" (dropped by default).
    underscores_in_headers: bool = False


@dataclass(frozen=True, slots=True)
class CertificateConfig:
    """One certificate on a TLS listener.

    `cert` may be PEM, DER or PKCS#12 (.pfx/.p12); a PKCS#12 file carries its key (and
    often intermediates), so `key` is then None. Its password comes from `password_file`
    or the environment variable `password_env`, never from the command line.
    """

    cert: Path
    key: Path | None = None
    chain: tuple[Path, ...] = ()  # extra intermediates (PEM, DER or PKCS#12), any order
    password_file: Path | None = None
    password_env: str = ""


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
    # Folder searched for intermediates missing from a certificate's chain.
    chain_dir: Path | None = None
    # Host header naming a different name than the TLS SNI: "allow" or "reject" (421).
    sni_mismatch: str = "allow"
    # Service names reachable on this listener; empty = every service that names this
    # listener in ServiceConfig.listeners or names no listener at all.
    services: tuple[str, ...] = ()
    # Every connection opens with a PROXY protocol header (v1 or v2) naming the client.
    proxy_protocol: bool = False
    # Addresses or networks allowed to send it; empty = any.
    proxy_protocol_from: tuple[str, ...] = ()


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
    retry_window: float = 10.0  # no new attempt starts later than this after the first
    ntlm_pinning: bool = True  # tie a server connection to its client after NTLM/Negotiate
    template: str = ""  # the template this service was expanded from ("" = none)
    redirect_https: bool = False  # answer every request with a redirect to https://
    redirect_status: int = 301
    rules: tuple[RuleConfig, ...] = ()  # content rules, in order


@dataclass(frozen=True, slots=True)
class MatchConfig:
    """What a content rule looks at; every given condition must hold."""

    hosts: tuple[str, ...] = ()  # exact or "*.x.y"
    path: str = ""  # with path_kind
    path_kind: str = "prefix"  # "exact", "prefix" or "regex"
    methods: tuple[str, ...] = ()
    query: str = ""  # regex searched in the query string
    headers: tuple[tuple[str, str], ...] = ()  # (name, regex searched in the value)
    # Path, query and header-value comparisons ignore case (IIS paths do).
    ignore_case: bool = False


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """One content rule: a match and what to do when it matches."""

    name: str
    match: MatchConfig = field(default_factory=MatchConfig)
    # Header edits: (name, value) pairs.
    set_request_headers: tuple[tuple[str, str], ...] = ()
    add_request_headers: tuple[tuple[str, str], ...] = ()
    remove_request_headers: tuple[str, ...] = ()
    set_response_headers: tuple[tuple[str, str], ...] = ()
    add_response_headers: tuple[tuple[str, str], ...] = ()
    remove_response_headers: tuple[str, ...] = ()
    # Path and query rewrite: (regex searched in path?query, replacement with \1 groups and
    # {host} {path} {query} {target} placeholders).
    rewrite: tuple[str, str] | None = None
    # Redirect: (status, location template) with \1 groups from a regex path match and the
    # same placeholders.
    redirect: tuple[int, str] | None = None
    # Fixed answer: (status, content type, body).
    respond: tuple[int, str, str] | None = None
    # Response body text replacement: (regex, replacement), for these content types.
    replace_body: tuple[str, str] | None = None
    replace_content_types: tuple[str, ...] = ("text/html", "text/plain", "application/json")
    replace_max_bytes: int = 1048576
    last: bool = True  # stop evaluating rules after this one matched


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """One real server of a pool."""

    host: str
    port: int
    weight: int = 1
    state: str = "enabled"  # "enabled", "disabled" (no traffic) or "draining"

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    """Active checks of each server of a pool; defaults as load-balancer appliances ship."""

    type: str = "none"  # "none", "tcp", "http" or "https"
    interval: float = 9.0
    timeout: float = 4.0
    fall: int = 2  # consecutive failures that mark a server down
    rise: int = 2  # consecutive successes that mark it up again
    port: int = 0  # 0 = the server's own port (a Lync Front End is often checked on 5061)
    method: str = "GET"  # or "HEAD"
    path: str = "/"
    host: str = ""  # Host header; "" = the server's address
    expect: tuple[str, ...] = ("200-299", "301", "302", "401")  # statuses or ranges
    start_down: bool = True  # a new server takes traffic only once a check passed
    ca: Path | None = None  # for https checks; None = the pool's ca
    verify: bool = True
    # Passive checks: failures seen by live traffic mark a server down before the next
    # active check; it comes back through the active checks.
    passive_failures: int = 3  # consecutive connect failures or resets; 0 = off
    passive_statuses: tuple[int, ...] = ()  # response statuses counted as failures


@dataclass(frozen=True, slots=True)
class PersistenceConfig:
    """Sending a client back to the same server; off by default."""

    type: str = "none"  # "none", "source_ip" or "cookie"
    timeout: float = 1200.0  # source_ip: forget a client after this long (20 minutes)
    cookie_name: str = "SERVERID"
    cookie_path: str = "/"
    cookie_domain: str = ""
    cookie_httponly: bool = True
    cookie_secure: bool = False
    cookie_max_age: int = 0  # 0 = no expiry attribute (a session cookie)
    # Set the cookie on every response whose request lacked it (the MS-WSMAN case), not
    # only when the chosen server changes.
    cookie_always: bool = False


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
    # "round_robin" (weighted), "least_conn", "random_two" (power of two choices),
    # "source_hash"
    balance: str = "round_robin"
    # PROXY protocol header opening each server connection: "off", "v1" or "v2". Such a
    # connection carries one client's requests only (it names that client).
    proxy_protocol: str = "off"
    health: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    persistence: PersistenceConfig = field(default_factory=PersistenceConfig)


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The admin server: status page, JSON API, metrics, health endpoints."""

    enabled: bool = False  # true when an [admin] table is present, unless it says otherwise
    host: str = "127.0.0.1"
    port: int = 9000
    token_file: Path | None = None  # actions need this token; without it they are refused


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    enabled: bool = True
    format: str = "combined"  # "combined" or "json"
    path: str = "-"  # "-" = standard output, else a file
    request_id_header: str = "X-Request-ID"  # passed to servers; "" = none


@dataclass(frozen=True, slots=True)
class GlobalConfig:
    workers: int = 0  # 0 = one per CPU core
    log_level: str = "info"
    shutdown_grace: float = 30.0  # in-flight requests may finish within this on stop
    # On reload, old workers keep serving what they have (long polls, WebSockets) this long.
    reload_grace: float = 3600.0
    max_connections: int = 10000  # per worker; a connection beyond this is closed at once


@dataclass(frozen=True, slots=True)
class Config:
    source: Path  # the file it was loaded from
    global_: GlobalConfig
    listeners: tuple[ListenerConfig, ...]
    services: tuple[ServiceConfig, ...]
    pools: tuple[PoolConfig, ...]
    admin: AdminConfig = field(default_factory=AdminConfig)
    access_log: AccessLogConfig = field(default_factory=AccessLogConfig)

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
