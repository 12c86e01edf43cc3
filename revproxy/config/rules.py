"""Content rules of a service: reading `[[services.NAME.rules]]` into RuleConfig.

Everything that could make a rule fail at run time is refused here, at `check`: regexes
that do not compile, group references a pattern does not have, statuses out of range,
header names that would change message framing, and actions that cannot go together.
The rule engine (revproxy/http/rules.py) compiles the same texts again and trusts them.

The substitution syntax of rewrites, redirects and body replacements is parsed by
`parse_substitution`, shared with the engine so that both read it the same way.
"""

from __future__ import annotations

import re

from revproxy.config.addresses import normal_host
from revproxy.config.model import MatchConfig, RuleConfig
from revproxy.config.reader import Context, Table, show

PATH_KINDS = ("prefix", "exact", "regex")
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
PLACEHOLDERS = ("host", "path", "query", "target")

# Fields that frame a message or belong to one hop (RFC 9110 §7.6.1, RFC 9112 §6): a rule
# that changed them could split or merge messages, so rules may not touch them. Host is
# kept as the client sent it (the published services depend on it), Expect drives the
# 100-continue exchange.
FRAMING_FIELDS = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    }
)
REQUEST_ONLY_FIELDS = frozenset({"host", "expect"})

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 §5.5: a field value is visible characters, spaces and tabs inside, no controls.
_FIELD_VALUE_RE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")
_MEDIA_TYPE_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+/(\*|[!#$%&'*+\-.^_`|~0-9a-z]+)")
_SUBSTITUTION_RE = re.compile(r"\\(\d{1,2})|\\g<(\w+)>|\\(.)|\{(\w+)\}", re.DOTALL)

# A parsed substitution: text to copy, a group number, or a placeholder name.
LITERAL, GROUP, PLACEHOLDER = 0, 1, 2
Part = tuple[int, str | int]


def parse_substitution(
    text: str, pattern: re.Pattern[bytes] | None, *, placeholders: bool
) -> list[Part]:
    """Split a replacement like `\\1?sl=1` or `https://{host}\\g<rest>` into parts.

    `\\N` and `\\g<name>` refer to groups of `pattern` (`\\0` is the whole match), `\\\\` is
    a backslash; with `placeholders`, `{host}`, `{path}`, `{query}` and `{target}` are the
    request's. Any other `{...}` is copied as written. Raises ValueError.
    """
    parts: list[Part] = []
    pos = 0
    groups = pattern.groups if pattern is not None else 0
    names = pattern.groupindex if pattern is not None else {}
    for m in _SUBSTITUTION_RE.finditer(text):
        number, name, escaped, placeholder = m.groups()
        if placeholder is not None and (not placeholders or placeholder not in PLACEHOLDERS):
            continue  # braces that are not a placeholder are text
        if m.start() > pos:
            parts.append((LITERAL, text[pos : m.start()]))
        pos = m.end()
        if number is not None:
            if int(number) > groups:
                raise ValueError(f"\\{number} refers to a group the pattern does not have")
            parts.append((GROUP, int(number)))
        elif name is not None:
            if name.isdigit() and int(name) <= groups:
                parts.append((GROUP, int(name)))
            elif name in names:
                parts.append((GROUP, names[name]))
            else:
                raise ValueError(f"\\g<{name}> refers to a group the pattern does not have")
        elif escaped is not None:
            if escaped != "\\":
                raise ValueError(f'unknown escape "\\{escaped}" (write "\\\\" for a backslash)')
            parts.append((LITERAL, "\\"))
        else:
            parts.append((PLACEHOLDER, str(placeholder)))
    if pos < len(text):
        parts.append((LITERAL, text[pos:]))
    # Adjacent literals (around an escaped backslash) are joined.
    joined: list[Part] = []
    for part in parts:
        if joined and part[0] == LITERAL and joined[-1][0] == LITERAL:
            joined[-1] = (LITERAL, str(joined[-1][1]) + str(part[1]))
        else:
            joined.append(part)
    return joined


def compile_regex(text: str, ignore_case: bool = False) -> re.Pattern[bytes]:
    """A rule's regex, over bytes (requests and bodies are bytes); raises ValueError."""
    try:
        return re.compile(text.encode("utf-8"), re.IGNORECASE if ignore_case else 0)
    except re.error as exc:
        raise ValueError(f"is not a valid regular expression: {exc}") from exc


def read_rules(ctx: Context, service: Table) -> tuple[RuleConfig, ...]:
    """The service's rules, in order; problems are reported through the table."""
    value = service.raw("rules")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        service.error("rules", "must be an array of tables: [[services.NAME.rules]]")
        return ()
    rules = []
    names: set[str] = set()
    for i, item in enumerate(value):
        rule = _read_rule(Table(ctx, f"{service.sub('rules')}[{i}]", item), i)
        if rule is None:
            continue
        if rule.name in names:
            ctx.error(f"{service.sub('rules')}[{i}].name", f'"{rule.name}" is used twice')
        names.add(rule.name)
        rules.append(rule)
    return tuple(rules)


def _read_rule(t: Table, index: int) -> RuleConfig | None:
    errors_before = len(t.ctx.problems)
    d = RuleConfig(name="")
    name = t.string("name", f"rule{index + 1}")
    match = _read_match(t.table("match"))
    rewrite = _read_substitution_table(t, "rewrite", placeholders=True)
    redirect = _read_redirect(t)
    respond = _read_respond(t)
    replace_body = _read_substitution_table(t, "replace_body", placeholders=False)
    keep_going = t.boolean("continue", not d.last)
    rule = RuleConfig(
        name=name,
        match=match,
        set_request_headers=_header_pairs(t, "set_request_headers", request=True),
        add_request_headers=_header_pairs(t, "add_request_headers", request=True),
        remove_request_headers=_header_names(t, "remove_request_headers", request=True),
        set_response_headers=_header_pairs(t, "set_response_headers", request=False),
        add_response_headers=_header_pairs(t, "add_response_headers", request=False),
        remove_response_headers=_header_names(t, "remove_response_headers", request=False),
        rewrite=rewrite,
        redirect=redirect,
        respond=respond,
        replace_body=replace_body,
        replace_content_types=_media_types(t, d.replace_content_types),
        replace_max_bytes=t.number("replace_max_bytes", d.replace_max_bytes, integer=True, low=1),
        last=not keep_going,
    )
    if redirect is not None and match.path_kind == "regex" and match.path:
        try:
            parse_substitution(
                redirect[1], compile_regex(match.path, match.ignore_case), placeholders=True
            )
        except ValueError as exc:
            t.error("redirect.location", str(exc))
    elif redirect is not None:
        try:
            parse_substitution(redirect[1], None, placeholders=True)
        except ValueError as exc:
            t.error(
                "redirect.location", f'{exc}; groups come from match.path with path_kind "regex"'
            )
    _check_actions(t, rule)
    t.finish()
    return rule if len(t.ctx.problems) == errors_before else None


def _check_actions(t: Table, rule: RuleConfig) -> None:
    answers = [k for k in ("redirect", "respond") if getattr(rule, k) is not None]
    if len(answers) > 1:
        t.error("respond", "a rule either redirects or responds, not both")
    if answers:
        forwarded = [
            k
            for k in (
                "rewrite",
                "replace_body",
                "set_request_headers",
                "add_request_headers",
                "remove_request_headers",
            )
            if getattr(rule, k)
        ]
        for key in forwarded:
            t.error(key, f"cannot go with {answers[0]}: the request is answered, not forwarded")
        if not rule.last:
            t.error("continue", f"cannot be true with {answers[0]}: answering ends the rules")
    if "replace_body" not in t.data:
        for key in ("replace_content_types", "replace_max_bytes"):
            if key in t.data:
                t.error(key, "is only used with replace_body")
    actions = (
        "set_request_headers",
        "add_request_headers",
        "remove_request_headers",
        "set_response_headers",
        "add_response_headers",
        "remove_response_headers",
        "rewrite",
        "redirect",
        "respond",
        "replace_body",
    )
    if not any(k in t.data for k in actions):
        t.ctx.error(
            t.key,
            "the rule does nothing: give headers to set, add or remove, rewrite, redirect, "
            "respond or replace_body",
        )


def _read_match(t: Table) -> MatchConfig:
    d = MatchConfig()
    ignore_case = t.boolean("ignore_case", d.ignore_case)
    hosts = []
    for host in t.strings("hosts", d.hosts):
        normal = normal_host(host)
        if normal is None or normal == "*":
            t.error("hosts", f'{show(host)} is not a host name, IP address or "*.name.tld"')
        else:
            hosts.append(normal)
    path_kind = t.string("path_kind", d.path_kind, PATH_KINDS)
    path = t.string("path", d.path)
    if path_kind == "regex":
        _check_regex(t, "path", path, ignore_case)
    elif path and not path.startswith("/"):
        t.error("path", f'must start with "/", got {show(path)}')
    elif path and (any(c in path for c in "?# ") or not path.isprintable()):
        t.error("path", f"must be a path without query, spaces or controls, got {show(path)}")
    if "path_kind" in t.data and not path:
        t.error("path_kind", "is only used with path")
    methods = t.strings("methods", d.methods)
    for method in methods:
        if not _TOKEN_RE.fullmatch(method) or method != method.upper():
            t.error("methods", f'each method is an upper-case token like "GET", got {show(method)}')
    query = t.string("query", d.query)
    _check_regex(t, "query", query, ignore_case)
    headers = []
    value = t.raw("headers")
    if value is not None:
        if not isinstance(value, dict):
            t.error("headers", 'must be a table of header name = regex, e.g. { Accept = "json" }')
        else:
            for name, regex in value.items():
                key = f"headers.{_quoted(name)}"
                if not _TOKEN_RE.fullmatch(name):
                    t.error(key, "is not a valid header name")
                elif not isinstance(regex, str):
                    t.error(key, f"must be a regular expression (a string), got {show(regex)}")
                else:
                    _check_regex(t, key, regex, ignore_case)
                    headers.append((name.lower(), regex))
    match = MatchConfig(
        hosts=tuple(hosts),
        path=path,
        path_kind=path_kind,
        methods=tuple(methods),
        query=query,
        headers=tuple(headers),
        ignore_case=ignore_case,
    )
    t.finish()
    return match


def _check_regex(t: Table, key: str, text: str, ignore_case: bool) -> None:
    if text:
        try:
            compile_regex(text, ignore_case)
        except ValueError as exc:
            t.error(key, str(exc))


def _quoted(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'


def _read_substitution_table(t: Table, key: str, *, placeholders: bool) -> tuple[str, str] | None:
    """`rewrite` or `replace_body`: { pattern = REGEX, replace = TEXT }."""
    if t.raw(key) is None:
        return None
    sub = t.table(key)
    if not isinstance(t.data.get(key), dict):
        return None
    pattern_text = sub.required("pattern", "'^(/meet/[^?]*)$'")
    replace = sub.string("replace", "")
    if "replace" not in sub.data:
        sub.error("replace", "is required, e.g. '\\1?sl=1'")
    sub.finish()
    if pattern_text is None:
        return None
    try:
        pattern = compile_regex(pattern_text)
    except ValueError as exc:
        sub.error("pattern", str(exc))
        return None
    try:
        parse_substitution(replace, pattern, placeholders=placeholders)
    except ValueError as exc:
        sub.error("replace", str(exc))
        return None
    if key == "rewrite" and not _visible_ascii(replace):
        sub.error("replace", "a path and query are visible ASCII: percent-encode the rest")
    return pattern_text, replace


def _read_redirect(t: Table) -> tuple[int, str] | None:
    if t.raw("redirect") is None:
        return None
    sub = t.table("redirect")
    if not isinstance(t.data.get("redirect"), dict):
        return None
    status = sub.number("status", 302, integer=True)
    if "status" in sub.data and status not in REDIRECT_STATUSES:
        sub.error("status", f"must be 301, 302, 303, 307 or 308, got {status}")
    location = sub.required("location", '"https://{host}{target}"')
    sub.finish()
    if location is None:
        return None
    if not _visible_ascii(location):
        sub.error("location", "a URL is visible ASCII without spaces: percent-encode the rest")
    return status, location


def _read_respond(t: Table) -> tuple[int, str, str] | None:
    if t.raw("respond") is None:
        return None
    sub = t.table("respond")
    if not isinstance(t.data.get("respond"), dict):
        return None
    status = sub.number("status", 200, integer=True)
    if not 200 <= status <= 599:
        sub.error("status", f"must be a final status, 200 to 599, got {status}")
        status = 200
    content_type = sub.string("content_type", "text/plain; charset=utf-8")
    body = sub.string("body", "")
    if not _FIELD_VALUE_RE.fullmatch(content_type):
        sub.error("content_type", "must not contain control characters")
    # RFC 9110 §15.3.5, §15.4.5: 204 and 304 responses have no content.
    if status in (204, 304) and body:
        sub.error("body", f"a {status} response has no body")
    sub.finish()
    return status, content_type, body


def _header_pairs(t: Table, key: str, *, request: bool) -> tuple[tuple[str, str], ...]:
    """{ Name = "value" } or { Name = ["value", "value"] }, kept in order."""
    value = t.raw(key)
    if value is None:
        return ()
    if not isinstance(value, dict):
        t.error(key, 'must be a table of header name = value, e.g. { X-Example = "1" }')
        return ()
    pairs: list[tuple[str, str]] = []
    for name, item in value.items():
        where = f"{key}.{_quoted(name)}"
        if not _header_name_ok(t, where, name, request):
            continue
        values = item if isinstance(item, list) else [item]
        if not values or not all(isinstance(v, str) for v in values):
            t.error(where, f"must be a string or an array of strings, got {show(item)}")
            continue
        if len(values) > 1 and key.startswith("set_"):
            t.error(where, "set takes one value; use add_... for several")
            continue
        for v in values:
            if not _FIELD_VALUE_RE.fullmatch(v) or v != v.strip(" \t"):
                t.error(where, "must not contain control characters or surrounding spaces")
                break
        else:
            pairs.extend((name, v) for v in values)
    return tuple(pairs)


def _header_names(t: Table, key: str, *, request: bool) -> tuple[str, ...]:
    names = []
    for name in t.strings(key, ()):
        if _header_name_ok(t, key, name, request):
            names.append(name.lower())
    return tuple(names)


def _header_name_ok(t: Table, key: str, name: str, request: bool) -> bool:
    if not _TOKEN_RE.fullmatch(name):
        t.error(key, f"{show(name)} is not a valid header name")
        return False
    lname = name.lower()
    if lname in FRAMING_FIELDS or (request and lname in REQUEST_ONLY_FIELDS):
        t.error(key, f"{name} is managed by the proxy and cannot be changed by a rule")
        return False
    return True


def _media_types(t: Table, default: tuple[str, ...]) -> tuple[str, ...]:
    types = []
    for item in t.strings("replace_content_types", default):
        lower = item.strip().lower()
        if not _MEDIA_TYPE_RE.fullmatch(lower):
            t.error(
                "replace_content_types",
                f'each entry is a media type like "text/html" or "text/*", got {show(item)}',
            )
        else:
            types.append(lower)
    return tuple(types)


def _visible_ascii(text: str) -> bool:
    return all("\x21" <= c <= "\x7e" for c in text)
