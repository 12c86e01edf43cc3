"""Host normalization, RFC 6125 wildcard matching and the name index, as tables."""

from __future__ import annotations

import pytest

from revproxy.tls.names import (
    NameIndex,
    normalize_host,
    normalize_pattern,
    wildcard_matches,
    wildcard_parent,
)

NORMALIZE_OK = [
    ("example.com", "example.com"),
    ("Example.COM", "example.com"),
    (b"example.com", "example.com"),
    ("example.com:443", "example.com"),
    ("example.com:", "example.com"),  # RFC 3986: port = *DIGIT
    ("example.com.", "example.com"),
    ("example.com.:8443", "example.com"),
    ("localhost", "localhost"),
    ("a-b_c.internal.test", "a-b_c.internal.test"),
    ("127.0.0.1", "127.0.0.1"),
    ("127.0.0.1:80", "127.0.0.1"),
    ("[::1]", "::1"),
    ("[::1]:443", "::1"),
    ("[2001:DB8:0:0::1]:8080", "2001:db8::1"),
    (" example.com\t", "example.com"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("a" * 63 + ".com", "a" * 63 + ".com"),
]

NORMALIZE_BAD = [
    "",
    ":443",
    ".",
    "example..com",
    ".example.com",
    "-example.com",
    "example-.com",
    "exa mple.com",
    "example.com:http",
    "example.com:65536",
    "example.com:123456",
    "example.com:80:80",
    "::1",
    "[::1",
    "[::1]x",
    "[::1]:99999",
    "[not-ip]",
    "[127.0.0.1]",
    "bücher.example",
    b"b\xc3\xbccher.example",
    "user@example.com",
    "example.com/path",
    "*.example.com",
    "*",
    "a" * 64 + ".com",
    ("a" * 60 + ".") * 5 + "com",
    "example.com\r\n",
]


@pytest.mark.parametrize(("value", "expected"), NORMALIZE_OK)
def test_normalize_host(value: str | bytes, expected: str) -> None:
    assert normalize_host(value) == expected


@pytest.mark.parametrize("value", NORMALIZE_BAD)
def test_normalize_host_rejects_junk(value: str | bytes) -> None:
    with pytest.raises(ValueError):
        normalize_host(value)


WILDCARD = [
    ("*.example.com", "a.example.com", True),
    ("*.example.com", "A.Example.Com", True),
    ("*.EXAMPLE.com", "a.example.com", True),
    ("*.example.com", "a.example.com.", True),
    ("*.example.com.", "a.example.com", True),
    ("*.example.com", "example.com", False),  # no bare domain
    ("*.example.com", "a.b.example.com", False),  # exactly one label
    ("*.example.com", ".example.com", False),
    ("*.example.com", "a.example.org", False),
    ("*.example.com", "aexample.com", False),
    ("*", "example.com", False),  # not a certificate pattern
    ("*.com", "example.com", False),  # a whole top-level domain
    ("*.", "example.com", False),
    ("f*.example.com", "foo.example.com", False),  # partial-label wildcards refused
    ("*o.example.com", "foo.example.com", False),
    ("a.*.example.com", "a.b.example.com", False),
    ("*.*.example.com", "a.b.example.com", False),
    ("example.com", "example.com", False),  # not a wildcard at all
    ("*.2.3.4", "1.2.3.4", False),  # addresses are not domains
    ("*.example.com", "a b.example.com", False),
]


@pytest.mark.parametrize(("pattern", "name", "expected"), WILDCARD)
def test_wildcard_matches(pattern: str, name: str, expected: bool) -> None:
    assert wildcard_matches(pattern, name) is expected


@pytest.mark.parametrize(
    ("pattern", "parent"),
    [("*.example.com", "example.com"), ("*.a.b.c", "a.b.c"), ("*.com", None), ("x.com", None)],
)
def test_wildcard_parent(pattern: str, parent: str | None) -> None:
    assert wildcard_parent(pattern) == parent


PATTERNS = [
    ("Example.com", "example.com"),
    ("example.com.", "example.com"),
    ("*.Example.com", "*.example.com"),
    ("*", "*"),
    ("127.0.0.1", "127.0.0.1"),
    ("2001:db8:0::1", "2001:db8::1"),
    ("[::1]", "::1"),
]


@pytest.mark.parametrize(("pattern", "expected"), PATTERNS)
def test_normalize_pattern(pattern: str, expected: str) -> None:
    assert normalize_pattern(pattern) == expected


@pytest.mark.parametrize(
    "pattern", ["example.com:443", "*.com", "f*.example.com", "a.*.com", "", "::x::"]
)
def test_normalize_pattern_rejects(pattern: str) -> None:
    with pytest.raises(ValueError):
        normalize_pattern(pattern)


INDEX = NameIndex(
    [
        (["*.example.com"], "wild-example"),
        (["www.example.com", "example.com"], "www"),
        (["*.apps.example.com", "Owa.Example.Com"], "apps"),
        (["www.example.com", "*.example.com", "other.test"], "late"),  # duplicates lose
    ]
)

LOOKUPS = [
    ("www.example.com", "www"),  # exact wins over an earlier wildcard
    ("example.com", "www"),
    ("owa.example.com", "apps"),
    ("mail.example.com", "wild-example"),
    ("x.apps.example.com", "apps"),
    ("apps.example.com", "wild-example"),  # "*.example.com" covers the label "apps"
    ("a.x.apps.example.com", None),
    ("a.b.example.com", None),
    ("other.test", "late"),
    ("unknown.test", None),
    ("com", None),
    ("127.0.0.1", None),
]


@pytest.mark.parametrize(("name", "expected"), LOOKUPS)
def test_name_index_lookup(name: str, expected: str | None) -> None:
    assert INDEX.lookup(name) == expected


def test_name_index_catch_all_is_last_resort() -> None:
    index = NameIndex([(["*"], "any"), (["*.example.com"], "wild"), (["a.test"], "a")])
    assert index.lookup("a.test") == "a"
    assert index.lookup("x.example.com") == "wild"
    assert index.lookup("nothing.else") == "any"
    assert len(index) == 3
    assert index.patterns() == ("a.test", "*.example.com", "*")


def test_name_index_rejects_bad_patterns() -> None:
    with pytest.raises(ValueError, match="wildcard"):
        NameIndex([(["*.com"], 1)])


def test_name_index_agrees_with_wildcard_matches() -> None:
    patterns = ["*.example.com", "*.a.example.com", "*.example.org"]
    names = ["x.example.com", "x.a.example.com", "a.example.com", "example.org", "q.example.org"]
    for pattern in patterns:
        index = NameIndex([([pattern], pattern)])
        for name in names:
            assert (index.lookup(name) == pattern) is wildcard_matches(pattern, name)
