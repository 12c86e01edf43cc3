"""deploy/examples/one-ip.toml running for real: every product on one address.

The test issues the public certificates the example names with trustme (a root, the
intermediate the example serves as chain, one leaf per certificate file), and the servers'
certificates from a separate internal CA. A copy of the example gets the certificate
paths, listeners on 127.0.0.1 port 0, one worker, health checks off, and every real server
replaced by a scripted one (TLS for the re-encrypting pools, with a certificate for the
pool's `server_name`). Everything else is the example as shipped: templates, hosts, the
meet rule, the redirects on port 80.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from harness import (
    REPO,
    ProxyProcess,
    Received,
    ResponseReader,
    ScriptedServer,
    connect,
    http_response,
)

EXAMPLE = REPO / "deploy" / "examples" / "one-ip.toml"
PRODUCTION_DIR = "/etc/revproxy/certs/"

# Certificate files of the example and the names each one carries.
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
# The name the servers of each re-encrypting pool present (the pool's server_name, or for
# AD FS the federation service name that the template makes the server_name).
TLS_POOLS = {
    "pool1-4443": "pool1web.contoso.com",
    "pool2-4443": "pool2web.contoso.com",
    "se-4443": "seweb.contoso.com",
    "exchange": "mail.contoso.com",
    "adfs": "sts.contoso.com",
    "owas-443": "owas.contoso.com",
}
PLAIN_POOLS = ("pool1-8080", "pool2-8080", "se-8080", "owas-80")


@dataclass
class Pool:
    name: str
    servers: list[ScriptedServer]
    sni: list[str | None] = field(default_factory=list)  # SNI seen by its TLS servers

    def requests(self, marker: bytes) -> list[Received]:
        """Requests any of its servers received whose request line contains `marker`."""
        return [r for s in self.servers for r in list(s.requests) if marker in r.request_line]


@dataclass
class Site:
    proxy: ProxyProcess
    pools: dict[str, Pool]
    root_pem: Path
    leaves: dict[str, bytes]  # certificate file name -> DER of its leaf

    @property
    def https(self) -> int:
        return self.proxy.port("https")

    @property
    def http(self) -> int:
        return self.proxy.port("http")


def _responder(pool: str, index: int):  # type: ignore[no-untyped-def]
    def respond(req: Received, sock: socket.socket) -> bytes:
        return http_response(
            200, b"%s#%d %s" % (pool.encode(), index, req.request_line), ("Content-Type: x/y",)
        )

    return respond


def _tls_context(leaf: trustme.LeafCert, seen: list[str | None]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)
    lock = threading.Lock()

    def remember(_obj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        with lock:
            seen.append(server_name)

    ctx.sni_callback = remember
    return ctx


def _section_servers(text: str, pool: str, addresses: list[str]) -> str:
    """`text` with the `servers = [...]` of [pools.POOL] replaced by `addresses`."""
    pattern = re.compile(
        r"(^\[pools\." + re.escape(pool) + r"\]\n(?:[^\[].*\n|\n)*?)servers = \[[^\]]*\]",
        re.MULTILINE,
    )
    listed = ", ".join(f'"{a}"' for a in addresses)
    new, count = pattern.subn(lambda m: m.group(1) + f"servers = [{listed}]", text)
    assert count == 1, pool
    return new


def _server_count(example: dict, pool: str) -> int:  # type: ignore[type-arg]
    return len(example["pools"][pool]["servers"])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("one-ip-run")
    certs = tmp / "certs"
    certs.mkdir()
    root = trustme.CA(organization_name="Public root")
    public = root.create_child_ca()
    root_pem = certs / "root.pem"
    root.cert_pem.write_to_path(str(root_pem))
    public.cert_pem.write_to_path(str(certs / "intermediate.pem"))
    leaves: dict[str, bytes] = {}
    for name, hosts in CERTIFICATES.items():
        leaf = public.issue_cert(*hosts)
        leaf.cert_chain_pems[0].write_to_path(str(certs / f"{name}.pem"))
        leaf.private_key_pem.write_to_path(str(certs / f"{name}.key"))
        leaves[name] = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    internal = trustme.CA(organization_name="Internal CA")
    internal.cert_pem.write_to_path(str(certs / "internal-ca.pem"))

    text = EXAMPLE.read_text(encoding="utf-8")
    example = tomllib.loads(text)
    assert set(example["pools"]) == set(TLS_POOLS) | set(PLAIN_POOLS)
    pools: dict[str, Pool] = {}
    started: list[ScriptedServer] = []
    try:
        for name in list(TLS_POOLS) + list(PLAIN_POOLS):
            pool = Pool(name, [])
            leaf = internal.issue_cert(TLS_POOLS[name]) if name in TLS_POOLS else None
            for i in range(_server_count(example, name)):
                ctx = _tls_context(leaf, pool.sni) if leaf is not None else None
                server = ScriptedServer(_responder(name, i), tls=ctx).start()
                started.append(server)
                pool.servers.append(server)
            pools[name] = pool
            text = _section_servers(text, name, [f"127.0.0.1:{s.port}" for s in pool.servers])
        assert PRODUCTION_DIR in text
        text = text.replace(PRODUCTION_DIR, f"{certs}/")
        text = text.replace('bind = "0.0.0.0:443"', 'bind = "127.0.0.1:0"')
        text = text.replace('bind = "0.0.0.0:80"', 'bind = "127.0.0.1:0"')
        text = text.replace("workers = 0 ", "workers = 1 ")
        text += "".join(f'\n[pools.{name}.health]\ntype = "none"\n' for name in pools)
        copy = tomllib.loads(text)
        assert copy["global"]["workers"] == 1
        assert {lst["bind"] for lst in copy["listeners"].values()} == {"127.0.0.1:0"}
        proxy = ProxyProcess(text, tmp, "one-ip")
    except BaseException:
        for s in started:
            s.stop()
        raise
    try:
        yield Site(proxy, pools, root_pem, leaves)
    finally:
        code = proxy.stop()
        for s in started:
            s.stop()
        assert code == 0, proxy.log()


# ---------------------------------------------------------------------- clients


def _https(
    site: Site, sni: str | None, host: str, target: str, extra: str = ""
) -> tuple[bytes, int, dict[str, str], bytes]:
    """One request over TLS, the certificate verified against the public root only:
    (leaf DER, status, headers, body)."""
    ctx = ssl.create_default_context(cafile=str(site.root_pem))
    ctx.check_hostname = sni is not None
    raw = socket.create_connection(("127.0.0.1", site.https), timeout=10)
    with ctx.wrap_socket(raw, server_hostname=sni) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
        resp = ResponseReader(tls).next()  # type: ignore[arg-type]
    return der, resp.status, dict(resp.headers), resp.body


def _http(site: Site, host: str, target: str):  # type: ignore[no-untyped-def]
    with connect(site.http) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        return ResponseReader(sock).next()


# ---------------------------------------------------------------------- HTTPS, by product

# (name asked for by SNI and Host, certificate file, pool, path)
PUBLISHED = [
    ("mail.contoso.com", "mail", "exchange", "/owa/"),
    ("autodiscover.contoso.com", "mail", "exchange", "/Autodiscover/Autodiscover.xml"),
    ("pool1web.contoso.com", "lync", "pool1-4443", "/WebTicket/WebTicketService.svc"),
    ("meet.contoso.com", "lync", "pool1-4443", "/meet/alice/F00D?x=1"),
    ("dialin.contoso.com", "lync", "pool1-4443", "/dialin/"),
    ("lyncdiscover.contoso.com", "lync", "pool1-4443", "/"),
    ("pool2web.contoso.com", "lync", "pool2-4443", "/Ucwa/v1"),
    ("seweb.contoso.com", "lync", "se-4443", "/Reach/Client"),
    ("sts.contoso.com", "sts", "adfs", "/adfs/ls/"),
    ("owas.contoso.com", "owas", "owas-443", "/hosting/discovery"),
]


@pytest.mark.parametrize(("name", "cert", "pool", "path"), PUBLISHED)
def test_https_reaches_the_products_pool(
    site: Site, name: str, cert: str, pool: str, path: str
) -> None:
    marker = f"?probe={name}-{pool}" if "?" not in path else f"&probe={name}-{pool}"
    target = path + marker
    der, status, _, body = _https(site, name, name, target)
    # The certificate presented is the one naming the host (verified against the root
    # with the served intermediate, and compared byte for byte).
    assert der == site.leaves[cert]
    assert status == 200
    assert body.startswith(f"{pool}#".encode()), body
    got = site.pools[pool].requests(marker.encode())
    assert len(got) == 1
    assert got[0].request_line == f"GET {target} HTTP/1.1".encode()
    # The original Host passes through unchanged.
    assert got[0].header("Host") == name
    # Re-encrypted: the server got the pool's server_name as SNI.
    assert set(site.pools[pool].sni) == {TLS_POOLS[pool]}


def test_adfs_server_gets_the_federation_service_name_as_sni(site: Site) -> None:
    _, status, _, body = _https(site, "sts.contoso.com", "sts.contoso.com", "/adfs/ls/?sni")
    assert status == 200 and body.startswith(b"adfs#")
    sni = site.pools["adfs"].sni
    assert sni and all(name == "sts.contoso.com" for name in sni)


def test_the_meet_rule_of_the_example_runs(site: Site) -> None:
    _, status, _, body = _https(site, "meet.contoso.com", "meet.contoso.com", "/meet/bob/C0DE")
    assert status == 200
    assert body.startswith(b"pool1-4443#")
    assert body.endswith(b" GET /meet/bob/C0DE?sl=1 HTTP/1.1")
    [got] = site.pools["pool1-4443"].requests(b"/meet/bob/C0DE")
    assert got.request_line == b"GET /meet/bob/C0DE?sl=1 HTTP/1.1"
    assert got.header("Host") == "meet.contoso.com"


def test_pool1_balances_per_request(site: Site) -> None:
    bodies = set()
    for n in range(6):
        _, status, _, body = _https(
            site, "pool1web.contoso.com", "pool1web.contoso.com", f"/abs/rr{n}"
        )
        assert status == 200
        bodies.add(body.split(b" ", 1)[0])
    assert bodies == {b"pool1-4443#0", b"pool1-4443#1", b"pool1-4443#2"}


def test_clients_without_sni_get_the_first_certificate(site: Site) -> None:
    der, status, _, body = _https(site, None, "lyncdiscover.contoso.com", "/?nosni")
    assert der == site.leaves["lync"]
    assert status == 200 and body.startswith(b"pool1-4443#")


def test_the_pool_is_chosen_by_host_not_by_sni(site: Site) -> None:
    # The example keeps sni_mismatch = "allow" (the default): the certificate follows the
    # SNI, the service follows the Host.
    der, status, _, body = _https(site, "mail.contoso.com", "sts.contoso.com", "/adfs/ls/?mixed")
    assert der == site.leaves["mail"]
    assert status == 200 and body.startswith(b"adfs#")
    assert len(site.pools["adfs"].requests(b"?mixed")) == 1
    assert not site.pools["exchange"].requests(b"?mixed")


# ---------------------------------------------------------------------- HTTP on port 80

FORWARDED_80 = [
    ("pool1web.contoso.com", "pool1-8080"),
    ("meet.contoso.com", "pool1-8080"),
    ("dialin.contoso.com", "pool1-8080"),
    ("lyncdiscover.contoso.com", "pool1-8080"),
    ("pool2web.contoso.com", "pool2-8080"),
    ("seweb.contoso.com", "se-8080"),
    ("owas.contoso.com", "owas-80"),
]


@pytest.mark.parametrize(("name", "pool"), FORWARDED_80)
def test_http_is_forwarded_unencrypted(site: Site, name: str, pool: str) -> None:
    target = f"/x?plain={name}"
    resp = _http(site, name, target)
    assert resp.status == 200
    assert resp.body.startswith(f"{pool}#".encode())
    [got] = site.pools[pool].requests(f"plain={name}".encode())
    assert got.request_line == f"GET {target} HTTP/1.1".encode()
    assert got.header("Host") == name


def test_http_meet_urls_are_not_rewritten(site: Site) -> None:
    # The example puts the meet rule on the HTTPS service only.
    resp = _http(site, "meet.contoso.com", "/meet/carol/BEEF")
    assert resp.status == 200
    [got] = site.pools["pool1-8080"].requests(b"/meet/carol/BEEF")
    assert got.request_line == b"GET /meet/carol/BEEF HTTP/1.1"


@pytest.mark.parametrize(
    ("name", "pool"),
    [
        ("mail.contoso.com", "exchange"),
        ("autodiscover.contoso.com", "exchange"),
        ("sts.contoso.com", "adfs"),
    ],
)
def test_http_is_redirected_to_https(site: Site, name: str, pool: str) -> None:
    target = f"/owa/?redirect={name}"
    with connect(site.http) as sock:
        reader = ResponseReader(sock)
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {name}:80\r\n\r\n".encode())
        resp = reader.next()
        assert resp.status == 301
        assert resp.header("location") == f"https://{name}{target}"
        sock.sendall(f"GET /again HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
        assert reader.next().header("location") == f"https://{name}/again"
    assert not site.pools[pool].requests(f"redirect={name}".encode())


def test_unknown_host_on_http_is_not_forwarded(site: Site) -> None:
    resp = _http(site, "intranet.contoso.com", "/?unknown")
    assert resp.status in (404, 421)
    assert not any(p.requests(b"?unknown") for p in site.pools.values())
