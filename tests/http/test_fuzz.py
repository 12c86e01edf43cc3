"""Property tests of the framing layer, and the kept corpus of tricky messages.

The properties: heads built from the grammar round-trip; no input makes a parser raise
anything but its own error; a forwarded head frames its body exactly as the parsed one
did (the proxy and the server agree where a message ends); chunked bodies decode to their
payload however they are split. Inputs that ever broke a property go to corpus/heads.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from revproxy.http.chunked import ChunkedReader, ChunkError
from revproxy.http.errors import HttpError, ProtocolError
from revproxy.http.forward import Forwarding, request_head, response_head
from revproxy.http.head import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    Request,
    Response,
    parse_request,
    parse_response,
)

# A deeper run: REVPROXY_FUZZ_EXAMPLES=5000 pytest tests/http/test_fuzz.py
FAST = settings(
    max_examples=int(os.environ.get("REVPROXY_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(alphabet=TCHAR, min_size=1, max_size=12).map(str.encode)
VCHAR = "".join(chr(c) for c in range(0x21, 0x100) if c != 0x7F)
# field-value: visible bytes and obs-text, inner SP / HTAB, no leading or trailing whitespace.
field_values = st.text(alphabet=VCHAR + " \t", max_size=24).map(
    lambda v: v.encode("latin-1").strip(b" \t")
)
ows = st.sampled_from([b"", b" ", b"\t", b"  ", b" \t "])


# Names the request parser gives meaning to are left to the tables; these are plain fields.
SPECIAL = {b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect"}
plain_names = tokens.filter(lambda n: n.lower() not in SPECIAL)


@FAST
@given(
    fields=st.lists(st.tuples(plain_names, ows, field_values, ows), max_size=12),
    method=tokens,
    path=st.lists(st.text(alphabet="abc-_~%09", min_size=1, max_size=5), max_size=4),
)
def test_grammar_round_trip(
    fields: list[tuple[bytes, bytes, bytes, bytes]], method: bytes, path: list[str]
) -> None:
    target = ("/" + "/".join(path)).encode()
    lines = [b"%s %s HTTP/1.1" % (method, target), b"Host: h.example"]
    lines += [name + b":" + lead + value + trail for name, lead, value, trail in fields]
    raw = b"\r\n".join(lines)
    if method == b"CONNECT":
        with pytest.raises(HttpError):
            parse_request(raw)
        return
    req = parse_request(raw, max_count=100)
    assert req.method == method and req.target == target
    assert req.headers[1:] == [
        (name.lower(), value, line)
        for (name, _, value, _), line in zip(fields, lines[2:], strict=True)
    ]
    assert (req.body, req.keep_alive, req.upgrade) == (NO_BODY, True, None)


# Fragments that matter to HTTP framing, so that random heads hit the interesting paths.
FRAGMENTS = [
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b",",
    b";",
    b"\x00",
    b"\x0b",
    b"\x7f",
    b"\xff",
    b"GET",
    b"POST",
    b"HEAD",
    b"CONNECT",
    b"OPTIONS",
    b"/",
    b"*",
    b"?",
    b"..",
    b"%2e",
    b"http://",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"HTTP/2.0",
    b"200",
    b"101",
    b"204",
    b"304",
    b"Host",
    b"Content-Length",
    b"Transfer-Encoding",
    b"Connection",
    b"Upgrade",
    b"Expect",
    b"chunked",
    b"gzip",
    b"identity",
    b"close",
    b"keep-alive",
    b"upgrade",
    b"websocket",
    b"100-continue",
    b"0",
    b"5",
    b"-1",
    b"+",
    b"0x",
    b"99999999999999999999",
    b"a.example",
    b"[::1]",
    b"@",
    b'"',
    b"WWW-Authenticate",
    b"NTLM",
    b"Negotiate",
]
fragment_soup = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=4)), max_size=40
).map(b"".join)


@st.composite
def request_like(draw: st.DrawFn) -> bytes:
    """A head that is mostly valid: a request line, then fields made of fragments."""
    method = draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    target = draw(st.sampled_from([b"/", b"/a/b?c", b"*", b"http://a.example/x"]))
    names = [b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Upgrade"]
    names += [b"Expect", b"X-A"]
    values = [b"a.example", b"5", b"0", b"chunked", b"gzip, chunked", b"close", b"upgrade"]
    values += [b"keep-alive", b"websocket", b"100-continue", b""]
    fields = draw(
        st.lists(
            st.tuples(
                st.one_of(st.sampled_from(names), fragment_soup),
                st.sampled_from([b": ", b":", b" : ", b":\t"]),
                st.one_of(st.sampled_from(values), fragment_soup),
            ),
            max_size=8,
        )
    )
    lines = [b"%s %s %s" % (method, target, version)]
    lines += [n + sep + v for n, sep, v in fields]
    return b"\r\n".join(lines)


def _request_or_error(raw: bytes) -> Request | None:
    try:
        return parse_request(raw, 50)
    except HttpError as exc:
        assert 400 <= exc.status <= 599
        return None


@FAST
@given(raw=st.one_of(st.binary(max_size=300), fragment_soup, request_like()))
@example(raw=b"GET / HTTP/1.1\r\nHost:")
@example(raw=b"GET / HTTP/1.1\r\n")
def test_parse_request_raises_only_http_error(raw: bytes) -> None:
    _request_or_error(raw)


FWD = Forwarding(via=b"1.1 rp", via_http10=b"1.0 rp")


@FAST
@given(raw=request_like(), extend=st.booleans())
def test_forwarded_request_frames_the_same(raw: bytes, extend: bool) -> None:
    """What the proxy sends on parses again, and to the same framing: no desync."""
    req = _request_or_error(raw)
    if req is None:
        return
    out = request_head(req, FWD, b"192.0.2.1", extend, b"https")
    assert out.endswith(b"\r\n\r\n") and out.count(b"\r\n\r\n") == 1
    again = parse_request(out[:-4])
    assert (again.method, again.target, again.path) == (req.method, req.target, req.path)
    assert (again.body, again.content_length) == (req.body, req.content_length)
    assert again.upgrade == req.upgrade
    assert again.host == req.host
    # An HTTP/1.0 client's 100-continue is ignored here but still means it to the server.
    sent_expect = req.header(b"expect") is not None
    assert again.expect_continue == (req.expect_continue or (not req.http11 and sent_expect))


@st.composite
def response_like(draw: st.DrawFn) -> bytes:
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    status = draw(st.sampled_from([b"100", b"101", b"200", b"204", b"304", b"401", b"502"]))
    names = [b"Content-Length", b"Transfer-Encoding", b"Connection", b"WWW-Authenticate", b"X"]
    values = [b"5", b"0", b"chunked", b"gzip, chunked", b"gzip", b"close", b"keep-alive"]
    values += [b"NTLM", b"Negotiate abc", b'Basic realm="x"', b""]
    fields = draw(
        st.lists(
            st.tuples(
                st.one_of(st.sampled_from(names), fragment_soup),
                st.one_of(st.sampled_from(values), fragment_soup),
            ),
            max_size=6,
        )
    )
    lines = [version + b" " + status + draw(st.sampled_from([b"", b" ", b" OK"]))]
    lines += [n + b": " + v for n, v in fields]
    return b"\r\n".join(lines)


def _response_or_error(raw: bytes, method: bytes) -> Response | None:
    try:
        return parse_response(raw, method)
    except ProtocolError:
        return None


methods = st.sampled_from([b"GET", b"HEAD", b"POST"])


@FAST
@given(raw=st.one_of(st.binary(max_size=300), fragment_soup, response_like()), method=methods)
def test_parse_response_raises_only_protocol_error(raw: bytes, method: bytes) -> None:
    resp = _response_or_error(raw, method)
    if resp is not None:
        assert resp.body in (NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE)
        assert resp.status >= 100


@FAST
@given(raw=response_like(), method=methods, close=st.booleans(), http10=st.booleans())
def test_forwarded_response_frames_the_same(
    raw: bytes, method: bytes, close: bool, http10: bool
) -> None:
    resp = _response_or_error(raw, method)
    if resp is None or resp.status == 101:
        return
    dechunk = http10 and resp.body == CHUNKED
    out = response_head(resp, close=close, http10_client=http10, dechunk=dechunk)
    assert out.endswith(b"\r\n\r\n") and out.count(b"\r\n\r\n") == 1
    again = parse_response(out[:-4], method)
    assert again.status == resp.status
    if dechunk:
        assert again.body == UNTIL_CLOSE
    elif http10 and resp.body == UNTIL_CLOSE:
        assert again.body == UNTIL_CLOSE
    else:
        assert (again.body, again.content_length) == (resp.body, resp.content_length)
    if close:
        assert not again.keep_alive


@FAST
@given(data=st.one_of(st.binary(max_size=200), fragment_soup), cut=st.integers(0, 200))
def test_chunked_raises_only_chunk_error(data: bytes, cut: int) -> None:
    reader = ChunkedReader()
    try:
        used = reader.feed(data[:cut])
        assert used == min(cut, len(data)) or reader.done
        if not reader.done:
            used += reader.feed(data[cut:])
    except ChunkError:
        return
    assert 0 <= used <= len(data)
    assert reader.done or used == len(data)


ext = st.sampled_from([b"", b";a=b", b' ; q="x;y"', b";n", b"\t;a = 1"])


@st.composite
def chunked_bodies(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(encoding, payload) with random chunk boundaries, extensions and trailers."""
    payload = draw(st.binary(max_size=300))
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=6)))
    bounds = [0, *cuts, len(payload)]
    parts = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        if end > start:
            size = b"%x" % (end - start)
            if draw(st.booleans()):
                size = size.upper().rjust(draw(st.integers(1, 16)), b"0")
            parts.append(size + draw(ext) + b"\r\n" + payload[start:end] + b"\r\n")
    parts.append(b"0" + draw(ext) + b"\r\n")
    for name, value in draw(st.lists(st.tuples(tokens, field_values), max_size=3)):
        parts.append(name + b": " + value + b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts), payload


@FAST
@given(
    body=chunked_bodies(),
    after=st.binary(max_size=20),
    splits=st.lists(st.integers(0, 400), max_size=8),
)
def test_chunked_round_trip(body: tuple[bytes, bytes], after: bytes, splits: list[int]) -> None:
    encoded, payload = body
    data = encoded + after
    bounds = [0, *sorted(min(s, len(data)) for s in splits), len(data)]
    reader = ChunkedReader()
    out: list[bytes] = []
    used = 0
    for start, end in zip(bounds, bounds[1:], strict=False):
        used += reader.feed(data[start:end], out)
    assert reader.done
    assert used == len(encoded)
    assert b"".join(out) == payload


# ----------------------------------------------------------------------------- corpus

CORPUS = json.loads((Path(__file__).parent / "corpus" / "heads.json").read_text("ascii"))
BODY_KINDS = {"none": NO_BODY, "length": LENGTH, "chunked": CHUNKED, "until_close": UNTIL_CLOSE}
_META = {"id", "head", "status", "method", "ok", "body", "consumed"}


def _check_fields(msg: Request | Response, case: dict[str, Any]) -> None:
    if "body" in case:
        assert msg.body == BODY_KINDS[case["body"]]
    for name, want in case.items():
        if name in _META:
            continue
        got = getattr(msg, name)
        assert got == (want.encode("latin-1") if isinstance(want, str) else want), name


@pytest.mark.parametrize("case", CORPUS["requests"], ids=[c["id"] for c in CORPUS["requests"]])
def test_corpus_request(case: dict[str, Any]) -> None:
    raw = case["head"].encode("latin-1")
    if case["status"]:
        with pytest.raises(HttpError) as info:
            parse_request(raw)
        assert info.value.status == case["status"], info.value.detail
    else:
        _check_fields(parse_request(raw), case)


@pytest.mark.parametrize("case", CORPUS["responses"], ids=[c["id"] for c in CORPUS["responses"]])
def test_corpus_response(case: dict[str, Any]) -> None:
    raw = case["head"].encode("latin-1")
    method = case["method"].encode()
    if not case["ok"]:
        with pytest.raises(ProtocolError):
            parse_response(raw, method)
    else:
        _check_fields(parse_response(raw, method), case)


@pytest.mark.parametrize("case", CORPUS["chunked"], ids=[c["id"] for c in CORPUS["chunked"]])
def test_corpus_chunked(case: dict[str, Any]) -> None:
    data = case["body"].encode("latin-1")
    for step in (len(data), 1):
        reader = ChunkedReader()
        pieces = [data[i : i + step] for i in range(0, len(data), step)]
        if not case["ok"]:
            with pytest.raises(ChunkError):
                for piece in pieces:
                    reader.feed(piece)
            continue
        used = 0
        for piece in pieces:
            used += reader.feed(piece)
        assert reader.done and used == case["consumed"]


def test_corpus_ids_unique() -> None:
    for kind in ("requests", "responses", "chunked"):
        ids = [c["id"] for c in CORPUS[kind]]
        assert len(ids) == len(set(ids))
