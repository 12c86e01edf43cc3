"""deploy/examples/one-ip.toml: every product on one address passes `revproxy check`.

The example names production paths (/etc/revproxy/certs/...). The test issues
certificates for every published name with trustme, substitutes the paths in a copy and
runs the real command on it, so the TLS contexts are built as at startup.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from revproxy.config import load_config_with_warnings
from revproxy.http.rules import service_rules

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "examples" / "one-ip.toml"
PRODUCTION_DIR = "/etc/revproxy/certs/"

CERTIFICATES = {
    "lync": (
        "pool1web.contoso.com",
        "pool2web.contoso.com",
        "seweb.contoso.com",
        "meet.contoso.com",
        "dialin.contoso.com",
        "lyncdiscover.contoso.com",
    ),
    "mail": ("mail.contoso.com", "autodiscover.contoso.com"),
    "sts": ("sts.contoso.com",),
    "owas": ("owas.contoso.com",),
}


@pytest.fixture(scope="module")
def example_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("one-ip")
    certs = folder / "certs"
    certs.mkdir()
    public = trustme.CA().create_child_ca()
    public.cert_pem.write_to_path(str(certs / "intermediate.pem"))
    for name, hosts in CERTIFICATES.items():
        leaf = public.issue_cert(*hosts)
        leaf.cert_chain_pems[0].write_to_path(str(certs / f"{name}.pem"))
        leaf.private_key_pem.write_to_path(str(certs / f"{name}.key"))
    trustme.CA().cert_pem.write_to_path(str(certs / "internal-ca.pem"))
    text = EXAMPLE.read_text(encoding="utf-8")
    assert PRODUCTION_DIR in text
    path = folder / "one-ip.toml"
    path.write_text(text.replace(PRODUCTION_DIR, f"{certs}/"), encoding="utf-8")
    return path


def test_revproxy_check_passes(example_copy: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "revproxy", "check", "-c", str(example_copy)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "ok (2 listeners, 12 services, 10 pools)" in done.stdout
    assert "warning" not in done.stderr


def test_every_product_uses_its_template(example_copy: Path) -> None:
    config, warnings = load_config_with_warnings(example_copy)
    assert warnings == []
    by_name = {s.name: s for s in config.services}
    templates = {name: s.template for name, s in by_name.items()}
    assert templates == {
        "pool1-web": "lync-external-web",
        "pool1-web-http": "lync-external-web-http",
        "pool2-web": "lync-external-web",
        "pool2-web-http": "lync-external-web-http",
        "se-web": "lync-external-web",
        "se-web-http": "lync-external-web-http",
        "exchange": "exchange",
        "exchange-http": "redirect-https",
        "adfs": "adfs",
        "adfs-http": "redirect-https",
        "owas": "office-web-apps",
        "owas-http": "office-web-apps-http",
    }
    # 443 -> 4443 re-encrypted for Lync, 80 -> 8080 plain, Office Web Apps 443/80.
    for pool in ("pool1-4443", "pool2-4443", "se-4443"):
        p = config.pool(pool)
        assert p.tls and p.verify and {s.port for s in p.servers} == {4443}
    for pool in ("pool1-8080", "pool2-8080", "se-8080"):
        assert not config.pool(pool).tls and {s.port for s in config.pool(pool).servers} == {8080}
    assert config.pool("owas-443").tls and not config.pool("owas-80").tls
    assert config.pool("adfs").server_name == "sts.contoso.com"
    # Exchange and AD FS on port 80 redirect; Lync and Office Web Apps are forwarded.
    redirecting = {s.name for s in config.services if s.redirect_https}
    assert redirecting == {"exchange-http", "adfs-http"}


def test_the_meet_rule_of_the_example(example_copy: Path) -> None:
    config, _ = load_config_with_warnings(example_copy)
    rules = service_rules(next(s for s in config.services if s.name == "pool1-web"))
    action = rules.on_request(b"GET", b"meet.contoso.com", b"/meet/alice/F00D", lambda _: None)
    assert action.target == b"/meet/alice/F00D?sl=1"
