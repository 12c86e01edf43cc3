"""The PROXY protocol header (versions 1 and 2) that a load balancer in front sends first.

A listener with `proxy_protocol = true` expects every connection to open with one header
naming the client's address; that address then stands for the client in X-Forwarded-For,
balancing by address, rules and logs. Version 1 is one text line; version 2 is binary.
Parsing is strict: anything that is not a complete, well-formed header is an error and the
connection is closed, since bytes after a bad header cannot be trusted to be framed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest version 1 line, CRLF included
V2_FIXED = 16  # signature, version and command, family, length
V2_MAX = 4096  # addresses plus TLVs; larger headers are refused

_V2_LOCAL = 0x20
_V2_PROXY = 0x21
_V2_TCP4 = 0x11
_V2_TCP6 = 0x21
_V2_FAMILIES = frozenset((0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32))  # UNSPEC, TCP/UDP, UNIX
_TCP4_LENGTH = 12
_TCP6_LENGTH = 36


class ProxyHeaderError(ValueError):
    """The bytes are not a PROXY protocol header (the message says what is wrong)."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    length: int  # bytes of the connection the header takes
    source: tuple[str, int] | None  # the client's address; None: keep the socket's peer
    destination: tuple[str, int] | None


def needed(data: bytes) -> int:
    """How many bytes of `data` the header takes; 0 while more must be read to know.

    Raises ProxyHeaderError as soon as `data` cannot start a header.
    """
    if data[:1] == b"P" or not data:
        if not V1_PREFIX.startswith(data[: len(V1_PREFIX)]):
            raise ProxyHeaderError("does not start with a PROXY protocol signature")
        end = data.find(b"\r\n", 0, V1_MAX)
        if end >= 0:
            return end + 2
        if len(data) >= V1_MAX:
            raise ProxyHeaderError(f"version 1 line longer than {V1_MAX} bytes")
        return 0
    if not V2_SIGNATURE.startswith(data[: len(V2_SIGNATURE)]):
        raise ProxyHeaderError("does not start with a PROXY protocol signature")
    if len(data) < V2_FIXED:
        return 0
    total = V2_FIXED + int.from_bytes(data[14:16], "big")
    if total > V2_MAX:
        raise ProxyHeaderError(f"version 2 header of {total} bytes (at most {V2_MAX})")
    return total


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`; None while it is incomplete.

    Raises ProxyHeaderError when `data` does not start with a valid header.
    """
    length = needed(data)
    if not length or len(data) < length:
        return None
    if data[:1] == b"P":
        return _parse_v1(data[: length - 2], length)
    return _parse_v2(data[:length], length)


def _port(text: bytes) -> int:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[:1] == b"0"):
        raise ProxyHeaderError(f"bad port {text[:8]!r}")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError(f"port {port} out of range")
    return port


_ADDRESS_BYTES = frozenset(b"0123456789abcdefABCDEF:.")


def _address(text: bytes, version: int) -> str:
    # Digits, hex and separators only: the spec's forms. (ipaddress would also take an
    # IPv6 zone after "%", of any bytes, line breaks included, which must never reach a
    # forwarded header or a log line.)
    if not text or not _ADDRESS_BYTES.issuperset(text):
        raise ProxyHeaderError(f"bad address {text[:46]!r}")
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except ValueError:
        raise ProxyHeaderError(f"bad address {text[:46]!r}") from None
    if address.version != version:
        raise ProxyHeaderError(f"{text[:46]!r} is not an IPv{version} address")
    return str(address)


def _parse_v1(line: bytes, length: int) -> ProxyHeader:
    # "PROXY TCP4 192.0.2.1 198.51.100.1 56324 443": single spaces, nothing else.
    fields = line.split(b" ")
    if len(fields) >= 2 and fields[1] == b"UNKNOWN":
        return ProxyHeader(length, None, None)  # the sender does not know: keep the peer
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError(f"bad version 1 line {line[:V1_MAX]!r}")
    version = 4 if fields[1] == b"TCP4" else 6
    source = (_address(fields[2], version), _port(fields[4]))
    destination = (_address(fields[3], version), _port(fields[5]))
    return ProxyHeader(length, source, destination)


def _parse_v2(data: bytes, length: int) -> ProxyHeader:
    command, family = data[12], data[13]
    if command == _V2_LOCAL:
        # Sent by the balancer itself (a health check): the socket's peer is the client.
        return ProxyHeader(length, None, None)
    if command != _V2_PROXY:
        raise ProxyHeaderError(f"version 2 with version/command byte {command:#04x}")
    if family not in _V2_FAMILIES:
        raise ProxyHeaderError(f"version 2 with address family byte {family:#04x}")
    body = data[V2_FIXED:]
    if family == _V2_TCP4:
        if len(body) < _TCP4_LENGTH:
            raise ProxyHeaderError("version 2 TCP over IPv4 with addresses cut short")
        src: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(body[0:4])
        dst: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(body[4:8])
        ports = body[8:12]
    elif family == _V2_TCP6:
        if len(body) < _TCP6_LENGTH:
            raise ProxyHeaderError("version 2 TCP over IPv6 with addresses cut short")
        src, dst = ipaddress.IPv6Address(body[0:16]), ipaddress.IPv6Address(body[16:32])
        ports = body[32:36]
    else:
        # UNSPEC, UDP or UNIX sockets: no TCP client address to stand for the client.
        return ProxyHeader(length, None, None)
    source = (str(src), int.from_bytes(ports[0:2], "big"))
    destination = (str(dst), int.from_bytes(ports[2:4], "big"))
    return ProxyHeader(length, source, destination)


def plain_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A socket's address as an IP address: no IPv6 zone, an IPv4-mapped one as IPv4.

    Raises ValueError when `text` is not an IP address.
    """
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _same_family(
    source: tuple[str, int], destination: tuple[str, int]
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] | None:
    """Both addresses in one family (IPv4-mapped IPv6 taken as IPv4), or None."""
    try:
        addresses = [plain_address(host) for host, _ in (source, destination)]
    except ValueError:
        return None
    if addresses[0].version != addresses[1].version:
        return None
    return tuple(addresses)


def build(
    version: str, source: tuple[str, int] | None, destination: tuple[str, int] | None
) -> bytes:
    """The header a connection to a server opens with: `version` is "v1" or "v2".

    `source` is the client's address and port, `destination` the address it connected to.
    Without both in one family the header says the addresses are unknown (v1 UNKNOWN,
    v2 PROXY over UNSPEC), which a receiver takes as "use the connection's own".
    """
    addresses = (
        _same_family(source, destination)
        if source is not None and destination is not None
        else None
    )
    if version == "v1":
        if addresses is None or source is None or destination is None:
            return b"PROXY UNKNOWN\r\n"
        src, dst = addresses
        name = "TCP4" if src.version == 4 else "TCP6"
        return f"PROXY {name} {src} {dst} {source[1]} {destination[1]}\r\n".encode()
    if addresses is None or source is None or destination is None:
        return V2_SIGNATURE + bytes((_V2_PROXY, 0x00)) + b"\x00\x00"
    family = _V2_TCP4 if addresses[0].version == 4 else _V2_TCP6
    body = (
        addresses[0].packed
        + addresses[1].packed
        + source[1].to_bytes(2, "big")
        + destination[1].to_bytes(2, "big")
    )
    return V2_SIGNATURE + bytes((_V2_PROXY, family)) + len(body).to_bytes(2, "big") + body


def local(version: str) -> bytes:
    """The header of a connection the proxy makes on its own behalf (a health check)."""
    if version == "v1":
        return b"PROXY UNKNOWN\r\n"
    return V2_SIGNATURE + bytes((_V2_LOCAL, 0x00)) + b"\x00\x00"
