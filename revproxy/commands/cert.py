"""`revproxy cert`: look into a certificate file, or turn a PKCS#12 file into PEM files.

    revproxy cert inspect FILE [--key K] [--chain C ...] [--chain-dir D] [--password-file F]
    revproxy cert import FILE.pfx --password-file F --out DIR

Both read files exactly as a listener does (revproxy.tls.certificates), so what `inspect`
reports is what `revproxy check` and a start would say about the same files.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from revproxy.config.model import CertificateConfig
from revproxy.tls.certificates import LoadedCertificate, read_certificate
from revproxy.tls.checks import ERROR, days_left, key_description, subject_of
from revproxy.tls.errors import TLSConfigError
from revproxy.tls.formats import write_atomic


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this module's subcommands to the `revproxy` parser."""
    cert = sub.add_parser("cert", help="inspect certificate files, import PKCS#12 files")
    actions = cert.add_subparsers(dest="cert_command", required=True)

    inspect = actions.add_parser(
        "inspect", help="show a certificate file (PEM, DER, PKCS#12) and what is wrong with it"
    )
    inspect.add_argument("file", type=Path, help="certificate file: PEM, DER or .pfx/.p12")
    inspect.add_argument("--key", type=Path, help="private key file to check against")
    inspect.add_argument(
        "--chain", type=Path, action="append", default=[], help="intermediates file (repeatable)"
    )
    inspect.add_argument("--chain-dir", type=Path, help="folder to look for intermediates in")
    _password_arguments(inspect)
    inspect.set_defaults(func=cmd_inspect)

    imp = actions.add_parser(
        "import", help="write cert.pem, chain.pem, fullchain.pem and key.pem from a .pfx"
    )
    imp.add_argument("file", type=Path, help="PKCS#12 file (.pfx/.p12)")
    imp.add_argument("--out", type=Path, required=True, help="folder to write the PEM files to")
    imp.add_argument(
        "--chain", type=Path, action="append", default=[], help="more intermediates (repeatable)"
    )
    imp.add_argument("--chain-dir", type=Path, help="folder to look for intermediates in")
    _password_arguments(imp)
    imp.set_defaults(func=cmd_import)


def _password_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--password-file", type=Path, help="file whose first line is the password")
    group.add_argument("--password-env", default="", help="environment variable with the password")


def _config(args: argparse.Namespace, key: Path | None = None) -> CertificateConfig:
    return CertificateConfig(
        cert=args.file,
        key=key,
        chain=tuple(args.chain),
        password_file=args.password_file,
        password_env=args.password_env,
    )


def _fingerprint(cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> str:
    return cert.fingerprint(algorithm).hex(":").upper()


def _sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    out = [f"DNS:{n}" for n in ext.value.get_values_for_type(x509.DNSName)]
    out += [f"IP:{a}" for a in ext.value.get_values_for_type(x509.IPAddress)]
    return out


def describe(loaded: LoadedCertificate, now: datetime.datetime | None = None) -> str:
    """The text `revproxy cert inspect` prints."""
    now = now or datetime.datetime.now(datetime.UTC)
    leaf = loaded.leaf
    kind, bits = key_description(leaf.public_key())
    left = days_left(leaf, now)
    state = "EXPIRED" if left < 0 else f"{left} days left"
    if leaf.not_valid_before_utc > now:
        state = "NOT YET VALID"
    lines = [
        f"file:         {loaded.config.cert} ({loaded.encoding})",
        f"subject:      {subject_of(leaf)}",
        f"names:        {', '.join(_sans(leaf)) or '(no subjectAltName)'}",
        f"issuer:       {leaf.issuer.rfc4514_string()}",
        f"valid:        {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} to "
        f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC ({state})",
        f"key:          {kind} {bits} bits"
        + ("" if loaded.key is not None else " (no private key given)"),
        f"signature:    {leaf.signature_algorithm_oid._name}",
        f"SHA-256:      {_fingerprint(leaf, hashes.SHA256())}",
        f"SHA-1:        {_fingerprint(leaf, hashes.SHA1())}",  # noqa: S303 - shown, not trusted
        "chain:",
        f"  0 {subject_of(leaf)}",
    ]
    for depth, cert in enumerate(loaded.chain, start=1):
        lines.append(
            f"  {depth} {subject_of(cert)} (until {cert.not_valid_after_utc:%Y-%m-%d},"
            f" {days_left(cert, now)} days)"
        )
    top = loaded.chain[-1] if loaded.chain else leaf
    lines.append(f"    issued by {top.issuer.rfc4514_string()} (not sent)")
    lines.append("findings:" if loaded.findings else "findings:     none")
    lines += [f"  {f.severity}: {f.file}: {f.message}" for f in loaded.findings]
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    try:
        loaded = read_certificate(_config(args, args.key), args.chain_dir, require_key=False)
    except TLSConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(describe(loaded))
    return 1 if loaded.errors else 0


def cmd_import(args: argparse.Namespace) -> int:
    try:
        loaded = read_certificate(_config(args), args.chain_dir)
    except TLSConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if loaded.encoding != "PKCS#12" or loaded.key is None:
        print(f"error: {args.file}: not a PKCS#12 file with a private key", file=sys.stderr)
        return 1
    pem = serialization.Encoding.PEM
    cert_pem = loaded.leaf.public_bytes(pem)
    chain_pem = b"".join(c.public_bytes(pem) for c in loaded.chain)
    key_pem = loaded.key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    out: Path = args.out
    if not out.exists():
        out.mkdir(mode=0o700, parents=True)
        out.chmod(0o700)
    write_atomic(out / "key.pem", key_pem, 0o600)
    write_atomic(out / "cert.pem", cert_pem, 0o644)
    write_atomic(out / "chain.pem", chain_pem, 0o644)
    write_atomic(out / "fullchain.pem", cert_pem + chain_pem, 0o644)
    print(f"wrote {out}/cert.pem, chain.pem ({len(loaded.chain)} intermediates),")
    print(f"      {out}/fullchain.pem and key.pem (mode 0600)")
    for finding in loaded.findings:
        print(f"{finding.severity}: {finding.file}: {finding.message}")
    return 1 if any(f.severity == ERROR for f in loaded.findings) else 0
