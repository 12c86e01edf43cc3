"""Load one TOML file into the frozen Config of model.py, or explain why not.

Validation happens here and only here: the running proxy trusts the Config it
is given. Every problem names the file and the dotted key it concerns, and all
problems are collected before reporting, so an administrator fixes a file in
one pass instead of one error per restart. Defaults are read from the model's
dataclass fields so they are never written twice.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from revproxy.config.addresses import is_host_name, normal_host, parse_address
from revproxy.config.model import (
    CertificateConfig,
    Config,
    GlobalConfig,
    HeaderOptions,
    Limits,
    ListenerConfig,
    PoolConfig,
    ServerConfig,
    ServiceConfig,
    Timeouts,
)
from revproxy.config.reader import Context, Table, show

TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")
UNKNOWN_SNI_ACTIONS = ("default", "reject")
LOG_LEVELS = ("debug", "info", "warning", "error")

_TOML_POSITION_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


class ConfigError(Exception):
    """A configuration file that cannot be used; one problem per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def load_config(path: str | Path, *, check_files: bool = True) -> Config:
    """Read and validate one TOML file; raise ConfigError listing every problem."""
    return load_config_with_warnings(path, check_files=check_files)[0]


def load_config_with_warnings(
    path: str | Path, *, check_files: bool = True
) -> tuple[Config, list[str]]:
    """Like load_config, also returning problems that do not stop the proxy."""
    source = Path(path)
    try:
        text = source.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: not UTF-8 text (byte {exc.start})"]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_toml_problem(source, exc)]) from exc
    return parse_config_with_warnings(data, source, check_files=check_files)


def parse_config(data: dict[str, Any], source: Path, *, check_files: bool = True) -> Config:
    """Validate already-parsed TOML data; relative paths resolve against source's folder."""
    return parse_config_with_warnings(data, source, check_files=check_files)[0]


def parse_config_with_warnings(
    data: dict[str, Any], source: Path, *, check_files: bool = True
) -> tuple[Config, list[str]]:
    ctx = Context(Path(source), check_files)
    config = _read_config(ctx, data)
    if ctx.problems:
        raise ConfigError(ctx.problems)
    return config, ctx.warnings


# --- problem reporting --------------------------------------------------------------------


def _toml_problem(source: Path, exc: tomllib.TOMLDecodeError) -> str:
    message = str(exc)
    match = _TOML_POSITION_RE.search(message)
    if match:
        where = f"line {match.group(1)}, column {match.group(2)}"
        return f"{source}: {where}: TOML syntax error: {message[: match.start()]}"
    return f"{source}: TOML syntax error: {message}"


# --- sections ----------------------------------------------------------------------------


def _read_config(ctx: Context, data: dict[str, Any]) -> Config:
    top = Table(ctx, "", data)
    global_ = _read_global(top.table("global"))
    listeners = [_read_listener(ctx, n, t) for n, t in top.named_tables("listeners", "listener")]
    services = [_read_service(ctx, n, t) for n, t in top.named_tables("services", "service")]
    pools = [_read_pool(ctx, n, t) for n, t in top.named_tables("pools", "pool")]
    top.finish()
    for section, example in (("listeners", "https"), ("services", "web"), ("pools", "web")):
        if not data.get(section):
            ctx.error(section, f"at least one {section[:-1]} is needed, e.g. [{section}.{example}]")
    config = Config(
        source=Path(os.path.abspath(ctx.source)),
        global_=global_,
        listeners=tuple(listeners),
        services=tuple(services),
        pools=tuple(pools),
    )
    _check_references(ctx, config)
    _check_binds(ctx, config.listeners)
    _check_routes(ctx, config)
    return config


def _read_global(t: Table) -> GlobalConfig:
    d = GlobalConfig()
    g = GlobalConfig(
        workers=t.number("workers", d.workers, integer=True),
        log_level=t.string("log_level", d.log_level, LOG_LEVELS),
        shutdown_grace=t.seconds("shutdown_grace", d.shutdown_grace, zero=True),
        reload_grace=t.seconds("reload_grace", d.reload_grace, zero=True),
        max_connections=t.number("max_connections", d.max_connections, integer=True, low=1),
    )
    t.finish()
    return g


def _read_listener(ctx: Context, name: str, t: Table) -> ListenerConfig:
    d = ListenerConfig(name=name, host="", port=0)
    host, port = "0.0.0.0", 0
    bind = t.required("bind", '"0.0.0.0:443"')
    if bind is not None:
        try:
            host, port = parse_address(bind, bind=True)
        except ValueError as exc:
            t.error("bind", str(exc))
    tls = t.boolean("tls", d.tls)
    certificates = _read_certificates(ctx, t)
    if tls and not certificates and "certificates" not in t.data:
        t.error("certificates", "a TLS listener needs at least one [[certificates]] entry")
    if not tls and "certificates" in t.data:
        t.error("certificates", "certificates are given but tls is false")
    min_tls = _min_tls_version(t, d.min_tls_version, tls)
    listener = ListenerConfig(
        name=name,
        host=host,
        port=port,
        tls=tls,
        certificates=certificates,
        min_tls_version=min_tls,
        ciphers=t.string("ciphers", d.ciphers),
        unknown_sni=t.string("unknown_sni", d.unknown_sni, UNKNOWN_SNI_ACTIONS),
        backlog=t.number("backlog", d.backlog, integer=True, low=1),
        services=t.strings("services", d.services),
    )
    t.finish()
    return listener


def _min_tls_version(t: Table, default: str, tls: bool) -> str:
    version = t.string("min_tls_version", default, TLS_VERSIONS)
    if tls and version in ("1.0", "1.1"):
        t.ctx.warn(t.sub("min_tls_version"), f"TLS {version} is obsolete (RFC 8996)")
    return version


def _read_certificates(ctx: Context, t: Table) -> tuple[CertificateConfig, ...]:
    value = t.raw("certificates")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        t.error("certificates", "must be an array of tables: [[listeners.NAME.certificates]]")
        return ()
    if not value:
        t.error("certificates", "must not be empty")
    result = []
    for i, item in enumerate(value):
        c = Table(ctx, f"{t.sub('certificates')}[{i}]", item)
        files: dict[str, Path] = {}
        for name in ("cert", "key"):
            text = c.required(name, f'"/etc/revproxy/certs/site.{name}"')
            if text is not None:
                files[name] = ctx.file(c.sub(name), text)
        chain = tuple(
            ctx.file(f"{c.sub('chain')}[{j}]", p) for j, p in enumerate(c.strings("chain", ()))
        )
        c.finish()
        if len(files) == 2:
            result.append(CertificateConfig(cert=files["cert"], key=files["key"], chain=chain))
    return tuple(result)


def _read_service(ctx: Context, name: str, t: Table) -> ServiceConfig:
    d = ServiceConfig(name=name, pool="")
    pool = t.required("pool", 'pool = "web" naming a [pools.web] table') or ""
    hosts = _read_hosts(t)
    paths = t.strings("paths", d.paths)
    if not paths:
        t.error("paths", 'must not be empty; "/" matches every path')
    for p in paths:
        if not p.startswith("/") or any(c in p for c in "?# ") or not p.isprintable():
            t.error("paths", f'each path must start with "/" (no query or spaces), got {show(p)}')
    timeouts = _read_timeouts(t.table("timeouts"))
    limits = _read_limits(t.table("limits"))
    headers = _read_headers(t.table("headers"))
    service = ServiceConfig(
        name=name,
        pool=pool,
        hosts=hosts,
        paths=paths,
        listeners=t.strings("listeners", d.listeners),
        timeouts=timeouts,
        limits=limits,
        headers=headers,
        retries=t.number("retries", d.retries, integer=True, high=10),
        ntlm_pinning=t.boolean("ntlm_pinning", d.ntlm_pinning),
    )
    t.finish()
    return service


def _read_hosts(t: Table) -> tuple[str, ...]:
    hosts: list[str] = []
    given = t.strings("hosts", ServiceConfig(name="", pool="").hosts)
    if not given:
        t.error("hosts", 'must not be empty; "*" matches every host')
    for host in given:
        normal = normal_host(host)
        if normal is None:
            t.error(
                "hosts",
                f'{show(host)} is not a host name, IP address, "*" or "*.name.tld" wildcard',
            )
        elif normal in hosts:
            t.ctx.warn(t.sub("hosts"), f"{show(host)} is listed twice")
        else:
            hosts.append(normal)
    return tuple(hosts)


def _read_timeouts(t: Table) -> Timeouts:
    d = Timeouts()
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Timeouts):
        if f.name == "client_body_min_rate":
            values[f.name] = t.number(f.name, d.client_body_min_rate, integer=True)
        else:
            values[f.name] = t.seconds(f.name, getattr(d, f.name))
    t.finish()
    return Timeouts(**values)


def _read_limits(t: Table) -> Limits:
    d = Limits()
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Limits):
        low = 0 if f.name == "max_body_bytes" else 1  # 0 bytes of body = unlimited
        values[f.name] = t.number(f.name, getattr(d, f.name), integer=True, low=low)
    t.finish()
    return Limits(**values)


def _read_headers(t: Table) -> HeaderOptions:
    d = HeaderOptions()
    proxies = []
    for text in t.strings("trusted_proxies", d.trusted_proxies):
        try:
            proxies.append(str(ipaddress.ip_network(text.strip(), strict=False)))
        except ValueError:
            t.error("trusted_proxies", f"{show(text)} is not an IP address or network")
    via_name = t.string("via_name", d.via_name)
    # RFC 9110 section 7.6.3: the received-by part of Via is a token (or host[:port]).
    if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~:-]+", via_name):
        t.error("via_name", f"must be a token without spaces, got {show(via_name)}")
    headers = HeaderOptions(
        x_forwarded_for=t.boolean("x_forwarded_for", d.x_forwarded_for),
        x_forwarded_proto=t.boolean("x_forwarded_proto", d.x_forwarded_proto),
        x_forwarded_host=t.boolean("x_forwarded_host", d.x_forwarded_host),
        via=t.boolean("via", d.via),
        via_name=via_name,
        trusted_proxies=tuple(proxies),
    )
    t.finish()
    return headers


def _read_pool(ctx: Context, name: str, t: Table) -> PoolConfig:
    d = PoolConfig(name=name, servers=())
    servers = _read_servers(ctx, t)
    tls = t.boolean("tls", d.tls)
    ca = None
    if "ca" in t.data and (ca_text := t.required("ca", '"internal-ca.pem"')) is not None:
        ca = ctx.file(t.sub("ca"), ca_text)
        if not tls:
            ctx.warn(t.sub("ca"), "is ignored because tls is false")
    verify = t.boolean("verify", d.verify)
    if tls and not verify:
        ctx.warn(t.sub("verify"), "server certificates are not verified")
    server_name = t.string("server_name", d.server_name).lower()
    if server_name and not is_host_name(server_name):
        t.error("server_name", f"must be a DNS name, got {show(server_name)}")
    min_tls = _min_tls_version(t, d.min_tls_version, tls)
    pool = PoolConfig(
        name=name,
        servers=servers,
        tls=tls,
        ca=ca,
        verify=verify,
        server_name=server_name,
        min_tls_version=min_tls,
        ciphers=t.string("ciphers", d.ciphers),
        max_idle_per_server=t.number("max_idle_per_server", d.max_idle_per_server, integer=True),
        idle_timeout=t.seconds("idle_timeout", d.idle_timeout),
    )
    t.finish()
    return pool


def _read_servers(ctx: Context, t: Table) -> tuple[ServerConfig, ...]:
    value = t.raw("servers")
    if not isinstance(value, list) or not value:
        t.error("servers", 'needs at least one server, e.g. servers = ["10.0.0.5:443"]')
        return ()
    servers: list[ServerConfig] = []
    for i, item in enumerate(value):
        key = f"{t.sub('servers')}[{i}]"
        weight = 1
        if isinstance(item, dict):
            entry = Table(ctx, key, item)
            address = entry.required("address", '"10.0.0.5:443"')
            weight = entry.number("weight", 1, integer=True, low=1)
            entry.finish()
            key = entry.sub("address")
        else:
            address = item
        if address is None:
            continue
        if not isinstance(address, str):
            wanted = 'must be "host:port" or { address = "host:port" }'
            ctx.error(key, f"{wanted}, got {show(address)}")
            continue
        try:
            host, port = parse_address(address)
        except ValueError as exc:
            ctx.error(key, str(exc))
            continue
        server = ServerConfig(host=host, port=port, weight=weight)
        if any(other.host == host and other.port == port for other in servers):
            ctx.error(key, f"{server.address} is listed twice")
            continue
        servers.append(server)
    return tuple(servers)


# --- checks across sections --------------------------------------------------------------


def _check_references(ctx: Context, config: Config) -> None:
    listener_names = {listener.name for listener in config.listeners}
    service_names = {s.name for s in config.services}
    pool_names = {p.name for p in config.pools}
    for listener in config.listeners:
        for name in listener.services:
            if name not in service_names:
                ctx.error(
                    f"listeners.{listener.name}.services", _unknown("service", name, service_names)
                )
    for s in config.services:
        if s.pool and s.pool not in pool_names:
            ctx.error(f"services.{s.name}.pool", _unknown("pool", s.pool, pool_names))
        for name in s.listeners:
            if name not in listener_names:
                ctx.error(
                    f"services.{s.name}.listeners", _unknown("listener", name, listener_names)
                )
        if not any(s in config.services_for(listener) for listener in config.listeners):
            ctx.warn(f"services.{s.name}", "is not reachable from any listener")
    used = {s.pool for s in config.services}
    for p in config.pools:
        if p.name not in used:
            ctx.warn(f"pools.{p.name}", "is not used by any service")


def _unknown(what: str, name: str, known: set[str] | None = None) -> str:
    close = difflib.get_close_matches(name, sorted(known or ()), n=1, cutoff=0.6)
    hint = f'; did you mean "{close[0]}"?' if close else ""
    return f'there is no {what} named "{name}"{hint}'


def _check_binds(ctx: Context, listeners: tuple[ListenerConfig, ...]) -> None:
    seen: list[ListenerConfig] = []
    for listener in listeners:
        if listener.port == 0:
            continue  # any free port: never collides
        for other in seen:
            if other.port == listener.port and _hosts_overlap(other.host, listener.host):
                ctx.error(
                    f"listeners.{listener.name}.bind",
                    f"{listener.host}:{listener.port} is already bound by listener "
                    f'"{other.name}" ({other.host}:{other.port})',
                )
        seen.append(listener)


def _hosts_overlap(a: str, b: str) -> bool:
    if a == b:
        return True
    ia, ib = ipaddress.ip_address(a), ipaddress.ip_address(b)
    # A wildcard bind takes the port on every address of its family.
    return ia.version == ib.version and (ia.is_unspecified or ib.is_unspecified)


def _check_routes(ctx: Context, config: Config) -> None:
    for listener in config.listeners:
        claimed: dict[tuple[str, str], str] = {}
        for s in config.services_for(listener):
            for host in s.hosts:
                for path in s.paths:
                    owner = claimed.setdefault((host, path), s.name)
                    if owner != s.name:
                        ctx.error(
                            f"services.{s.name}.hosts",
                            f'host "{host}" path "{path}" on listener "{listener.name}" '
                            f'is already served by service "{owner}"',
                        )


# --- host names --------------------------------------------------------------------------
