"""Loading and validating configuration files: every rule, one table row each."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

from revproxy.config import (
    Config,
    ConfigError,
    HeaderOptions,
    Limits,
    ListenerConfig,
    PoolConfig,
    ServerConfig,
    ServiceConfig,
    Timeouts,
    load_config,
    load_config_with_warnings,
    parse_address,
    parse_config,
)
from revproxy.config.load import parse_config_with_warnings

MINIMAL: dict[str, Any] = {
    "listeners": {"http": {"bind": "127.0.0.1:0"}},
    "services": {"web": {"pool": "web"}},
    "pools": {"web": {"servers": ["127.0.0.1:8080"]}},
}

FULL_TOML = """
[global]
workers = 2
log_level = "debug"
shutdown_grace = 5
max_connections = 500

[listeners.https]
bind = "127.0.0.1:0"
tls = true
min_tls_version = "1.3"
unknown_sni = "reject"
backlog = 64
  [[listeners.https.certificates]]
  cert = "certs/meet.pem"
  key = "certs/meet.key"
  chain = ["certs/intermediate.pem"]
  [[listeners.https.certificates]]
  cert = "certs/mail.pem"
  key = "certs/mail.key"

[listeners.http]
bind = ":0"
services = ["meet"]

[services.meet]
hosts = ["Meet.Demo.Test", "*.demo.test", "192.0.2.7", "[::1]"]
paths = ["/", "/meet"]
pool = "lync-web"
listeners = ["https"]
retries = 2
ntlm_pinning = false
  [services.meet.timeouts]
  client_header = 10
  server_response_header = 1800
  client_body_min_rate = 100
  [services.meet.limits]
  max_header_bytes = 65536
  max_body_bytes = 0
  [services.meet.headers]
  via = true
  trusted_proxies = ["10.0.0.0/8", "192.0.2.1"]

[pools.lync-web]
servers = ["127.0.0.1:4443", { address = "lync-fe2.internal:4443", weight = 3 }, "[::1]:4443"]
tls = true
ca = "certs/ca.pem"
verify = true
server_name = "Lync.Internal"
max_idle_per_server = 8
idle_timeout = 30.5
"""


def write_files(tmp_path: Path, text: str) -> Path:
    certs = tmp_path / "certs"
    certs.mkdir()
    for name in ("meet.pem", "meet.key", "intermediate.pem", "mail.pem", "mail.key", "ca.pem"):
        (certs / name).write_text("placeholder\n")
    path = tmp_path / "proxy.toml"
    path.write_text(text)
    return path


def problems(data: dict[str, Any], **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, Path("x.toml"), check_files=False, **kwargs)
    return info.value.problems


def with_(path: str, value: Any) -> dict[str, Any]:
    """MINIMAL with one dotted key set (None deletes it)."""
    data = copy.deepcopy(MINIMAL)
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value
    return data


def test_full_file_maps_onto_the_model(tmp_path: Path) -> None:
    path = write_files(tmp_path, FULL_TOML)
    config = load_config(path)
    assert isinstance(config, Config)
    assert config.source == path.absolute()
    assert config.global_.workers == 2 and config.global_.log_level == "debug"
    assert config.global_.shutdown_grace == 5.0 and isinstance(config.global_.shutdown_grace, float)
    https, http = config.listeners
    assert (https.name, https.host, https.tls, https.unknown_sni) == (
        "https",
        "127.0.0.1",
        True,
        "reject",
    )
    assert [c.cert.name for c in https.certificates] == ["meet.pem", "mail.pem"]
    first = https.certificates[0]
    assert first.cert == tmp_path / "certs" / "meet.pem" and first.cert.is_absolute()
    assert first.chain == (tmp_path / "certs" / "intermediate.pem",)
    assert https.min_tls_version == "1.3" and https.backlog == 64
    assert (http.host, http.port, http.tls, http.services) == ("0.0.0.0", 0, False, ("meet",))
    (meet,) = config.services
    assert meet.hosts == ("meet.demo.test", "*.demo.test", "192.0.2.7", "::1")
    assert meet.paths == ("/", "/meet") and meet.retries == 2 and meet.ntlm_pinning is False
    assert meet.timeouts == Timeouts(
        client_header=10.0, server_response_header=1800.0, client_body_min_rate=100
    )
    assert meet.limits == Limits(max_header_bytes=65536)
    assert meet.headers == HeaderOptions(via=True, trusted_proxies=("10.0.0.0/8", "192.0.2.1/32"))
    pool = config.pool("lync-web")
    assert pool.servers == (
        ServerConfig("127.0.0.1", 4443),
        ServerConfig("lync-fe2.internal", 4443, weight=3),
        ServerConfig("::1", 4443),
    )
    assert pool.ca == tmp_path / "certs" / "ca.pem"
    assert pool.server_name == "lync.internal" and pool.idle_timeout == 30.5
    assert pool.max_idle_per_server == 8
    assert config.services_for(https) == (meet,) and config.services_for(http) == (meet,)


def test_defaults_come_from_the_model() -> None:
    config = parse_config(copy.deepcopy(MINIMAL), Path("x.toml"))
    (listener,) = config.listeners
    assert listener == ListenerConfig(name="http", host="127.0.0.1", port=0)
    assert config.services == (ServiceConfig(name="web", pool="web"),)
    assert config.pools == (PoolConfig(name="web", servers=(ServerConfig("127.0.0.1", 8080),)),)


def test_relative_source_still_gives_absolute_paths(tmp_path: Path) -> None:
    write_files(tmp_path, FULL_TOML)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        config = load_config("proxy.toml")
    finally:
        os.chdir(cwd)
    assert config.source == tmp_path / "proxy.toml"
    assert config.listeners[0].certificates[0].key == tmp_path / "certs" / "meet.key"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        # types: bool is not a number, float is not an int, strings are not numbers
        ("global.workers", True, "global.workers: must be an integer >= 0, got true"),
        ("global.workers", 1.5, "global.workers: must be an integer >= 0, got 1.5"),
        ("global.workers", -1, "global.workers: must be an integer >= 0, got -1"),
        ("global.log_level", "loud", 'global.log_level: must be one of "debug"'),
        ("global.max_connections", 0, "global.max_connections: must be a positive integer"),
        ("global.verbose", True, "global.verbose: unknown key; known keys: log_level"),
        ("global", 3, "global: must be a table, got 3"),
        ("listeners.http.bind", None, "listeners.http.bind: is required"),
        ("listeners.http.bind", 8000, "listeners.http.bind: must be a non-empty string like"),
        ("listeners.http.bind", "127.0.0.1", "listeners.http.bind: '127.0.0.1' has no port"),
        ("listeners.http.bind", "1.2.3.4:70000", "port 70000 is outside 0..65535"),
        ("listeners.http.bind", "::1:80", "write IPv6 addresses in brackets"),
        ("listeners.http.bind", "localhost:80", "bind host 'localhost' must be an IP address"),
        ("listeners.http.tls", "yes", "listeners.http.tls: must be true or false"),
        ("listeners.http.tls", True, "listeners.http.certificates: a TLS listener needs"),
        ("listeners.http.certificates", [{"cert": "a", "key": "b"}], "but tls is false"),
        ("listeners.http.min_tls_version", "1.4", 'must be one of "1.0", "1.1", "1.2", "1.3"'),
        ("listeners.http.unknown_sni", "drop", 'must be one of "default", "reject"'),
        ("listeners.http.backlog", 0, "listeners.http.backlog: must be a positive integer"),
        ("listeners.http.services", ["nope"], 'there is no service named "nope"'),
        (
            "listeners.http.servics",
            [],
            'listeners.http.servics: unknown key; did you mean "services"?',
        ),
        ("listeners.http.proxy_protocol", "yes", "listeners.http.proxy_protocol: must be true"),
        (
            "listeners.http.proxy_protocol_from",
            ["10.0.0.0/8"],
            "listeners.http.proxy_protocol_from: is given but proxy_protocol is false",
        ),
        (
            "listeners.http.proxy_protocol_from",
            ["10.0.0.0/40"],
            'listeners.http.proxy_protocol_from: "10.0.0.0/40" is not an IP address or network',
        ),
        ("listeners", [], "listeners: must be tables keyed by listener name"),
        ("listeners.bad name", {"bind": ":0"}, "listeners.bad name: names use letters"),
        ("services.web.pool", "nope", 'services.web.pool: there is no pool named "nope"'),
        ("services.web.pool", "wab", 'did you mean "web"?'),
        ("services.web.pool", None, "services.web.pool: is required"),
        ("services.web.hosts", [], "services.web.hosts: must not be empty"),
        ("services.web.hosts", "a.b", "services.web.hosts: must be an array of strings"),
        ("services.web.hosts", ["*.com"], '"*.com" is not a host name'),
        ("services.web.hosts", ["*.*.b.c"], '"*.*.b.c" is not'),
        ("services.web.hosts", ["a.b:443"], '"a.b:443" is not'),
        ("services.web.hosts", ["-a.b"], '"-a.b" is not'),
        ("services.web.hosts", ["a..b"], '"a..b" is not'),
        ("services.web.hosts", ["a.b."], '"a.b." is not'),
        ("services.web.hosts", ["a b"], '"a b" is not'),
        ("services.web.paths", ["meet"], 'services.web.paths: each path must start with "/"'),
        ("services.web.paths", ["/a?b"], "each path must start with"),
        ("services.web.paths", [], "services.web.paths: must not be empty"),
        ("services.web.listeners", ["htp"], 'there is no listener named "htp"; did you mean'),
        ("services.web.retries", -1, "services.web.retries: must be an integer >= 0"),
        ("services.web.ntlm_pinning", 1, "services.web.ntlm_pinning: must be true or false"),
        (
            "services.web.timeouts.client_header",
            "ten",
            'timeouts.client_header: must be a positive number, got "ten"',
        ),
        ("services.web.timeouts.client_header", 0, "must be a positive number, got 0"),
        ("services.web.timeouts.client_header", False, "must be a positive number, got false"),
        ("services.web.timeouts.server_body_idle", 90000, "must be at most 86400, got 90000"),
        ("services.web.timeouts.client_body_min_rate", -5, "must be an integer >= 0"),
        ("services.web.timeouts.client_headers", 5, 'did you mean "client_header"?'),
        (
            "services.web.limits.max_header_bytes",
            0,
            "limits.max_header_bytes: must be a positive integer",
        ),
        (
            "services.web.limits.max_body_bytes",
            -1,
            "limits.max_body_bytes: must be an integer >= 0",
        ),
        ("services.web.limits.max_body_bytes", 1e6, "must be an integer >= 0, got 1000000.0"),
        ("services.web.headers.trusted_proxies", ["10.0.0.0/33"], '"10.0.0.0/33" is not an IP'),
        ("services.web.headers.via_name", "my proxy", "via_name: must be a token"),
        ("services.web.headers.x_forwarded_for", "true", "must be true or false"),
        ("services", {}, "services: at least one service is needed"),
        ("pools.web.servers", [], "pools.web.servers: needs at least one server"),
        ("pools.web.servers", None, "pools.web.servers: needs at least one server"),
        ("pools.web.servers", ["a.b"], "pools.web.servers[0]: 'a.b' has no port"),
        ("pools.web.servers", ["a.b:0"], "pools.web.servers[0]: port 0 is outside 1..65535"),
        ("pools.web.servers", ["a_b:80"], "'a_b' is not a valid host name"),
        ("pools.web.servers", [":80"], "pools.web.servers[0]: ':80' has no host"),
        ("pools.web.servers", [5], 'pools.web.servers[0]: must be "host:port"'),
        ("pools.web.servers", ["a.b:1", "A.b:1"], "servers[1]: a.b:1 is listed twice"),
        (
            "pools.web.servers",
            [{"address": "a.b:1", "weight": 0}],
            "servers[0].weight: must be a positive integer",
        ),
        (
            "pools.web.servers",
            [{"address": "a.b:1", "wieght": 2}],
            'servers[0].wieght: unknown key; did you mean "weight"?',
        ),
        ("pools.web.servers", [{"address": "[zz]:1"}], "servers[0].address: 'zz' inside brackets"),
        ("pools.web.min_tls_version", "2", "pools.web.min_tls_version: must be one of"),
        ("pools.web.proxy_protocol", "v3", 'pools.web.proxy_protocol: must be one of "off"'),
        ("pools.web.server_name", "bad name", "pools.web.server_name: must be a DNS name"),
        ("pools.web.idle_timeout", -1, "pools.web.idle_timeout: must be a positive number"),
        ("pools.web.max_idle_per_server", 1.0, "must be an integer >= 0"),
        ("pools.web.ca", 3, "pools.web.ca: must be a non-empty string"),
        (
            "tempaltes",
            {},
            "tempaltes: unknown key; known keys: "
            "access_log, admin, global, listeners, pools, services",
        ),
        ("pool", {}, 'pool: unknown key; did you mean "pools"?'),
    ],
)
def test_each_rule_names_file_and_key(key: str, value: Any, expected: str) -> None:
    found = problems(with_(key, value))
    assert any(p.startswith("x.toml: ") and expected in p for p in found), found


def test_all_problems_are_collected_and_printed_one_per_line() -> None:
    data = with_("global.workers", "two")
    data["services"]["web"]["timeouts"] = {"client_header": "ten"}
    data["pools"]["web"]["servers"] = ["nope"]
    with pytest.raises(ConfigError) as info:
        parse_config(data, Path("deploy/x.toml"))
    lines = str(info.value).splitlines()
    assert lines == info.value.problems and len(lines) == 3
    assert (
        'deploy/x.toml: services.web.timeouts.client_header: must be a positive number, got "ten"'
        in lines
    )


def test_int_accepted_where_float_wanted() -> None:
    data = with_("services.web.timeouts.tunnel_idle", 3600)
    config = parse_config(data, Path("x.toml"))
    value = config.services[0].timeouts.tunnel_idle
    assert value == 3600.0 and isinstance(value, float)


def test_tls_version_written_as_a_number_is_accepted() -> None:
    config = parse_config(with_("pools.web.min_tls_version", 1.3), Path("x.toml"))
    assert config.pools[0].min_tls_version == "1.3"


def test_duplicate_binds_and_wildcard_overlap() -> None:
    data = copy.deepcopy(MINIMAL)
    data["listeners"] = {
        "a": {"bind": "127.0.0.1:8000"},
        "b": {"bind": "127.0.0.1:8000"},
        "c": {"bind": ":8000"},
        "d": {"bind": "[::1]:8000"},
        "e": {"bind": "127.0.0.1:0"},
        "f": {"bind": "127.0.0.1:0"},
    }
    found = problems(data)
    assert any("listeners.b.bind: 127.0.0.1:8000 is already bound" in p for p in found)
    assert any(
        'listeners.c.bind: 0.0.0.0:8000 is already bound by listener "a"' in p for p in found
    )
    assert not any("listeners.d" in p or "listeners.e" in p or "listeners.f" in p for p in found)


def test_a_route_claimed_twice_is_an_error() -> None:
    data = copy.deepcopy(MINIMAL)
    data["listeners"]["other"] = {"bind": "127.0.0.1:0"}
    data["services"] = {
        "a": {"pool": "web", "hosts": ["a.test", "b.test"], "paths": ["/", "/x"]},
        "b": {"pool": "web", "hosts": ["B.test"], "paths": ["/x"], "listeners": ["other"]},
        "c": {"pool": "web", "hosts": ["b.test"], "paths": ["/y"]},
    }
    found = problems(data)
    assert found == [
        'x.toml: services.b.hosts: host "b.test" path "/x" on listener "other" '
        'is already served by service "a"'
    ]
    # Split by listener: no overlap.
    data["services"]["a"]["listeners"] = ["http"]
    parse_config(data, Path("x.toml"))


def test_files_must_exist_and_be_readable(tmp_path: Path) -> None:
    path = write_files(tmp_path, FULL_TOML)
    (tmp_path / "certs" / "mail.key").unlink()
    (tmp_path / "certs" / "ca.pem").unlink()
    (tmp_path / "certs" / "ca.pem").mkdir()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    found = info.value.problems
    assert found == [
        f"{path}: listeners.https.certificates[1].key: file not found: {tmp_path}/certs/mail.key",
        f"{path}: pools.lync-web.ca: not a regular file: {tmp_path}/certs/ca.pem",
    ]
    assert load_config(path, check_files=False).pools[0].ca == tmp_path / "certs" / "ca.pem"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    path = write_files(tmp_path, FULL_TOML)
    key = tmp_path / "certs" / "meet.key"
    key.chmod(0)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        f"{path}: listeners.https.certificates[0].key: file is not readable: {key}"
    ]


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[global]\nworkers = 2\nlog_level = "info\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: line 3, column ")
    assert "TOML syntax error" in problem


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.toml: cannot read"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "latin.toml").write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="latin.toml: not UTF-8"):
        load_config(tmp_path / "latin.toml")


def test_empty_file_needs_a_listener_and_a_service() -> None:
    assert problems({}) == [
        "x.toml: listeners: at least one listener is needed, e.g. [listeners.https]",
        "x.toml: services: at least one service is needed, e.g. [services.web]",
        "x.toml: pools: at least one pool is needed, e.g. [pools.web]",
    ]


def test_warnings_do_not_stop_loading(tmp_path: Path) -> None:
    data = copy.deepcopy(MINIMAL)
    data["listeners"]["http"]["services"] = ["web"]
    data["services"]["lonely"] = {"pool": "web", "hosts": ["a.test", "A.test"]}
    data["pools"]["spare"] = {"servers": ["127.0.0.1:1"], "ca": "ca.pem"}
    data["pools"]["old"] = {
        "servers": ["127.0.0.1:2"],
        "tls": True,
        "min_tls_version": "1.0",
        "verify": False,
    }
    config, warnings = parse_config_with_warnings(data, Path("x.toml"), check_files=False)
    assert [s.name for s in config.services] == ["web", "lonely"]
    assert warnings == [
        'x.toml: services.lonely.hosts: "A.test" is listed twice',
        "x.toml: pools.spare.ca: is ignored because tls is false",
        "x.toml: pools.old.verify: server certificates are not verified",
        "x.toml: pools.old.min_tls_version: TLS 1.0 is obsolete (RFC 8996)",
        "x.toml: services.lonely: is not reachable from any listener",
        "x.toml: pools.spare: is not used by any service",
        "x.toml: pools.old: is not used by any service",
    ]
    path = tmp_path / "w.toml"
    path.write_text(
        '[listeners.a]\nbind = "127.0.0.1:0"\nservices = ["s"]\n'
        '[services.s]\npool = "p"\n[services.t]\npool = "p"\nlisteners = ["a"]\n'
        '[pools.p]\nservers = ["127.0.0.1:80"]\n'
    )
    _, warnings = load_config_with_warnings(path)
    assert warnings == [f"{path}: services.t: is not reachable from any listener"]


@pytest.mark.parametrize(
    ("text", "bind", "expected"),
    [
        ("127.0.0.1:443", False, ("127.0.0.1", 443)),
        ("Web1.Internal:4443", False, ("web1.internal", 4443)),
        ("[::1]:8443", False, ("::1", 8443)),
        ("[2001:DB8::0:1]:80", True, ("2001:db8::1", 80)),
        (":8443", True, ("0.0.0.0", 8443)),
        ("[::]:0", True, ("::", 0)),
        (" 10.0.0.1:80 ", True, ("10.0.0.1", 80)),
    ],
)
def test_parse_address(text: str, bind: bool, expected: tuple[str, int]) -> None:
    assert parse_address(text, bind=bind) == expected


@pytest.mark.parametrize(
    ("text", "bind"),
    [
        ("", False),
        ("host", False),
        ("host:", False),
        ("host:http", False),
        ("host:-1", False),
        ("host:65536", False),
        ("host:0", False),
        (":80", False),
        ("[::1]80", False),
        ("[::1", False),
        ("1.2.3.4:+80", True),
        ("1.2.3.4:٣", True),
        ("web:80", True),
        ("::1:80", True),
        ("1.2.3:80", False),
    ],
)
def test_parse_address_rejects(text: str, bind: bool) -> None:
    with pytest.raises(ValueError):
        parse_address(text, bind=bind)


EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"


def test_demo_example_loads() -> None:
    config, warnings = load_config_with_warnings(EXAMPLES / "demo.toml", check_files=False)
    assert warnings == []
    assert [(lst.name, lst.host, lst.port, lst.tls) for lst in config.listeners] == [
        ("https", "127.0.0.1", 8443, True),
        ("http", "127.0.0.1", 8000, False),
    ]
    certs = EXAMPLES.parents[1] / "certs" / "dev"
    https = config.listeners[0]
    # The meet certificate is a .pfx with a password file and a DER intermediate, as an
    # administrator brings them; the mail one plain PEM files.
    assert [c.cert for c in https.certificates] == [
        certs / "public" / "meet.pfx",
        certs / "public" / "mail.pem",
    ]
    assert https.certificates[0].password_file == certs / "public" / "meet.pfx.password"
    assert https.certificates[0].chain == (certs / "public" / "intermediate.der",)
    assert https.certificates[1].chain == (certs / "public" / "intermediate.pem",)
    assert {p.name: [s.address for s in p.servers] for p in config.pools} == {
        "lync-https": ["127.0.0.11:4443", "127.0.0.12:4443"],
        "lync-http": ["127.0.0.11:8080", "127.0.0.12:8080"],
        "exchange-https": ["127.0.0.11:4444", "127.0.0.12:4444"],
        "exchange-http": ["127.0.0.11:8081", "127.0.0.12:8081"],
    }
    assert {p.health.type for p in config.pools} == {"http", "https"}
    assert config.admin.enabled and (config.admin.host, config.admin.port) == ("127.0.0.1", 9000)
    assert config.pool("lync-https").ca == certs / "internal" / "ca.pem"
    assert config.pool("lync-https").tls and config.pool("exchange-https").tls
    by_name = {s.name: s for s in config.services}
    assert set(by_name) == {"lync-https", "lync-http", "exchange-https", "exchange-http"}
    lync_hosts = {
        "meet.demo.test",
        "dialin.demo.test",
        "lyncdiscover.demo.test",
        "lyncdiscoverinternal.demo.test",
    }
    assert set(by_name["lync-https"].hosts) == lync_hosts
    assert set(by_name["lync-http"].hosts) == lync_hosts
    assert set(by_name["exchange-http"].hosts) == {"mail.demo.test", "autodiscover.demo.test"}
    assert config.services_for(https) == (by_name["lync-https"], by_name["exchange-https"])
    assert by_name["lync-https"].timeouts.server_response_header == 1800.0
    assert by_name["lync-https"].timeouts.client_body_idle == 1800.0


def test_production_example_parses() -> None:
    config, _ = load_config_with_warnings(EXAMPLES / "production.toml", check_files=False)
    binds = {(lst.host, lst.port) for lst in config.listeners}
    assert ("0.0.0.0", 443) in binds and ("0.0.0.0", 80) in binds
    for listener in config.listeners:
        for cert in listener.certificates:
            assert str(cert.cert).startswith("/etc/revproxy/")


def test_demo_example_finds_the_development_certificates() -> None:
    import secrets

    from revproxy.demo.certs import ensure_dev_certs

    # What `make run` prepares before loading the file: certificates and the admin token.
    dev = EXAMPLES.parents[1] / "certs" / "dev"
    ensure_dev_certs(dev)
    token = dev / "admin.token"
    if not token.exists():
        token.write_text(secrets.token_urlsafe(24) + "\n")
        token.chmod(0o600)
    config = load_config(EXAMPLES / "demo.toml")
    assert config.admin.token_file == token


def test_server_address_round_trips() -> None:
    for host, port in [("10.0.0.1", 1), ("web.internal", 65535), ("2001:db8::5", 443)]:
        assert parse_address(ServerConfig(host, port).address) == (host, port)


def test_proxy_protocol_sources_are_normalized() -> None:
    data = with_("listeners.http.proxy_protocol", True)
    data["listeners"]["http"]["proxy_protocol_from"] = ["10.1.2.3/8", "2001:DB8::1"]
    listener = parse_config(data, Path("x.toml"), check_files=False).listeners[0]
    assert listener.proxy_protocol is True
    assert listener.proxy_protocol_from == ("10.0.0.0/8", "2001:db8::1/128")
