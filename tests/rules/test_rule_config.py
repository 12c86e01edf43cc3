"""Reading `[[services.NAME.rules]]`: what loads, and every refusal naming file and key."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from revproxy.config import ConfigError, load_config, parse_config
from revproxy.config.model import MatchConfig, RuleConfig


def data_with(*rules: dict[str, Any]) -> dict[str, Any]:
    return {
        "listeners": {"l": {"bind": "127.0.0.1:0"}},
        "services": {"web": {"pool": "p", "rules": list(rules)}},
        "pools": {"p": {"servers": ["10.0.0.1:80"]}},
    }


def read(*rules: dict[str, Any]) -> tuple[RuleConfig, ...]:
    return parse_config(data_with(*rules), Path("x.toml"), check_files=False).services[0].rules


def problems(*rules: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        read(*rules)
    return info.value.problems


def test_a_full_rule_maps_onto_the_model() -> None:
    (rule,) = read(
        {
            "name": "meet",
            "continue": True,
            "match": {
                "hosts": ["Meet.Contoso.com", "*.contoso.com"],
                "path": "^/meet/(\\w+)",
                "path_kind": "regex",
                "methods": ["GET", "HEAD"],
                "query": "^$",
                "headers": {"User-Agent": "Android"},
                "ignore_case": True,
            },
            "set_request_headers": {"X-Meet": "1"},
            "add_request_headers": {"X-Tag": ["a", "b"]},
            "remove_request_headers": ["X-Debug"],
            "set_response_headers": {"Cache-Control": "no-store"},
            "add_response_headers": {"Set-Cookie": "seen=1"},
            "remove_response_headers": ["Server"],
            "rewrite": {"pattern": "^(/meet/[^?]*)$", "replace": "\\1?sl=1"},
            "replace_body": {"pattern": "old", "replace": "new"},
            "replace_content_types": ["text/*", "Application/JSON"],
            "replace_max_bytes": 4096,
        }
    )
    assert rule == RuleConfig(
        name="meet",
        match=MatchConfig(
            hosts=("meet.contoso.com", "*.contoso.com"),
            path="^/meet/(\\w+)",
            path_kind="regex",
            methods=("GET", "HEAD"),
            query="^$",
            headers=(("user-agent", "Android"),),
            ignore_case=True,
        ),
        set_request_headers=(("X-Meet", "1"),),
        add_request_headers=(("X-Tag", "a"), ("X-Tag", "b")),
        remove_request_headers=("x-debug",),
        set_response_headers=(("Cache-Control", "no-store"),),
        add_response_headers=(("Set-Cookie", "seen=1"),),
        remove_response_headers=("server",),
        rewrite=("^(/meet/[^?]*)$", "\\1?sl=1"),
        replace_body=("old", "new"),
        replace_content_types=("text/*", "application/json"),
        replace_max_bytes=4096,
        last=False,
    )


def test_defaults_and_answers() -> None:
    redirect, respond = read(
        {"match": {"path": "/old"}, "redirect": {"location": "https://{host}/new"}},
        {"respond": {"status": 404}},
    )
    assert redirect.name == "rule1" and redirect.last and redirect.match.path_kind == "prefix"
    assert redirect.redirect == (302, "https://{host}/new")
    assert respond.name == "rule2"
    assert respond.respond == (404, "text/plain; charset=utf-8", "")


def test_rules_from_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text(
        """
[listeners.l]
bind = "127.0.0.1:0"

[services.lync]
pool = "p"

  [[services.lync.rules]]
  name = "meet-web-app"
  match = { path = "/meet/", query = "^$" }
  rewrite = { pattern = '^(/meet/[^?]*)$', replace = '\\1?sl=1' }

  [[services.lync.rules]]
  name = "provisioning"
  [services.lync.rules.match]
  path = "/Autodiscover/"
  [services.lync.rules.replace_body]
  pattern = '"AutoDiscoverUrl":"http:'
  replace = '"AutoDiscoverUrl":"https:'

[pools.p]
servers = ["10.0.0.1:80"]
"""
    )
    meet, provisioning = load_config(path).services[0].rules
    assert meet.rewrite == ("^(/meet/[^?]*)$", "\\1?sl=1")
    assert provisioning.replace_body == ('"AutoDiscoverUrl":"http:', '"AutoDiscoverUrl":"https:')


R = "x.toml: services.web.rules[0]"

# (rule, the problems it causes)
REFUSED: list[tuple[dict[str, Any], list[str]]] = [
    (
        {"match": {"path": "^/(meet", "path_kind": "regex"}, "remove_request_headers": ["x"]},
        [
            f"{R}.match.path: is not a valid regular expression: missing ), unterminated subpattern"
            " at position 2"
        ],
    ),
    (
        {"match": {"query": "[a-"}, "remove_request_headers": ["x"]},
        [
            f"{R}.match.query: is not a valid regular expression: unterminated character set at"
            " position 0"
        ],
    ),
    (
        {"match": {"headers": {"User-Agent": "("}}, "remove_request_headers": ["x"]},
        [
            f"{R}.match.headers.User-Agent: is not a valid regular expression: missing ),"
            " unterminated subpattern at position 0"
        ],
    ),
    (
        {"match": {"path": "meet"}, "remove_request_headers": ["x"]},
        [f'{R}.match.path: must start with "/", got "meet"'],
    ),
    (
        {"match": {"path_kind": "exact"}, "remove_request_headers": ["x"]},
        [f"{R}.match.path_kind: is only used with path"],
    ),
    (
        {"match": {"path": "/", "path_kind": "glob"}, "remove_request_headers": ["x"]},
        [f'{R}.match.path_kind: must be one of "prefix", "exact", "regex", got "glob"'],
    ),
    (
        {"match": {"methods": ["get"]}, "remove_request_headers": ["x"]},
        [f'{R}.match.methods: each method is an upper-case token like "GET", got "get"'],
    ),
    (
        {"match": {"hosts": ["*"]}, "remove_request_headers": ["x"]},
        [f'{R}.match.hosts: "*" is not a host name, IP address or "*.name.tld"'],
    ),
    (
        {"match": {"pth": "/"}, "remove_request_headers": ["x"]},
        [f'{R}.match.pth: unknown key; did you mean "path"?'],
    ),
    (
        {"remove_request_headers": ["x"], "contineu": True},
        [f'{R}.contineu: unknown key; did you mean "continue"?'],
    ),
    (
        {"redirect": {"status": 200, "location": "/x"}},
        [f"{R}.redirect.status: must be 301, 302, 303, 307 or 308, got 200"],
    ),
    (
        {"redirect": {"status": 301}},
        [f'{R}.redirect.location: is required, e.g. "https://{{host}}{{target}}"'],
    ),
    (
        {"redirect": {"location": "/a b"}},
        [f"{R}.redirect.location: a URL is visible ASCII without spaces: percent-encode the rest"],
    ),
    (
        {"redirect": {"location": "https://x/\\1"}},
        [
            f"{R}.redirect.location: \\1 refers to a group the pattern does not have; groups come"
            ' from match.path with path_kind "regex"'
        ],
    ),
    (
        {"match": {"path": "^/(a)", "path_kind": "regex"}, "redirect": {"location": "/\\2"}},
        [f"{R}.redirect.location: \\2 refers to a group the pattern does not have"],
    ),
    (
        {"respond": {"status": 99}},
        [f"{R}.respond.status: must be a final status, 200 to 599, got 99"],
    ),
    (
        {"respond": {"status": 600}},
        [f"{R}.respond.status: must be a final status, 200 to 599, got 600"],
    ),
    ({"respond": {"status": 204, "body": "x"}}, [f"{R}.respond.body: a 204 response has no body"]),
    (
        {"redirect": {"location": "/a"}, "respond": {"status": 403}},
        [f"{R}.respond: a rule either redirects or responds, not both"],
    ),
    (
        {"redirect": {"location": "/a"}, "rewrite": {"pattern": "a", "replace": "b"}},
        [f"{R}.rewrite: cannot go with redirect: the request is answered, not forwarded"],
    ),
    (
        {"respond": {"status": 403}, "set_request_headers": {"X-A": "1"}},
        [
            f"{R}.set_request_headers: cannot go with respond: the request is answered, not"
            " forwarded"
        ],
    ),
    (
        {"respond": {"status": 403}, "continue": True},
        [f"{R}.continue: cannot be true with respond: answering ends the rules"],
    ),
    (
        {"match": {"path": "/"}},
        [
            f"{R}: the rule does nothing: give headers to set, add or remove, rewrite, redirect,"
            " respond or replace_body"
        ],
    ),
    (
        {"rewrite": {"pattern": "(a", "replace": "b"}},
        [
            f"{R}.rewrite.pattern: is not a valid regular expression: missing ), unterminated"
            " subpattern at position 0"
        ],
    ),
    (
        {"rewrite": {"pattern": "(a)", "replace": "\\g<x>"}},
        [f"{R}.rewrite.replace: \\g<x> refers to a group the pattern does not have"],
    ),
    (
        {"rewrite": {"pattern": "a", "replace": "\\n"}},
        [f'{R}.rewrite.replace: unknown escape "\\n" (write "\\\\" for a backslash)'],
    ),
    (
        {"rewrite": {"pattern": "a", "replace": "a b"}},
        [f"{R}.rewrite.replace: a path and query are visible ASCII: percent-encode the rest"],
    ),
    ({"rewrite": {"pattern": "a"}}, [f"{R}.rewrite.replace: is required, e.g. '\\1?sl=1'"]),
    ({"rewrite": "a"}, [f'{R}.rewrite: must be a table, got "a"']),
    (
        {"replace_body": {"pattern": "a", "replace": "b"}, "replace_max_bytes": 0},
        [f"{R}.replace_max_bytes: must be a positive integer, got 0"],
    ),
    (
        {"remove_request_headers": ["x"], "replace_max_bytes": 10},
        [f"{R}.replace_max_bytes: is only used with replace_body"],
    ),
    (
        {"replace_body": {"pattern": "a", "replace": "b"}, "replace_content_types": ["html"]},
        [
            f'{R}.replace_content_types: each entry is a media type like "text/html" or "text/*",'
            ' got "html"'
        ],
    ),
    (
        {"set_request_headers": {"Content-Length": "0"}},
        [
            f"{R}.set_request_headers.Content-Length: Content-Length is managed by the proxy and"
            " cannot be changed by a rule"
        ],
    ),
    (
        {"remove_request_headers": ["Host"]},
        [
            f"{R}.remove_request_headers: Host is managed by the proxy and cannot be changed by a"
            " rule"
        ],
    ),
    (
        {"add_response_headers": {"Transfer-Encoding": "chunked"}},
        [
            f"{R}.add_response_headers.Transfer-Encoding: Transfer-Encoding is managed by the"
            " proxy and cannot be changed by a rule"
        ],
    ),
    (
        {"set_response_headers": {"X-A": ["1", "2"]}},
        [f"{R}.set_response_headers.X-A: set takes one value; use add_... for several"],
    ),
    (
        {"set_response_headers": {"X-A": "a\r\nInjected: 1"}},
        [
            f"{R}.set_response_headers.X-A: must not contain control characters or surrounding"
            " spaces"
        ],
    ),
    (
        {"set_response_headers": {"Bad Name": "1"}},
        [f'{R}.set_response_headers."Bad Name": "Bad Name" is not a valid header name'],
    ),
    (
        {"set_response_headers": ["X-A"]},
        [
            f"{R}.set_response_headers: must be a table of header name = value, e.g. "
            '{ X-Example = "1" }'
        ],
    ),
]


@pytest.mark.parametrize(("rule", "expected"), REFUSED)
def test_refused_rules_name_file_and_key(rule: dict[str, Any], expected: list[str]) -> None:
    assert problems(rule) == expected


def test_rules_must_be_an_array_of_tables() -> None:
    data = data_with()
    data["services"]["web"]["rules"] = {"name": "x"}
    with pytest.raises(ConfigError) as info:
        parse_config(data, Path("x.toml"), check_files=False)
    assert info.value.problems == [
        "x.toml: services.web.rules: must be an array of tables: [[services.NAME.rules]]"
    ]


def test_rule_names_are_unique() -> None:
    rule = {"name": "a", "remove_request_headers": ["x"]}
    assert problems(rule, rule) == ['x.toml: services.web.rules[1].name: "a" is used twice']


def test_every_problem_of_a_file_is_reported_at_once() -> None:
    got = problems(
        {"match": {"query": "("}, "remove_request_headers": ["x"]},
        {"redirect": {"status": 200, "location": "/"}},
    )
    assert [p.split(": ")[1] for p in got] == [
        "services.web.rules[0].match.query",
        "services.web.rules[1].redirect.status",
    ]


def test_toml_literal_strings_keep_backslashes() -> None:
    # The documented spelling: '\1?sl=1' in single quotes is the two characters \ and 1.
    text = "rewrite = { pattern = '^(/meet/[^?]*)$', replace = '\\1?sl=1' }"
    assert tomllib.loads(text)["rewrite"]["replace"] == "\\1?sl=1"


def test_the_examples_in_docs_rules_md_load() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "rules.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert len(blocks) == 2
    for block in blocks:
        data: dict[str, Any] = tomllib.loads(block)
        for name, service in data["services"].items():
            service.update(pool="p", hosts=[f"{name}.contoso.com"])
        data["listeners"] = {"l": {"bind": "127.0.0.1:0"}}
        data["pools"] = {"p": {"servers": ["10.0.0.1:80"]}}
        assert parse_config(data, Path("x.toml"), check_files=False).services
