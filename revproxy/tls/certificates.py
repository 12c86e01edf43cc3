"""Loading a listener's certificate files and checking them before they are served.

OpenSSL's own errors for a wrong file ("PEM lib", "KEY_VALUES_MISMATCH") do not say which
file or what to do, and a chain in the wrong order loads fine but fails on some clients
only. So every file is decoded here first (PEM, DER, PKCS#7 or PKCS#12, see formats.py),
the chain is assembled in issuing order (chain.py) and everything is checked (checks.py),
with findings that name the file and the problem. `revproxy check`, the start and every
reload go through `inspect_listener` / `load_listener_certificates`, so they agree.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID, NameOID

from revproxy.config.model import CertificateConfig, Config, ListenerConfig
from revproxy.tls.chain import Assembly, assemble_chain, fingerprint, trusted_by_system
from revproxy.tls.checks import (
    ERROR,
    INFO,
    WARNING,
    Finding,
    certificate_findings,
    key_matches,
    subject_of,
)
from revproxy.tls.errors import TLSConfigError
from revproxy.tls.formats import (
    decode_certificates,
    load_private_key,
    password_for,
    password_origin,
    read_chain_dir,
    read_file,
)
from revproxy.tls.names import is_ip_address, normalize_pattern, wildcard_matches, wildcard_parent

__all__ = [
    "LoadedCertificate",
    "TLSConfigError",
    "certificate_names",
    "check_listener_names",
    "inspect_listener",
    "load_certificate",
    "load_listener_certificates",
    "load_pem_certificates",
    "read_certificate",
]

_PEM_CERT_MARK = b"-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True, slots=True)
class LoadedCertificate:
    """One listener certificate, decoded, its chain assembled, and its findings."""

    config: CertificateConfig
    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # intermediates, leaf's issuer first, no root
    names: tuple[str, ...]  # DNS names and "*.x.y" wildcards it answers for, normalized
    key: PrivateKeyTypes | None
    findings: tuple[Finding, ...]
    encoding: str = "PEM"  # of the certificate file: "PEM", "DER", "PKCS#7", "PKCS#12"

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(f.message for f in self.findings if f.severity == WARNING)

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == ERROR)

    @property
    def not_after(self) -> datetime.datetime:
        return self.leaf.not_valid_after_utc

    def chain_pem(self) -> bytes:
        """Leaf then intermediates, as one PEM bundle: what the server sends."""
        return b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (self.leaf,) + self.chain
        )

    def covers(self, name: str) -> bool:
        """Whether the certificate answers for host `name` (normalized), RFC 6125 6.4."""
        return any(n == name or wildcard_matches(n, name) for n in self.names)


def load_pem_certificates(path: Path, what: str = "certificate") -> list[x509.Certificate]:
    """Every certificate in a PEM file, in file order; at least one (CA bundles)."""
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


def ca_issuer_urls(cert: x509.Certificate) -> list[str]:
    """The "CA Issuers" addresses of the Authority Information Access extension."""
    try:
        aia = cert.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_INFORMATION_ACCESS)
    except x509.ExtensionNotFound:
        return []
    return [
        str(d.access_location.value)
        for d in aia.value  # type: ignore[attr-defined]
        if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS
    ]


def _chain_findings(
    leaf: x509.Certificate, assembly: Assembly, file: Path, chain_dir: Path | None
) -> list[Finding]:
    found: list[Finding] = []
    if assembly.reordered:
        found.append(Finding(INFO, file, "intermediates were not in issuing order; sent in order"))
    if assembly.duplicates:
        found.append(
            Finding(INFO, file, f"{assembly.duplicates} duplicate certificate(s) left out")
        )
    for root in assembly.roots_dropped:
        found.append(
            Finding(INFO, file, f"root CA {subject_of(root)} is not sent (clients have it already)")
        )
    for cert in assembly.from_dir:
        found.append(
            Finding(INFO, chain_dir or file, f"intermediate {subject_of(cert)} found in chain_dir")
        )
    for cert in assembly.unused:
        found.append(
            Finding(
                WARNING,
                file,
                f"{subject_of(cert)} issues nothing in this chain and is not sent",
            )
        )
    end = assembly.open_end
    if end is None or trusted_by_system(end):
        return found
    issuer = end.issuer.rfc4514_string()
    where = "chain (or put it in chain_dir)" if chain_dir is None else f"chain or {chain_dir}"
    urls = ca_issuer_urls(end)
    # A publicly trusted root never signs a server certificate itself (CA/Browser Forum
    # Baseline Requirements 6.1.7), so a leaf naming a "CA Issuers" address lacks an
    # intermediate for sure; so does a chain whose given intermediates link to nothing.
    if assembly.unused or (end is leaf and urls):
        hint = f"; the CA publishes it at {urls[0]}" if urls else ""
        found.append(
            Finding(
                ERROR,
                file,
                f"chain incomplete: the intermediate {issuer} that issued {subject_of(end)} "
                f"is missing; add it to {where}{hint}",
            )
        )
    elif end is leaf:
        found.append(
            Finding(
                WARNING,
                file,
                f"no intermediate certificate: clients must trust the issuer {issuer} directly "
                f"(a private root CA); if it is an intermediate, add it to {where}",
            )
        )
    else:
        found.append(
            Finding(INFO, file, f"chain ends at {subject_of(end)}; its root {issuer} is not sent")
        )
    return found


def _pick_leaf(
    certs: Sequence[x509.Certificate], key: PrivateKeyTypes | None
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """The certificate the key belongs to and the rest. Without a key (or when none
    matches), the first certificate that issued none of the others: PKCS#7 has no order."""
    index = next((i for i, c in enumerate(certs) if key is not None and key_matches(c, key)), -1)
    if index < 0:
        index = next(
            (
                i
                for i, c in enumerate(certs)
                if not any(o is not c and o.issuer == c.subject for o in certs)
            ),
            0,
        )
    return certs[index], [c for i, c in enumerate(certs) if i != index]


def read_certificate(
    config: CertificateConfig,
    chain_dir: Path | None = None,
    require_key: bool = True,
    now: datetime.datetime | None = None,
) -> LoadedCertificate:
    """Decode one listener certificate, assemble its chain and check everything.

    Raises TLSConfigError only when a file cannot be read or decoded (or no key is
    given); every other problem is returned as a finding.
    """
    password = password_for(config)
    origin = password_origin(config)
    decoded = decode_certificates(config.cert, "certificate", password, origin)
    key = decoded.key
    key_file = config.cert
    if config.key is not None:
        key = load_private_key(config.key, password)
        key_file = config.key
    if key is None and require_key:
        raise TLSConfigError(
            config.cert,
            "no private key: give key = ... or a PKCS#12 (.pfx) file that holds the key",
        )
    leaf, given = _pick_leaf(decoded.certificates, key)
    chain_files: dict[bytes, Path] = {fingerprint(c): config.cert for c in given}
    for chain_path in config.chain:
        for cert in decode_certificates(chain_path, "chain", password, origin).certificates:
            given.append(cert)
            chain_files.setdefault(fingerprint(cert), chain_path)
    directory: list[x509.Certificate] = []
    findings: list[Finding] = []
    if chain_dir is not None:
        directory, skipped = read_chain_dir(chain_dir)
        findings += [Finding(INFO, chain_dir, f"skipped: {note}") for note in skipped]
        for cert in directory:
            chain_files.setdefault(fingerprint(cert), chain_dir)
    if key is not None and not key_matches(leaf, key):
        findings.append(
            Finding(
                ERROR,
                key_file,
                f"private key does not match certificate {config.cert} ({subject_of(leaf)})",
            )
        )
    assembly = assemble_chain(leaf, given, directory)
    chain_file = config.chain[0] if config.chain else config.cert
    findings += _chain_findings(leaf, assembly, chain_file, chain_dir)
    findings += certificate_findings(leaf, assembly.chain, config.cert, chain_files, now)
    names, rejected = certificate_names(leaf)
    if rejected:
        findings.append(
            Finding(
                WARNING,
                config.cert,
                f"names not usable for SNI and ignored: {', '.join(rejected)}",
            )
        )
    if not names:
        findings.append(
            Finding(
                WARNING,
                config.cert,
                "no DNS name in the certificate; it can only serve as the default",
            )
        )
    return LoadedCertificate(
        config, leaf, assembly.chain, tuple(names), key, tuple(findings), decoded.encoding
    )


def load_certificate(config: CertificateConfig, chain_dir: Path | None = None) -> LoadedCertificate:
    """`read_certificate`, raising TLSConfigError for its first error finding."""
    loaded = read_certificate(config, chain_dir)
    raise_for_errors(loaded.findings)
    return loaded


def raise_for_errors(findings: Sequence[Finding]) -> None:
    errors = [f for f in findings if f.severity == ERROR]
    if not errors:
        return
    first, rest = errors[0], errors[1:]
    problem = first.message
    if rest:
        problem += "".join(f"\n  also {f.file}: {f.message}" for f in rest)
    raise TLSConfigError(first.file, problem)


def load_listener_certificates(
    listener: ListenerConfig,
) -> tuple[list[LoadedCertificate], list[Finding]]:
    """Every certificate of a TLS listener that could be decoded, and all findings."""
    loaded: list[LoadedCertificate] = []
    findings: list[Finding] = []
    for config in listener.certificates:
        try:
            cert = read_certificate(config, listener.chain_dir)
        except TLSConfigError as exc:
            findings.append(Finding(ERROR, exc.path, exc.problem))
            continue
        loaded.append(cert)
        findings.extend(cert.findings)
    return loaded, findings


def inspect_listener(listener: ListenerConfig) -> list[Finding]:
    """Findings about every certificate of a TLS listener: what `revproxy check` prints and
    what a start or reload logs (refusing to go on when there is an error)."""
    if not listener.tls:
        return []
    return load_listener_certificates(listener)[1]


def check_listener_names(config: Config) -> list[str]:
    """Warnings for host names of services on TLS listeners that no certificate covers.

    Such a client gets the default certificate and a name mismatch error (or a refused
    handshake with unknown_sni = "reject"). A service wildcard "*.x.y" is covered by the
    same wildcard in a certificate only: a certificate naming a few hosts of the domain
    does not cover the others. Certificates that cannot be read are reported by
    `inspect_listener` and skipped here.
    """
    found: list[str] = []
    for listener in config.listeners:
        if not listener.tls:
            continue
        loaded, _ = load_listener_certificates(listener)
        if not loaded:
            continue
        for service in config.services_for(listener):
            for host in service.hosts:
                try:
                    pattern = normalize_pattern(host)
                except ValueError:
                    continue
                if pattern == "*" or is_ip_address(pattern) or _covered(pattern, loaded):
                    continue
                default = loaded[0].config.cert.name
                found.append(
                    f"listener {listener.name}: service {service.name} host {pattern} is "
                    f"covered by no certificate; clients asking for it get the default "
                    f"certificate ({default}) and a name mismatch error"
                )
    return found


def _covered(pattern: str, loaded: Sequence[LoadedCertificate]) -> bool:
    if pattern.startswith("*."):
        return any(pattern in cert.names for cert in loaded)
    return any(cert.covers(pattern) for cert in loaded)
