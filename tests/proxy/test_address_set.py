"""AddressSet: trusted_proxies and proxy_protocol_from asked about a peer's address."""

from __future__ import annotations

import pytest

from revproxy.proxy.runtime import AddressSet

NETWORKS = ("10.0.0.0/8", "192.0.2.7", "2001:db8::/32")

CASES = [
    ("10.1.2.3", True),
    ("11.0.0.1", False),
    ("192.0.2.7", True),
    ("192.0.2.8", False),
    ("2001:db8::1", True),
    ("2001:db9::1", False),
    ("::ffff:10.1.2.3", True),  # IPv4-mapped: counted as the IPv4 address
    ("::ffff:11.0.0.1", False),
    ("2001:db8::1%eth0", True),  # zone dropped
    ("fe80::1%2", False),
    ("not an address", False),
    ("", False),
]


@pytest.mark.parametrize(("address", "held"), CASES)
def test_holds(address: str, held: bool) -> None:
    assert AddressSet(NETWORKS).holds(address) is held


def test_empty_set_holds_nothing() -> None:
    empty = AddressSet(())
    assert empty.networks == ()
    assert not empty.holds("10.1.2.3")


def test_host_bits_are_accepted_as_their_network() -> None:
    assert AddressSet(("10.1.2.3/8",)).holds("10.200.0.1")
