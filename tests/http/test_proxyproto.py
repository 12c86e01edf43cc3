"""The PROXY protocol header parser: versions 1 and 2, complete, partial and malformed."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from revproxy.http.proxyproto import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    build,
    local,
    needed,
    parse,
)


def v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + bytes((command, family)) + struct.pack("!H", len(body)) + body


def v2_tcp4(src: str, dst: str, sport: int, dport: int, tlvs: bytes = b"") -> bytes:
    addresses = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
    return v2(0x21, 0x11, addresses + struct.pack("!HH", sport, dport) + tlvs)


def v2_tcp6(src: str, dst: str, sport: int, dport: int) -> bytes:
    addresses = ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
    return v2(0x21, 0x21, addresses + struct.pack("!HH", sport, dport))


V1_TCP4 = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n"

VALID = [
    (V1_TCP4, ("192.0.2.1", 56324), ("198.51.100.7", 443)),
    (
        b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 0\r\n",
        ("2001:db8::1", 65535),
        ("2001:db8::2", 0),
    ),
    (b"PROXY UNKNOWN\r\n", None, None),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None, None),
    (v2_tcp4("203.0.113.9", "10.0.0.1", 40000, 443), ("203.0.113.9", 40000), ("10.0.0.1", 443)),
    (
        v2_tcp4("203.0.113.9", "10.0.0.1", 1, 2, tlvs=b"\x05\x00\x03abc"),
        ("203.0.113.9", 1),
        ("10.0.0.1", 2),
    ),
    (v2_tcp6("2001:db8::9", "::1", 5, 6), ("2001:db8::9", 5), ("::1", 6)),
    (v2(0x20, 0x00, b""), None, None),  # LOCAL: the balancer's own connection
    (v2(0x21, 0x00, b""), None, None),  # UNSPEC
    (v2(0x21, 0x31, bytes(216)), None, None),  # UNIX sockets: no TCP client address
]


@pytest.mark.parametrize("data,source,destination", VALID)
def test_valid_headers_name_the_client(data: bytes, source: object, destination: object) -> None:
    header = parse(data + b"GET / HTTP/1.1\r\n")
    assert header == ProxyHeader(len(data), source, destination)  # type: ignore[arg-type]
    assert needed(data) == len(data)


@pytest.mark.parametrize("data", [d for d, _, _ in VALID])
def test_every_strict_prefix_is_incomplete(data: bytes) -> None:
    for cut in range(len(data)):
        assert parse(data[:cut]) is None, cut


INVALID = [
    (b"GET / HTTP/1.1\r\n\r\n", "signature"),
    (b"\x16\x03\x01\x02\x00", "signature"),  # a TLS ClientHello without a header
    (b"PROXY  TCP4 192.0.2.1 198.51.100.7 1 2\r\n", "bad version 1 line"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2 \r\n", "bad version 1 line"),
    (b"PROXY TCP5 192.0.2.1 198.51.100.7 1 2\r\n", "bad version 1 line"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 1\r\n", "bad version 1 line"),
    (b"PROXY TCP4 2001:db8::1 198.51.100.7 1 2\r\n", "not an IPv4 address"),
    (b"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n", "not an IPv6 address"),
    (b"PROXY TCP4 192.0.2.300 198.51.100.7 1 2\r\n", "bad address"),
    # A zone would carry any bytes into X-Forwarded-For and the logs.
    (b"PROXY TCP6 ::1%\nX-Injected:yes ::1 1 2\r\n", "bad address"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "bad address"),
    (b"PROXY TCP6 ::1%,192.0.2.9 ::1 1 2\r\n", "bad address"),
    (b"PROXY TCP4 \xff.0.0.1 127.0.0.1 1 2\r\n", "bad address"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 65536 2\r\n", "out of range"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 080 2\r\n", "bad port"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 -1 2\r\n", "bad port"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 +1 2\r\n", "bad port"),
    (b"PROXY TCP4 " + b"1" * 100 + b"\r\n", "longer than 107"),
    (v2(0x22, 0x11, bytes(12)), "version/command"),
    (v2(0x11, 0x11, bytes(12)), "version/command"),
    (v2(0x21, 0x44, bytes(12)), "address family"),
    (v2(0x21, 0x11, bytes(11)), "cut short"),
    (v2(0x21, 0x21, bytes(35)), "cut short"),
    (V2_SIGNATURE + b"\x21\x11\xff\xff", "at most 4096"),
    (b"\r\n\r\n\x00\r\nQUIX\n" + bytes(4), "signature"),
]


@pytest.mark.parametrize("data,problem", INVALID)
def test_malformed_headers_are_refused_with_the_reason(data: bytes, problem: str) -> None:
    with pytest.raises(ProxyHeaderError, match=problem):
        parse(data)


@given(st.binary(max_size=200))
def test_any_bytes_give_a_header_need_more_or_a_clear_error(data: bytes) -> None:
    try:
        header = parse(data)
    except ProxyHeaderError:
        return
    if header is None:
        assert V2_SIGNATURE.startswith(data[:12]) or b"PROXY ".startswith(data[:6])
    else:
        assert 0 < header.length <= len(data)


@given(
    st.ip_addresses(v=4),
    st.ip_addresses(v=4),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.binary(max_size=40),
)
def test_v1_and_v2_of_the_same_connection_agree(
    src: ipaddress.IPv4Address,
    dst: ipaddress.IPv4Address,
    sport: int,
    dport: int,
    rest: bytes,
) -> None:
    line = f"PROXY TCP4 {src} {dst} {sport} {dport}\r\n".encode()
    one, two = parse(line + rest), parse(v2_tcp4(str(src), str(dst), sport, dport) + rest)
    assert one is not None and two is not None
    assert (one.source, one.destination) == (two.source, two.destination)
    assert one.source == (str(src), sport)


@given(
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.sampled_from(["v1", "v2"]),
)
def test_built_headers_parse_back_to_the_same_addresses(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, sport: int, dport: int, version: str
) -> None:
    # (An IPv4-mapped client is named as IPv4: see the test below.)
    assume(not isinstance(address, ipaddress.IPv6Address) or address.ipv4_mapped is None)
    dst = "127.0.0.1" if address.version == 4 else "::1"
    header = parse(build(version, (str(address), sport), (dst, dport)) + b"GET")
    assert header is not None
    assert header.source == (str(address), sport)
    assert header.destination == (dst, dport)


def test_built_headers_without_common_addresses_say_unknown() -> None:
    mixed = (("192.0.2.1", 1), ("::1", 2))
    assert build("v1", *mixed) == b"PROXY UNKNOWN\r\n"
    assert parse(build("v2", *mixed)) == ProxyHeader(16, None, None)
    assert build("v1", None, None) == b"PROXY UNKNOWN\r\n"
    # An IPv4 client seen through an IPv6 socket is named as IPv4.
    mapped = parse(build("v2", ("::ffff:192.0.2.1", 5), ("::ffff:10.0.0.1", 443)))
    assert mapped is not None and mapped.source == ("192.0.2.1", 5)
    for version in ("v1", "v2"):
        header = parse(local(version))
        assert header is not None and header.source is None
        assert header.length == len(local(version))


def test_built_headers_byte_for_byte() -> None:
    ends = (("192.0.2.1", 5), ("198.51.100.7", 443))
    assert build("v1", *ends) == b"PROXY TCP4 192.0.2.1 198.51.100.7 5 443\r\n"
    assert build("v2", *ends) == (
        b"\r\n\r\n\x00\r\nQUIT\n"  # signature
        b"\x21\x11\x00\x0c"  # version 2, PROXY; TCP over IPv4; 12 bytes follow
        b"\xc0\x00\x02\x01\xc6\x33\x64\x07"  # source, destination
        b"\x00\x05\x01\xbb"  # ports
    )
    six = (("2001:db8::1", 1), ("::1", 2))
    assert build("v1", *six) == b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n"
    assert build("v2", *six)[12:16] == b"\x21\x21\x00\x24"
    assert local("v2") == b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"
