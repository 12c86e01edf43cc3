"""Addresses and host names as the configuration accepts them."""

from __future__ import annotations

import ipaddress
import re

# RFC 1123 section 2.1: letters, digits and hyphens, not at either end of a label.
_LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def parse_address(text: str, *, bind: bool = False) -> tuple[str, int]:
    """Split "host:port", "[v6]:port" (or, with bind=True, ":port") into (host, port).

    Real servers (bind=False) take a DNS name or IP address and a port 1..65535.
    Listeners (bind=True) take an IP address, an empty host meaning 0.0.0.0, and
    also port 0, which asks the system for any free port. Raises ValueError.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("must be an address like host:port")
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ValueError(f"{text!r} must look like [ipv6]:port")
        host, port_text = text[1:end], text[end + 2 :]
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"{host!r} inside brackets is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r} has no port; write host:port")
        if ":" in host:
            raise ValueError(f"write IPv6 addresses in brackets, e.g. [{host}]:{port_text}")
        if not host:
            if not bind:
                raise ValueError(f"{text!r} has no host")
            host = "0.0.0.0"
        elif bind:
            try:
                host = str(ipaddress.ip_address(host))
            except ValueError:
                raise ValueError(f"bind host {host!r} must be an IP address") from None
        elif not is_host_name(host.lower()):
            raise ValueError(f"{host!r} is not a valid host name or IP address")
        host = host.lower()
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"port {port_text!r} is not a number")
    port = int(port_text)
    lowest = 0 if bind else 1
    if not lowest <= port <= 65535:
        raise ValueError(f"port {port} is outside {lowest}..65535")
    return host, port


def is_host_name(name: str) -> bool:
    """A DNS name of LDH labels, or an IPv4/IPv6 address."""
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    if not name or len(name) > 253 or name.endswith("."):
        return False
    labels = name.split(".")
    # A name whose last label is all digits would be read as an IPv4 address.
    return all(_LABEL_RE.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def normal_host(host: str) -> str | None:
    """The lower-cased form of a service host pattern, or None when it is not one."""
    host = host.strip().lower()
    if host == "*":
        return host
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            return None
    if host.startswith("*."):
        rest = host[2:]
        # "*.com" would claim a whole top-level domain; demand two labels after the star.
        if rest.count(".") >= 1 and is_host_name(rest) and not is_ip(rest):
            return host
        return None
    if is_host_name(host):
        return str(ipaddress.ip_address(host)) if is_ip(host) else host
    return None


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False
