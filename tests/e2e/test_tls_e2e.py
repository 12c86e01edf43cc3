"""TLS through the whole proxy: certificates chosen by SNI, the chain served, protocol
versions and ALPN, real clients (curl, openssl), and re-encryption towards real servers.

One proxy serves the module: an HTTPS listener with two certificates issued by an
intermediate CA (one for a.test, one for *.b.test), an HTTPS listener that accepts
TLS 1.1, a plain listener, and pools of scripted servers, some of them speaking TLS.
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from harness import ProxyProcess, Received, ScriptedServer, exchange, read_response


def _named_responder(name: str):  # type: ignore[no-untyped-def]
    def respond(req: Received, sock: socket.socket) -> bytes:
        body = b"%s %s" % (name.encode(), req.request_line)
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    return respond


@dataclass
class TlsServer:
    """A scripted server speaking TLS with a trustme certificate; records the SNI it saw."""

    server: ScriptedServer
    sni: list[str | None] = field(default_factory=list)


def _tls_server(name: str, cert: trustme.LeafCert) -> TlsServer:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    lock = threading.Lock()
    result = TlsServer(ScriptedServer(_named_responder(name), tls=ctx))

    def remember(_obj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        with lock:
            result.sni.append(server_name)

    ctx.sni_callback = remember
    result.server.start()
    return result


@dataclass
class Setup:
    proxy: ProxyProcess
    root_pem: Path
    leaf_a: bytes  # DER of the a.test certificate
    leaf_b: bytes  # DER of the *.b.test certificate
    intermediate_der: bytes
    plain_a: ScriptedServer
    plain_b: ScriptedServer
    re_named: TlsServer
    re_ip: TlsServer
    re_untrusted: TlsServer
    re_wrong_name: TlsServer

    @property
    def https(self) -> int:
        return self.proxy.port("https")


def _write(path: Path, *blobs: bytes) -> Path:
    path.write_bytes(b"".join(blobs))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("tls")
    root = trustme.CA(organization_name="Root for revproxy tests")
    inter = root.create_child_ca()
    cert_a = inter.issue_cert("a.test", common_name="a.test")
    cert_b = inter.issue_cert("*.b.test", common_name="*.b.test")
    root_pem = _write(tmp / "root.pem", root.cert_pem.bytes())
    _write(tmp / "inter.pem", inter.cert_pem.bytes())
    _write(tmp / "a.pem", cert_a.cert_chain_pems[0].bytes())
    _write(tmp / "a.key", cert_a.private_key_pem.bytes())
    _write(tmp / "b.pem", cert_b.cert_chain_pems[0].bytes())
    _write(tmp / "b.key", cert_b.private_key_pem.bytes())

    internal = trustme.CA(organization_name="Internal CA")
    stranger = trustme.CA(organization_name="Unknown CA")
    _write(tmp / "internal.pem", internal.cert_pem.bytes())
    plain_a = ScriptedServer(_named_responder("pool-a")).start()
    plain_b = ScriptedServer(_named_responder("pool-b")).start()
    re_named = _tls_server("re-named", internal.issue_cert("backend.internal"))
    re_ip = _tls_server("re-ip", internal.issue_cert("127.0.0.1"))
    re_untrusted = _tls_server("re-untrusted", stranger.issue_cert("backend.internal"))
    re_wrong = _tls_server("re-wrong", internal.issue_cert("other.internal"))
    servers = [plain_a, plain_b] + [s.server for s in (re_named, re_ip, re_untrusted, re_wrong)]

    def tls_pool(name: str, srv: TlsServer, server_name: str = "") -> str:
        extra = f'server_name = "{server_name}"' if server_name else ""
        return f"""
[pools.{name}]
servers = ["127.0.0.1:{srv.server.port}"]
tls = true
ca = "internal.pem"
{extra}
"""

    def service(name: str, host: str, pool: str, listeners: str = "") -> str:
        return f"""
[services.{name}]
hosts = ["{host}"]
pool = "{pool}"
{listeners}
"""

    config = f"""
[global]
workers = 1
shutdown_grace = 2

[listeners.https]
bind = "127.0.0.1:0"
tls = true
  [[listeners.https.certificates]]
  cert = "a.pem"
  key = "a.key"
  chain = ["inter.pem"]
  [[listeners.https.certificates]]
  cert = "b.pem"
  key = "b.key"
  chain = ["inter.pem"]

[listeners.legacy]
bind = "127.0.0.1:0"
tls = true
min_tls_version = "1.1"
  [[listeners.legacy.certificates]]
  cert = "a.pem"
  key = "a.key"
  chain = ["inter.pem"]

[listeners.strict]
bind = "127.0.0.1:0"
tls = true
unknown_sni = "reject"
  [[listeners.strict.certificates]]
  cert = "a.pem"
  key = "a.key"
  chain = ["inter.pem"]

[listeners.plain]
bind = "127.0.0.1:0"

{service("a", "a.test", "pa")}
{service("b", "*.b.test", "pb")}
{service("re-named", "named.re.test", "re-named", 'listeners = ["https"]')}
{service("re-ip", "ip.re.test", "re-ip", 'listeners = ["https"]')}
{service("re-untrusted", "untrusted.re.test", "re-untrusted", 'listeners = ["https"]')}
{service("re-wrong", "wrong.re.test", "re-wrong", 'listeners = ["https"]')}

[pools.pa]
servers = ["127.0.0.1:{plain_a.port}"]

[pools.pb]
servers = ["127.0.0.1:{plain_b.port}"]
{tls_pool("re-named", re_named, "backend.internal")}
{tls_pool("re-ip", re_ip)}
{tls_pool("re-untrusted", re_untrusted, "backend.internal")}
{tls_pool("re-wrong", re_wrong, "backend.internal")}
"""
    try:
        proxy = ProxyProcess(config, tmp)
    except BaseException:
        for s in servers:
            s.stop()
        raise
    der = [
        ssl.PEM_cert_to_DER_cert(c.cert_chain_pems[0].bytes().decode()) for c in (cert_a, cert_b)
    ]
    try:
        yield Setup(
            proxy,
            root_pem,
            der[0],
            der[1],
            ssl.PEM_cert_to_DER_cert(inter.cert_pem.bytes().decode()),
            plain_a,
            plain_b,
            re_named,
            re_ip,
            re_untrusted,
            re_wrong,
        )
    finally:
        code = proxy.stop()
        for s in servers:
            s.stop()
        assert code == 0


# ---------------------------------------------------------------------- helpers

_PEM_HEAD = "-----BEGIN CERTIFICATE-----"
_PEM_TAIL = "-----END CERTIFICATE-----\n"


def _client_context(root_pem: Path, check_hostname: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(root_pem))
    ctx.check_hostname = check_hostname
    return ctx


def _handshake(port: int, ctx: ssl.SSLContext, sni: str | None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        return ctx.wrap_socket(raw, server_hostname=sni)
    except BaseException:
        raw.close()
        raise


def _peer_cert(setup: Setup, sni: str | None) -> bytes:
    ctx = _client_context(setup.root_pem, check_hostname=False)
    with _handshake(setup.https, ctx, sni) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def _https_get(setup: Setup, host: str, path: str = "/") -> tuple[int, dict[str, str], bytes]:
    # Names without a certificate of their own get the default one: no hostname check.
    covered = host == "a.test" or host.endswith(".b.test")
    ctx = _client_context(setup.root_pem, check_hostname=covered)
    with _handshake(setup.https, ctx, host) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        return read_response(tls)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- certificate by SNI


def test_sni_picks_the_certificate_naming_the_host(setup: Setup) -> None:
    assert _peer_cert(setup, "a.test") == setup.leaf_a
    assert _peer_cert(setup, "x.b.test") == setup.leaf_b
    assert _peer_cert(setup, "other.b.test") == setup.leaf_b


def test_unknown_or_missing_sni_gets_the_first_certificate(setup: Setup) -> None:
    assert _peer_cert(setup, "unknown.test") == setup.leaf_a
    # A wildcard covers one label only.
    assert _peer_cert(setup, "x.y.b.test") == setup.leaf_a
    assert _peer_cert(setup, None) == setup.leaf_a


def test_full_chain_verifies_against_the_root_only(setup: Setup) -> None:
    # The client trusts the root alone: verification needs the served intermediate.
    ctx = _client_context(setup.root_pem)
    with _handshake(setup.https, ctx, "x.b.test") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def _openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.skip("openssl is not installed")
    return path


def test_openssl_s_client_shows_leaf_and_intermediate(setup: Setup) -> None:
    for name, leaf_cn, leaf in (
        ("a.test", "a.test", setup.leaf_a),
        ("x.b.test", "*.b.test", setup.leaf_b),
    ):
        out = subprocess.run(
            [
                _openssl(),
                "s_client",
                "-connect",
                f"127.0.0.1:{setup.https}",
                "-servername",
                name,
                "-showcerts",
                "-CAfile",
                str(setup.root_pem),
            ],
            input=b"",
            capture_output=True,
            timeout=20,
        ).stdout.decode()
        served = [
            ssl.PEM_cert_to_DER_cert(_PEM_HEAD + block.split("-----END", 1)[0] + _PEM_TAIL)
            for block in out.split("-----BEGIN CERTIFICATE-----")[1:]
        ]
        assert served == [leaf, setup.intermediate_der], out
        subjects = re.findall(r"^ *\d s:(.*)$", out, re.MULTILINE)
        issuers = re.findall(r"^ +i:(.*)$", out, re.MULTILINE)
        assert len(subjects) == len(issuers) == 2, out
        assert subjects[0].endswith(f"CN = {leaf_cn}")
        # The second certificate is the intermediate, which issued the leaf and was issued
        # by the root.
        assert issuers[0] == subjects[1]
        assert "Root for revproxy tests" in issuers[1]
        assert "Verify return code: 0 (ok)" in out, out


# ---------------------------------------------------------------------- protocol versions, ALPN


def _tls11_client(root_pem: Path) -> ssl.SSLContext:
    ctx = _client_context(root_pem, check_hostname=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def test_tls_1_1_refused_by_default(setup: Setup) -> None:
    ctx = _tls11_client(setup.root_pem)
    # The same client gets through where the configuration allows TLS 1.1 ...
    with _handshake(setup.proxy.port("legacy"), ctx, "a.test") as tls:
        assert tls.version() == "TLSv1.1"
    # ... but not on a listener with the default minimum (TLS 1.2), and the client is
    # told why (a protocol_version alert), not just cut off.
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
        _handshake(setup.https, ctx, "a.test").close()
    # Enabling old TLS is said loudly.
    assert "listener legacy accepts TLS 1.1" in setup.proxy.log()


def test_unknown_name_refused_with_its_alert(setup: Setup) -> None:
    ctx = _client_context(setup.root_pem)
    with _handshake(setup.proxy.port("strict"), ctx, "a.test") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    # RFC 6066 section 3: a name the listener serves no certificate for gets the
    # unrecognized_name alert, the same on every attempt.
    for _ in range(2):
        with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
            _handshake(setup.proxy.port("strict"), ctx, "other.test").close()


def test_alpn_selects_http_1_1(setup: Setup) -> None:
    ctx = _client_context(setup.root_pem)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with _handshake(setup.https, ctx, "a.test") as tls:
        assert tls.selected_alpn_protocol() == "http/1.1"


# ---------------------------------------------------------------------- requests over TLS


def test_curl_with_ca_file_reaches_the_backend(setup: Setup) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    for host, expected in (("a.test", b"pool-a"), ("x.b.test", b"pool-b")):
        result = subprocess.run(
            [
                curl,
                "-sS",
                "--fail",
                "--resolve",
                f"{host}:{setup.https}:127.0.0.1",
                "--cacert",
                str(setup.root_pem),
                f"https://{host}:{setup.https}/hello?x=1",
            ],
            capture_output=True,
            timeout=20,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == expected + b" GET /hello?x=1 HTTP/1.1"
    seen = [r for r in setup.plain_a.requests if r.request_line == b"GET /hello?x=1 HTTP/1.1"]
    assert seen and seen[-1].header("x-forwarded-proto") == "https"
    assert seen[-1].header("host") == f"a.test:{setup.https}"


def test_http_and_https_listeners_route_hosts_to_their_pools(setup: Setup) -> None:
    plain = setup.proxy.port("plain")
    for host, expected in (("a.test", b"pool-a"), ("z.b.test", b"pool-b")):
        status, _, body = exchange(plain, f"GET /p HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert (status, body) == (200, expected + b" GET /p HTTP/1.1")
        status, _, body = _https_get(setup, host, "/s")
        assert (status, body) == (200, expected + b" GET /s HTTP/1.1")
    # A host no service claims is not sent anywhere.
    status, _, _ = exchange(plain, b"GET / HTTP/1.1\r\nHost: nobody.test\r\n\r\n")
    assert status in (404, 421)
    # Services restricted to the TLS listener are not reachable over plain HTTP.
    status, _, _ = exchange(plain, b"GET / HTTP/1.1\r\nHost: named.re.test\r\n\r\n")
    assert status in (404, 421)
    protos = {r.header("x-forwarded-proto") for r in setup.plain_b.requests}
    assert protos == {"http", "https"}


# ---------------------------------------------------------------------- re-encryption


def test_reencryption_sends_server_name_as_sni(setup: Setup) -> None:
    status, _, body = _https_get(setup, "named.re.test", "/meet/x")
    assert status == 200
    assert body == b"re-named GET /meet/x HTTP/1.1"
    assert "backend.internal" in setup.re_named.sni
    req = setup.re_named.server.requests[-1]
    assert req.header("host") == "named.re.test"
    assert req.header("x-forwarded-proto") == "https"


def test_reencryption_to_an_ip_address_verifies_the_ip(setup: Setup) -> None:
    status, _, body = _https_get(setup, "ip.re.test", "/ip")
    assert (status, body) == (200, b"re-ip GET /ip HTTP/1.1")
    # RFC 6066 section 3: no SNI for an address.
    assert setup.re_ip.sni and set(setup.re_ip.sni) == {None}


def test_server_certificate_from_unknown_ca_gives_502(setup: Setup) -> None:
    before = len(setup.re_untrusted.server.requests)
    status, _, _ = _https_get(setup, "untrusted.re.test", "/")
    assert status == 502
    assert len(setup.re_untrusted.server.requests) == before


def test_server_certificate_for_another_name_gives_502(setup: Setup) -> None:
    status, _, _ = _https_get(setup, "wrong.re.test", "/")
    assert status == 502
    assert not setup.re_wrong_name.server.requests
