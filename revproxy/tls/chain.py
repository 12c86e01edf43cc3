"""Putting a certificate chain in the order clients need: leaf, then each issuer.

RFC 8446 section 4.4.2 (and RFC 5246 section 7.4.2 before it) wants the leaf first and
each following certificate to certify the one before it; TLS 1.3 clients tolerate other
orders, many older ones do not, and a missing intermediate fails on every client that
has not cached it. Administrators receive intermediates in bundles of any order, with the
root included or not, so the chain is built here by following issuer names and checking
each signature, taking certificates from the given files first and from a folder of
intermediates (chain_dir) second. Self-signed roots are never sent: a client that does
not already trust the root would not trust it because the server sent it.
"""

from __future__ import annotations

import functools
import ssl
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

_PEM_END = b"-----END CERTIFICATE-----"
MAX_DEPTH = 8  # longer chains do not occur in the Web PKI; this also ends any loop


@dataclass(frozen=True, slots=True)
class Assembly:
    """The outcome of building one chain."""

    chain: tuple[x509.Certificate, ...]  # intermediates, the leaf's issuer first
    reordered: bool  # the given intermediates were not in issuing order
    duplicates: int  # certificates given more than once
    roots_dropped: tuple[x509.Certificate, ...]  # self-signed roots given, not sent
    from_dir: tuple[x509.Certificate, ...]  # intermediates found in chain_dir
    unused: tuple[x509.Certificate, ...]  # given certificates that issue nothing here
    # The last certificate whose issuer was found nowhere (None when a root was reached).
    open_end: x509.Certificate | None


def fingerprint(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def is_self_signed(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer and issued_by(cert, cert)


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether `issuer` names and signed `cert`.

    A signature cryptography refuses to check (SHA-1, MD5) falls back to the names and the
    key identifiers, so that such a chain is still assembled and then reported as weak.
    """
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except UnsupportedAlgorithm:
        return _key_ids_agree(cert, issuer)
    except ValueError as exc:
        return "Unsupported signature algorithm" in str(exc) and _key_ids_agree(cert, issuer)
    except Exception:  # bad signature, unsupported key type
        return False
    return True


def _key_ids_agree(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return True
    return aki.key_identifier is None or aki.key_identifier == ski.digest


def _unique(certs: Iterable[x509.Certificate]) -> tuple[list[x509.Certificate], int]:
    seen: set[bytes] = set()
    out: list[x509.Certificate] = []
    duplicates = 0
    for cert in certs:
        der = fingerprint(cert)
        if der in seen:
            duplicates += 1
            continue
        seen.add(der)
        out.append(cert)
    return out, duplicates


def _find_issuer(
    cert: x509.Certificate, candidates: Sequence[x509.Certificate], used: set[bytes]
) -> x509.Certificate | None:
    found = [
        c
        for c in candidates
        if c.subject == cert.issuer and fingerprint(c) not in used and issued_by(cert, c)
    ]
    if not found:
        return None
    # Cross-signed or renewed intermediates share a subject: prefer the one valid longest.
    return max(found, key=lambda c: c.not_valid_after_utc)


def assemble_chain(
    leaf: x509.Certificate,
    given: Sequence[x509.Certificate],
    directory: Sequence[x509.Certificate] = (),
) -> Assembly:
    """Order `given` intermediates from the leaf upwards, completing from `directory`."""
    leaf_der = fingerprint(leaf)
    pool, duplicates = _unique(c for c in given if fingerprint(c) != leaf_der)
    duplicates += sum(1 for c in given if fingerprint(c) == leaf_der)
    roots = [c for c in pool if is_self_signed(c)]
    intermediates = [c for c in pool if not is_self_signed(c)]
    extra = [c for c in _unique(directory)[0] if not is_self_signed(c)]
    chain: list[x509.Certificate] = []
    from_dir: list[x509.Certificate] = []
    used: set[bytes] = {leaf_der}
    current = leaf
    open_end: x509.Certificate | None = None
    while not is_self_signed(current) and len(chain) < MAX_DEPTH:
        issuer = _find_issuer(current, intermediates, used)
        if issuer is None:
            issuer = _find_issuer(current, extra, used)
            if issuer is not None:
                from_dir.append(issuer)
        if issuer is None:
            if _find_issuer(current, roots, set()) is None:
                open_end = current
            break
        used.add(fingerprint(issuer))
        chain.append(issuer)
        current = issuer
    given_order = [fingerprint(c) for c in intermediates if fingerprint(c) in used]
    built_order = [fingerprint(c) for c in chain if c not in from_dir]
    unused = tuple(c for c in intermediates if fingerprint(c) not in used)
    return Assembly(
        chain=tuple(chain),
        reordered=given_order != built_order,
        duplicates=duplicates,
        roots_dropped=tuple(roots),
        from_dir=tuple(from_dir),
        unused=unused,
        open_end=open_end,
    )


@functools.lru_cache(maxsize=1)
def system_roots() -> dict[x509.Name, tuple[x509.Certificate, ...]]:
    """The root CAs of this system's default trust store, by subject (empty if none)."""
    paths = ssl.get_default_verify_paths()
    roots: dict[x509.Name, list[x509.Certificate]] = {}
    files = [Path(p) for p in (paths.cafile, paths.openssl_cafile) if p]
    for file in files:
        try:
            data = file.read_bytes()
        except OSError:
            continue
        for block in data.split(_PEM_END)[:-1]:
            try:
                with warnings.catch_warnings():
                    # Old roots with negative serial numbers are still in some bundles.
                    warnings.simplefilter("ignore")
                    cert = x509.load_pem_x509_certificate(block + _PEM_END)
            except ValueError:
                continue
            roots.setdefault(cert.subject, []).append(cert)
        break
    return {name: tuple(certs) for name, certs in roots.items()}


def trusted_by_system(cert: x509.Certificate) -> bool:
    """Whether a root of the system trust store issued `cert`."""
    return any(issued_by(cert, root) for root in system_roots().get(cert.issuer, ()))
