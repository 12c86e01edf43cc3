"""Content rules at run time: what a service's rules do to one request and its response.

Pure functions of their inputs, like the rest of revproxy/http: a RuleSet is compiled once
per configuration from validated RuleConfig values, and `on_request` takes the request's
method, Host, target and a header lookup and returns a RequestAction saying what to do.
Nothing here touches a socket.

Evaluation (docs/rules.md):
- Rules are tried in order. Conditions look at the request as the client sent it.
- The first rule that matches applies; with `continue = true` (RuleConfig.last false) later
  rules are tried too, and every matching rule's edits apply in order, until a matching rule
  without `continue`. Rewrites chain: each works on the target the previous one produced.
- A redirect or a fixed answer ends evaluation; response header edits of the rules matched
  so far (and its own) apply to that answer.
- `redirect_https` answers whatever the rules did not answer, with the rewritten target.

Data plane contract for body replacement: `ResponseEdits.body_replacer` returns a replacer
only for a response whose body may change (content type listed, no Content-Encoding,
Content-Length absent or within the limit, not HEAD, 1xx, 204, 206 or 304). The data plane
then sends the head from `apply_headers(..., replacing=True)` (Content-Length, ETag and
Accept-Ranges removed), frames the body as chunked for HTTP/1.1 clients or until close for
HTTP/1.0 clients, and passes every body byte through `feed()` and then `finish()`. Past
the limit the replacer gives back everything unchanged, so that case needs nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from revproxy.config.model import RuleConfig, ServiceConfig
from revproxy.config.rules import GROUP, LITERAL, Part, compile_regex, parse_substitution
from revproxy.http.head import DOT_SEGMENT, routing_path

Header = tuple[bytes, bytes, bytes]  # (lower-case name, value, raw line), as http/head.py
HeaderLookup = Callable[[bytes], bytes | None]

# Header edit operations, applied in order.
REMOVE, SET, ADD = 0, 1, 2
HeaderOp = tuple[int, bytes, bytes, bytes]  # (operation, lower-case name, value, raw line)

PREFIX, EXACT, REGEX = 0, 1, 2
_PATH_KINDS = {"prefix": PREFIX, "exact": EXACT, "regex": REGEX}

# RFC 3986 §2.3, §6.2.2.2: percent-encoded unreserved characters equal the characters.
_VALID_TARGET = re.compile(rb"/[\x21-\x7e]*")
# Fields a changed body makes wrong: its length, its strong validator, byte ranges of it.
_STALE_WHEN_REPLACED = frozenset({b"content-length", b"etag", b"accept-ranges", b"content-md5"})


@dataclass(frozen=True, slots=True)
class HeaderEdits:
    """Header edits in order: remove drops every field of a name, set replaces them by one
    field, add appends a field."""

    ops: tuple[HeaderOp, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.ops)

    @property
    def remove(self) -> tuple[bytes, ...]:
        return tuple(name for op, name, _, _ in self.ops if op == REMOVE)

    @property
    def set(self) -> tuple[tuple[bytes, bytes], ...]:
        return tuple((name, value) for op, name, value, _ in self.ops if op == SET)

    @property
    def add(self) -> tuple[tuple[bytes, bytes], ...]:
        return tuple((name, value) for op, name, value, _ in self.ops if op == ADD)

    def apply(self, headers: list[Header]) -> list[Header]:
        """A new header list with the edits applied; `headers` is not changed."""
        out = list(headers)
        for op, lname, value, line in self.ops:
            if op != ADD:
                out = [h for h in out if h[0] != lname]
            if op != REMOVE:
                out.append((lname, value, line))
        return out


NO_EDITS = HeaderEdits()


@dataclass(frozen=True, slots=True)
class Answer:
    """A response the proxy gives itself instead of forwarding (redirect or fixed answer)."""

    status: int
    headers: tuple[Header, ...] = ()
    body: bytes = b""

    def encode(self, *, head_only: bool = False, close: bool = False) -> bytes:
        """The whole response; `head_only` for a HEAD request (RFC 9110 §9.3.2)."""
        try:
            phrase = HTTPStatus(self.status).phrase.encode("ascii")
        except ValueError:
            phrase = b""
        out = [b"HTTP/1.1 %d %s\r\n" % (self.status, phrase)]
        for _, _, line in self.headers:
            out.append(line + b"\r\n")
        if self.status not in (204, 304):
            out.append(b"Content-Length: %d\r\n" % len(self.body))
        if close:
            out.append(b"Connection: close\r\n")
        out.append(b"\r\n")
        if not head_only and self.status not in (204, 304):
            out.append(self.body)
        return b"".join(out)


@dataclass(frozen=True, slots=True)
class BodyReplacement:
    """One rule's response body replacement, compiled."""

    pattern: re.Pattern[bytes]
    template: bytes  # for Pattern.sub: literal backslashes doubled, groups as \g<N>
    content_types: tuple[bytes, ...]  # "text/html" or "text/*"
    max_bytes: int

    def applies_to(self, content_type: bytes | None) -> bool:
        if content_type is None:
            return False
        media = content_type.split(b";", 1)[0].strip(b" \t").lower()
        major = media.split(b"/", 1)[0] + b"/*"
        return media in self.content_types or major in self.content_types

    def replace(self, body: bytes) -> bytes:
        return self.pattern.sub(self.template, body)


class BodyReplacer:
    """Applies body replacements to one response body, fed as it arrives.

    Active only when a replacement applies to `content_type` and `content_length` (None
    for chunked or close-delimited bodies) is within the smallest limit. It buffers up to
    the limit and replaces at `finish()`; once the body grows past the limit, it returns
    what it held and everything after unchanged.
    """

    __slots__ = ("specs", "limit", "active", "streaming", "_held", "_size")

    def __init__(
        self,
        specs: tuple[BodyReplacement, ...],
        content_type: bytes | None,
        content_length: int | None,
    ) -> None:
        self.specs = tuple(s for s in specs if s.applies_to(content_type))
        self.limit = min((s.max_bytes for s in self.specs), default=0)
        self.active = bool(self.specs) and (content_length is None or content_length <= self.limit)
        self.streaming = not self.active  # passing bytes through unchanged
        self._held: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> bytes:
        if self.streaming:
            return data
        self._held.append(data)
        self._size += len(data)
        if self._size <= self.limit:
            return b""
        self.streaming = True
        held, self._held = b"".join(self._held), []
        return held

    def finish(self) -> bytes:
        if self.streaming:
            return b""
        body, self._held = b"".join(self._held), []
        for spec in self.specs:
            body = spec.replace(body)
        return body


@dataclass(frozen=True, slots=True)
class ResponseEdits:
    """What matched rules do to the response: header edits and body replacements."""

    headers: HeaderEdits = NO_EDITS
    bodies: tuple[BodyReplacement, ...] = ()

    def apply_headers(self, headers: list[Header], *, replacing: bool = False) -> list[Header]:
        """The response's header fields after the edits; `replacing`: a BodyReplacer is
        active, so the fields describing the original body go."""
        out = self.headers.apply(headers) if self.headers else list(headers)
        if replacing:
            out = [h for h in out if h[0] not in _STALE_WHEN_REPLACED]
        return out

    def body_replacer(
        self, method: bytes, status: int, headers: list[Header]
    ) -> BodyReplacer | None:
        """A replacer for this response's body, or None when it streams as it is."""
        if not self.bodies or method == b"HEAD" or status < 200 or status in (204, 206, 304):
            return None
        content_type = None
        content_length: int | None = None
        for lname, value, _ in headers:
            if lname == b"content-type":
                content_type = value
            elif lname == b"content-length":
                content_length = int(value) if value.isdigit() else None
            elif lname == b"content-encoding" and value.lower() != b"identity":
                return None  # compressed: the text is not there to replace
        replacer = BodyReplacer(self.bodies, content_type, content_length)
        return replacer if replacer.active else None


NO_RESPONSE_EDITS = ResponseEdits()


@dataclass(frozen=True, slots=True)
class RequestAction:
    """What to do with one request.

    `target`: the new request target, or None to keep it. `headers`: edits to the header
    fields forwarded. `answer`: answer the client with this instead of forwarding (then
    the rest is empty). `response`: edits to apply to the response, or None. `rules`: the
    names of the rules that matched, for logs.
    """

    target: bytes | None = None
    headers: HeaderEdits = NO_EDITS
    answer: Answer | None = None
    response: ResponseEdits | None = None
    rules: tuple[str, ...] = ()


NO_ACTION = RequestAction()


class _Rule:
    """One compiled rule."""

    __slots__ = (
        "name",
        "hosts",
        "wildcards",
        "path",
        "path_kind",
        "path_re",
        "methods",
        "query_re",
        "header_res",
        "ignore_case",
        "request_ops",
        "response_ops",
        "rewrite",
        "redirect",
        "respond",
        "body",
        "last",
    )

    def __init__(self, rule: RuleConfig) -> None:
        m = rule.match
        self.name = rule.name
        hosts = [h.lower().encode("ascii") for h in m.hosts]
        self.hosts = frozenset(h for h in hosts if not h.startswith(b"*."))
        self.wildcards = tuple(h[1:] for h in hosts if h.startswith(b"*."))
        self.ignore_case = m.ignore_case
        self.path_kind = _PATH_KINDS[m.path_kind]
        path = m.path.encode("utf-8")
        if m.path_kind != "regex":
            path = routing_path(path)  # as request paths are compared
        self.path = path.lower() if m.ignore_case else path
        self.path_re = compile_regex(m.path, m.ignore_case) if m.path_kind == "regex" else None
        self.methods = frozenset(x.encode("ascii") for x in m.methods)
        self.query_re = compile_regex(m.query, m.ignore_case) if m.query else None
        self.header_res = tuple(
            (name.lower().encode("ascii"), compile_regex(regex, m.ignore_case))
            for name, regex in m.headers
        )
        self.request_ops = _ops(
            rule.remove_request_headers, rule.set_request_headers, rule.add_request_headers
        )
        if rule.replace_body is not None:
            # The server must send text, not gzip, for the replacement to find it.
            self.request_ops += ((REMOVE, b"accept-encoding", b"", b""),)
        self.response_ops = _ops(
            rule.remove_response_headers, rule.set_response_headers, rule.add_response_headers
        )
        self.rewrite: tuple[re.Pattern[bytes], list[Part]] | None = None
        if rule.rewrite is not None:
            pattern = compile_regex(rule.rewrite[0])
            self.rewrite = (
                pattern,
                parse_substitution(rule.rewrite[1], pattern, placeholders=True),
            )
        self.redirect: tuple[int, list[Part]] | None = None
        if rule.redirect is not None:
            parts = parse_substitution(rule.redirect[1], self.path_re, placeholders=True)
            self.redirect = (rule.redirect[0], parts)
        self.respond: Answer | None = None
        if rule.respond is not None:
            status, content_type, body = rule.respond
            headers = () if status in (204, 304) else (_field(b"Content-Type", content_type),)
            self.respond = Answer(status, headers, body.encode("utf-8"))
        self.body: BodyReplacement | None = None
        if rule.replace_body is not None:
            pattern = compile_regex(rule.replace_body[0])
            parts = parse_substitution(rule.replace_body[1], pattern, placeholders=False)
            self.body = BodyReplacement(
                pattern=pattern,
                template=_sub_template(parts),
                content_types=tuple(t.encode("ascii") for t in rule.replace_content_types),
                max_bytes=rule.replace_max_bytes,
            )
        self.last = rule.last

    def match(
        self, method: bytes, host: bytes, path: bytes, query: bytes, header: HeaderLookup
    ) -> re.Match[bytes] | bool:
        """False, True, or the path regex's match (for its groups)."""
        if self.methods and method not in self.methods:
            return False
        if (self.hosts or self.wildcards) and not (
            host in self.hosts or _wildcard_match(host, self.wildcards)
        ):
            return False
        if self.query_re is not None and self.query_re.search(query) is None:
            return False
        for name, regex in self.header_res:
            value = header(name)
            if value is None or regex.search(value) is None:
                return False
        found: re.Match[bytes] | bool = True
        if self.path:
            if self.path_re is not None:
                found = self.path_re.search(path) or False
            else:
                p = path.lower() if self.ignore_case else path
                if self.path_kind == EXACT:
                    found = p == self.path
                else:
                    found = p.startswith(self.path)
        return found


class RuleSet:
    """A service's compiled rules; false when there is nothing to do, so that the data
    plane can skip it for services without rules."""

    __slots__ = ("rules", "redirect_https_status")

    def __init__(self, rules: tuple[_Rule, ...], redirect_https_status: int) -> None:
        self.rules = rules
        self.redirect_https_status = redirect_https_status

    def __bool__(self) -> bool:
        return bool(self.rules) or bool(self.redirect_https_status)

    def on_request(
        self, method: bytes, host: bytes, target: bytes, header: HeaderLookup
    ) -> RequestAction:
        """What the rules do with a request; `host` is the Host value as sent (port kept),
        `target` the origin-form target (path and query), `header` finds a field's first
        value by lower-case name."""
        hostname = _host_without_port(host)
        lower_host = hostname.lower()
        if lower_host[:1] == b"[":
            lower_host = lower_host[1:-1]  # IPv6 literal, as configured without brackets
        path, _, query = target.partition(b"?")
        path = routing_path(path)
        current = target
        request_ops: list[HeaderOp] = []
        response_ops: list[HeaderOp] = []
        bodies: list[BodyReplacement] = []
        names: list[str] = []
        for rule in self.rules:
            found = rule.match(method, lower_host, path, query, header)
            if found is False:
                continue
            names.append(rule.name)
            response_ops.extend(rule.response_ops)
            if rule.redirect is not None:
                status, parts = rule.redirect
                groups = found if isinstance(found, re.Match) else None
                location = _expand(parts, groups, hostname, current)
                return _answer(_redirect(status, location), response_ops, names)
            if rule.respond is not None:
                return _answer(rule.respond, response_ops, names)
            request_ops.extend(rule.request_ops)
            if rule.rewrite is not None and current[:1] == b"/":
                pattern, parts = rule.rewrite
                m = pattern.search(current)
                if m is not None:
                    current = (
                        current[: m.start()]
                        + _expand(parts, m, hostname, current)
                        + (current[m.end() :])
                    )
                    if not _valid_target(current):
                        return _answer(Answer(500), [], names)
            if rule.body is not None:
                bodies.append(rule.body)
            if rule.last:
                break
        if self.redirect_https_status:
            if not hostname:
                return _answer(Answer(400), [], names)
            location = b"https://" + hostname + current
            return _answer(_redirect(self.redirect_https_status, location), response_ops, names)
        if not names:
            return NO_ACTION
        response = None
        if response_ops or bodies:
            response = ResponseEdits(HeaderEdits(tuple(response_ops)), tuple(bodies))
        return RequestAction(
            target=current if current != target else None,
            headers=HeaderEdits(tuple(request_ops)) if request_ops else NO_EDITS,
            response=response,
            rules=tuple(names),
        )


EMPTY_RULES = RuleSet((), 0)


def compile_rules(rules: tuple[RuleConfig, ...], *, redirect_https_status: int = 0) -> RuleSet:
    """Compile validated rules; `redirect_https_status` (301..308, 0 = off) answers every
    request the rules do not answer with a redirect to https://."""
    if not rules and not redirect_https_status:
        return EMPTY_RULES
    return RuleSet(tuple(_Rule(r) for r in rules), redirect_https_status)


def service_rules(service: ServiceConfig) -> RuleSet:
    """The RuleSet of one service: its rules and its redirect_https setting."""
    status = service.redirect_status if service.redirect_https else 0
    return compile_rules(service.rules, redirect_https_status=status)


# --- helpers -----------------------------------------------------------------------------


def _field(name: bytes, value: str | bytes) -> Header:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return (name.lower(), raw, name + b": " + raw)


def _ops(
    remove: tuple[str, ...], set_: tuple[tuple[str, str], ...], add: tuple[tuple[str, str], ...]
) -> tuple[HeaderOp, ...]:
    ops: list[HeaderOp] = [(REMOVE, n.lower().encode("ascii"), b"", b"") for n in remove]
    for kind, pairs in ((SET, set_), (ADD, add)):
        for name, value in pairs:
            lname, raw, line = _field(name.encode("ascii"), value)
            ops.append((kind, lname, raw, line))
    return tuple(ops)


def _sub_template(parts: list[Part]) -> bytes:
    out = []
    for kind, value in parts:
        if kind == LITERAL:
            out.append(str(value).encode("utf-8").replace(b"\\", b"\\\\"))
        else:
            out.append(b"\\g<%d>" % int(value))
    return b"".join(out)


def _expand(parts: list[Part], m: re.Match[bytes] | None, host: bytes, target: bytes) -> bytes:
    out = []
    for kind, value in parts:
        if kind == LITERAL:
            out.append(str(value).encode("utf-8"))
        elif kind == GROUP:
            if m is not None:
                out.append(m.group(int(value)) or b"")
            elif value == 0:
                out.append(target.partition(b"?")[0])
        elif value == "host":
            out.append(host)
        elif value == "target":
            out.append(target)
        elif value == "path":
            out.append(target.partition(b"?")[0])
        else:
            out.append(target.partition(b"?")[2])
    return b"".join(out)


def _redirect(status: int, location: bytes) -> Answer:
    if any(b < 0x21 or b > 0x7E for b in location):
        return Answer(500)
    return Answer(status, (_field(b"Location", location),))


def _answer(answer: Answer, response_ops: list[HeaderOp], names: list[str]) -> RequestAction:
    if response_ops:
        edited = HeaderEdits(tuple(response_ops)).apply(list(answer.headers))
        answer = Answer(answer.status, tuple(edited), answer.body)
    return RequestAction(answer=answer, rules=tuple(names))


def _valid_target(target: bytes) -> bool:
    path = target.partition(b"?")[0]
    return (
        _VALID_TARGET.fullmatch(target) is not None
        and b"\\" not in path
        and DOT_SEGMENT.search(path) is None
    )


def _host_without_port(host: bytes) -> bytes:
    if host[:1] == b"[":
        return host[: host.find(b"]") + 1]
    return host.partition(b":")[0]


def _wildcard_match(host: bytes, suffixes: tuple[bytes, ...]) -> bool:
    """`*.example.com` (stored as `.example.com`) matches exactly one more label."""
    for suffix in suffixes:
        if host.endswith(suffix) and b"." not in host[: -len(suffix)] and len(host) > len(suffix):
            return True
    return False
