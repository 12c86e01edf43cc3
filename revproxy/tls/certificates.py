"""Loading a listener's certificate files and checking them before they are served.

OpenSSL's own errors for a wrong file ("PEM lib", "KEY_VALUES_MISMATCH") do not say which
file or what to do, and a chain in the wrong order loads fine but fails on some clients
only. So every file is parsed here first, with errors that name the file and the problem,
and the chain is checked link by link: each certificate must be issued by the next one.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtensionOID, NameOID

from revproxy.config.model import CertificateConfig
from revproxy.tls.names import normalize_pattern, wildcard_parent

_PEM_CERT_MARK = b"-----BEGIN CERTIFICATE-----"


class TLSConfigError(Exception):
    """A certificate, key or CA file that cannot be used, with the file it came from."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


@dataclass(frozen=True, slots=True)
class LoadedCertificate:
    """One listener certificate, parsed and checked, ready to be put into an SSL context."""

    config: CertificateConfig
    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # intermediates, leaf's issuer first
    names: tuple[str, ...]  # DNS names and "*.x.y" wildcards it answers for, normalized
    warnings: tuple[str, ...]  # problems that do not stop serving it (expiry, odd names)

    @property
    def not_after(self) -> datetime.datetime:
        return self.leaf.not_valid_after_utc

    def chain_pem(self) -> bytes:
        """Leaf then intermediates, as one PEM bundle: what the server sends."""
        return b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (self.leaf,) + self.chain
        )


def read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TLSConfigError(path, f"{what} file not found") from None
    except IsADirectoryError:
        raise TLSConfigError(path, f"{what} path is a directory, not a file") from None
    except OSError as exc:
        raise TLSConfigError(path, f"cannot read {what} file: {exc.strerror}") from None


def load_pem_certificates(path: Path, what: str = "certificate") -> list[x509.Certificate]:
    """Every certificate in a PEM file, in file order; at least one."""
    data = read_file(path, what)
    if _PEM_CERT_MARK not in data:
        hint = ""
        if data[:1] == b"\x30":
            hint = " (it looks like DER or PKCS#12; convert it: openssl x509 -inform der)"
        raise TLSConfigError(path, f"no PEM certificate found in {what} file{hint}")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TLSConfigError(path, f"{what} file is not valid PEM: {exc}") from None


def load_private_key(path: Path) -> PrivateKeyTypes:
    data = read_file(path, "key")
    if b"-----BEGIN" not in data or b"PRIVATE KEY-----" not in data:
        raise TLSConfigError(path, "no PEM private key found in key file")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSConfigError(
            path, "private key is encrypted; a key without password is needed"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TLSConfigError(path, f"key file is not a valid PEM private key: {exc}") from None


def _spki(public: PublicKeyTypes) -> bytes:
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def certificate_names(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """(names, rejected): DNS SANs, or the subject CN when there is no SAN extension.

    RFC 6125 section 6.4.4: the CN is only a fallback for certificates without SANs.
    IP address SANs are left out: SNI never carries an address (RFC 6066 section 3).
    """
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
        raw = list(san.value.get_values_for_type(x509.DNSName))  # type: ignore[attr-defined]
    except x509.ExtensionNotFound:
        raw = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    names: list[str] = []
    rejected: list[str] = []
    for value in raw:
        if value.startswith("*") and wildcard_parent(value) is None:
            rejected.append(value)
            continue
        try:
            name = normalize_pattern(value)
        except ValueError:
            rejected.append(value)
            continue
        if name != "*" and name not in names:
            names.append(name)
    return names, rejected


def check_chain(leaf: x509.Certificate, chain: Sequence[x509.Certificate], path: Path) -> None:
    """Each certificate must be directly issued (name and signature) by the next one."""
    previous = leaf
    for position, cert in enumerate(chain, start=1):
        try:
            previous.verify_directly_issued_by(cert)
        except Exception:
            raise TLSConfigError(
                path,
                f"chain out of order or wrong: certificate {position} of the chain "
                f"({cert.subject.rfc4514_string()}) is not the issuer of "
                f"{previous.subject.rfc4514_string()} (issuer: {previous.issuer.rfc4514_string()})",
            ) from None
        previous = cert


def validity_warnings(
    certs: Sequence[x509.Certificate], now: datetime.datetime | None = None
) -> list[str]:
    now = now or datetime.datetime.now(datetime.UTC)
    found = []
    for cert in certs:
        subject = cert.subject.rfc4514_string()
        if cert.not_valid_after_utc < now:
            found.append(f"{subject} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
        elif cert.not_valid_before_utc > now:
            found.append(f"{subject} is not valid before {cert.not_valid_before_utc:%Y-%m-%d}")
    return found


def load_certificate(config: CertificateConfig) -> LoadedCertificate:
    """Parse and check one listener certificate: files, key match, chain order, names.

    The certificate file may itself hold intermediates after the leaf; the chain files are
    appended after them. Expiry is a warning, not an error: serving an expired certificate
    for one name must not stop every other service on the listener from starting.
    """
    in_cert_file = load_pem_certificates(config.cert)
    leaf, chain = in_cert_file[0], list(in_cert_file[1:])
    for chain_path in config.chain:
        chain.extend(load_pem_certificates(chain_path, "chain"))
    if config.key is None:
        raise TLSConfigError(config.cert, "no private key given (key = ...)")
    key = load_private_key(config.key)
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise TLSConfigError(
            config.key,
            f"private key does not match certificate {config.cert} "
            f"({leaf.subject.rfc4514_string()})",
        )
    check_chain(leaf, chain, config.chain[0] if config.chain else config.cert)
    names, rejected = certificate_names(leaf)
    warnings = validity_warnings([leaf, *chain])
    if rejected:
        warnings.append(f"names not usable for SNI and ignored: {', '.join(rejected)}")
    if not names:
        warnings.append("no DNS name in the certificate; it can only serve as the default")
    return LoadedCertificate(config, leaf, tuple(chain), tuple(names), tuple(warnings))
