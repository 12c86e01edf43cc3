"""Chain assembly and the checks `revproxy check`, a start and a reload run."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tls_testkit import (
    LoopThread,
    Made,
    Pki,
    make_cert,
    make_pki,
    openssl_sha1_cert,
    tls_hello,
    write_bytes,
)

from revproxy.config.model import (
    CertificateConfig,
    Config,
    GlobalConfig,
    ListenerConfig,
    PoolConfig,
    ServerConfig,
    ServiceConfig,
)
from revproxy.tls.certificates import (
    check_listener_names,
    inspect_listener,
    load_certificate,
    read_certificate,
)
from revproxy.tls.chain import assemble_chain
from revproxy.tls.checks import ERROR, INFO, WARNING
from revproxy.tls.context import build_listener_context
from revproxy.tls.errors import TLSConfigError


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def _files(tmp_path: Path, leaf: Made, *chain: Made) -> CertificateConfig:
    cert = write_bytes(tmp_path / "leaf.pem", leaf.pem())
    key = write_bytes(tmp_path / "leaf.key", leaf.key_pem())
    chain_file = write_bytes(tmp_path / "chain.pem", *(c.pem() for c in chain))
    return CertificateConfig(cert, key, (chain_file,) if chain else ())


def _severities(config: CertificateConfig, chain_dir: Path | None = None) -> dict[str, str]:
    return {f.message: f.severity for f in read_certificate(config, chain_dir).findings}


@pytest.mark.parametrize(
    ("given", "reordered", "duplicates", "roots"),
    [
        (["inter2", "inter"], False, 0, 0),
        (["inter", "inter2"], True, 0, 0),
        (["root", "inter", "inter2", "inter"], True, 1, 1),
        (["inter2", "inter", "root", "leaf"], False, 1, 1),
    ],
)
def test_assembly_orders_drops_roots_and_duplicates(
    pki: Pki, given: list[str], reordered: bool, duplicates: int, roots: int
) -> None:
    certs = [getattr(pki, name).cert for name in given]
    assembly = assemble_chain(pki.leaf.cert, certs)
    assert assembly.chain == (pki.inter2.cert, pki.inter.cert)
    assert (assembly.reordered, assembly.duplicates) == (reordered, duplicates)
    assert len(assembly.roots_dropped) == roots
    assert assembly.open_end is None if roots else assembly.open_end == pki.inter.cert


def test_out_of_order_is_fixed_and_served_in_order(
    pki: Pki, tmp_path: Path, loop_thread: LoopThread
) -> None:
    config = _files(tmp_path, pki.leaf, pki.root, pki.inter, pki.inter2)
    found = _severities(config)
    assert found["intermediates were not in issuing order; sent in order"] == INFO
    assert found["root CA CN=Test Root is not sent (clients have it already)"] == INFO
    assert ERROR not in found.values()
    listener = ListenerConfig("l", "127.0.0.1", 0, tls=True, certificates=(config,))
    port = loop_thread.serve(build_listener_context(listener))
    client = ssl.create_default_context(cadata=pki.root.pem().decode())
    hello = tls_hello(port, client, "a.site.test")  # verifies: the chain came in order
    assert hello.peer_der == pki.leaf.der()


def test_missing_intermediate_found_in_chain_dir(pki: Pki, tmp_path: Path) -> None:
    config = _files(tmp_path, pki.leaf, pki.inter2)
    folder = tmp_path / "intermediates"
    folder.mkdir()
    write_bytes(folder / "inter1.cer", pki.inter.der())  # DER in a .cer file
    write_bytes(folder / "notes.txt", b"ignored")
    write_bytes(folder / "broken.crt", b"garbage")
    loaded = read_certificate(config, folder)
    assert loaded.chain == (pki.inter2.cert, pki.inter.cert)
    messages = [f.message for f in loaded.findings]
    assert "intermediate CN=Test Intermediate 1 found in chain_dir" in messages
    assert any(m.startswith("skipped: ") and "broken.crt" in m for m in messages)
    assert loaded.errors == ()


def test_missing_intermediate_is_an_error_naming_the_issuer(pki: Pki, tmp_path: Path) -> None:
    # A public CA's leaf names where its issuer is published: that issuer is an intermediate.
    public_leaf = make_cert(
        "site.test", pki.inter2, dns=("site.test",), ca_issuers_url="http://ca.test/i2.crt"
    )
    config = _files(tmp_path, public_leaf)
    with pytest.raises(TLSConfigError, match="chain incomplete") as caught:
        load_certificate(config)
    assert "the intermediate CN=Test Intermediate 2 that issued CN=site.test is missing" in str(
        caught.value
    )
    assert "http://ca.test/i2.crt" in str(caught.value)
    assert caught.value.path == config.cert
    # Given intermediates that link to nothing: the one in between is missing.
    config = _files(tmp_path, pki.leaf, pki.inter)
    found = _severities(config)
    assert found["CN=Test Intermediate 1 issues nothing in this chain and is not sent"] == WARNING
    assert any(m.startswith("chain incomplete") and s == ERROR for m, s in found.items())


def test_leaf_without_chain_from_a_private_root_is_a_warning(pki: Pki, tmp_path: Path) -> None:
    leaf = make_cert("site.test", pki.root, dns=("site.test",))
    found = _severities(_files(tmp_path, leaf))
    assert list(found.values()) == [WARNING]
    assert "no intermediate certificate: clients must trust the issuer CN=Test Root" in next(
        iter(found)
    )
    # Ending at an intermediate whose root is not given is the normal case.
    found = _severities(_files(tmp_path, pki.leaf, pki.inter2, pki.inter))
    assert found == {
        "chain ends at CN=Test Intermediate 1; its root CN=Test Root is not sent": INFO
    }


@pytest.mark.parametrize(
    ("options", "severity", "text"),
    [
        ({"days": -2, "starts_in_days": -30}, ERROR, "certificate CN=site.test expired on"),
        ({"starts_in_days": 2}, ERROR, "is not valid before"),
        ({"days": 10}, WARNING, "expires in 9 days"),
        ({"key": rsa.generate_private_key(65537, 1024)}, ERROR, "RSA key of 1024 bits is too weak"),
        ({"key": ec.generate_private_key(ec.SECP192R1())}, ERROR, "192 bits is too weak"),
        ({"key": rsa.generate_private_key(65537, 2048)}, None, ""),
    ],
)
def test_leaf_checks(
    pki: Pki, tmp_path: Path, options: dict[str, object], severity: str | None, text: str
) -> None:
    leaf = make_cert("site.test", pki.inter2, dns=("site.test",), **options)  # type: ignore[arg-type]
    found = read_certificate(_files(tmp_path, leaf, pki.inter2, pki.inter)).findings
    relevant = [f for f in found if f.severity != INFO]
    if severity is None:
        assert relevant == []
    else:
        assert [(f.severity, text in f.message) for f in relevant] == [(severity, True)]
        assert relevant[0].file == tmp_path / "leaf.pem"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_sha1_signatures_error_on_leaf_warning_on_intermediate(pki: Pki, tmp_path: Path) -> None:
    weak = openssl_sha1_cert(tmp_path, "Weak Intermediate", pki.root, ca=True)
    leaf = make_cert("site.test", weak, dns=("site.test",))
    config = _files(tmp_path, leaf, weak)
    found = [f for f in read_certificate(config).findings if f.severity != INFO]
    assert [(f.severity, f.file) for f in found] == [(WARNING, config.chain[0])]
    assert "intermediate CN=Weak Intermediate is signed with SHA1" in found[0].message
    weak_leaf = openssl_sha1_cert(tmp_path, "site.test", pki.inter2, dns=("site.test",))
    found = [f for f in read_certificate(_files(tmp_path, weak_leaf, pki.inter2)).findings]
    errors = [f.message for f in found if f.severity == ERROR]
    assert errors == [
        "certificate CN=site.test is signed with SHA1, which clients refuse: "
        "have it reissued with SHA-256"
    ]


def test_expired_intermediate_and_key_mismatch(pki: Pki, tmp_path: Path) -> None:
    old = make_cert("Old Intermediate", pki.root, ca=True, days=-1, starts_in_days=-400)
    leaf = make_cert("site.test", old, dns=("site.test",))
    config = _files(tmp_path, leaf, old)
    other = write_bytes(tmp_path / "other.key", pki.inter.key_pem())
    config = CertificateConfig(config.cert, other, config.chain)
    with pytest.raises(TLSConfigError) as caught:
        load_certificate(config)
    assert caught.value.path == other
    assert "private key does not match certificate" in caught.value.problem
    assert f"also {config.chain[0]}: intermediate CN=Old Intermediate expired" in str(caught.value)


def test_inspect_listener_and_start(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = _files(tmp_path, pki.leaf, pki.inter2)
    missing = CertificateConfig(tmp_path / "gone.pem", tmp_path / "gone.key")
    listener = ListenerConfig("pub", "127.0.0.1", 0, tls=True, certificates=(good, missing))
    found = inspect_listener(listener)
    assert found[-1].severity == ERROR and found[-1].file == tmp_path / "gone.pem"
    assert "certificate file not found" in found[-1].message
    with pytest.raises(TLSConfigError, match="certificate file not found"):
        build_listener_context(listener)
    caplog.set_level("INFO", "revproxy.tls")
    expiring = make_cert("site.test", pki.inter2, dns=("site.test",), days=5)
    listener = ListenerConfig(
        "pub", "127.0.0.1", 0, tls=True, certificates=(_files(tmp_path, expiring, pki.inter2),)
    )
    assert isinstance(build_listener_context(listener), ssl.SSLContext)
    assert "listener pub: " in caplog.text and "expires in 4 days" in caplog.text
    assert inspect_listener(ListenerConfig("plain", "127.0.0.1", 0)) == []


def test_check_listener_names(pki: Pki, tmp_path: Path) -> None:
    certs = (
        _files(tmp_path, pki.leaf, pki.inter2),  # site.test, *.site.test
    )
    listener = ListenerConfig("https", "127.0.0.1", 443, tls=True, certificates=certs)
    plain = ListenerConfig("http", "127.0.0.1", 80)
    hosts = (
        "site.test",
        "a.site.test",  # wildcard, one label
        "a.b.site.test",  # two labels: not covered (RFC 6125 6.4.3)
        "*.site.test",
        "*.other.test",
        "other.test",
        "10.0.0.1",
        "*",
    )
    config = Config(
        source=tmp_path / "c.toml",
        global_=GlobalConfig(),
        listeners=(listener, plain),
        services=(ServiceConfig("web", "p", hosts=hosts),),
        pools=(PoolConfig("p", (ServerConfig("127.0.0.1", 8080),)),),
    )
    found = check_listener_names(config)
    assert [w.split(" host ")[1].split(" ")[0] for w in found] == [
        "a.b.site.test",
        "*.other.test",
        "other.test",
    ]
    assert found[0].startswith("listener https: service web host a.b.site.test is covered by no")
    assert "default certificate (leaf.pem)" in found[0]
