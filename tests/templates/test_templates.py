"""Service templates: expansion on the raw TOML, the shipped templates, their listing."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from revproxy.cli import main
from revproxy.config import Config, ConfigError, parse_config
from revproxy.config.templates import merge, render_expanded, templates

SHIPPED = (
    "adfs",
    "exchange",
    "generic-http",
    "generic-https",
    "lync-external-web",
    "lync-external-web-http",
    "office-web-apps",
    "office-web-apps-http",
    "redirect-https",
)


def config(service: dict[str, Any], pool: dict[str, Any] | None = None, **more: Any) -> Config:
    data: dict[str, Any] = {
        "listeners": {"l": {"bind": "127.0.0.1:0"}},
        "services": {"s": {"pool": "p", "hosts": ["sts.contoso.com"], **service}},
        "pools": {"p": {"servers": ["10.0.0.1:443"], **(pool or {})}},
    }
    for key, value in more.items():
        data[key] = merge(data[key], value)
    return parse_config(data, Path("x.toml"), check_files=False)


def problems(service: dict[str, Any], pool: dict[str, Any] | None = None, **more: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config(service, pool, **more)
    return info.value.problems


def test_every_template_is_shipped_and_described() -> None:
    assert tuple(templates()) == SHIPPED
    for template in templates().values():
        assert template.description
        # Each file says where its values come from.
        assert "come from" in template.text


@pytest.mark.parametrize("name", SHIPPED)
def test_each_template_loads_and_validates(name: str) -> None:
    c = config({"template": name})
    (service,) = c.services
    assert service.template == name


def test_lync_external_web_sets_what_microsoft_and_the_appliance_guides_ask() -> None:
    c = config({"template": "lync-external-web"}, {"servers": ["10.0.0.1:4443"]})
    s, p = c.services[0], c.pools[0]
    assert s.ntlm_pinning and not s.redirect_https and s.paths == ("/",)
    t = s.timeouts
    assert t.server_response_header == t.server_body_idle == t.client_body_idle == 1800
    assert t.keepalive_idle >= 960 and t.client_header == 10
    assert s.limits.max_body_bytes == 0
    assert (p.tls, p.verify, p.balance, p.persistence.type) == (True, True, "round_robin", "none")
    h = p.health
    assert (h.type, h.port, h.interval, h.timeout, h.fall, h.method) == (
        "https",
        0,
        9,
        4,
        2,
        "GET",
    )
    assert h.expect == ("200-299", "301", "302", "401")


def test_lync_external_web_http_and_office_web_apps() -> None:
    lync_http = config({"template": "lync-external-web-http"}, {"servers": ["10.0.0.1:8080"]})
    assert not lync_http.pools[0].tls and lync_http.pools[0].health.type == "http"
    assert lync_http.services[0].timeouts.server_response_header == 1800
    owa = config({"template": "office-web-apps"})
    assert owa.pools[0].tls and owa.pools[0].health.path == "/hosting/discovery"
    owa_http = config({"template": "office-web-apps-http"}, {"servers": ["10.0.0.1:80"]})
    assert not owa_http.pools[0].tls


def test_exchange_reaches_an_hour_and_streams_unlimited_bodies() -> None:
    c = config({"template": "exchange"})
    t = c.services[0].timeouts
    # ActiveSync heartbeat up to 59 minutes, RPC_IN_DATA/RPC_OUT_DATA for the session.
    assert t.server_response_header == t.server_body_idle == t.client_body_idle == 3600
    assert c.services[0].limits.max_body_bytes == 0
    assert c.pools[0].tls and c.pools[0].health.path == "/owa/healthcheck.htm"


def test_adfs_sends_the_service_name_as_sni() -> None:
    c = config({"template": "adfs", "hosts": ["STS.contoso.com", "adfs.contoso.com"]})
    assert c.pools[0].server_name == "sts.contoso.com"
    assert c.pools[0].tls and c.pools[0].verify
    assert (c.pools[0].health.type, c.pools[0].health.port) == ("http", 80)
    # The pool's own server_name wins, and then no exact first host is needed.
    c = config({"template": "adfs", "hosts": ["*.contoso.com"]}, {"server_name": "fs.contoso.com"})
    assert c.pools[0].server_name == "fs.contoso.com"


def test_adfs_needs_an_exact_first_host_when_the_pool_has_no_server_name() -> None:
    (problem,) = problems({"template": "adfs", "hosts": ["*.contoso.com"]})
    assert problem.startswith("x.toml: services.s.hosts: ")
    assert "must be an exact name" in problem and "server_name in [pools.p]" in problem


def test_redirect_https_template() -> None:
    s = config({"template": "redirect-https"}).services[0]
    assert s.redirect_https and s.redirect_status == 301


# (service keys, pool keys, check on the Config)
MERGES = [
    # The service's own key wins; the template's other keys in that table stay.
    (
        {"timeouts": {"server_response_header": 120}},
        {},
        lambda c: (
            (c.services[0].timeouts.server_response_header, c.services[0].timeouts.keepalive_idle)
            == (120, 1800)
        ),
    ),
    ({"ntlm_pinning": False}, {}, lambda c: c.services[0].ntlm_pinning is False),
    # Arrays are values: the service's replaces the template's.
    ({"paths": ["/meet", "/dialin"]}, {}, lambda c: c.services[0].paths == ("/meet", "/dialin")),
    # The pool part is merged into the pool; the pool's own keys win, at any depth.
    ({}, {"tls": False}, lambda c: c.pools[0].tls is False),
    (
        {},
        {"health": {"type": "tcp", "port": 5061}},
        lambda c: (
            (c.pools[0].health.type, c.pools[0].health.port, c.pools[0].health.interval)
            == ("tcp", 5061, 9)
        ),
    ),
    (
        {},
        {
            "persistence": {
                "type": "cookie",
                "cookie_name": "MS-WSMAN",
                "cookie_httponly": False,
                "cookie_max_age": 0,
                "cookie_always": True,
            }
        },
        lambda c: (
            (c.pools[0].persistence.type, c.pools[0].persistence.cookie_always) == ("cookie", True)
        ),
    ),
]


@pytest.mark.parametrize(("service", "pool", "check"), MERGES)
def test_service_and_pool_keys_win_over_the_template(
    service: dict[str, Any], pool: dict[str, Any], check: Any
) -> None:
    c = config({"template": "lync-external-web", **service}, pool)
    assert check(c)


def test_expansion_does_not_change_the_input_or_the_template() -> None:
    before = copy.deepcopy(templates()["lync-external-web"].service)
    data: dict[str, Any] = {
        "listeners": {"l": {"bind": "127.0.0.1:0"}},
        "services": {"s": {"pool": "p", "template": "lync-external-web", "timeouts": {}}},
        "pools": {"p": {"servers": ["10.0.0.1:443"]}},
    }
    original = copy.deepcopy(data)
    parse_config(data, Path("x.toml"), check_files=False)
    assert data == original
    assert templates()["lync-external-web"].service == before


def test_services_without_templates_are_untouched() -> None:
    c = config({})
    assert c.services[0].template == "" and c.pools[0].health.type == "none"


def test_unknown_template_names_the_key_and_lists_the_known_ones() -> None:
    (problem,) = problems({"template": "lync-external"})
    assert problem.startswith("x.toml: services.s.template: ")
    assert 'no template named "lync-external"' in problem
    assert 'did you mean "lync-external-web"?' in problem
    assert "known templates: " + ", ".join(SHIPPED) in problem


def test_template_name_must_be_a_string() -> None:
    (problem,) = problems({"template": 3})
    assert problem == "x.toml: services.s.template: must be a string, got 3"


def test_errors_in_merged_values_still_name_the_service_key() -> None:
    (problem,) = problems({"template": "exchange", "timeouts": {"server_body_idle": "long"}})
    assert problem == (
        'x.toml: services.s.timeouts.server_body_idle: must be a positive number, got "long"'
    )


def test_templated_services_sharing_a_pool_must_agree() -> None:
    two = {"services": {"t": {"pool": "p", "template": "generic-http", "hosts": ["b.test"]}}}
    tls, health = problems({"template": "generic-https"}, **two)
    assert tls == (
        'x.toml: services.t.template: template "generic-http" gives pools.p.tls = false, '
        'but service "s" (template "generic-https") gives true; set it in [pools.p]'
    )
    assert "pools.p.health.type" in health
    # Setting the disputed keys in the pool settles it.
    c = config(
        {"template": "generic-https"},
        {"tls": True, "health": {"type": "https"}},
        **two,
    )
    assert c.pools[0].tls and c.pools[0].health.type == "https"


def test_a_template_without_a_pool_part_shares_any_pool() -> None:
    more = {"services": {"t": {"pool": "p", "template": "redirect-https", "hosts": ["b.test"]}}}
    c = config({"template": "exchange"}, **more)
    assert c.pools[0].tls and c.services[1].redirect_https


def test_render_expanded_is_toml_with_the_effective_values() -> None:
    c = config(
        {
            "template": "lync-external-web",
            "rules": [{"match": {"path": "/meet/"}, "set_request_headers": {"X-A": "1"}}],
        }
    )
    text = render_expanded(c)
    data = tomllib.loads(text)
    service = data["services"]["s"]
    assert service["template"] == "lync-external-web"
    assert service["timeouts"]["server_response_header"] == 1800
    assert service["rules"][0]["match"]["path"] == "/meet/"
    assert service["rules"][0]["set_request_headers"] == [["X-A", "1"]]
    assert data["pools"]["p"]["health"]["interval"] == 9
    assert data["pools"]["p"]["servers"][0] == {
        "host": "10.0.0.1",
        "port": 443,
        "weight": 1,
        "state": "enabled",
    }


def test_template_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["template", "list"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == list(SHIPPED)
    assert main(["template", "show", "exchange"]) == 0
    assert capsys.readouterr().out == templates()["exchange"].text
    assert main(["template", "show", "nope"]) == 2
    err = capsys.readouterr().err
    assert 'no template named "nope"' in err and "lync-external-web" in err
