"""Host names as the proxy compares them: normalization and wildcard matching.

The same rules serve two lookups on the per-connection path: the certificate chosen by the
SNI name of a TLS ClientHello, and the service chosen by the Host header. Both compare
lower-case names without port and without the trailing root dot, and both accept
"*.example.com" only in the restricted form of RFC 6125 section 6.4.3, so that a certificate
and a service answer for exactly the same set of names.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")

# RFC 1035 section 2.3.4 limits; "_" is tolerated because internal DNS names carry it.
_MAX_NAME = 253
_MAX_LABEL = 63
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME_RE = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")
# RFC 3986 section 3.2.3: port = *DIGIT (an empty port after ":" is allowed).
_PORT_RE = re.compile(r"[0-9]{0,5}")


def normalize_host(value: bytes | str) -> str:
    """Return the name of a Host header or SNI value: lower case, no port, no trailing dot.

    An IPv6 literal ("[::1]:443") comes back without brackets, in compressed form.
    Raises ValueError for anything that is not a host name or address literal.
    """
    if isinstance(value, bytes):
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("host is not ASCII") from None
    else:
        text = value
        if not text.isascii():
            raise ValueError("host is not ASCII")
    # Surrounding whitespace is not part of a field value (RFC 9110 section 5.5).
    text = text.strip(" \t").lower()
    if text.startswith("["):
        return _normalize_ipv6_literal(text)
    host, sep, port = text.rpartition(":")
    if not sep:
        host = text
    elif not _PORT_RE.fullmatch(port) or (port and int(port) > 65535):
        raise ValueError(f"bad port in host {text!r}")
    if host.endswith("."):
        host = host[:-1]
    if not host or len(host) > _MAX_NAME or not _NAME_RE.fullmatch(host):
        raise ValueError(f"bad host {text!r}")
    return host


def _normalize_ipv6_literal(text: str) -> str:
    # RFC 3986 section 3.2.2: IP-literal = "[" IPv6address "]", optionally followed by a port.
    end = text.find("]")
    if end < 0:
        raise ValueError(f"unclosed IPv6 literal {text!r}")
    rest = text[end + 1 :]
    if rest and (not rest.startswith(":") or not _PORT_RE.fullmatch(rest[1:])):
        raise ValueError(f"bad port in host {text!r}")
    if rest[1:] and int(rest[1:]) > 65535:
        raise ValueError(f"bad port in host {text!r}")
    try:
        return ipaddress.IPv6Address(text[1:end]).compressed
    except ValueError:
        raise ValueError(f"bad IPv6 literal {text!r}") from None


def is_ip_address(name: str) -> bool:
    """True when `name` (normalized) is an IPv4 or IPv6 address rather than a DNS name."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def wildcard_parent(pattern: str) -> str | None:
    """For a valid wildcard pattern "*.example.com", return "example.com"; else None.

    RFC 6125 section 6.4.3 allows several wildcard forms but advises against all but this
    one: "*" is the whole left-most label. We also refuse a pattern whose remainder is a
    single label ("*.com") or ends in a numeric label (an IPv4 address is not a domain), so a
    wildcard can never stand for a whole top-level or registered domain.
    """
    if not pattern.startswith("*."):
        return None
    parent = pattern[2:].lower()
    if parent.endswith("."):
        parent = parent[:-1]
    if "." not in parent or "*" in parent or len(parent) > _MAX_NAME - 2:
        return None
    if not _NAME_RE.fullmatch(parent) or parent.rpartition(".")[2].isdigit():
        return None
    return parent


def wildcard_matches(pattern: str, name: str) -> bool:
    """Whether certificate/host pattern "*.example.com" covers `name` (RFC 6125 6.4.3).

    The wildcard stands for exactly one non-empty label: it matches "a.example.com" but
    neither "example.com" nor "a.b.example.com". Comparison ignores case and a trailing dot.
    A pattern without a wildcard, or a bare "*", never matches here.
    """
    parent = wildcard_parent(pattern)
    if parent is None:
        return False
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    label, dot, rest = name.partition(".")
    if not dot or not label or rest != parent:
        return False
    return len(label) <= _MAX_LABEL and _NAME_RE.fullmatch(label) is not None


def normalize_pattern(pattern: str) -> str:
    """Validate and normalize one pattern for NameIndex: exact name, address, "*.x.y" or "*"."""
    text = pattern.strip().lower()
    if text == "*":
        return text
    if text.startswith("*"):
        parent = wildcard_parent(text)
        if parent is None:
            raise ValueError(f"bad wildcard pattern {pattern!r}: only '*.domain.tld' is allowed")
        return "*." + parent
    if ":" in text and not text.startswith("["):
        # A bare IPv6 address, as it appears in a certificate's iPAddress SAN.
        try:
            return ipaddress.IPv6Address(text).compressed
        except ValueError:
            raise ValueError(f"bad name pattern {pattern!r}") from None
    try:
        name = normalize_host(text)
    except ValueError:
        raise ValueError(f"bad name pattern {pattern!r}") from None
    if name != text.rstrip(".") and not text.startswith("["):
        raise ValueError(f"name pattern {pattern!r} must not carry a port")
    return name


class NameIndex(Generic[T]):
    """Maps names to values: exact names first, then "*.parent" wildcards, then "*".

    Built once from (patterns, value) pairs in priority order: when two entries claim the
    same pattern, the first one keeps it. `lookup` takes a name already passed through
    `normalize_host` and costs at most three dict probes, whatever the number of entries.
    """

    __slots__ = ("_exact", "_wildcards", "_catch_all", "_has_catch_all")

    def __init__(self, entries: Iterable[tuple[Iterable[str], T]]) -> None:
        self._exact: dict[str, T] = {}
        self._wildcards: dict[str, T] = {}  # keyed by the parent domain: "example.com"
        self._catch_all: T | None = None
        self._has_catch_all = False
        for patterns, value in entries:
            for raw in patterns:
                pattern = normalize_pattern(raw)
                if pattern == "*":
                    if not self._has_catch_all:
                        self._catch_all, self._has_catch_all = value, True
                elif pattern.startswith("*."):
                    self._wildcards.setdefault(pattern[2:], value)
                else:
                    self._exact.setdefault(pattern, value)

    def lookup(self, name: str) -> T | None:
        """The value for `name` (normalized), or None when no pattern covers it."""
        value = self._exact.get(name)
        if value is not None:
            return value
        dot = name.find(".")
        if dot > 0:
            value = self._wildcards.get(name[dot + 1 :])
            if value is not None:
                return value
        return self._catch_all

    def patterns(self) -> tuple[str, ...]:
        """Every pattern held, exact names first, for status pages and error messages."""
        wild = tuple("*." + parent for parent in self._wildcards)
        return tuple(self._exact) + wild + (("*",) if self._has_catch_all else ())

    def __len__(self) -> int:
        return len(self._exact) + len(self._wildcards) + int(self._has_catch_all)
