"""The rule engine: matching, actions, evaluation order, redirects and body replacement.

Rules are written as configuration (the dicts a TOML file gives), loaded through the real
loader and compiled, so each case checks the whole path from file to decision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from revproxy.config import parse_config
from revproxy.http.head import parse_request, parse_response
from revproxy.http.rules import (
    EMPTY_RULES,
    NO_ACTION,
    Answer,
    BodyReplacer,
    RequestAction,
    ResponseEdits,
    RuleSet,
    compile_rules,
    service_rules,
)


def rules(*items: dict[str, Any], **service: Any) -> RuleSet:
    data = {
        "listeners": {"l": {"bind": "127.0.0.1:0"}},
        "services": {"web": {"pool": "p", "rules": list(items), **service}},
        "pools": {"p": {"servers": ["10.0.0.1:80"]}},
    }
    return service_rules(parse_config(data, Path("x.toml"), check_files=False).services[0])


def run(ruleset: RuleSet, request: bytes) -> RequestAction:
    req = parse_request(request.rstrip(b"\r\n"))
    return ruleset.on_request(req.method, req.host, req.target, req.header)


def head(method: str, target: str, *lines: str, host: str = "meet.contoso.com") -> bytes:
    return "\r\n".join((f"{method} {target} HTTP/1.1", f"Host: {host}", *lines)).encode()


MARK = {"set_request_headers": {"X-Matched": "1"}}

# (match table, request head, matches?)
MATCHING: list[tuple[dict[str, Any], bytes, bool]] = [
    ({}, head("GET", "/"), True),
    ({"path": "/meet/"}, head("GET", "/meet/alice/X1"), True),
    ({"path": "/meet/"}, head("GET", "/meetings/"), False),
    ({"path": "/meet/"}, head("GET", "/Meet/alice"), False),
    ({"path": "/meet/", "ignore_case": True}, head("GET", "/Meet/alice"), True),
    # Percent-encoded unreserved characters are the characters (RFC 3986 §6.2.2.2).
    ({"path": "/meet/"}, head("GET", "/%6Deet/alice"), True),
    # Runs of slashes are one; a configured path is read the same way as a requested one.
    ({"path": "/meet/"}, head("GET", "//meet//alice"), True),
    ({"path": "/%7Ejoe/"}, head("GET", "/~joe/x"), True),
    ({"path": "/a//b", "path_kind": "exact"}, head("GET", "/a/b"), True),
    ({"path": "/a%2Fb", "path_kind": "exact"}, head("GET", "/a%2Fb"), True),
    ({"path": "/abs", "path_kind": "exact"}, head("GET", "/abs"), True),
    ({"path": "/abs", "path_kind": "exact"}, head("GET", "/abs/"), False),
    ({"path": "/abs", "path_kind": "exact"}, head("GET", "/abs?x=1"), True),
    ({"path": "^/(ucwa|mcx)/", "path_kind": "regex"}, head("GET", "/mcx/v1"), True),
    ({"path": "^/(ucwa|mcx)/", "path_kind": "regex"}, head("GET", "/x/mcx/v1"), False),
    ({"path": "^/ucwa/", "path_kind": "regex", "ignore_case": True}, head("GET", "/UCWA/"), True),
    ({"hosts": ["meet.contoso.com"]}, head("GET", "/", host="MEET.contoso.com:443"), True),
    ({"hosts": ["meet.contoso.com"]}, head("GET", "/", host="dialin.contoso.com"), False),
    ({"hosts": ["*.contoso.com"]}, head("GET", "/", host="dialin.contoso.com"), True),
    ({"hosts": ["*.contoso.com"]}, head("GET", "/", host="a.b.contoso.com"), False),
    ({"hosts": ["*.contoso.com"]}, head("GET", "/", host="contoso.com"), False),
    ({"hosts": ["::1"]}, head("GET", "/", host="[::1]:8443"), True),
    ({"methods": ["POST", "PUT"]}, head("POST", "/"), True),
    ({"methods": ["POST", "PUT"]}, head("GET", "/"), False),
    ({"methods": ["RPC_IN_DATA"]}, head("RPC_IN_DATA", "/rpc/rpcproxy.dll?x:6001"), True),
    ({"query": "^$"}, head("GET", "/meet/a"), True),
    ({"query": "^$"}, head("GET", "/meet/a?"), True),
    ({"query": "^$"}, head("GET", "/meet/a?sl=1"), False),
    ({"query": "(^|&)sl=1(&|$)"}, head("GET", "/meet/a?x=2&sl=1"), True),
    ({"query": "SL=1", "ignore_case": True}, head("GET", "/meet/a?sl=1"), True),
    ({"headers": {"User-Agent": "Android"}}, head("GET", "/", "User-Agent: X Android 9"), True),
    ({"headers": {"User-Agent": "Android"}}, head("GET", "/", "User-Agent: iPhone"), False),
    ({"headers": {"User-Agent": ""}}, head("GET", "/"), False),  # absent header never matches
    ({"headers": {"X-A": "^1$", "X-B": "2"}}, head("GET", "/", "x-a: 1", "X-B: 22"), True),
    ({"headers": {"X-A": "^1$", "X-B": "2"}}, head("GET", "/", "x-a: 1"), False),
    (
        {"path": "/meet/", "methods": ["GET"], "query": "^$", "hosts": ["meet.contoso.com"]},
        head("GET", "/meet/x"),
        True,
    ),
]


@pytest.mark.parametrize(("match", "request_head", "matches"), MATCHING)
def test_matching(match: dict[str, Any], request_head: bytes, matches: bool) -> None:
    action = run(rules({"match": match, **MARK}), request_head)
    assert (action.rules == ("rule1",)) is matches
    assert (action.headers.set == ((b"x-matched", b"1"),)) is matches


def test_no_rules_cost_nothing() -> None:
    assert compile_rules(()) is EMPTY_RULES and not EMPTY_RULES
    assert not rules()
    assert run(rules({"match": {"path": "/x"}, **MARK}), head("GET", "/")) is NO_ACTION


def test_meet_urls_get_sl_1() -> None:
    """The appliance guides' example: /meet URLs without a query get ?sl=1."""
    meet = rules(
        {
            "name": "meet-web-app",
            "match": {"path": "/meet/", "query": "^$"},
            "rewrite": {"pattern": "^(/meet/[^?]*)$", "replace": "\\1?sl=1"},
        }
    )
    assert run(meet, head("GET", "/meet/alice/F00D")).target == b"/meet/alice/F00D?sl=1"
    assert run(meet, head("GET", "/meet/alice/F00D?sl=0")) is NO_ACTION
    assert run(meet, head("GET", "/dialin/")) is NO_ACTION
    action = run(meet, head("GET", "/meet/alice/F00D"))
    assert action.rules == ("meet-web-app",) and action.answer is None


# (rewrite table, target, new target or None)
REWRITES: list[tuple[dict[str, str], bytes, bytes | None]] = [
    ({"pattern": "^/old/", "replace": "/new/"}, b"/old/a?q=1", b"/new/a?q=1"),
    ({"pattern": "^/old/", "replace": "/new/"}, b"/other", None),
    ({"pattern": "^/(\\w+)/(\\w+)", "replace": "/\\2/\\1"}, b"/a/b/c", b"/b/a/c"),
    ({"pattern": "^/(?P<u>\\w+)$", "replace": "/u?name=\\g<u>"}, b"/bob", b"/u?name=bob"),
    ({"pattern": "\\?.*$", "replace": ""}, b"/a?drop=1", b"/a"),
    ({"pattern": "$", "replace": "?h={host}"}, b"/a", b"/a?h=meet.contoso.com"),
    ({"pattern": "^.*$", "replace": "/x{path}"}, b"/a?b", b"/x/a"),
    ({"pattern": "^.*$", "replace": "/{query}"}, b"/a?b", b"/b"),
    # A doubled backslash in "replace" is a literal one (in the query: a path may not hold one).
    ({"pattern": "^/(a)", "replace": "/a?\\\\\\1"}, b"/a", b"/a?\\a"),
    ({"pattern": "^/a", "replace": "/{unknown}"}, b"/a", b"/{unknown}"),
]


@pytest.mark.parametrize(("rewrite", "target", "expected"), REWRITES)
def test_rewrite(rewrite: dict[str, str], target: bytes, expected: bytes | None) -> None:
    action = run(rules({"rewrite": rewrite}), b"GET %s HTTP/1.1\r\nHost: meet.contoso.com" % target)
    assert action.target == expected


def test_a_rewrite_that_escapes_the_path_is_answered_500() -> None:
    up = rules({"rewrite": {"pattern": "^/a/(\\w*)", "replace": "/\\1/../admin"}})
    action = run(up, head("GET", "/a/x"))
    assert action.answer is not None and action.answer.status == 500
    assert action.target is None and action.rules == ("rule1",)
    # A backslash, or a dot-segment between encoded separators, climbs out on some servers.
    for replace in ("/\\1\\\\x", "/\\1%2F..%2Fadmin"):
        escaping = rules({"rewrite": {"pattern": "^/a/(\\w*)", "replace": replace}})
        answer = run(escaping, head("GET", "/a/x")).answer
        assert answer is not None and answer.status == 500, replace
    # Dots that are not a whole segment are fine.
    dots = rules({"rewrite": {"pattern": "^/a/", "replace": "/..x/"}})
    assert run(dots, head("GET", "/a/y")).target == b"/..x/y"


def test_header_edits_apply_in_order() -> None:
    ruleset = rules(
        {
            "continue": True,
            "remove_request_headers": ["X-Debug"],
            "set_request_headers": {"X-Env": "dmz"},
            "add_request_headers": {"X-Tag": ["a", "b"]},
        },
        {"remove_request_headers": ["X-Tag"], "add_request_headers": {"X-Tag": "c"}},
    )
    req = parse_request(head("GET", "/", "X-Debug: 1", "X-Env: lab", "X-Env: lab2", "Accept: */*"))
    action = ruleset.on_request(req.method, req.host, req.target, req.header)
    assert action.rules == ("rule1", "rule2")
    edited = action.headers.apply(req.headers)
    assert [line for _, _, line in edited] == [
        b"Host: meet.contoso.com",
        b"Accept: */*",
        b"X-Env: dmz",
        b"X-Tag: c",
    ]
    assert [lname for lname, _, _ in req.headers][1] == b"x-debug"  # input left alone


# (rules, target, names of the rules that matched)
EVALUATION: list[tuple[list[dict[str, Any]], bytes, tuple[str, ...]]] = [
    # First match wins by default.
    ([{"name": "a", **MARK}, {"name": "b", **MARK}], b"/", ("a",)),
    ([{"name": "a", "match": {"path": "/x"}, **MARK}, {"name": "b", **MARK}], b"/", ("b",)),
    # continue lets later rules match too, until one without it.
    (
        [
            {"name": "a", "continue": True, **MARK},
            {"name": "b", "continue": True, **MARK},
            {"name": "c", **MARK},
            {"name": "d", **MARK},
        ],
        b"/",
        ("a", "b", "c"),
    ),
    # Conditions see the request as the client sent it, not an earlier rewrite.
    (
        [
            {"name": "a", "continue": True, "rewrite": {"pattern": "^/x", "replace": "/y"}},
            {"name": "b", "match": {"path": "/y"}, **MARK},
            {"name": "c", "match": {"path": "/x"}, **MARK},
        ],
        b"/x",
        ("a", "c"),
    ),
]


@pytest.mark.parametrize(("items", "target", "names"), EVALUATION)
def test_evaluation_order(
    items: list[dict[str, Any]], target: bytes, names: tuple[str, ...]
) -> None:
    action = run(rules(*items), b"GET %s HTTP/1.1\r\nHost: h.test" % target)
    assert action.rules == names


def test_rewrites_chain() -> None:
    ruleset = rules(
        {"continue": True, "rewrite": {"pattern": "^/a", "replace": "/b"}},
        {"rewrite": {"pattern": "^/b", "replace": "/c"}},
    )
    assert run(ruleset, head("GET", "/a/1")).target == b"/c/1"


# (redirect table, path match, request target, status, Location)
REDIRECTS: list[tuple[dict[str, Any], dict[str, Any], bytes, int, bytes]] = [
    ({"location": "https://{host}{target}"}, {}, b"/a?b=1", 302, b"https://meet.contoso.com/a?b=1"),
    ({"status": 301, "location": "/new"}, {"path": "/old"}, b"/old", 301, b"/new"),
    (
        {"status": 308, "location": "https://lync.contoso.com/\\1/\\g<id>"},
        {"path": "^/meet/(\\w+)/(?P<id>\\w+)", "path_kind": "regex"},
        b"/meet/alice/F00D?x",
        308,
        b"https://lync.contoso.com/alice/F00D",
    ),
    ({"status": 303, "location": "/q?{query}"}, {}, b"/p?a=1", 303, b"/q?a=1"),
    (
        {"status": 307, "location": "{path}/"},
        {"path": "/owa", "path_kind": "exact"},
        b"/owa",
        307,
        b"/owa/",
    ),
]


@pytest.mark.parametrize(("redirect", "match", "target", "status", "location"), REDIRECTS)
def test_redirect(
    redirect: dict[str, Any], match: dict[str, Any], target: bytes, status: int, location: bytes
) -> None:
    ruleset = rules({"match": match, "redirect": redirect})
    action = run(ruleset, b"GET %s HTTP/1.1\r\nHost: meet.contoso.com:443" % target)
    assert action.answer is not None and action.target is None and not action.headers
    assert action.answer.status == status
    assert action.answer.headers == ((b"location", location, b"Location: " + location),)


def test_respond_and_answer_bytes() -> None:
    ruleset = rules(
        {"name": "tag", "continue": True, "add_response_headers": {"X-Served-By": "dmz"}},
        {
            "match": {"path": "/robots.txt", "path_kind": "exact"},
            "respond": {"status": 200, "body": "User-agent: *\nDisallow: /\n"},
            "set_response_headers": {"Cache-Control": "max-age=86400"},
        },
    )
    action = run(ruleset, head("GET", "/robots.txt"))
    assert action.rules == ("tag", "rule2") and action.answer is not None
    body = b"User-agent: *\nDisallow: /\n"
    assert (
        action.answer.encode(close=True)
        == (
            b"HTTP/1.1 200 OK\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"X-Served-By: dmz\r\n"
            b"Cache-Control: max-age=86400\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n"
            b"\r\n" % len(body)
        )
        + body
    )
    assert action.answer.encode(head_only=True).endswith(b"Content-Length: %d\r\n\r\n" % len(body))
    assert Answer(204).encode() == b"HTTP/1.1 204 No Content\r\n\r\n"


# (Host sent, target, status, Location)
REDIRECT_HTTPS: list[tuple[bytes, bytes, int, bytes]] = [
    (b"mail.contoso.com", b"/owa/?path=/mail", 301, b"https://mail.contoso.com/owa/?path=/mail"),
    (b"Mail.Contoso.com:80", b"/", 301, b"https://Mail.Contoso.com/"),
    (b"[2001:db8::1]:80", b"/a?b", 301, b"https://[2001:db8::1]/a?b"),
]


@pytest.mark.parametrize(("host", "target", "status", "location"), REDIRECT_HTTPS)
def test_redirect_https_keeps_host_path_and_query(
    host: bytes, target: bytes, status: int, location: bytes
) -> None:
    ruleset = rules(redirect_https=True)
    assert ruleset
    action = run(ruleset, b"GET %s HTTP/1.1\r\nHost: %s" % (target, host))
    assert action.answer == Answer(status, ((b"location", location, b"Location: " + location),))


def test_redirect_https_status_and_rules_first() -> None:
    ruleset = rules(
        {
            "match": {"path": "/.well-known/acme-challenge/"},
            "respond": {"status": 404},
        },
        {"continue": True, "rewrite": {"pattern": "^/exchange", "replace": "/owa"}},
        redirect_https=True,
        redirect_status=308,
    )
    answer = run(ruleset, head("GET", "/.well-known/acme-challenge/t")).answer
    assert answer is not None and answer.status == 404
    answer = run(ruleset, head("GET", "/exchange?x")).answer
    assert answer is not None and answer.status == 308
    assert answer.headers[0][1] == b"https://meet.contoso.com/owa?x"
    http10 = ruleset.on_request(b"GET", b"", b"/", lambda _: None).answer
    assert http10 is not None and http10.status == 400


# --- responses ---------------------------------------------------------------------------

REPLACE = {
    "replace_body": {"pattern": "http://(\\w+)\\.internal", "replace": "https://\\1.contoso.com"},
    "replace_max_bytes": 64,
}


def response_edits(**extra: Any) -> ResponseEdits:
    action = run(rules({**REPLACE, **extra}), head("GET", "/", "Accept-Encoding: gzip"))
    assert action.response is not None
    # The server is asked for an uncompressed body, so the text can be found.
    assert action.headers.remove == (b"accept-encoding",)
    return action.response


def response(*lines: str, status: int = 200) -> list[tuple[bytes, bytes, bytes]]:
    text = "\r\n".join((f"HTTP/1.1 {status} X", *lines))
    return parse_response(text.encode(), b"GET").headers


def test_body_replacement_within_the_limit() -> None:
    edits = response_edits()
    headers = response(
        "Content-Type: text/html; charset=utf-8", "Content-Length: 40", 'ETag: "1"', "X-A: 1"
    )
    replacer = edits.body_replacer(b"GET", 200, headers)
    assert replacer is not None
    # Split anywhere, even inside a match: the whole body is replaced at once.
    out = replacer.feed(b"<a href='http://lyn") + replacer.feed(b"c.internal/x'>")
    assert out == b""
    assert replacer.finish() == b"<a href='https://lync.contoso.com/x'>"
    # The head loses what described the original body; the data plane sends it chunked.
    kept = edits.apply_headers(headers, replacing=True)
    assert [lname for lname, _, _ in kept] == [b"content-type", b"x-a"]


def test_body_past_the_limit_streams_unchanged() -> None:
    edits = response_edits()
    # Chunked (length unknown): buffered up to 64 bytes, then given back unchanged.
    replacer = edits.body_replacer(b"GET", 200, response("Content-Type: text/plain"))
    assert replacer is not None
    first = b"http://a.internal " * 3  # 57 bytes: held
    assert replacer.feed(first) == b""
    assert replacer.feed(b"more than 7") == first + b"more than 7"
    assert replacer.feed(b"http://b.internal") == b"http://b.internal"
    assert replacer.finish() == b""
    # A declared length over the limit is never touched: the head keeps Content-Length.
    too_big = response("Content-Type: text/plain", "Content-Length: 65")
    assert edits.body_replacer(b"GET", 200, too_big) is None
    assert edits.body_replacer(
        b"GET", 200, response("Content-Type: text/plain", "Content-Length: 64")
    )


# (method, status, response fields, replaced?)
APPLIES: list[tuple[bytes, int, tuple[str, ...], bool]] = [
    (b"GET", 200, ("Content-Type: text/html",), True),
    (b"GET", 404, ("Content-Type: text/html",), True),
    (b"GET", 200, ("Content-Type: TEXT/HTML; charset=x",), True),
    (b"GET", 200, ("Content-Type: application/json",), True),
    (b"GET", 200, ("Content-Type: image/png",), False),
    (b"GET", 200, (), False),  # no content type: not text we know
    (b"GET", 200, ("Content-Type: text/html", "Content-Encoding: gzip"), False),
    (b"GET", 200, ("Content-Type: text/html", "Content-Encoding: identity"), True),
    (b"HEAD", 200, ("Content-Type: text/html",), False),
    (b"GET", 206, ("Content-Type: text/html",), False),
    (b"GET", 204, ("Content-Type: text/html",), False),
    (b"GET", 304, ("Content-Type: text/html",), False),
]


@pytest.mark.parametrize(("method", "status", "fields", "replaced"), APPLIES)
def test_which_responses_are_replaced(
    method: bytes, status: int, fields: tuple[str, ...], replaced: bool
) -> None:
    headers = response(*fields, status=status)
    assert (response_edits().body_replacer(method, status, headers) is not None) is replaced


def test_content_type_wildcards() -> None:
    edits = response_edits(replace_content_types=["text/*"])
    assert edits.body_replacer(b"GET", 200, response("Content-Type: text/xml"))
    assert edits.body_replacer(b"GET", 200, response("Content-Type: application/json")) is None


def test_body_replacer_without_a_match_passes_bytes_through() -> None:
    spec = response_edits().bodies
    replacer = BodyReplacer(spec, b"image/png", None)
    assert not replacer.active and replacer.feed(b"x") == b"x" and replacer.finish() == b""


def test_response_header_edits() -> None:
    ruleset = rules(
        {
            "set_response_headers": {"Cache-Control": "no-store"},
            "add_response_headers": {"Set-Cookie": "a=1"},
            "remove_response_headers": ["Server", "X-Powered-By"],
        }
    )
    action = run(ruleset, head("GET", "/"))
    assert action.response is not None and not action.response.bodies
    headers = response(
        "Server: Microsoft-IIS/8.5", "Cache-Control: private", "Set-Cookie: b=2", "X-Powered-By: x"
    )
    edited = action.response.apply_headers(headers)
    assert [line for _, _, line in edited] == [
        b"Set-Cookie: b=2",
        b"Cache-Control: no-store",
        b"Set-Cookie: a=1",
    ]
    assert action.response.body_replacer(b"GET", 200, headers) is None
