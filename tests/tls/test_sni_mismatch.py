"""Host header against the TLS server name: when a request is misdirected (RFC 9110 7.4)."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
import trustme
from tls_testkit import DEADLINE, BlockingServer, write_leaf

from revproxy.config.model import ListenerConfig
from revproxy.tls.context import CertificateStore, served_names_of, sni_host_mismatch

SERVED = ("site.test", "*.site.test", "other.test")


@pytest.mark.parametrize(
    ("sni", "host", "mismatch"),
    [
        (None, b"anything.test", False),  # no SNI: nothing to compare
        ("site.test", b"site.test", False),
        ("site.test", b"SITE.test:443", False),  # case and port do not matter
        ("site.test", b"site.test.", False),
        ("site.test", b"a.site.test", False),  # the same certificate covers it: reuse is fine
        ("a.site.test", b"other.test", False),
        ("site.test", b"a.b.site.test", True),  # the wildcard is one label only
        ("site.test", b"elsewhere.test", True),
        ("site.test", b"127.0.0.1", True),
        ("site.test", b"[::1]:443", True),
        ("site.test", b"bad host!", False),  # left to the request checks
        ("unknown.test", b"unknown.test", False),  # default certificate, same name
    ],
)
def test_table(sni: str | None, host: bytes, mismatch: bool) -> None:
    assert sni_host_mismatch(sni, host, SERVED) is mismatch


def test_without_served_names_any_other_host_is_a_mismatch() -> None:
    assert sni_host_mismatch("site.test", b"a.site.test")
    assert not sni_host_mismatch("site.test", b"site.test")


def test_served_names_recorded_by_the_handshake(tmp_path: Path, root_ca: trustme.CA) -> None:
    a = write_leaf(tmp_path, "a", root_ca, "a.test")
    b = write_leaf(tmp_path, "b", root_ca, "*.b.test", "b.test")
    listener = ListenerConfig("l", "127.0.0.1", 0, tls=True, certificates=(a.config, b.config))
    store = CertificateStore(listener)
    assert store.certificate_for("x.b.test").names == ("*.b.test", "b.test")
    assert store.certificate_for("nothing.test").names == ("a.test",)
    assert store.certificate_for(None).names == ("a.test",)
    seen: list[tuple[str, ...]] = []
    inner = store.context.sni_callback
    assert inner is not None

    def spy(obj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> int | None:
        result = inner(obj, name, ctx)  # type: ignore[arg-type]
        seen.append(served_names_of(obj))
        return result

    store.context.sni_callback = spy  # type: ignore[assignment]
    server = BlockingServer(store.context)
    client = ssl.create_default_context()
    root_ca.configure_trust(client)
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as raw:
        with client.wrap_socket(raw, server_hostname="x.b.test") as tls:
            assert tls.recv(100) == b"sni=x.b.test\n"
    server.close()
    assert seen == [("*.b.test", "b.test")]
    assert not sni_host_mismatch("x.b.test", b"b.test", seen[0])
    assert sni_host_mismatch("x.b.test", b"a.test", seen[0])
