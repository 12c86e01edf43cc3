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
    AccessLogConfig,
    AdminConfig,
    CertificateConfig,
    Config,
    GlobalConfig,
    HeaderOptions,
    HealthCheckConfig,
    Limits,
    ListenerConfig,
    PersistenceConfig,
    PoolConfig,
    ServerConfig,
    ServiceConfig,
    Timeouts,
)
from revproxy.config.reader import Context, Table, show
from revproxy.config.rules import read_rules
from revproxy.config.templates import expand_templates

TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")
UNKNOWN_SNI_ACTIONS = ("default", "reject")
LOG_LEVELS = ("debug", "info", "warning", "error")
PKCS12_SUFFIXES = (".pfx", ".p12")
SNI_MISMATCH_ACTIONS = ("allow", "reject")
BALANCE_METHODS = ("round_robin", "least_conn", "random_two", "source_hash")
PROXY_PROTOCOL_VERSIONS = ("off", "v1", "v2")
HEALTH_TYPES = ("none", "tcp", "http", "https")
PERSISTENCE_TYPES = ("none", "source_ip", "cookie")
SERVER_STATES = ("enabled", "disabled", "draining")
ACCESS_LOG_FORMATS = ("combined", "json")

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
    data = expand_templates(ctx, data)
    top = Table(ctx, "", data)
    global_ = _read_global(top.table("global"))
    admin = _read_admin(ctx, top.table("admin"), "admin" in data)
    access_log = _read_access_log(top.table("access_log"))
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
        admin=admin,
        access_log=access_log,
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
        chain_dir=_read_dir(ctx, t, "chain_dir"),
        sni_mismatch=t.string("sni_mismatch", d.sni_mismatch, SNI_MISMATCH_ACTIONS),
        services=t.strings("services", d.services),
        proxy_protocol=t.boolean("proxy_protocol", d.proxy_protocol),
        proxy_protocol_from=_networks(t, "proxy_protocol_from", d.proxy_protocol_from),
    )
    if listener.proxy_protocol_from and not listener.proxy_protocol:
        t.error("proxy_protocol_from", "is given but proxy_protocol is false")
    t.finish()
    return listener


def _networks(t: Table, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A list of IP addresses or networks, normalized ("10.0.0.0/8", "2001:db8::/32")."""
    networks = []
    for text in t.strings(key, default):
        try:
            networks.append(str(ipaddress.ip_network(text.strip(), strict=False)))
        except ValueError:
            t.error(key, f"{show(text)} is not an IP address or network")
    return tuple(networks)


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
        cert_text = c.required("cert", '"/etc/revproxy/certs/site.pfx"')
        cert = ctx.file(c.sub("cert"), cert_text) if cert_text is not None else None
        key_text = c.raw("key")
        key = None
        if key_text is not None:
            if isinstance(key_text, str) and key_text:
                key = ctx.file(c.sub("key"), key_text)
            else:
                c.error("key", f"must be a file name, got {show(key_text)}")
        elif cert is not None and cert.suffix.lower() not in PKCS12_SUFFIXES:
            c.error("key", "is required unless cert is a PKCS#12 (.pfx/.p12) file")
        password_file = None
        if (pw := c.raw("password_file")) is not None:
            if isinstance(pw, str) and pw:
                password_file = ctx.file(c.sub("password_file"), pw)
            else:
                c.error("password_file", f"must be a file name, got {show(pw)}")
        password_env = c.string("password_env", "")
        if password_file is not None and password_env:
            c.error("password_env", "give password_file or password_env, not both")
        chain = tuple(
            ctx.file(f"{c.sub('chain')}[{j}]", p) for j, p in enumerate(c.strings("chain", ()))
        )
        c.finish()
        if cert is not None:
            result.append(
                CertificateConfig(
                    cert=cert,
                    key=key,
                    chain=chain,
                    password_file=password_file,
                    password_env=password_env,
                )
            )
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
        retry_window=t.seconds("retry_window", d.retry_window),
        ntlm_pinning=t.boolean("ntlm_pinning", d.ntlm_pinning),
        template=t.string("template", d.template),
        redirect_https=t.boolean("redirect_https", d.redirect_https),
        redirect_status=_redirect_status(t, d.redirect_status),
        rules=read_rules(ctx, t),
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
    proxies = _networks(t, "trusted_proxies", d.trusted_proxies)
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
        trusted_proxies=proxies,
        underscores_in_headers=t.boolean("underscores_in_headers", d.underscores_in_headers),
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
        balance=t.string("balance", d.balance, BALANCE_METHODS),
        proxy_protocol=t.string("proxy_protocol", d.proxy_protocol, PROXY_PROTOCOL_VERSIONS),
        health=_read_health(ctx, t.table("health"), tls),
        persistence=_read_persistence(t.table("persistence")),
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
        state = "enabled"
        if isinstance(item, dict):
            entry = Table(ctx, key, item)
            address = entry.required("address", '"10.0.0.5:443"')
            weight = entry.number("weight", 1, integer=True, low=1)
            state = entry.string("state", state, SERVER_STATES)
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
        server = ServerConfig(host=host, port=port, weight=weight, state=state)
        if any(other.host == host and other.port == port for other in servers):
            ctx.error(key, f"{server.address} is listed twice")
            continue
        servers.append(server)
    return tuple(servers)


def _read_dir(ctx: Context, t: Table, name: str) -> Path | None:
    value = t.raw(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        t.error(name, f"must be a folder name, got {show(value)}")
        return None
    path = Path(os.path.abspath(ctx.base / Path(value).expanduser()))
    if ctx.check_files and not path.is_dir():
        t.error(name, f"folder not found: {path}")
    return path


def _redirect_status(t: Table, default: int) -> int:
    status: int = t.number("redirect_status", default, integer=True, low=300)
    if status not in (301, 302, 303, 307, 308):
        t.error("redirect_status", f"must be 301, 302, 303, 307 or 308, got {status}")
        return default
    return status


def _read_health(ctx: Context, t: Table, pool_tls: bool) -> HealthCheckConfig:
    d = HealthCheckConfig()
    kind = t.string("type", d.type, HEALTH_TYPES)
    expect = t.strings("expect", d.expect)
    for item in expect:
        if not re.fullmatch(r"[1-5][0-9][0-9](-[1-5][0-9][0-9])?", item):
            t.error("expect", f'each entry is a status or a range like "200-299", got {show(item)}')
    path = t.string("path", d.path)
    if not path.startswith("/"):
        t.error("path", f'must start with "/", got {show(path)}')
    ca = None
    if (ca_text := t.raw("ca")) is not None:
        if isinstance(ca_text, str) and ca_text:
            ca = ctx.file(t.sub("ca"), ca_text)
        else:
            t.error("ca", f"must be a file name, got {show(ca_text)}")
    interval = t.seconds("interval", d.interval)
    timeout = t.seconds("timeout", d.timeout)
    if timeout > interval:
        t.error("timeout", f"must not exceed interval ({interval:g} s)")
    health = HealthCheckConfig(
        type=kind,
        interval=interval,
        timeout=timeout,
        fall=t.number("fall", d.fall, integer=True, low=1, high=100),
        rise=t.number("rise", d.rise, integer=True, low=1, high=100),
        port=t.number("port", d.port, integer=True, high=65535),
        method=t.string("method", d.method, ("GET", "HEAD")),
        path=path,
        host=t.string("host", d.host),
        expect=expect,
        start_down=t.boolean("start_down", d.start_down),
        ca=ca,
        verify=t.boolean("verify", d.verify),
        passive_failures=t.number("passive_failures", d.passive_failures, integer=True),
        passive_statuses=_statuses(t, "passive_statuses", d.passive_statuses),
    )
    t.finish()
    return health


def _statuses(t: Table, name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    value = t.raw(name)
    if value is None:
        return default
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599 for v in value
    ):
        t.error(name, f"must be an array of HTTP statuses (100-599), got {show(value)}")
        return default
    return tuple(value)


def _read_persistence(t: Table) -> PersistenceConfig:
    d = PersistenceConfig()
    name = t.string("cookie_name", d.cookie_name)
    if not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name):
        t.error("cookie_name", f"must be a cookie name (a token), got {show(name)}")
    persistence = PersistenceConfig(
        type=t.string("type", d.type, PERSISTENCE_TYPES),
        timeout=t.seconds("timeout", d.timeout),
        cookie_name=name,
        cookie_path=t.string("cookie_path", d.cookie_path),
        cookie_domain=t.string("cookie_domain", d.cookie_domain),
        cookie_httponly=t.boolean("cookie_httponly", d.cookie_httponly),
        cookie_secure=t.boolean("cookie_secure", d.cookie_secure),
        cookie_max_age=t.number("cookie_max_age", d.cookie_max_age, integer=True),
        cookie_always=t.boolean("cookie_always", d.cookie_always),
    )
    t.finish()
    return persistence


def _read_admin(ctx: Context, t: Table, present: bool) -> AdminConfig:
    d = AdminConfig()
    host, port = d.host, d.port
    if (bind := t.raw("bind")) is not None:
        try:
            if not isinstance(bind, str):
                raise ValueError(f"must be an address like 127.0.0.1:9000, got {show(bind)}")
            host, port = parse_address(bind, bind=True)
        except ValueError as exc:
            t.error("bind", str(exc))
    token_file = None
    if (token := t.raw("token_file")) is not None:
        if isinstance(token, str) and token:
            token_file = ctx.file(t.sub("token_file"), token)
        else:
            t.error("token_file", f"must be a file name, got {show(token)}")
    admin = AdminConfig(
        enabled=t.boolean("enabled", present),
        host=host,
        port=port,
        token_file=token_file,
    )
    if admin.enabled and host not in ("127.0.0.1", "::1"):
        ctx.warn(t.sub("bind"), f"the admin server listens beyond loopback ({host})")
    t.finish()
    return admin


def _read_access_log(t: Table) -> AccessLogConfig:
    d = AccessLogConfig()
    log = AccessLogConfig(
        enabled=t.boolean("enabled", d.enabled),
        format=t.string("format", d.format, ACCESS_LOG_FORMATS),
        path=t.string("path", d.path),
        request_id_header=t.string("request_id_header", d.request_id_header),
    )
    t.finish()
    return log


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
