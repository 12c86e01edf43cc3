"""Content rules through the whole proxy: what the server receives, what the client gets.

One proxy serves the module, with a plain listener and one service per concern, told
apart by Host:
- meet.test: the vendors' `?sl=1` rule for `/meet/`, behind a `continue` rule;
- hdr.test: request and response header edits;
- www.test: `redirect_https = true`;
- ans.test: rules that answer by themselves (fixed answer, redirect with a group);
- body.test: response body replacement, with a small `replace_max_bytes`.
Scripted servers record the exact bytes they receive (docs/rules.md is the contract).
"""

from __future__ import annotations

import gzip
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import (
    REPO,
    ProxyProcess,
    Received,
    ResponseReader,
    ScriptedServer,
    by_path,
    connect,
    http_response,
    read_until_closed,
)

LIMIT = 4096  # replace_max_bytes of body.test
OLD = b"http://lync.internal"
NEW = b"https://lync.contoso.com"


def _html(size: int) -> bytes:
    """An HTML body of exactly `size` bytes with OLD at its start, middle and end."""
    head = b"<html><a href='" + OLD + b"/a'>a</a>"
    tail = b"<a href='" + OLD + b"/z'>z</a></html>"
    middle = b"<p>" + OLD + b"</p>"
    filler = size - len(head) - len(tail) - len(middle)
    assert filler >= 0
    half = filler // 2
    return head + b"x" * half + middle + b"y" * (filler - half) + tail


SMALL = _html(1000)
AT_LIMIT = _html(LIMIT)
OVER_LIMIT = _html(LIMIT + 1)
GZIPPED = gzip.compress(SMALL, mtime=0)


def _chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def _send_close_delimited(req: Received, sock: socket.socket) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n")
    sock.sendall(SMALL)
    sock.shutdown(socket.SHUT_WR)
    return None


def _send_slowly(*parts: bytes):  # type: ignore[no-untyped-def]
    """A responder sending `parts` with pauses, so that they arrive in separate reads."""

    def respond(req: Received, sock: socket.socket) -> bytes:
        for part in parts:
            sock.sendall(part)
            time.sleep(0.05)
        return b""

    return respond


_HTML_ETAG = ("Content-Type: text/html; charset=utf-8", 'ETag: "v1"', "Accept-Ranges: bytes")

BODY_ROUTES = {
    "/r/small": lambda req, sock: http_response(200, SMALL, _HTML_ETAG),
    "/r/at-limit": lambda req, sock: http_response(200, AT_LIMIT, _HTML_ETAG),
    "/r/over-limit": lambda req, sock: http_response(200, OVER_LIMIT, _HTML_ETAG),
    "/r/gzip": lambda req, sock: http_response(
        200, GZIPPED, ("Content-Type: text/html", "Content-Encoding: gzip")
    ),
    "/r/image": lambda req, sock: http_response(200, SMALL, ("Content-Type: image/png",)),
    # A match split between two chunks: the replacement still finds it.
    "/r/chunked-small": lambda req, sock: (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        + _chunked(b"see http://lync.", b"internal/x and " + OLD + b"/y")
    ),
    # Chunked, growing past the limit: passed on unchanged.
    "/r/chunked-big": lambda req, sock: (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n"
        + _chunked(OLD, b"a" * 3000, OLD, b"b" * 3000, OLD)
    ),
    "/r/until-close": _send_close_delimited,
    "/r/slow-length": _send_slowly(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n" % len(SMALL),
        SMALL[:20],
        SMALL[20:500],
        SMALL[500:],
    ),
    "/r/slow-chunked-big": _send_slowly(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"%x\r\n%s\r\n" % (len(OLD) + 3000, OLD + b"a" * 3000),
        b"%x\r\n%s\r\n" % (len(OLD) + 3000, OLD + b"b" * 3000),
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(OLD), OLD),
    ),
    # A HEAD response: the length of the body a GET would get, and no body.
    "/r/head": lambda req, sock: http_response(200, SMALL, _HTML_ETAG)[: -len(SMALL)],
}


def _tagged(req: Received, sock: socket.socket) -> bytes:
    """Echo the request line, with response headers for the edit rules to work on."""
    return http_response(
        200,
        b"ok " + req.request_line,
        (
            "Server: Microsoft-IIS/10.0",
            "X-Powered-By: ASP.NET",
            "X-Frame-Options: SAMEORIGIN",
            "Cache-Control: private",
        ),
    )


@dataclass
class Setup:
    proxy: ProxyProcess
    main: ScriptedServer  # meet.test, hdr.test, body.test
    silent: ScriptedServer  # www.test and ans.test: nothing of theirs should arrive

    @property
    def port(self) -> int:
        return self.proxy.port("plain")

    def received(self, marker: bytes) -> list[Received]:
        """Requests the main server received whose request line contains `marker`."""
        return [r for r in list(self.main.requests) if marker in r.request_line]


CONFIG = """
[global]
workers = 1
shutdown_grace = 2

[listeners.plain]
bind = "127.0.0.1:0"

[listeners.redir]
bind = "127.0.0.1:0"

[services.lync]
hosts = ["meet.test"]
pool = "main"

  [[services.lync.rules]]
  name = "tag-everything"
  continue = true
  set_request_headers = {{ X-Published = "dmz" }}

  [[services.lync.rules]]
  name = "meet-web-app"
  match = {{ path = "/meet/", query = "^$" }}
  rewrite = {{ pattern = '^(/meet/[^?]*)$', replace = '\\1?sl=1' }}

  [[services.lync.rules]]
  name = "dots"
  match = {{ path = "/dots/" }}
  rewrite = {{ pattern = '^/dots/', replace = '/a/../' }}

[services.headers]
hosts = ["hdr.test"]
pool = "main"

  [[services.headers.rules]]
  remove_request_headers = ["X-Debug"]
  set_request_headers = {{ X-Env = "dmz" }}
  add_request_headers = {{ X-Tag = ["a", "b"] }}
  remove_response_headers = ["Server", "X-Powered-By"]
  set_response_headers = {{ X-Frame-Options = "DENY" }}
  add_response_headers = {{ X-Served-By = ["proxy-1", "proxy-2"] }}

[services.forwarded]
hosts = ["fwd.test"]
pool = "main"

  [[services.forwarded.rules]]
  set_request_headers = {{ X-Forwarded-Proto = "https" }}

[services.redirect]
hosts = ["www.test"]
pool = "silent"
redirect_https = true

[services.redirect-any]
hosts = ["*"]
listeners = ["redir"]
pool = "silent"
redirect_https = true
redirect_status = 308

[services.answers]
hosts = ["ans.test"]
pool = "silent"

  [[services.answers.rules]]
  continue = true
  set_response_headers = {{ X-Answered-By = "revproxy" }}

  [[services.answers.rules]]
  match = {{ path = "/robots.txt", path_kind = "exact" }}
  respond = {{ status = 200, body = "User-agent: *\\nDisallow: /\\n" }}

  [[services.answers.rules]]
  match = {{ path = '^/exchange(/.*)?$', path_kind = "regex", ignore_case = true }}
  redirect = {{ status = 301, location = 'https://{{host}}/owa\\1' }}

[services.body]
hosts = ["body.test"]
pool = "main"

  [[services.body.rules]]
  match = {{ path = "/r/" }}
  replace_body = {{ pattern = 'http://lync\\.internal', replace = 'https://lync.contoso.com' }}
  replace_max_bytes = {limit}

[services.guard-open]
hosts = ["guard.test"]
pool = "main"

[services.guard-admin]
hosts = ["guard.test"]
paths = ["/admin"]
pool = "silent"

  [[services.guard-admin.rules]]
  respond = {{ status = 403, body = "denied\\n" }}

[pools.main]
servers = ["127.0.0.1:{main}"]

[pools.silent]
servers = ["127.0.0.1:{silent}"]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("rules")
    routes = {"/hdr/": _tagged, **BODY_ROUTES}
    main = ScriptedServer(by_path(routes)).start()
    silent = ScriptedServer().start()
    config = CONFIG.format(main=main.port, silent=silent.port, limit=LIMIT)
    try:
        proxy = ProxyProcess(config, tmp)
    except BaseException:
        main.stop()
        silent.stop()
        raise
    try:
        yield Setup(proxy, main, silent)
    finally:
        code = proxy.stop()
        main.stop()
        silent.stop()
        assert code == 0, proxy.log()


def _get(host: str, target: str, extra: str = "", method: str = "GET", version: str = "1.1"):
    return f"{method} {target} HTTP/{version}\r\nHost: {host}\r\n{extra}\r\n".encode()


def _one(setup: Setup, raw: bytes, method: str = "GET"):  # type: ignore[no-untyped-def]
    with connect(setup.port) as sock:
        sock.sendall(raw)
        return ResponseReader(sock).next(method)


# ---------------------------------------------------------------------- URL rewrite


def test_meet_urls_without_a_query_get_sl_1(setup: Setup) -> None:
    resp = _one(setup, _get("meet.test", "/meet/abc"))
    assert resp.status == 200
    assert resp.body == b"ok GET /meet/abc?sl=1 HTTP/1.1"
    [got] = setup.received(b"/meet/abc")
    assert got.request_line == b"GET /meet/abc?sl=1 HTTP/1.1"
    # The Host passes unchanged; the `continue` rule before it applied too.
    assert got.header("Host") == "meet.test"
    assert got.headers("X-Published") == ["dmz"]


def test_meet_urls_with_a_query_keep_it_unchanged(setup: Setup) -> None:
    # match.query = "^$": a URL that has a query is not the rule's, and goes as sent.
    resp = _one(setup, _get("meet.test", "/meet/def?lang=en&x=1"))
    assert resp.status == 200
    [got] = setup.received(b"/meet/def")
    assert got.request_line == b"GET /meet/def?lang=en&x=1 HTTP/1.1"
    assert got.headers("X-Published") == ["dmz"]


def test_only_meet_urls_are_rewritten(setup: Setup) -> None:
    resp = _one(setup, _get("meet.test", "/meeting/ghi"))
    assert resp.status == 200
    [got] = setup.received(b"/meeting/ghi")
    assert got.request_line == b"GET /meeting/ghi HTTP/1.1"


def test_rewrites_apply_to_each_request_of_a_keep_alive_connection(setup: Setup) -> None:
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        for n in range(3):
            sock.sendall(_get("meet.test", f"/meet/ka{n}"))
            assert reader.next().body == f"ok GET /meet/ka{n}?sl=1 HTTP/1.1".encode()


def test_absolute_form_targets_are_rewritten_like_origin_form(setup: Setup) -> None:
    resp = _one(setup, b"GET http://meet.test/meet/abs HTTP/1.1\r\nHost: other.test\r\n\r\n")
    assert resp.status == 200
    [got] = setup.received(b"/meet/abs")
    assert got.request_line == b"GET /meet/abs?sl=1 HTTP/1.1"
    assert got.headers("Host") == ["meet.test"]


def test_a_rewrite_to_dot_segments_is_answered_500(setup: Setup) -> None:
    resp = _one(setup, _get("meet.test", "/dots/x"))
    assert resp.status == 500
    assert not setup.received(b"/dots/") and not setup.received(b"/../x")


# ---------------------------------------------------------------------- header edits


def test_request_header_edits_reach_the_server(setup: Setup) -> None:
    extra = (
        "X-Debug: 1\r\nX-Env: client-1\r\nX-Env: client-2\r\nX-Tag: from-client\r\n"
        "X-Debug: 2\r\nUser-Agent: t\r\n"
    )
    resp = _one(setup, _get("hdr.test", "/hdr/req", extra))
    assert resp.status == 200
    [got] = setup.received(b"/hdr/req")
    lines = got.head.split(b"\r\n")
    # remove, then set (one field replaces every one), then add (appended).
    assert not any(line.lower().startswith(b"x-debug:") for line in lines)
    assert [line for line in lines if line.lower().startswith(b"x-env:")] == [b"X-Env: dmz"]
    tags = [line for line in lines if line.lower().startswith(b"x-tag:")]
    assert tags == [b"X-Tag: from-client", b"X-Tag: a", b"X-Tag: b"]
    assert b"\r\nUser-Agent: t\r\n" in got.raw
    assert b"\r\nHost: hdr.test\r\n" in got.raw


def test_a_rule_setting_x_forwarded_proto_is_what_the_server_gets(setup: Setup) -> None:
    resp = _one(setup, _get("fwd.test", "/xfp/1"))
    assert resp.status == 200
    [got] = setup.received(b"/xfp/1")
    assert got.headers("X-Forwarded-Proto") == ["https"]


def test_response_header_edits_reach_the_client(setup: Setup) -> None:
    resp = _one(setup, _get("hdr.test", "/hdr/resp"))
    assert resp.status == 200
    assert resp.header("server") is None
    assert resp.header("x-powered-by") is None
    assert resp.all("x-frame-options") == ["DENY"]
    assert resp.all("x-served-by") == ["proxy-1", "proxy-2"]
    assert resp.header("cache-control") == "private"
    assert resp.body == b"ok GET /hdr/resp HTTP/1.1"
    assert b"\r\nX-Frame-Options: DENY\r\n" in resp.raw


# ---------------------------------------------------------------------- redirect_https


def test_redirect_https_keeps_host_path_and_query_and_the_connection(setup: Setup) -> None:
    before = len(setup.silent.requests)
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        sock.sendall(_get("www.test:8080", "/a/b%20c?x=1&y=two"))
        first = reader.next()
        assert first.status == 301
        assert first.header("location") == "https://www.test/a/b%20c?x=1&y=two"
        assert (first.header("connection") or "").lower() != "close"
        # Keep-alive goes on: the next request on the same connection is answered.
        sock.sendall(_get("WWW.test", "/second"))
        second = reader.next()
        assert second.status == 301
        assert second.header("location") == "https://WWW.test/second"
        sock.sendall(_get("www.test", "/third", method="HEAD"))
        third = reader.next("HEAD")
        assert third.status == 301
        assert third.header("location") == "https://www.test/third"
    assert len(setup.silent.requests) == before == 0
    assert setup.silent.connections == 0


def test_redirect_https_of_an_absolute_form_target(setup: Setup) -> None:
    resp = _one(setup, b"GET http://www.test:8080/abs?q=1 HTTP/1.1\r\nHost: www.test\r\n\r\n")
    assert resp.status == 301
    assert resp.header("location") == "https://www.test/abs?q=1"
    assert setup.silent.connections == 0


def test_redirect_https_status_is_configurable(setup: Setup) -> None:
    with connect(setup.proxy.port("redir")) as sock:
        sock.sendall(_get("any.test", "/p?q"))
        resp = ResponseReader(sock).next()
    assert resp.status == 308
    assert resp.header("location") == "https://any.test/p?q"
    assert setup.silent.connections == 0


def test_redirect_https_without_host_is_400(setup: Setup) -> None:
    # HTTP/1.0 allows a request without Host; there is nothing to redirect to.
    with connect(setup.proxy.port("redir")) as sock:
        sock.sendall(b"GET /x HTTP/1.0\r\n\r\n")
        data, _ = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 400 ")
    assert b"\r\nlocation:" not in data.lower()
    assert setup.silent.connections == 0


# ---------------------------------------------------------------------- answers


ROBOTS = b"User-agent: *\nDisallow: /\n"


def test_respond_answers_get_with_the_body(setup: Setup) -> None:
    resp = _one(setup, _get("ans.test", "/robots.txt"))
    assert resp.status == 200
    assert resp.body == ROBOTS
    assert resp.header("content-length") == str(len(ROBOTS))
    assert resp.header("content-type") == "text/plain; charset=utf-8"
    # The `continue` rule matched first: its response edit applies to the answer.
    assert resp.header("x-answered-by") == "revproxy"
    assert setup.silent.connections == 0


def test_respond_answers_head_without_a_body(setup: Setup) -> None:
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        sock.sendall(_get("ans.test", "/robots.txt", method="HEAD"))
        head = reader.next("HEAD")
        assert head.status == 200
        assert head.header("content-length") == str(len(ROBOTS))
        # No body bytes followed: the next response starts right after the head.
        sock.sendall(_get("ans.test", "/robots.txt"))
        again = reader.next()
        assert again.raw.startswith(b"HTTP/1.1 200 ")
        assert again.body == ROBOTS
    assert setup.silent.connections == 0


def test_respond_to_a_request_with_a_body_closes_the_connection(setup: Setup) -> None:
    with connect(setup.port) as sock:
        sock.sendall(_get("ans.test", "/robots.txt", "Content-Length: 5\r\n", "POST") + b"hello")
        resp = ResponseReader(sock).next()
        assert resp.status == 200 and resp.body == ROBOTS
        assert (resp.header("connection") or "").lower() == "close"
        _, how = read_until_closed(sock)
        assert how in ("eof", "reset")
    assert setup.silent.connections == 0


@pytest.mark.parametrize(
    ("target", "location"),
    [
        ("/exchange/foo/bar.aspx", "https://ans.test/owa/foo/bar.aspx"),
        ("/Exchange", "https://ans.test/owa"),
        ("/EXCHANGE/", "https://ans.test/owa/"),
    ],
)
def test_redirect_rule_uses_the_path_group(setup: Setup, target: str, location: str) -> None:
    resp = _one(setup, _get("ans.test:80", target))
    assert resp.status == 301
    assert resp.header("location") == location
    assert resp.header("x-answered-by") == "revproxy"
    assert setup.silent.connections == 0


# ---------------------------------------------------------------------- body replacement


def test_small_html_body_is_replaced_and_sent_chunked(setup: Setup) -> None:
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        sock.sendall(_get("body.test", "/r/small", "Accept-Encoding: gzip, br\r\n"))
        resp = reader.next()
        assert resp.status == 200
        assert resp.header("transfer-encoding") == "chunked"
        assert resp.header("content-length") is None
        assert resp.header("etag") is None
        assert resp.header("accept-ranges") is None
        assert resp.header("content-type") == "text/html; charset=utf-8"
        assert resp.body == SMALL.replace(OLD, NEW)
        assert OLD not in resp.body and resp.body.count(NEW) == 3
        # The connection goes on after the chunked body.
        sock.sendall(_get("body.test", "/r/small"))
        assert reader.next().body == SMALL.replace(OLD, NEW)
    got = setup.received(b"/r/small")
    assert len(got) == 2
    # The rule removes Accept-Encoding so that the server sends text.
    assert all(r.header("Accept-Encoding") is None for r in got)
    assert all(b"accept-encoding" not in r.raw.lower() for r in got)


def test_body_at_the_limit_is_still_replaced(setup: Setup) -> None:
    resp = _one(setup, _get("body.test", "/r/at-limit"))
    assert resp.header("transfer-encoding") == "chunked"
    assert resp.body == AT_LIMIT.replace(OLD, NEW)


def test_http10_client_gets_the_replaced_body_close_delimited(setup: Setup) -> None:
    with connect(setup.port) as sock:
        sock.sendall(_get("body.test", "/r/small", version="1.0"))
        data, how = read_until_closed(sock)
    assert how == "eof"
    head, _, body = data.partition(b"\r\n\r\n")
    lower = head.lower()
    assert b"\r\ncontent-length:" not in lower
    assert b"\r\ntransfer-encoding:" not in lower
    assert b"\r\netag:" not in lower
    assert body == SMALL.replace(OLD, NEW)


def test_body_over_the_limit_keeps_its_length_and_bytes(setup: Setup) -> None:
    resp = _one(setup, _get("body.test", "/r/over-limit"))
    assert resp.status == 200
    assert resp.header("content-length") == str(LIMIT + 1)
    assert resp.header("transfer-encoding") is None
    assert resp.header("etag") == '"v1"'
    assert resp.body == OVER_LIMIT


def test_chunked_body_split_match_is_replaced(setup: Setup) -> None:
    resp = _one(setup, _get("body.test", "/r/chunked-small"))
    assert resp.header("transfer-encoding") == "chunked"
    assert resp.body == b"see " + NEW + b"/x and " + NEW + b"/y"


def test_chunked_body_past_the_limit_streams_unchanged(setup: Setup) -> None:
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        sock.sendall(_get("body.test", "/r/chunked-big"))
        resp = reader.next()
        assert resp.status == 200
        assert resp.body == OLD + b"a" * 3000 + OLD + b"b" * 3000 + OLD
        # The connection is still in step.
        sock.sendall(_get("body.test", "/r/small"))
        assert reader.next().body == SMALL.replace(OLD, NEW)


def test_body_arriving_in_pieces_is_replaced_whole(setup: Setup) -> None:
    resp = _one(setup, _get("body.test", "/r/slow-length"))
    assert resp.header("transfer-encoding") == "chunked"
    assert resp.body == SMALL.replace(OLD, NEW)


def test_chunked_body_arriving_in_pieces_past_the_limit_is_unchanged(setup: Setup) -> None:
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        sock.sendall(_get("body.test", "/r/slow-chunked-big"))
        resp = reader.next()
        assert resp.body == OLD + b"a" * 3000 + OLD + b"b" * 3000 + OLD
        sock.sendall(_get("body.test", "/r/small"))
        assert reader.next().body == SMALL.replace(OLD, NEW)


def test_close_delimited_server_body_is_replaced(setup: Setup) -> None:
    resp = _one(setup, _get("body.test", "/r/until-close"))
    assert resp.status == 200
    assert resp.body == SMALL.replace(OLD, NEW)


def test_gzip_body_is_untouched(setup: Setup) -> None:
    resp = _one(setup, _get("body.test", "/r/gzip", "Accept-Encoding: gzip\r\n"))
    assert resp.status == 200
    assert resp.header("content-encoding") == "gzip"
    assert resp.header("content-length") == str(len(GZIPPED))
    assert resp.body == GZIPPED


def test_unlisted_content_type_is_untouched(setup: Setup) -> None:
    resp = _one(setup, _get("body.test", "/r/image"))
    assert resp.header("content-length") == str(len(SMALL))
    assert resp.body == SMALL


def test_head_response_keeps_its_length(setup: Setup) -> None:
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        sock.sendall(_get("body.test", "/r/head", method="HEAD"))
        resp = reader.next("HEAD")
        assert resp.status == 200
        assert resp.header("content-length") == str(len(SMALL))
        assert resp.header("etag") == '"v1"'
        assert resp.header("transfer-encoding") is None
        # Nothing followed the head: the next response comes next.
        sock.sendall(_get("body.test", "/r/small"))
        assert reader.next().body == SMALL.replace(OLD, NEW)


def test_paths_the_rule_does_not_match_keep_accept_encoding(setup: Setup) -> None:
    resp = _one(setup, _get("body.test", "/plain/x", "Accept-Encoding: gzip\r\n"))
    assert resp.status == 200
    [got] = setup.received(b"/plain/x")
    assert got.headers("Accept-Encoding") == ["gzip"]


# ---------------------------------------------------------------------- revproxy check


def test_a_rule_that_cannot_compile_fails_check(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        """
[listeners.plain]
bind = "127.0.0.1:0"

[listeners.redir]
bind = "127.0.0.1:0"

[services.lync]
hosts = ["meet.test"]
pool = "p"

  [[services.lync.rules]]
  name = "meet-web-app"
  match = { path = "/meet/" }
  rewrite = { pattern = '^(/meet/[^?]*$', replace = '\\1?sl=1' }

[pools.p]
servers = ["127.0.0.1:8080"]
"""
    )
    done = subprocess.run(
        [sys.executable, "-m", "revproxy", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert done.returncode != 0
    assert f"{path}: services.lync.rules[0].rewrite.pattern: is not a valid regular expression" in (
        done.stderr
    )


@pytest.mark.parametrize(
    "target", ["/admin/x", "/%61dmin/x", "/adm%69n", "//admin/x", "/%2561", "/admin//x"]
)
def test_spellings_of_a_path_reach_its_service_and_rules(setup: Setup, target: str) -> None:
    # Escaped unreserved characters and doubled slashes are read by servers as the plain
    # path: such a spelling must not slip past the service (and its rules) of /admin.
    resp = _one(setup, _get("guard.test", target))
    if target == "/%2561":
        assert resp.status == 200, resp.raw  # "%25" is "%", not unreserved: stays "/%2561"
        assert setup.received(b"GET /%2561 ")
        return
    assert resp.status == 403 and resp.body == b"denied\n", resp.raw
    assert not setup.received(target.encode())
