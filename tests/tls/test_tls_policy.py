"""The TLS policy of a real proxy listener, as a scanner sees it: sslyze, or openssl s_client
when sslyze cannot run here.

Default policy: TLS 1.2 and 1.3 only, AEAD cipher suites with forward secrecy, no
renegotiation, the whole chain sent and matching the host name.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import ProxyProcess, ScriptedServer

from revproxy.demo.certs import ensure_dev_certs

HOST = "mail.demo.test"


@dataclass
class Target:
    proxy: ProxyProcess
    ca_file: Path
    port: int


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    workdir = tmp_path_factory.mktemp("policy")
    # The development PKI carries every extension a strict path validator wants.
    dev = ensure_dev_certs(workdir / "dev")
    backend = ScriptedServer().start()
    config = f"""
[global]
workers = 1
shutdown_grace = 2

[listeners.https]
bind = "127.0.0.1:0"
tls = true
  [[listeners.https.certificates]]
  cert = "{dev.mail}"
  key = "{dev.mail_key}"
  chain = ["{dev.public_intermediate_der}"]

[services.s]
hosts = ["{HOST}"]
pool = "p"

[pools.p]
servers = ["127.0.0.1:{backend.port}"]
"""
    proxy = ProxyProcess(config, workdir)
    try:
        yield Target(proxy, dev.public_root, proxy.port("https"))
    finally:
        proxy.stop()
        backend.stop()


def _sslyze_unavailable() -> str:
    try:
        import sslyze  # noqa: F401
    except ImportError as exc:
        return f"sslyze is not installed: {exc}"
    return ""


AEAD_MARKERS = ("GCM", "CHACHA20", "CCM")


@pytest.mark.skipif(bool(_sslyze_unavailable()), reason=_sslyze_unavailable() or "n/a")
# sslyze's bundled trust stores hold old roots with negative serial numbers.
@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_sslyze_scan(target: Target) -> None:
    from sslyze import (
        CertificateInfoExtraArgument,
        ScanCommand,
        ScanCommandAttemptStatusEnum,
        ScanCommandsExtraArguments,
        Scanner,
        ServerNetworkLocation,
        ServerScanRequest,
        ServerScanStatusEnum,
    )

    commands = {
        ScanCommand.SSL_2_0_CIPHER_SUITES,
        ScanCommand.SSL_3_0_CIPHER_SUITES,
        ScanCommand.TLS_1_0_CIPHER_SUITES,
        ScanCommand.TLS_1_1_CIPHER_SUITES,
        ScanCommand.TLS_1_2_CIPHER_SUITES,
        ScanCommand.TLS_1_3_CIPHER_SUITES,
        ScanCommand.SESSION_RENEGOTIATION,
        ScanCommand.CERTIFICATE_INFO,
        ScanCommand.TLS_COMPRESSION,
    }
    request = ServerScanRequest(
        server_location=ServerNetworkLocation(HOST, target.port, ip_address="127.0.0.1"),
        scan_commands=commands,
        scan_commands_extra_arguments=ScanCommandsExtraArguments(
            certificate_info=CertificateInfoExtraArgument(custom_ca_file=target.ca_file)
        ),
    )
    scanner = Scanner()
    scanner.queue_scans([request])
    (result,) = list(scanner.get_results())
    if result.scan_status != ServerScanStatusEnum.COMPLETED:
        pytest.skip(f"sslyze could not connect here: {result.connectivity_error_trace}")
    attempts = result.scan_result
    assert attempts is not None
    for name in commands:
        attempt = getattr(attempts, name.value)
        trace = "".join(attempt.error_trace.format()) if attempt.error_trace else ""
        assert attempt.status == ScanCommandAttemptStatusEnum.COMPLETED, (name, trace)

    for old in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"):
        accepted = getattr(attempts, f"{old}_cipher_suites").result.accepted_cipher_suites
        assert accepted == [], f"{old} accepted: {[s.cipher_suite.name for s in accepted]}"
    tls12 = attempts.tls_1_2_cipher_suites.result.accepted_cipher_suites
    assert tls12, "TLS 1.2 must be accepted"
    for suite in tls12:
        name = suite.cipher_suite.name
        assert any(m in name for m in AEAD_MARKERS), f"non-AEAD TLS 1.2 suite {name}"
        assert "ECDHE" in name, f"TLS 1.2 suite without forward secrecy: {name}"
    assert attempts.tls_1_3_cipher_suites.result.accepted_cipher_suites
    renegotiation = attempts.session_renegotiation.result
    assert not renegotiation.is_vulnerable_to_client_renegotiation_dos
    assert not attempts.tls_compression.result.supports_compression

    (deployment,) = attempts.certificate_info.result.certificate_deployments
    chain = deployment.received_certificate_chain
    assert len(chain) == 2, "leaf and intermediate are both sent"
    assert deployment.received_chain_has_valid_order
    assert not deployment.received_chain_contains_anchor_certificate
    assert not deployment.verified_chain_has_sha1_signature
    custom = [r for r in deployment.path_validation_results if r.trust_store.path == target.ca_file]
    # Validation against our CA includes the host name check (sslyze verifies the name).
    assert custom and custom[0].was_validation_successful, custom


def _s_client(port: int, ca: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", HOST]
        + ["-CAfile", str(ca), "-verify_return_error", *options],
        input="",
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_openssl_s_client(target: Target) -> None:
    """The same policy through openssl, so it is checked even where sslyze cannot run."""
    for old in ("-tls1", "-tls1_1"):
        result = _s_client(target.port, target.ca_file, old, "-cipher", "ALL:@SECLEVEL=0")
        assert result.returncode != 0, f"{old} was accepted"
    for cipher in ("AES128-SHA", "ECDHE-RSA-AES128-SHA", "DES-CBC3-SHA", "AES128-GCM-SHA256"):
        result = _s_client(target.port, target.ca_file, "-tls1_2", "-cipher", cipher)
        assert result.returncode != 0, f"TLS 1.2 cipher {cipher} was accepted"
    result = _s_client(target.port, target.ca_file, "-tls1_2", "-showcerts")
    assert result.returncode == 0, result.stderr
    assert "Verify return code: 0 (ok)" in result.stdout
    assert result.stdout.count("BEGIN CERTIFICATE") == 2  # the intermediate is sent
    assert "Secure Renegotiation IS supported" in result.stdout or (
        "Secure Renegotiation IS NOT supported" not in result.stdout
    )
    result = _s_client(target.port, target.ca_file, "-tls1_3", "-alpn", "http/1.1")
    assert result.returncode == 0, result.stderr
    assert "ALPN protocol: http/1.1" in result.stdout
