"""The configuration turned into the objects one worker's data plane runs on.

Built once per configuration: routers per listener, pools with their servers
and idle-connection endpoints, TLS contexts. Values the per-request path reads
are copied into flat attributes here so that path reads no nested config.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import ssl
from collections.abc import Iterable, Mapping

from revproxy.balance.pool import Pool, Server
from revproxy.config.model import Config, ListenerConfig, ServiceConfig
from revproxy.http.forward import Forwarding
from revproxy.http.proxyproto import plain_address
from revproxy.http.rules import RuleSet, service_rules
from revproxy.proxy.router import Router
from revproxy.proxy.stats import WorkerStats
from revproxy.proxy.upstream import Endpoint
from revproxy.tls.context import build_listener_context, build_pool_context

log = logging.getLogger("revproxy.proxy")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AddressSet:
    """Addresses and networks from the configuration (trusted_proxies,
    proxy_protocol_from), asked about a peer's address as its socket or a PROXY header
    gives it: an IPv6 zone is dropped and an IPv4-mapped IPv6 address counts as IPv4."""

    __slots__ = ("networks",)

    def __init__(self, texts: Iterable[str]) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(t, strict=False) for t in texts
        )

    def holds(self, address: str) -> bool:
        """Whether `address` is in one of the networks (False for no IP address)."""
        if not self.networks:
            return False
        try:
            ip = plain_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)


class RequestIds:
    """Request ids: a random prefix per worker and configuration, then a counter."""

    __slots__ = ("prefix", "count")

    def __init__(self) -> None:
        self.prefix = os.urandom(6).hex().encode() + b"-"
        self.count = 0

    def __call__(self) -> bytes:
        self.count += 1
        return self.prefix + b"%x" % self.count


class Service:
    """A service as the data plane uses it."""

    __slots__ = (
        "config",
        "name",
        "pool",
        "endpoints",
        "forwarding",
        "trusted",
        "retries",
        "retry_window",
        "ntlm_pinning",
        "t_header",
        "t_body_idle",
        "t_keepalive",
        "t_connect",
        "t_response",
        "t_server_body",
        "t_tunnel",
        "max_request_line",
        "max_header_bytes",
        "max_header_count",
        "max_body",
        "passive_statuses",
        "rules",
        "persistence",
        "cookie_name",
        "min_rate",
    )

    def __init__(
        self,
        config: ServiceConfig,
        pool: Pool,
        endpoints: dict[Server, Endpoint],
        request_id_header: str = "",
    ):
        self.config = config
        self.name = config.name
        self.pool = pool
        self.endpoints = endpoints
        h = config.headers
        via_name = h.via_name.encode()
        self.forwarding = Forwarding(
            x_forwarded_for=h.x_forwarded_for,
            x_forwarded_proto=h.x_forwarded_proto,
            x_forwarded_host=h.x_forwarded_host,
            via=(b"1.1 " + via_name) if h.via else b"",
            via_http10=(b"1.0 " + via_name) if h.via else b"",
            request_id_header=request_id_header.encode(),
            drop_underscored=not h.underscores_in_headers,
        )
        self.trusted = AddressSet(h.trusted_proxies)
        self.retries = config.retries
        self.retry_window = config.retry_window
        self.ntlm_pinning = config.ntlm_pinning
        t = config.timeouts
        self.t_header = t.client_header
        self.t_body_idle = t.client_body_idle
        self.t_keepalive = t.keepalive_idle
        self.t_connect = t.server_connect
        self.t_response = t.server_response_header
        self.t_server_body = t.server_body_idle
        self.t_tunnel = t.tunnel_idle
        self.min_rate = t.client_body_min_rate
        lim = config.limits
        self.max_request_line = lim.max_request_line
        self.max_header_bytes = lim.max_header_bytes
        self.max_header_count = lim.max_header_count
        self.max_body = lim.max_body_bytes
        self.passive_statuses = frozenset(pool.config.health.passive_statuses)
        # None when the service has no rules: one identity test per request, not __bool__.
        self.rules: RuleSet | None = service_rules(config) or None
        persistence = pool.config.persistence
        self.persistence = persistence.type != "none"
        self.cookie_name = persistence.cookie_name if persistence.type == "cookie" else ""

    def trusts(self, ip: str) -> bool:
        return self.trusted.holds(ip)


class Listener:
    """A listener's routing and the limits that apply before a service is known."""

    __slots__ = (
        "config",
        "name",
        "router",
        "ssl_context",
        "scheme",
        "t_header",
        "max_request_line",
        "max_header_bytes",
        "max_header_count",
        "stats",
        "new_request_id",
        "sni_reject",
        "max_connections",
        "tls_handshaking",
        "draining",
        "_refused",
    )

    def __init__(
        self,
        config: ListenerConfig,
        services: list[Service],
        stats: WorkerStats,
        new_request_id: RequestIds | None,
        max_connections: int = 10000,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.config = config
        self.name = config.name
        self.stats = stats
        self.new_request_id = new_request_id  # None: requests carry no id
        self.router: Router[Service] = Router((s.config.hosts, s.config.paths, s) for s in services)
        # A context made before the workers were forked is shared by all of them, and with
        # it the session ticket keys: any worker resumes the sessions of any other.
        self.ssl_context: ssl.SSLContext | None = (
            (ssl_context or build_listener_context(config)) if config.tls else None
        )
        self.scheme = b"https" if config.tls else b"http"
        self.sni_reject = config.tls and config.sni_mismatch == "reject"
        self.max_connections = max_connections
        # TLS handshakes under way: the TLS layer (tlslayer.py) counts them (and the failed
        # ones); a stopping worker waits for them.
        self.tls_handshaking = 0
        # The worker is stopping: a connection that completes its handshake now is drained
        # at once (answered with Connection: close).
        self.draining = False
        self._refused = 0
        # Until the head is parsed the service is unknown: the most generous one applies,
        # and the chosen service's own limits are checked once it is known.
        self.t_header = max((s.t_header for s in services), default=10.0)
        self.max_request_line = max((s.max_request_line for s in services), default=8192)
        self.max_header_bytes = max((s.max_header_bytes for s in services), default=32768)
        self.max_header_count = max((s.max_header_count for s in services), default=100)

    def refuse(self, transport: asyncio.BaseTransport) -> None:
        """Close a connection accepted beyond max_connections (logged every 100th)."""
        transport.abort()  # type: ignore[attr-defined]
        if self._refused % 100 == 0:
            log.warning(
                "listener %s: %d connections refused beyond max_connections (%d per worker)",
                self.name,
                self._refused + 1,
                self.max_connections,
            )
        self._refused += 1


class Runtime:
    """Everything one worker needs for one configuration."""

    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        stats: WorkerStats | None = None,
        listener_contexts: Mapping[str, ssl.SSLContext] | None = None,
    ) -> None:
        """`listener_contexts`: TLS contexts already built for listeners, by name."""
        self.config = config
        self.stats = stats if stats is not None else WorkerStats()
        rid_header = config.access_log.request_id_header
        request_ids = RequestIds()

        self.pools: dict[str, Pool] = {}
        self.endpoints: list[Endpoint] = []
        endpoints_by_pool: dict[str, dict[Server, Endpoint]] = {}
        for pool_cfg in config.pools:
            pool = Pool(pool_cfg)
            self.pools[pool.name] = pool
            ctx = build_pool_context(pool_cfg) if pool_cfg.tls else None
            eps = {s: Endpoint(s, pool_cfg, ctx, loop) for s in pool.servers}
            endpoints_by_pool[pool.name] = eps
            self.endpoints.extend(eps.values())
        self.services: dict[str, Service] = {}
        for svc_cfg in config.services:
            self.services[svc_cfg.name] = Service(
                svc_cfg, self.pools[svc_cfg.pool], endpoints_by_pool[svc_cfg.pool], rid_header
            )
        self.listeners: dict[str, Listener] = {}
        for lst_cfg in config.listeners:
            services = [self.services[s.name] for s in config.services_for(lst_cfg)]
            self.listeners[lst_cfg.name] = Listener(
                lst_cfg,
                services,
                self.stats,
                request_ids if rid_header else None,
                config.global_.max_connections,
                (listener_contexts or {}).get(lst_cfg.name),
            )

    def expire_idle(self, now: float) -> None:
        for ep in self.endpoints:
            if ep.idle:
                ep.expire_idle(now)

    def close_idle(self) -> None:
        for ep in self.endpoints:
            ep.close_idle()
