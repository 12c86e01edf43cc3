"""Development certificates for the demo: an internal PKI and a public-looking one.

The demo mirrors a real publishing setup. Real servers present certificates from a
company's internal CA (the proxy verifies them when re-encrypting), while clients see
certificates from a public CA, issued by an intermediate that the proxy must send along.
Files are reused while every certificate stays valid for more than 30 days and still
carries the expected names; otherwise the affected set is generated again.

    python -m revproxy.demo.certs [DIR]     (DIR defaults to certs/dev)
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import logging
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from revproxy.tls.formats import write_atomic

log = logging.getLogger("revproxy.demo")

REUSE_MARGIN = datetime.timedelta(days=30)
CA_LIFETIME = datetime.timedelta(days=3650)
INTERMEDIATE_LIFETIME = datetime.timedelta(days=1825)
LEAF_LIFETIME = datetime.timedelta(days=365)

INTERNAL_SERVER_NAMES = ("localhost", "lync-fe1.internal.test", "mail1.internal.test")
INTERNAL_SERVER_ADDRESSES = ("127.0.0.1", "127.0.0.11", "127.0.0.12")
MEET_NAMES = (
    "meet.demo.test",
    "dialin.demo.test",
    "lyncdiscover.demo.test",
    "lyncdiscoverinternal.demo.test",
)
MAIL_NAMES = ("mail.demo.test", "autodiscover.demo.test")

Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class DevCerts:
    """Paths of every development certificate, key and PKCS#12 file."""

    internal_ca: Path
    internal_ca_key: Path
    internal_server: Path
    internal_server_key: Path
    public_root: Path
    public_root_key: Path
    public_intermediate: Path
    public_intermediate_der: Path  # the same certificate, DER encoded, as CAs often ship it
    public_intermediate_key: Path
    meet: Path
    meet_key: Path
    mail: Path
    mail_key: Path
    meet_pfx: Path
    meet_pfx_password: Path

    @classmethod
    def under(cls, root: Path) -> DevCerts:
        internal, public = root / "internal", root / "public"
        return cls(
            internal_ca=internal / "ca.pem",
            internal_ca_key=internal / "ca.key",
            internal_server=internal / "server.pem",
            internal_server_key=internal / "server.key",
            public_root=public / "root.pem",
            public_root_key=public / "root.key",
            public_intermediate=public / "intermediate.pem",
            public_intermediate_der=public / "intermediate.der",
            public_intermediate_key=public / "intermediate.key",
            meet=public / "meet.pem",
            meet_key=public / "meet.key",
            mail=public / "mail.pem",
            mail_key=public / "mail.key",
            meet_pfx=public / "meet.pfx",
            meet_pfx_password=public / "meet.pfx.password",
        )


# ---- writing ---------------------------------------------------------------------------------


def _write(path: Path, data: bytes, secret: bool = False) -> None:
    """Write atomically; secrets are created 0600 from the start, never widened later."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, 0o600 if secret else 0o644)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    _write(path, cert.public_bytes(serialization.Encoding.PEM))


def _write_key(path: Path, key: Key) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(path, pem, secret=True)


# ---- issuing ---------------------------------------------------------------------------------


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _issue(
    subject: x509.Name,
    key: Key,
    issuer: tuple[x509.Certificate, Key] | None,
    lifetime: datetime.timedelta,
    ca_path_length: int | None = None,
    is_ca: bool = False,
    dns_names: Sequence[str] = (),
    addresses: Sequence[str] = (),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name = issuer[0].subject if issuer else subject
    signing_key = issuer[1] if issuer else key
    authority_public = issuer[1].public_key() if issuer else key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))  # tolerate clock skew
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=ca_path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority_public), critical=False
        )
    )
    if is_ca:
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        )
    else:
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
        san: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        san += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    builder = builder.add_extension(usage, critical=True)
    return builder.sign(signing_key, hashes.SHA256())


def _new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


# ---- reuse checks ----------------------------------------------------------------------------


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _load_key(path: Path) -> Key | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _same_public_key(cert: x509.Certificate, key: Key) -> bool:
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)


def _sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    try:
        ext = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return set(), set()
    value = ext.value
    assert isinstance(value, x509.SubjectAlternativeName)
    dns = set(value.get_values_for_type(x509.DNSName))
    ips = {str(a) for a in value.get_values_for_type(x509.IPAddress)}
    return dns, ips


def _usable(
    cert_path: Path,
    key_path: Path,
    issuer: x509.Certificate | None,
    dns_names: Sequence[str] = (),
    addresses: Sequence[str] = (),
) -> x509.Certificate | None:
    """The certificate at cert_path if it can be reused as is, else None."""
    cert, key = _load_cert(cert_path), _load_key(key_path)
    if cert is None or key is None or not _same_public_key(cert, key):
        return None
    if cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) <= REUSE_MARGIN:
        return None
    try:
        cert.verify_directly_issued_by(issuer or cert)
    except Exception:
        return None
    if (dns_names or addresses) and _sans(cert) != (set(dns_names), set(addresses)):
        return None
    return cert


def _pfx_usable(paths: DevCerts, leaf: x509.Certificate) -> bool:
    try:
        password = paths.meet_pfx_password.read_text().strip().encode()
        _, cert, more = pkcs12.load_key_and_certificates(paths.meet_pfx.read_bytes(), password)
    except (OSError, ValueError):
        return False
    return cert is not None and cert == leaf and not more


def _der_usable(path: Path, cert: x509.Certificate) -> bool:
    try:
        return path.read_bytes() == cert.public_bytes(serialization.Encoding.DER)
    except OSError:
        return False


# ---- the two sets ----------------------------------------------------------------------------


def _ensure_internal(paths: DevCerts) -> None:
    ca = _usable(paths.internal_ca, paths.internal_ca_key, None)
    if ca is not None and _usable(
        paths.internal_server,
        paths.internal_server_key,
        ca,
        INTERNAL_SERVER_NAMES,
        INTERNAL_SERVER_ADDRESSES,
    ):
        return
    log.info("generating internal development certificates in %s", paths.internal_ca.parent)
    ca_key = _new_key()
    ca = _issue(_name("Demo Internal CA", "Demo Corp"), ca_key, None, CA_LIFETIME, is_ca=True)
    server_key = _new_key()
    server = _issue(
        _name("lync-fe1.internal.test", "Demo Corp"),
        server_key,
        (ca, ca_key),
        LEAF_LIFETIME,
        dns_names=INTERNAL_SERVER_NAMES,
        addresses=INTERNAL_SERVER_ADDRESSES,
    )
    _write_key(paths.internal_ca_key, ca_key)
    _write_cert(paths.internal_ca, ca)
    _write_key(paths.internal_server_key, server_key)
    _write_cert(paths.internal_server, server)


def _public_usable(paths: DevCerts) -> bool:
    root = _usable(paths.public_root, paths.public_root_key, None)
    if root is None:
        return False
    intermediate = _usable(paths.public_intermediate, paths.public_intermediate_key, root)
    if intermediate is None:
        return False
    if not _der_usable(paths.public_intermediate_der, intermediate):
        return False
    meet = _usable(paths.meet, paths.meet_key, intermediate, MEET_NAMES)
    mail = _usable(paths.mail, paths.mail_key, intermediate, MAIL_NAMES)
    return meet is not None and mail is not None and _pfx_usable(paths, meet)


def _ensure_public(paths: DevCerts) -> None:
    if _public_usable(paths):
        return
    log.info("generating public development certificates in %s", paths.public_root.parent)
    org = "Demo Public Trust"
    root_key = _new_key()
    root = _issue(_name("Demo Public Root CA", org), root_key, None, CA_LIFETIME, is_ca=True)
    inter_key = _new_key()
    intermediate = _issue(
        _name("Demo Public Intermediate CA", org),
        inter_key,
        (root, root_key),
        INTERMEDIATE_LIFETIME,
        ca_path_length=0,
        is_ca=True,
    )
    issued: dict[str, tuple[x509.Certificate, Key]] = {}
    for stem, names in (("meet", MEET_NAMES), ("mail", MAIL_NAMES)):
        key = _new_key()
        cert = _issue(
            _name(names[0], "Demo Corp"),
            key,
            (intermediate, inter_key),
            LEAF_LIFETIME,
            dns_names=names,
        )
        issued[stem] = (cert, key)
    password = secrets.token_urlsafe(18)
    meet_cert, meet_key = issued["meet"]
    # Leaf and key only, as some CAs deliver them: the intermediate comes separately, in
    # DER, so the demo configuration exercises both encodings and the chain assembly.
    pfx = pkcs12.serialize_key_and_certificates(
        MEET_NAMES[0].encode(),
        meet_key,
        meet_cert,
        None,
        serialization.BestAvailableEncryption(password.encode()),
    )
    _write_key(paths.public_root_key, root_key)
    _write_cert(paths.public_root, root)
    _write_key(paths.public_intermediate_key, inter_key)
    _write_cert(paths.public_intermediate, intermediate)
    _write(paths.public_intermediate_der, intermediate.public_bytes(serialization.Encoding.DER))
    for stem, (cert, key) in issued.items():
        _write_key(getattr(paths, f"{stem}_key"), key)
        _write_cert(getattr(paths, stem), cert)
    _write(paths.meet_pfx_password, (password + "\n").encode(), secret=True)
    _write(paths.meet_pfx, pfx, secret=True)


def ensure_dev_certs(root: Path) -> DevCerts:
    """Create (or reuse) the development certificates under `root`, usually certs/dev."""
    paths = DevCerts.under(Path(root))
    _ensure_internal(paths)
    _ensure_public(paths)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m revproxy.demo.certs",
        description="Create or reuse the development certificates.",
    )
    parser.add_argument("directory", nargs="?", default="certs/dev", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = ensure_dev_certs(args.directory)
    for field in fields(paths):
        print(f"{field.name:24} {getattr(paths, field.name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
