"""Certificate files in every encoding administrators receive: PEM, DER, PKCS#7, PKCS#12."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from tls_testkit import Pki, make_pki, write_bytes

from revproxy.config.model import CertificateConfig
from revproxy.tls.certificates import read_certificate
from revproxy.tls.errors import TLSConfigError
from revproxy.tls.formats import decode_certificates


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def _pfx(pki: Pki, password: bytes | None, extra: bool = True) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    more = [pki.inter.cert, pki.inter2.cert] if extra else None  # wrong order on purpose
    return pkcs12.serialize_key_and_certificates(
        b"site",
        pki.leaf.key,
        pki.leaf.cert,
        more,
        encryption,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("suffix", [".pem", ".cer", ".crt", ".bin"])
def test_encoding_is_told_by_content_not_suffix(pki: Pki, tmp_path: Path, suffix: str) -> None:
    cases = {
        "PEM": pki.leaf.pem() + pki.inter2.pem(),
        "DER": pki.leaf.der(),
        "PKCS#7": pkcs7.serialize_certificates(
            [pki.leaf.cert, pki.inter2.cert], serialization.Encoding.DER
        ),
        "PKCS#12": _pfx(pki, None),
    }
    for encoding, data in cases.items():
        decoded = decode_certificates(write_bytes(tmp_path / f"x{suffix}", data))
        assert decoded.encoding == encoding
        assert pki.leaf.cert in decoded.certificates  # PKCS#7 is a SET: no order


def test_pkcs12_with_password_file_and_der_chain(pki: Pki, tmp_path: Path) -> None:
    pfx = write_bytes(tmp_path / "site.pfx", _pfx(pki, b"s3cret pass", extra=False))
    password = write_bytes(tmp_path / "site.pfx.password", b"s3cret pass\n")
    der = write_bytes(tmp_path / "inter2.der", pki.inter2.der())
    pem = write_bytes(tmp_path / "inter1.pem", pki.inter.pem())
    loaded = read_certificate(CertificateConfig(pfx, None, (pem, der), password))
    assert loaded.encoding == "PKCS#12"
    assert loaded.chain == (pki.inter2.cert, pki.inter.cert)
    assert loaded.errors == ()
    assert loaded.key is not None


def test_pkcs12_password_from_environment(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pfx = write_bytes(tmp_path / "site.p12", _pfx(pki, b"from-env"))
    monkeypatch.setenv("SITE_PFX_PASSWORD", "from-env")
    config = CertificateConfig(pfx, password_env="SITE_PFX_PASSWORD")
    loaded = read_certificate(config)
    assert loaded.chain == (pki.inter2.cert, pki.inter.cert)  # put in issuing order
    monkeypatch.delenv("SITE_PFX_PASSWORD")
    with pytest.raises(TLSConfigError, match="SITE_PFX_PASSWORD is not set"):
        read_certificate(config)


def test_pkcs12_password_errors_name_the_file(pki: Pki, tmp_path: Path) -> None:
    pfx = write_bytes(tmp_path / "site.pfx", _pfx(pki, b"right"))
    wrong = write_bytes(tmp_path / "wrong.txt", b"wrong\n")
    with pytest.raises(TLSConfigError, match="wrong password for PKCS#12") as caught:
        read_certificate(CertificateConfig(pfx, password_file=wrong))
    assert caught.value.path == pfx
    assert "password_file" in str(caught.value) and str(wrong) in str(caught.value)
    with pytest.raises(TLSConfigError, match="protected by a password: set password_file"):
        read_certificate(CertificateConfig(pfx))
    missing = tmp_path / "missing.txt"
    with pytest.raises(TLSConfigError, match="password file not found") as caught:
        read_certificate(CertificateConfig(pfx, password_file=missing))
    assert caught.value.path == missing


def test_unreadable_content(pki: Pki, tmp_path: Path) -> None:
    cases = [
        (b"hello\n", "neither PEM, DER nor PKCS#12"),
        (b"\x30\x03\x02\x01\x05", "binary but not a DER certificate"),
        (b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n", "valid PEM"),
        (b"-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n", "PEM without one"),
    ]
    for data, problem in cases:
        path = write_bytes(tmp_path / "bad.crt", data)
        with pytest.raises(TLSConfigError, match=problem) as caught:
            read_certificate(CertificateConfig(path, tmp_path / "unused.key"))
        assert caught.value.path == path


def test_key_files(pki: Pki, tmp_path: Path) -> None:
    cert = write_bytes(tmp_path / "site.pem", pki.leaf.pem(), pki.inter2.pem(), pki.inter.pem())
    der_key = write_bytes(
        tmp_path / "site.key.der",
        pki.leaf.key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    assert read_certificate(CertificateConfig(cert, der_key)).errors == ()
    encrypted = write_bytes(
        tmp_path / "site.enc.key",
        pki.leaf.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"keypass"),
        ),
    )
    password = write_bytes(tmp_path / "pw", b"keypass\n")
    assert read_certificate(CertificateConfig(cert, encrypted, password_file=password)).key
    with pytest.raises(TLSConfigError, match="encrypted: set password_file"):
        read_certificate(CertificateConfig(cert, encrypted))
    with pytest.raises(TLSConfigError, match="wrong password for the encrypted key"):
        bad = write_bytes(tmp_path / "bad", b"nope\n")
        read_certificate(CertificateConfig(cert, encrypted, password_file=bad))
    with pytest.raises(TLSConfigError, match="no private key: give key"):
        read_certificate(CertificateConfig(cert))
