"""Certificate file loading: the errors name the file and say what is wrong."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tls_testkit import IssuedCert, write_leaf

from revproxy.config.model import CertificateConfig, ListenerConfig
from revproxy.tls.certificates import TLSConfigError, certificate_names, load_certificate
from revproxy.tls.context import build_listener_context


@pytest.fixture
def issued(tmp_path: Path, intermediate_ca: trustme.CA) -> IssuedCert:
    return write_leaf(tmp_path, "site", intermediate_ca, "site.example.test", "*.example.test")


def test_loads_leaf_chain_and_names(issued: IssuedCert) -> None:
    loaded = load_certificate(issued.config)
    assert loaded.leaf.public_bytes(serialization.Encoding.DER) == issued.leaf_der
    assert len(loaded.chain) == 1
    assert loaded.names == ("site.example.test", "*.example.test")
    assert loaded.warnings == ()
    assert loaded.chain_pem().count(b"BEGIN CERTIFICATE") == 2


def test_chain_inside_the_certificate_file(issued: IssuedCert, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(issued.config.cert.read_bytes() + issued.config.chain[0].read_bytes())
    loaded = load_certificate(CertificateConfig(cert=bundle, key=issued.config.key))
    assert len(loaded.chain) == 1


def test_missing_files(issued: IssuedCert, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    cases = [
        (CertificateConfig(cert=missing, key=issued.config.key), "certificate file not found"),
        (CertificateConfig(cert=issued.config.cert, key=missing), "key file not found"),
        (
            CertificateConfig(cert=issued.config.cert, key=issued.config.key, chain=(missing,)),
            "chain file not found",
        ),
        (CertificateConfig(cert=tmp_path, key=issued.config.key), "directory"),
    ]
    for config, problem in cases:
        with pytest.raises(TLSConfigError, match=problem) as caught:
            load_certificate(config)
        assert caught.value.path in (missing, tmp_path)
        assert str(caught.value).startswith(str(caught.value.path))


def test_not_pem(issued: IssuedCert, tmp_path: Path) -> None:
    text = tmp_path / "text.pem"
    text.write_text("hello\n")
    der = tmp_path / "cert.der"
    der.write_bytes(issued.leaf_der)
    with pytest.raises(TLSConfigError, match="neither PEM, DER nor PKCS#12"):
        load_certificate(CertificateConfig(cert=text, key=issued.config.key))
    # DER is read as well as PEM; the intermediate is missing then.
    with_chain = CertificateConfig(cert=der, key=issued.config.key, chain=issued.config.chain)
    assert load_certificate(with_chain).leaf.public_bytes(serialization.Encoding.DER) == (
        issued.leaf_der
    )
    with pytest.raises(TLSConfigError, match="no PEM private key"):
        load_certificate(CertificateConfig(cert=issued.config.cert, key=issued.config.cert))
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
    with pytest.raises(TLSConfigError, match="not valid PEM"):
        load_certificate(CertificateConfig(cert=broken, key=issued.config.key))


def test_key_does_not_match(
    issued: IssuedCert, tmp_path: Path, intermediate_ca: trustme.CA
) -> None:
    other = write_leaf(tmp_path, "other", intermediate_ca, "other.example.test")
    with pytest.raises(TLSConfigError, match="does not match certificate") as caught:
        load_certificate(CertificateConfig(cert=issued.config.cert, key=other.config.key))
    assert caught.value.path == other.config.key


def test_encrypted_key(issued: IssuedCert, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(issued.config.key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TLSConfigError, match="encrypted"):
        load_certificate(CertificateConfig(cert=issued.config.cert, key=encrypted))


def test_chain_out_of_order_is_put_in_order(
    issued: IssuedCert, tmp_path: Path, root_ca: trustme.CA, intermediate_ca: trustme.CA
) -> None:
    wrong = tmp_path / "wrong-chain.pem"
    wrong.write_bytes(root_ca.cert_pem.bytes() + intermediate_ca.cert_pem.bytes())
    config = CertificateConfig(cert=issued.config.cert, key=issued.config.key, chain=(wrong,))
    loaded = load_certificate(config)
    assert [c.public_bytes(serialization.Encoding.DER) for c in loaded.chain] == [
        issued.chain_ders[0]
    ]  # the root is not sent
    assert any("is not sent (clients have it already)" in f.message for f in loaded.findings)


def test_expired_certificate_is_an_error(
    tmp_path: Path, intermediate_ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    old = write_leaf(
        tmp_path,
        "old",
        intermediate_ca,
        "old.example.test",
        not_before=past,
        not_after=past + datetime.timedelta(days=30),
    )
    with pytest.raises(TLSConfigError, match="expired on 2020-01-31") as caught:
        load_certificate(old.config)
    assert caught.value.path == old.config.cert
    listener = ListenerConfig("public", "127.0.0.1", 0, tls=True, certificates=(old.config,))
    with pytest.raises(TLSConfigError, match="expired"):
        build_listener_context(listener)


def _self_signed(common_name: str, san: list[str] | None) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if san is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in san]), critical=False
        )
    return builder.sign(key, hashes.SHA256())


@pytest.mark.parametrize(
    ("common_name", "san", "names", "rejected"),
    [
        ("cn.example.test", None, ["cn.example.test"], []),  # CN only without SAN
        ("cn.example.test", ["a.example.test"], ["a.example.test"], []),  # SAN wins over CN
        ("x", ["A.Example.Test.", "a.example.test"], ["a.example.test"], []),
        (
            "x",
            ["*.com", "f*.example.test", "*.ok.test"],
            ["*.ok.test"],
            ["*.com", "f*.example.test"],
        ),
        ("x", ["*", "bad name"], [], ["*", "bad name"]),
    ],
)
def test_certificate_names(
    common_name: str, san: list[str] | None, names: list[str], rejected: list[str]
) -> None:
    assert certificate_names(_self_signed(common_name, san)) == (names, rejected)
