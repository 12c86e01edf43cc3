"""`revproxy cert inspect` and `revproxy cert import`."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from tls_testkit import Pki, make_cert, make_pki, write_bytes

from revproxy.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def _pfx(pki: Pki, tmp_path: Path) -> tuple[Path, Path]:
    data = pkcs12.serialize_key_and_certificates(
        b"site",
        pki.leaf.key,  # type: ignore[arg-type]
        pki.leaf.cert,
        [pki.inter.cert, pki.root.cert, pki.inter2.cert],
        serialization.BestAvailableEncryption(b"pfx-pass"),
    )
    return write_bytes(tmp_path / "site.pfx", data), write_bytes(tmp_path / "pw", b"pfx-pass\n")


def test_inspect_pfx(pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pfx, password = _pfx(pki, tmp_path)
    assert main(["cert", "inspect", str(pfx), "--password-file", str(password)]) == 0
    out = capsys.readouterr().out
    assert f"file:         {pfx} (PKCS#12)" in out
    assert "names:        DNS:site.test, DNS:*.site.test" in out
    assert "days left)" in out and "key:          EC secp256r1 256 bits" in out
    sha256 = pki.leaf.cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert f"SHA-256:      {sha256}" in out
    assert "SHA-1:" in out
    assert "  1 CN=Test Intermediate 2" in out and "  2 CN=Test Intermediate 1" in out
    assert "root CA CN=Test Root is not sent" in out


def test_inspect_exit_status_and_errors(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expired = make_cert("old.test", pki.root, dns=("old.test",), days=-1, starts_in_days=-9)
    path = write_bytes(tmp_path / "old.cer", expired.der())
    assert main(["cert", "inspect", str(path)]) == 1
    out = capsys.readouterr().out
    assert "(DER)" in out and "EXPIRED" in out
    assert f"error: {path}: certificate CN=old.test expired on" in out
    pfx, _ = _pfx(pki, tmp_path)
    wrong = write_bytes(tmp_path / "wrong", b"nope\n")
    assert main(["cert", "inspect", str(pfx), "--password-file", str(wrong)]) == 1
    assert f"error: {pfx}: wrong password for PKCS#12 file" in capsys.readouterr().err


def test_import_writes_pem_files(pki: Pki, tmp_path: Path) -> None:
    pfx, password = _pfx(pki, tmp_path)
    out = tmp_path / "imported" / "site"
    result = subprocess.run(
        [sys.executable, "-m", "revproxy", "cert", "import", str(pfx)]
        + ["--password-file", str(password), "--out", str(out)],
        capture_output=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600
    leaf = x509.load_pem_x509_certificates((out / "cert.pem").read_bytes())
    chain = x509.load_pem_x509_certificates((out / "chain.pem").read_bytes())
    full = x509.load_pem_x509_certificates((out / "fullchain.pem").read_bytes())
    assert leaf == [pki.leaf.cert]
    assert chain == [pki.inter2.cert, pki.inter.cert]  # ordered, root left out
    assert full == leaf + chain
    key = serialization.load_pem_private_key((out / "key.pem").read_bytes(), None)
    assert key.public_key() == pki.leaf.cert.public_key()
    # Not a PKCS#12 file: refused.
    pem = write_bytes(tmp_path / "leaf.pem", pki.leaf.pem())
    result = subprocess.run(
        [sys.executable, "-m", "revproxy", "cert", "import", str(pem), "--out", str(out)],
        capture_output=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 1
    assert b"no private key" in result.stderr or b"not a PKCS#12" in result.stderr
