"""Reading certificate and key files in the encodings administrators receive them in.

A CA or a Windows export hands out PEM ("Base64"), DER (".cer", ".crt", binary), PKCS#7
bundles (".p7b") or PKCS#12 (".pfx", ".p12", with the key, protected by a password). File
names lie often enough (a ".cer" may be either PEM or DER), so the encoding is decided by
the content: PEM has its armor lines, and the binary forms are told apart by trying the
DER structures in turn: a certificate, a PKCS#12 PFX (RFC 7292 section 4: a SEQUENCE that
starts with version 3), a PKCS#7 SignedData.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12

from revproxy.config.model import CertificateConfig
from revproxy.tls.errors import TLSConfigError

_PEM_CERT = b"-----BEGIN CERTIFICATE-----"
_PEM_PKCS7 = b"-----BEGIN PKCS7-----"
_PEM_ANY = b"-----BEGIN "


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one file held: certificates in file order and, for PKCS#12, the private key."""

    encoding: str  # "PEM", "DER", "PKCS#7" or "PKCS#12"
    certificates: tuple[x509.Certificate, ...]
    key: PrivateKeyTypes | None = None


def read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TLSConfigError(path, f"{what} file not found") from None
    except IsADirectoryError:
        raise TLSConfigError(path, f"{what} path is a directory, not a file") from None
    except OSError as exc:
        raise TLSConfigError(path, f"cannot read {what} file: {exc.strerror}") from None


def password_for(config: CertificateConfig) -> bytes | None:
    """The password of a PKCS#12 file or encrypted key: first line of password_file, or
    the environment variable password_env; None when neither is configured."""
    if config.password_file is not None:
        lines = read_file(config.password_file, "password").splitlines()
        return lines[0] if lines else b""
    if config.password_env:
        value = os.environ.get(config.password_env)
        if value is None:
            raise TLSConfigError(
                config.cert,
                f"the password environment variable {config.password_env} is not set",
            )
        return value.encode()
    return None


def _looks_like_pkcs12(data: bytes) -> bool:
    # DER SEQUENCE (0x30), a short or long length, then INTEGER 3: the PFX version.
    if len(data) < 8 or data[0] != 0x30:
        return False
    length_octets = data[1] - 0x80 if data[1] & 0x80 else 0
    start = 2 + length_octets
    return data[start : start + 3] == b"\x02\x01\x03"


def _source(password_origin: str) -> str:
    return f" (password from {password_origin})" if password_origin else ""


def load_pkcs12(
    data: bytes, path: Path, password: bytes | None, password_origin: str = ""
) -> Decoded:
    """Certificates (leaf first) and key of a PKCS#12 file; errors say what to do."""
    attempts = [password] if password is not None else [None, b""]
    for attempt in attempts:
        try:
            bundle = pkcs12.load_pkcs12(data, attempt)
        except ValueError:
            continue
        except UnsupportedAlgorithm as exc:
            raise TLSConfigError(
                path, f"PKCS#12 file uses an unsupported algorithm: {exc}"
            ) from None
        certs = tuple(c.certificate for c in bundle.additional_certs)
        if bundle.cert is not None:
            certs = (bundle.cert.certificate, *certs)
        if not certs:
            raise TLSConfigError(path, "PKCS#12 file holds no certificate")
        return Decoded("PKCS#12", certs, bundle.key)
    if password is None:
        raise TLSConfigError(
            path,
            "PKCS#12 file is protected by a password: set password_file or password_env",
        )
    raise TLSConfigError(
        path, f"wrong password for PKCS#12 file, or the file is damaged{_source(password_origin)}"
    )


def decode_certificates(
    path: Path, what: str = "certificate", password: bytes | None = None, password_origin: str = ""
) -> Decoded:
    """Every certificate in a PEM, DER, PKCS#7 or PKCS#12 file; at least one."""
    data = read_file(path, what)
    if _PEM_ANY in data:
        try:
            if _PEM_CERT in data:
                return Decoded("PEM", tuple(x509.load_pem_x509_certificates(data)))
            if _PEM_PKCS7 in data:
                return Decoded("PKCS#7", tuple(pkcs7.load_pem_pkcs7_certificates(data)))
        except ValueError as exc:
            raise TLSConfigError(path, f"{what} file is not valid PEM: {exc}") from None
        raise TLSConfigError(path, f"no certificate found in {what} file (PEM without one)")
    if data[:1] != b"\x30":
        raise TLSConfigError(
            path, f"no certificate found in {what} file: neither PEM, DER nor PKCS#12"
        )
    if _looks_like_pkcs12(data):
        return load_pkcs12(data, path, password, password_origin)
    try:
        return Decoded("DER", (x509.load_der_x509_certificate(data),))
    except ValueError:
        pass
    try:
        return Decoded("PKCS#7", tuple(pkcs7.load_der_pkcs7_certificates(data)))
    except (ValueError, UnsupportedAlgorithm):
        pass
    raise TLSConfigError(path, f"{what} file is binary but not a DER certificate or PKCS#12")


def load_private_key(path: Path, password: bytes | None = None) -> PrivateKeyTypes:
    """A private key file, PEM or DER, encrypted with `password` or not."""
    data = read_file(path, "key")
    pem = _PEM_ANY in data
    if pem and b"PRIVATE KEY-----" not in data:
        raise TLSConfigError(path, "no PEM private key found in key file")
    if not pem and data[:1] != b"\x30":
        raise TLSConfigError(path, "no PEM private key found in key file")
    loader = serialization.load_pem_private_key if pem else serialization.load_der_private_key
    try:
        return loader(data, password=password or None)
    except TypeError:
        if password:
            raise TLSConfigError(path, "key file is not encrypted but a password is set") from None
        raise TLSConfigError(
            path,
            "private key is encrypted: set password_file or password_env, or decrypt it",
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        if password:
            raise TLSConfigError(path, "wrong password for the encrypted key file") from None
        kind = "PEM" if pem else "DER"
        raise TLSConfigError(path, f"key file is not a valid {kind} private key: {exc}") from None


def password_origin(config: CertificateConfig) -> str:
    if config.password_file is not None:
        return f"password_file {config.password_file}"
    if config.password_env:
        return f"environment variable {config.password_env}"
    return ""


CHAIN_DIR_SUFFIXES = (".pem", ".der", ".cer", ".crt", ".p7b", ".p7c")


def read_chain_dir(folder: Path) -> tuple[list[x509.Certificate], list[str]]:
    """Every certificate in the PEM/DER/.cer/.crt/.p7b files of `folder` (not recursive),
    and a note for each file that could not be read."""
    certs: list[x509.Certificate] = []
    skipped: list[str] = []
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise TLSConfigError(folder, f"cannot read chain_dir: {exc.strerror}") from None
    for entry in entries:
        if entry.suffix.lower() not in CHAIN_DIR_SUFFIXES or not entry.is_file():
            continue
        try:
            certs.extend(decode_certificates(entry, "intermediate").certificates)
        except TLSConfigError as exc:
            skipped.append(str(exc))
    return certs, skipped


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `path` whole or not at all, with `mode` from the first byte on (a private key
    is never readable by others, not even for a moment); replaces an older file."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    path.chmod(mode)  # an older file replaced in place keeps nothing wider
