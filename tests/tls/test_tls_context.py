"""Listener and pool SSL contexts against real handshakes on loopback."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import shutil
import socket
import ssl
import subprocess
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import trustme
import uvloop
from tls_testkit import (
    DEADLINE,
    BlockingServer,
    IssuedCert,
    LoopThread,
    pem_to_der,
    tls_hello,
    write_leaf,
)

from revproxy.config.model import ListenerConfig, PoolConfig, ServerConfig
from revproxy.tls.context import (
    _SNI_MEMORY,
    MODERN_CIPHERS,
    DirectSSLObject,
    build_listener_context,
    build_pool_context,
    served_names_of,
    server_hostname,
    sni_of,
)

MEET_NAMES = ("meet.example.test", "dialin.example.test")
OWA_NAMES = ("owa.example.test", "*.apps.example.test", "*.example.test")


@pytest.fixture
def two_certs(tmp_path: Path, intermediate_ca: trustme.CA) -> tuple[IssuedCert, IssuedCert]:
    meet = write_leaf(tmp_path, "meet", intermediate_ca, *MEET_NAMES)
    owa = write_leaf(tmp_path, "owa", intermediate_ca, *OWA_NAMES)
    return meet, owa


def listener(*certs: IssuedCert, **settings: object) -> ListenerConfig:
    base = ListenerConfig(
        name="public",
        host="127.0.0.1",
        port=0,
        tls=True,
        certificates=tuple(c.config for c in certs),
    )
    return replace(base, **settings)  # type: ignore[arg-type]


def client_context(ca: trustme.CA, check_hostname: bool = False) -> ssl.SSLContext:
    """Trusts only the root: a handshake succeeds only if the server sends the intermediate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def old_tls_client(ca: trustme.CA) -> ssl.SSLContext:
    ctx = client_context(ca)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    return ctx


SELECTION = [
    # (SNI sent, which certificate: 0 = meet (default), 1 = owa, recorded SNI)
    ("meet.example.test", 0, "meet.example.test"),
    ("dialin.example.test", 0, "dialin.example.test"),
    ("owa.example.test", 1, "owa.example.test"),
    ("OWA.Example.Test", 1, "owa.example.test"),
    ("x.apps.example.test", 1, "x.apps.example.test"),  # wildcard
    ("anything.example.test", 1, "anything.example.test"),  # wildcard
    ("a.b.apps.example.test", 0, "a.b.apps.example.test"),  # one label only: default
    ("example.test", 0, "example.test"),  # no bare domain: default
    ("unknown.test", 0, "unknown.test"),
    (None, 0, "None"),
]


@pytest.mark.parametrize(("sni", "which", "recorded"), SELECTION)
def test_certificate_chosen_by_sni(
    loop_thread: LoopThread,
    two_certs: tuple[IssuedCert, IssuedCert],
    root_ca: trustme.CA,
    sni: str | None,
    which: int,
    recorded: str,
) -> None:
    port = loop_thread.serve(build_listener_context(listener(*two_certs)))
    hello = tls_hello(port, client_context(root_ca), sni)
    assert hello.peer_der == two_certs[which].leaf_der
    assert hello.server_line == f"sni={recorded} alpn=http/1.1"


def test_exact_name_beats_wildcard_of_earlier_certificate(
    loop_thread: LoopThread, two_certs: tuple[IssuedCert, IssuedCert], root_ca: trustme.CA
) -> None:
    meet, owa = two_certs
    port = loop_thread.serve(build_listener_context(listener(owa, meet)))
    assert tls_hello(port, client_context(root_ca), "meet.example.test").peer_der == meet.leaf_der
    assert tls_hello(port, client_context(root_ca), "x.example.test").peer_der == owa.leaf_der


def test_hostname_verification_passes_for_each_name(
    loop_thread: LoopThread, two_certs: tuple[IssuedCert, IssuedCert], root_ca: trustme.CA
) -> None:
    port = loop_thread.serve(build_listener_context(listener(*two_certs)))
    for name in ("meet.example.test", "owa.example.test", "q.apps.example.test"):
        tls_hello(port, client_context(root_ca, check_hostname=True), name)


@pytest.mark.parametrize("sni", ["unknown.test", "a.b.apps.example.test", None])
def test_reject_unknown_sni(
    loop_thread: LoopThread,
    two_certs: tuple[IssuedCert, IssuedCert],
    root_ca: trustme.CA,
    sni: str | None,
) -> None:
    context = build_listener_context(listener(*two_certs, unknown_sni="reject"))
    blocking = BlockingServer(context)
    try:
        with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
            tls_hello(blocking.port, client_context(root_ca), sni)
    finally:
        blocking.close()
    assert isinstance(blocking.error, ssl.SSLError)
    # On an event loop too the client hears the alert, not just a closed connection.
    port = loop_thread.serve(context)
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        tls_hello(port, client_context(root_ca), sni)
    # Known names still work on the same listener.
    hello = tls_hello(port, client_context(root_ca), "x.apps.example.test")
    assert hello.peer_der == two_certs[1].leaf_der


def test_full_chain_sent_python(
    loop_thread: LoopThread, two_certs: tuple[IssuedCert, IssuedCert], root_ca: trustme.CA
) -> None:
    # The client trusts the root only, so the intermediate must come from the server.
    port = loop_thread.serve(build_listener_context(listener(*two_certs)))
    for name in ("meet.example.test", "owa.example.test"):
        tls_hello(port, client_context(root_ca, check_hostname=True), name)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")
@pytest.mark.parametrize(("sni", "which"), [("meet.example.test", 0), ("owa.example.test", 1)])
def test_full_chain_sent_openssl(
    loop_thread: LoopThread,
    two_certs: tuple[IssuedCert, IssuedCert],
    sni: str,
    which: int,
) -> None:
    port = loop_thread.serve(build_listener_context(listener(*two_certs)))
    command = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", sni]
    result = subprocess.run(
        [*command, "-showcerts"], input=b"", capture_output=True, timeout=DEADLINE, check=False
    )
    blocks = re.findall(
        rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", result.stdout, re.S
    )
    served = [pem_to_der(block) for block in blocks]
    expected = two_certs[which]
    assert served == [expected.leaf_der, *expected.chain_ders], result.stderr.decode()
    assert len(served) == 2


def test_old_tls_refused_by_default(
    loop_thread: LoopThread, two_certs: tuple[IssuedCert, IssuedCert], root_ca: trustme.CA
) -> None:
    port = loop_thread.serve(build_listener_context(listener(*two_certs)))
    with pytest.raises(ssl.SSLError):
        tls_hello(port, old_tls_client(root_ca), "meet.example.test")


def test_old_tls_on_request_is_logged(
    loop_thread: LoopThread,
    two_certs: tuple[IssuedCert, IssuedCert],
    root_ca: trustme.CA,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="revproxy.tls"):
        context = build_listener_context(listener(*two_certs, min_tls_version="1.1"))
    assert any(
        r.levelno == logging.WARNING and "listener public" in r.getMessage() and "1.1" in r.message
        for r in caplog.records
    )
    port = loop_thread.serve(context)
    hello = tls_hello(port, old_tls_client(root_ca), "owa.example.test")
    assert hello.version == "TLSv1.1"
    assert hello.peer_der == two_certs[1].leaf_der


def test_tls12_uses_modern_ciphers_only(
    loop_thread: LoopThread, two_certs: tuple[IssuedCert, IssuedCert], root_ca: trustme.CA
) -> None:
    port = loop_thread.serve(build_listener_context(listener(*two_certs)))
    client = client_context(root_ca)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    hello = tls_hello(port, client, "meet.example.test")
    assert hello.version == "TLSv1.2"
    assert hello.cipher in MODERN_CIPHERS.split(":")
    weak = client_context(root_ca)
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.set_ciphers("ECDHE-ECDSA-AES128-SHA:AES128-SHA")
    with pytest.raises(ssl.SSLError):
        tls_hello(port, weak, "meet.example.test")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize("sni", ["meet.example.test", "owa.example.test"])
def test_session_resumption_with_tickets(
    loop_thread: LoopThread,
    two_certs: tuple[IssuedCert, IssuedCert],
    root_ca: trustme.CA,
    version: ssl.TLSVersion,
    sni: str,
) -> None:
    """Tickets work for the default certificate and for one switched to by SNI."""
    port = loop_thread.serve(build_listener_context(listener(*two_certs)))
    client = client_context(root_ca)
    client.maximum_version = version
    session: ssl.SSLSession | None = None
    reused = []
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as raw:
            with client.wrap_socket(raw, server_hostname=sni, session=session) as tls:
                tls.recv(1024)  # TLS 1.3 tickets arrive after the handshake
                reused.append(tls.session_reused)
                session = tls.session
    assert reused == [False, True]


def test_listener_context_settings(two_certs: tuple[IssuedCert, IssuedCert]) -> None:
    ctx = build_listener_context(listener(*two_certs))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    for option in (ssl.OP_NO_COMPRESSION, ssl.OP_NO_RENEGOTIATION, ssl.OP_CIPHER_SERVER_PREFERENCE):
        assert ctx.options & option
    assert not ctx.options & ssl.OP_NO_TICKET
    assert ctx.sni_callback is not None


def _server_object(ctx: ssl.SSLContext) -> ssl.SSLObject:
    return ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)


def test_sni_answers_stay_right_past_their_memory(
    two_certs: tuple[IssuedCert, IssuedCert],
) -> None:
    """Answers are remembered per name sent; a flood of names neither grows the memory past
    its bound nor changes what known names get, first time or remembered."""
    ctx = build_listener_context(listener(*two_certs))
    meet_ctx = ctx
    callback = ctx.sni_callback
    assert callback is not None
    known = inspect.getclosurevars(callback).nonlocals["known"]

    def select(name: str | None) -> tuple[str | None, tuple[str, ...], ssl.SSLContext, object]:
        obj = _server_object(ctx)
        answer = callback(obj, name, ctx)  # type: ignore[arg-type]  # None: no SNI sent
        return sni_of(obj), served_names_of(obj), obj.context, answer

    owa = select("OWA.Example.Test")
    assert owa[:2] == ("owa.example.test", OWA_NAMES) and owa[2] is not meet_ctx
    owa_ctx = owa[2]
    largest = 0
    for i in range(2 * _SNI_MEMORY):
        assert select(f"h{i}.unknown.test") == (f"h{i}.unknown.test", MEET_NAMES, meet_ctx, None)
        largest = max(largest, len(known))
        if i % 300 == 0:
            # remembered or found anew (after the memory was cleared), the same answers
            assert select("OWA.Example.Test") == ("owa.example.test", OWA_NAMES, owa_ctx, None)
            assert select("x.apps.example.test")[1:3] == (OWA_NAMES, owa_ctx)
            assert select(None) == (None, MEET_NAMES, meet_ctx, None)
            assert select("bad name!") == (None, MEET_NAMES, meet_ctx, None)
    assert largest == _SNI_MEMORY
    assert select("dialin.example.test") == ("dialin.example.test", MEET_NAMES, meet_ctx, None)


def test_unknown_sni_rejected_when_remembered_too(
    two_certs: tuple[IssuedCert, IssuedCert],
) -> None:
    ctx = build_listener_context(listener(*two_certs, unknown_sni="reject"))
    callback = ctx.sni_callback
    assert callback is not None
    for _ in range(3):
        assert callback(_server_object(ctx), "unknown.test", ctx) == (
            ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        )
        assert callback(_server_object(ctx), "owa.example.test", ctx) is None


def _pump(source: ssl.MemoryBIO, sink: ssl.MemoryBIO) -> None:
    data = source.read()
    if data:
        sink.write(data)


def test_refused_handshake_sends_its_alert_first(
    two_certs: tuple[IssuedCert, IssuedCert], root_ca: trustme.CA
) -> None:
    server_ctx = build_listener_context(listener(*two_certs, unknown_sni="reject"))
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_context(root_ca).wrap_bio(c_in, c_out, server_hostname="other.test")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    _pump(c_out, s_in)
    # The refusal first reads as "waiting for the client", with the alert to send ...
    with pytest.raises(ssl.SSLWantReadError):
        server.do_handshake()
    assert s_out.pending
    _pump(s_out, c_in)
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        client.do_handshake()
    # ... then it is the error itself, and an error at every later step.
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME|CALLBACK_FAILED"):
        server.do_handshake()
    for _ in range(2):
        with pytest.raises(ssl.SSLError) as info:
            server.do_handshake()
        assert not isinstance(info.value, ssl.SSLWantReadError)


def test_direct_ssl_object_end_to_end(
    two_certs: tuple[IssuedCert, IssuedCert], root_ca: trustme.CA, tmp_path: Path
) -> None:
    """The listener's SSL objects call OpenSSL directly and behave as ssl.SSLObject does:
    handshake, data both ways, want-read, pending, cipher, close_notify both ways."""
    ca_file = tmp_path / "ca.pem"
    root_ca.cert_pem.write_to_path(str(ca_file))
    client_ctx = build_pool_context(pool(ca_file, server_name="owa.example.test"))
    server_ctx = build_listener_context(listener(*two_certs))
    assert client_ctx.sslobject_class is DirectSSLObject
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="owa.example.test")
    for obj in (server, client):
        assert type(obj) is DirectSSLObject
        for method in ("read", "write", "pending", "unwrap", "cipher", "compression"):
            assert inspect.isbuiltin(getattr(obj, method)), method
    assert inspect.isbuiltin(client.do_handshake)
    done = set()
    for _ in range(10):
        for name, obj in (("client", client), ("server", server)):
            try:
                obj.do_handshake()
                done.add(name)
            except ssl.SSLWantReadError:
                pass
        _pump(c_out, s_in)
        _pump(s_out, c_in)
    assert done == {"client", "server"}
    assert sni_of(server) == "owa.example.test"
    assert served_names_of(server) == OWA_NAMES
    assert server.cipher() == client.cipher() and server.cipher() is not None
    assert server.compression() is None
    assert server.version() == "TLSv1.3"
    with pytest.raises(ssl.SSLWantReadError):
        server.read(1024)
    assert client.write(b"ping" * 100) == 400
    _pump(c_out, s_in)
    assert server.read(10) == b"pingpingpi"
    assert server.pending() == 390
    buffer = bytearray(1000)
    assert server.read(1000, buffer) == 390
    assert server.pending() == 0
    server.write(b"pong")
    _pump(s_out, c_in)
    assert client.read(1024) == b"pong"
    with pytest.raises(ssl.SSLWantReadError):
        server.unwrap()  # close_notify sent; waiting for the client's
    _pump(s_out, c_in)
    assert client.read(1024) == b""  # the server's close_notify
    client.unwrap()
    _pump(c_out, s_in)
    server.unwrap()  # the client's close_notify came: done, no want-read


def test_listener_without_certificate_is_refused() -> None:
    with pytest.raises(ValueError, match="listener public"):
        build_listener_context(ListenerConfig(name="public", host="127.0.0.1", port=0, tls=True))


# ---- pool side ------------------------------------------------------------------------------


@pytest.fixture
def internal_server(
    loop_thread: LoopThread, tmp_path: Path, root_ca: trustme.CA
) -> tuple[int, Path]:
    """A real server with a certificate from the internal CA; returns (port, CA file)."""
    issued = write_leaf(tmp_path, "fe1", root_ca, "fe1.internal.test", "127.0.0.1")
    port = loop_thread.serve(build_listener_context(listener(issued)))
    ca_file = tmp_path / "internal-ca.pem"
    root_ca.cert_pem.write_to_path(str(ca_file))
    return port, ca_file


def pool(ca: Path | None, **settings: object) -> PoolConfig:
    base = PoolConfig(name="fe", servers=(ServerConfig("127.0.0.1", 4443),), tls=True, ca=ca)
    return replace(base, **settings)  # type: ignore[arg-type]


def test_pool_verifies_server_and_sends_sni(internal_server: tuple[int, Path]) -> None:
    port, ca_file = internal_server
    config = pool(ca_file, server_name="fe1.internal.test")
    name = server_hostname(config, config.servers[0])
    assert name == "fe1.internal.test"
    hello = tls_hello(port, build_pool_context(config), name)
    assert hello.server_line == "sni=fe1.internal.test alpn=http/1.1"


def test_pool_verifies_ip_san_without_server_name(internal_server: tuple[int, Path]) -> None:
    port, ca_file = internal_server
    config = pool(ca_file)
    name = server_hostname(config, config.servers[0])
    assert name == "127.0.0.1"
    hello = tls_hello(port, build_pool_context(config), name)
    assert hello.server_line == "sni=None alpn=http/1.1"  # no SNI for an address


def test_pool_refuses_unknown_ca_and_wrong_name(
    internal_server: tuple[int, Path], tmp_path: Path
) -> None:
    port, ca_file = internal_server
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_hello(port, build_pool_context(pool(other)), "fe1.internal.test")
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_hello(port, build_pool_context(pool(ca_file)), "fe2.internal.test")


def test_pool_without_verification(
    internal_server: tuple[int, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port, _ = internal_server
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    with caplog.at_level(logging.WARNING, logger="revproxy.tls"):
        ctx = build_pool_context(pool(other, verify=False))
    assert "pool fe" in caplog.text
    tls_hello(port, ctx, "whatever.test")


def test_pool_old_tls_is_logged(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    with caplog.at_level(logging.WARNING, logger="revproxy.tls"):
        ctx = build_pool_context(pool(ca_file, min_tls_version="1.0"))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1
    assert "pool fe accepts TLS 1.0" in caplog.text


def test_pool_context_with_asyncio_client(internal_server: tuple[int, Path]) -> None:
    """The way the data plane connects: loop.create_connection with the pool context."""
    port, ca_file = internal_server
    config = pool(ca_file, server_name="fe1.internal.test")
    ctx = build_pool_context(config)

    async def fetch_line() -> bytes:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname=server_hostname(config, config.servers[0])
        )
        try:
            assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
            return await asyncio.wait_for(reader.readline(), DEADLINE)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ssl.SSLError, ConnectionError):
                pass

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        line = runner.run(fetch_line())
    assert line == b"sni=fe1.internal.test alpn=http/1.1\n"


def test_pool_missing_ca_file(tmp_path: Path) -> None:
    from revproxy.tls.certificates import TLSConfigError

    with pytest.raises(TLSConfigError, match="CA file not found"):
        build_pool_context(pool(tmp_path / "missing.pem"))


@pytest.mark.parametrize("version", ["1.4", "tls1.2", ""])
def test_bad_version_is_refused(tmp_path: Path, version: str) -> None:
    with pytest.raises(ValueError, match="min_tls_version"):
        build_pool_context(pool(None, min_tls_version=version))
