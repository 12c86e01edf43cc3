"""What is checked about a certificate before it is served, as findings with a severity.

A finding names the file it is about and says what is wrong in the administrator's
terms. Errors stop `revproxy check` and a start or reload (the running configuration
stays); warnings are logged and printed; infos say what was fixed on the way (a chain put
in order, a root left out). The checks are pure: certificates and a clock in, findings out.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

ERROR = "error"
WARNING = "warning"
INFO = "info"

EXPIRY_WARNING = datetime.timedelta(days=30)
MIN_RSA_BITS = 2048
MIN_EC_BITS = 256
# Collisions are practical for these (SHAttered, 2017; MD5 long before): browsers refuse them.
WEAK_HASHES = ("md5", "sha1")


@dataclass(frozen=True, slots=True)
class Finding:
    severity: str  # ERROR, WARNING or INFO
    file: Path
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.file}: {self.message}"


def subject_of(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def spki(public: PublicKeyTypes) -> bytes:
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_matches(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    return spki(key.public_key()) == spki(cert.public_key())


def key_description(public: PublicKeyTypes) -> tuple[str, int]:
    """("RSA", 2048), ("EC secp256r1", 256), ("Ed25519", 256)..."""
    if isinstance(public, rsa.RSAPublicKey):
        return "RSA", public.key_size
    if isinstance(public, ec.EllipticCurvePublicKey):
        return f"EC {public.curve.name}", public.curve.key_size
    if isinstance(public, dsa.DSAPublicKey):
        return "DSA", public.key_size
    if isinstance(public, ed25519.Ed25519PublicKey):
        return "Ed25519", 256
    if isinstance(public, ed448.Ed448PublicKey):
        return "Ed448", 456
    return type(public).__name__, 0


def weak_key(public: PublicKeyTypes) -> str | None:
    kind, bits = key_description(public)
    if isinstance(public, rsa.RSAPublicKey) and bits < MIN_RSA_BITS:
        return f"{kind} key of {bits} bits is too weak (at least {MIN_RSA_BITS})"
    if isinstance(public, ec.EllipticCurvePublicKey) and bits < MIN_EC_BITS:
        return f"{kind} key of {bits} bits is too weak (at least {MIN_EC_BITS})"
    if isinstance(public, dsa.DSAPublicKey):
        return "DSA keys are not accepted by current TLS clients"
    return None


def signature_hash(cert: x509.Certificate) -> str | None:
    algorithm = cert.signature_hash_algorithm
    return algorithm.name if isinstance(algorithm, hashes.HashAlgorithm) else None


def days_left(cert: x509.Certificate, now: datetime.datetime) -> int:
    return (cert.not_valid_after_utc - now).days


def validity_findings(
    cert: x509.Certificate, file: Path, role: str, now: datetime.datetime
) -> list[Finding]:
    subject = subject_of(cert)
    if cert.not_valid_after_utc < now:
        return [
            Finding(ERROR, file, f"{role} {subject} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
        ]
    if cert.not_valid_before_utc > now:
        return [
            Finding(
                ERROR,
                file,
                f"{role} {subject} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}"
                " UTC (check the clock, or wait)",
            )
        ]
    if cert.not_valid_after_utc - now < EXPIRY_WARNING:
        return [
            Finding(
                WARNING,
                file,
                f"{role} {subject} expires in {days_left(cert, now)} days, on "
                f"{cert.not_valid_after_utc:%Y-%m-%d}: renew it",
            )
        ]
    return []


def strength_findings(cert: x509.Certificate, file: Path, role: str) -> list[Finding]:
    """Weak keys and signatures: an error on the leaf, a warning on an intermediate."""
    severity = ERROR if role == "certificate" else WARNING
    found = []
    subject = subject_of(cert)
    problem = weak_key(cert.public_key())
    if problem:
        found.append(Finding(severity, file, f"{role} {subject}: {problem}"))
    digest = signature_hash(cert)
    if digest in WEAK_HASHES:
        found.append(
            Finding(
                severity,
                file,
                f"{role} {subject} is signed with {digest.upper()}, which clients refuse: "
                "have it reissued with SHA-256",
            )
        )
    return found


def certificate_findings(
    leaf: x509.Certificate,
    chain: Sequence[x509.Certificate],
    leaf_file: Path,
    chain_files: dict[bytes, Path],
    now: datetime.datetime | None = None,
) -> list[Finding]:
    """Validity and strength of the leaf and each intermediate.

    `chain_files` maps each intermediate's DER to the file it came from, so a finding
    names that file rather than the leaf's.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    found = validity_findings(leaf, leaf_file, "certificate", now)
    found += strength_findings(leaf, leaf_file, "certificate")
    for cert in chain:
        der = cert.public_bytes(serialization.Encoding.DER)
        file = chain_files.get(der, leaf_file)
        found += validity_findings(cert, file, "intermediate", now)
        found += strength_findings(cert, file, "intermediate")
    return found
