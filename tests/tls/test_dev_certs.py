"""Development certificates: chains verify, files are private, a second run reuses them."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.verification import PolicyBuilder, Store
from tls_testkit import DEADLINE, LoopThread, tls_hello

from revproxy.config.model import CertificateConfig, ListenerConfig
from revproxy.demo.certs import DevCerts, ensure_dev_certs
from revproxy.tls.certificates import load_certificate
from revproxy.tls.context import build_listener_context


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return ensure_dev_certs(tmp_path_factory.mktemp("certs") / "dev")


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mtimes(paths: DevCerts) -> dict[str, int]:
    return {f.name: getattr(paths, f.name).stat().st_mtime_ns for f in fields(paths)}


def test_layout_and_modes(dev: DevCerts) -> None:
    root = dev.internal_ca.parent.parent
    assert dev == DevCerts.under(root)
    for field in fields(dev):
        path: Path = getattr(dev, field.name)
        assert path.is_file(), path
        secret = path.suffix in (".key", ".pfx", ".password")
        if secret:
            assert path.stat().st_mode & 0o777 == 0o600, path


@pytest.mark.parametrize(
    ("leaf", "dns"),
    [
        (
            "meet",
            {
                "meet.demo.test",
                "dialin.demo.test",
                "lyncdiscover.demo.test",
                "lyncdiscoverinternal.demo.test",
            },
        ),
        ("mail", {"mail.demo.test", "autodiscover.demo.test"}),
    ],
)
def test_public_chain_verifies_with_cryptography(dev: DevCerts, leaf: str, dns: set[str]) -> None:
    cert = _cert(getattr(dev, leaf))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == dns
    remaining = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=360) < remaining <= datetime.timedelta(days=366)
    verifier = (
        PolicyBuilder()
        .store(Store([_cert(dev.public_root)]))
        .build_server_verifier(x509.DNSName(sorted(dns)[0]))
    )
    chain = verifier.verify(cert, [_cert(dev.public_intermediate)])
    assert [c.subject for c in chain][-1] == _cert(dev.public_root).subject
    assert len(chain) == 3


def test_internal_server_verifies_by_name_and_address(dev: DevCerts) -> None:
    server = _cert(dev.internal_server)
    store = Store([_cert(dev.internal_ca)])
    for subject in ("lync-fe1.internal.test", "mail1.internal.test", "localhost"):
        PolicyBuilder().store(store).build_server_verifier(x509.DNSName(subject)).verify(server, [])
    for address in ("127.0.0.1", "127.0.0.11", "127.0.0.12"):
        target = x509.IPAddress(ipaddress.ip_address(address))
        PolicyBuilder().store(store).build_server_verifier(target).verify(server, [])


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")
def test_chains_verify_with_openssl(dev: DevCerts) -> None:
    public = [
        "openssl",
        "verify",
        "-CAfile",
        str(dev.public_root),
        "-untrusted",
        str(dev.public_intermediate),
        str(dev.meet),
        str(dev.mail),
    ]
    internal = ["openssl", "verify", "-CAfile", str(dev.internal_ca), str(dev.internal_server)]
    for command in (public, internal):
        result = subprocess.run(command, capture_output=True, timeout=DEADLINE, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_pkcs12_holds_key_and_leaf_intermediate_in_der(dev: DevCerts) -> None:
    password = dev.meet_pfx_password.read_text().strip()
    assert len(password) >= 20
    key, cert, extra = pkcs12.load_key_and_certificates(
        dev.meet_pfx.read_bytes(), password.encode()
    )
    assert cert == _cert(dev.meet)
    assert extra == []  # the intermediate comes separately, DER encoded
    assert key is not None
    assert key.public_key() == cert.public_key()
    der = x509.load_der_x509_certificate(dev.public_intermediate_der.read_bytes())
    assert der == _cert(dev.public_intermediate)


def test_second_call_reuses_files(dev: DevCerts) -> None:
    before = _mtimes(dev)
    again = ensure_dev_certs(dev.internal_ca.parent.parent)
    assert again == dev
    assert _mtimes(again) == before


def test_damaged_set_is_regenerated(tmp_path: Path) -> None:
    paths = ensure_dev_certs(tmp_path)
    internal_before = paths.internal_ca.read_bytes()
    paths.mail_key.write_bytes(b"garbage")
    ensure_dev_certs(tmp_path)
    assert load_certificate(CertificateConfig(paths.mail, paths.mail_key)).names
    assert paths.internal_ca.read_bytes() == internal_before  # the other set is untouched
    paths.internal_server.unlink()
    ensure_dev_certs(tmp_path)
    assert paths.internal_server.is_file()
    assert paths.internal_ca.read_bytes() != internal_before


def test_served_by_a_listener(dev: DevCerts, loop_thread: LoopThread) -> None:
    listener = ListenerConfig(
        "public",
        "127.0.0.1",
        0,
        tls=True,
        certificates=(
            # As deploy/examples/demo.toml has it: the .pfx, its password file, a DER chain.
            CertificateConfig(
                dev.meet_pfx, None, (dev.public_intermediate_der,), dev.meet_pfx_password
            ),
            CertificateConfig(dev.mail, dev.mail_key, (dev.public_intermediate,)),
        ),
    )
    port = loop_thread.serve(build_listener_context(listener))
    client = ssl.create_default_context(cafile=str(dev.public_root))
    hello = tls_hello(port, client, "autodiscover.demo.test")
    assert x509.load_der_x509_certificate(hello.peer_der) == _cert(dev.mail)
    hello = tls_hello(port, client, "meet.demo.test")  # verified: the chain was sent
    assert x509.load_der_x509_certificate(hello.peer_der) == _cert(dev.meet)


def test_command_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "revproxy.demo.certs", str(tmp_path / "dev")],
        capture_output=True,
        timeout=30,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    out = result.stdout.decode()
    assert str(tmp_path / "dev" / "public" / "meet.pfx") in out
    assert (tmp_path / "dev" / "internal" / "server.key").is_file()
