"""Persistence tables, cookie text and the per-request decision: plain tables."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from revproxy.balance.persistence import (
    SourceIPTable,
    cookie_from_request,
    cookie_value,
    decide,
    server_for_cookie,
    set_cookie_header,
)
from revproxy.balance.pool import Pool
from revproxy.config.model import PersistenceConfig, PoolConfig, ServerConfig

SERVERS = tuple(ServerConfig(f"10.0.0.{i}", 4443) for i in (1, 2, 3))
WSMAN = PersistenceConfig(
    type="cookie", cookie_name="MS-WSMAN", cookie_httponly=False, cookie_always=True
)


def make_pool(persistence: PersistenceConfig, balance: str = "round_robin") -> Pool:
    return Pool(
        PoolConfig("lync-ext", SERVERS, balance=balance, persistence=persistence),
        rng=random.Random(1),
    )


# ------------------------------------------------------------------------- source IP table


def test_table_lookup_and_expiry() -> None:
    table = SourceIPTable(timeout=1200.0)
    table.remember("192.0.2.1", "a", now=100.0)
    assert table.lookup("192.0.2.1", 100.0) == "a"
    assert table.lookup("192.0.2.1", 1299.9) == "a"
    assert table.lookup("192.0.2.1", 1300.0) is None
    assert len(table) == 0
    assert table.lookup("192.0.2.9", 0.0) is None


def test_table_remember_refreshes_and_replaces() -> None:
    table = SourceIPTable(timeout=10.0)
    table.remember("ip", "a", 0.0)
    table.remember("ip", "b", 8.0)
    assert table.lookup("ip", 17.0) == "b"


def test_table_evicts_oldest_when_full() -> None:
    table = SourceIPTable(timeout=100.0, max_entries=3)
    for i, ip in enumerate(["a", "b", "c"]):
        table.remember(ip, "s", float(i))
    table.remember("a", "s", 3.0)  # a is now the newest
    table.remember("d", "s", 4.0)
    assert len(table) == 3
    assert [table.lookup(ip, 5.0) for ip in "abcd"] == ["s", None, "s", "s"]


def test_table_drops_expired_entries_as_it_goes() -> None:
    table = SourceIPTable(timeout=10.0)
    for i in range(5):
        table.remember(f"10.1.0.{i}", "s", float(i))
    table.remember("10.9.9.9", "s", 13.0)  # entries written at 0..3 have expired
    assert len(table) == 2
    assert table.expire(100.0) == 2 and len(table) == 0


# --------------------------------------------------------------------------------- cookies


def test_cookie_value_is_deterministic_and_distinct() -> None:
    a = cookie_value("lync-ext", "10.0.0.1:4443")
    assert a == cookie_value("lync-ext", "10.0.0.1:4443")
    assert len(a) == 16 and int(a, 16) >= 0
    assert a != cookie_value("lync-ext", "10.0.0.2:4443")
    assert a != cookie_value("other", "10.0.0.1:4443")


def test_cookie_value_pinned() -> None:
    # Replicas and restarts must decode cookies already handed out: never change this.
    assert cookie_value("pool", "10.0.0.1:80") == "634656b4742a5578"


def test_server_for_cookie() -> None:
    pool = make_pool(WSMAN)
    for server in pool.servers:
        assert server_for_cookie(pool, server.cookie) is server
    assert server_for_cookie(pool, "0123456789abcdef") is None


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({}, b"SERVERID=v; Path=/; HttpOnly"),
        (
            {"cookie_name": "MS-WSMAN", "cookie_httponly": False, "cookie_always": True},
            b"MS-WSMAN=v; Path=/",
        ),
        ({"cookie_path": "", "cookie_httponly": False}, b"SERVERID=v"),
        (
            {"cookie_domain": "example.com", "cookie_secure": True, "cookie_max_age": 3600},
            b"SERVERID=v; Path=/; Domain=example.com; Max-Age=3600; Secure; HttpOnly",
        ),
        ({"cookie_path": "/owa", "cookie_max_age": 0}, b"SERVERID=v; Path=/owa; HttpOnly"),
    ],
)
def test_set_cookie_header(changes: dict[str, object], expected: bytes) -> None:
    cfg = replace(PersistenceConfig(type="cookie"), **changes)  # type: ignore[arg-type]
    assert set_cookie_header(cfg, "v") == expected


def test_set_cookie_header_refuses_injection() -> None:
    with pytest.raises(ValueError):
        set_cookie_header(PersistenceConfig(cookie_path="/\r\nX-Evil: 1"), "v")
    with pytest.raises(ValueError):
        set_cookie_header(PersistenceConfig(cookie_domain="a;b"), "v")


@pytest.mark.parametrize(
    "headers, expected",
    [
        ([b"MS-WSMAN=abc"], "abc"),
        ([b"a=1; MS-WSMAN=abc; b=2"], "abc"),
        ([b"a=1;MS-WSMAN=abc"], "abc"),  # no space after ";"
        ([b"a=1", b"MS-WSMAN=abc"], "abc"),  # several Cookie headers
        ([b"MS-WSMAN=first; MS-WSMAN=second"], "first"),
        ([b"MS-WSMAN=first", b"MS-WSMAN=second"], "first"),
        ([b'MS-WSMAN="abc"'], "abc"),
        ([b"MS-WSMAN="], ""),
        ([b"ms-wsman=abc"], None),  # names are case-sensitive
        ([b"XMS-WSMAN=abc; MS-WSMANX=1"], None),
        ([b"MS-WSMAN"], None),
        ([b"a=MS-WSMAN=abc"], None),
        ([], None),
        ([b"  MS-WSMAN = abc  "], "abc"),
    ],
)
def test_cookie_from_request(headers: list[bytes], expected: str | None) -> None:
    assert cookie_from_request(headers, "MS-WSMAN") == expected


# -------------------------------------------------------------------------------- decide()


def test_decide_without_persistence_balances() -> None:
    pool = make_pool(PersistenceConfig())
    got = [decide(pool, "192.0.2.1", None, 0.0) for _ in range(3)]
    assert [d.server.name for d in got if d.server] == [s.name for s in pool.servers]
    assert all(d.set_cookie is None and not d.persisted for d in got)


def test_decide_cookie_ms_wsman_set_on_every_response_lacking_it() -> None:
    pool = make_pool(WSMAN)
    first = decide(pool, "192.0.2.1", None, 0.0)
    assert first.server is pool.servers[0] and not first.persisted
    assert first.set_cookie == f"MS-WSMAN={pool.servers[0].cookie}; Path=/".encode()
    # The client sends it back: same server, no Set-Cookie.
    for _ in range(3):
        again = decide(pool, "192.0.2.1", pool.servers[0].cookie, 1.0)
        assert again.server is pool.servers[0] and again.set_cookie is None and again.persisted
    # A request lacking it gets it again, even on a connection that was given it already.
    lacking = decide(pool, "192.0.2.1", None, 2.0, connection_cookie=pool.servers[0].cookie)
    assert lacking.server is pool.servers[0] and lacking.set_cookie is not None


def test_decide_cookie_not_repeated_on_connection_without_cookie_always() -> None:
    pool = make_pool(replace(WSMAN, cookie_always=False))
    value = pool.servers[1].cookie
    d = decide(pool, "192.0.2.1", None, 0.0, connection_cookie=value)
    assert d.server is pool.servers[1] and d.set_cookie is None


def test_decide_cookie_failover_rewrites_cookie() -> None:
    pool = make_pool(WSMAN)
    persisted = pool.servers[1]
    persisted.up = False
    d = decide(pool, "192.0.2.1", persisted.cookie, 0.0)
    assert d.server is not None and d.server is not persisted and not d.persisted
    assert d.set_cookie == f"MS-WSMAN={d.server.cookie}; Path=/".encode()
    # Disabled by hand: the same.
    persisted.up = True
    persisted.admin = "disabled"
    d = decide(pool, "192.0.2.1", persisted.cookie, 0.0)
    assert d.server is not persisted and d.set_cookie is not None
    # Retry after it failed (excluded): redispatch and rewrite.
    other = pool.servers[2]
    d = decide(pool, "192.0.2.1", other.cookie, 0.0, exclude=[other])
    assert d.server is not other and d.set_cookie is not None


def test_decide_cookie_draining_keeps_sessions_takes_no_new_ones() -> None:
    pool = make_pool(WSMAN)
    draining = pool.servers[0]
    draining.admin = "draining"
    d = decide(pool, "192.0.2.1", draining.cookie, 0.0)
    assert d.server is draining and d.set_cookie is None
    news = {decide(pool, "192.0.2.1", None, 0.0).server for _ in range(6)}
    assert draining not in news


def test_decide_cookie_unknown_value_is_replaced() -> None:
    pool = make_pool(WSMAN)
    d = decide(pool, "192.0.2.1", "not-ours", 0.0)
    assert d.server is not None and d.set_cookie is not None


def test_decide_cookie_no_server() -> None:
    pool = make_pool(WSMAN)
    for s in pool.servers:
        s.up = False
    assert decide(pool, "192.0.2.1", pool.servers[0].cookie, 0.0) == decide(
        pool, "192.0.2.1", None, 0.0
    )
    assert decide(pool, "192.0.2.1", None, 0.0).server is None


def test_decide_source_ip() -> None:
    pool = make_pool(PersistenceConfig(type="source_ip", timeout=1200.0))
    first = decide(pool, "192.0.2.1", None, 0.0)
    assert first.server is pool.servers[0] and not first.persisted
    for t in (10.0, 1000.0, 2000.0):  # each use renews the 20 minutes
        d = decide(pool, "192.0.2.1", None, t)
        assert d.server is pool.servers[0] and d.persisted and d.set_cookie is None
    other = decide(pool, "192.0.2.2", None, 2000.0)
    assert other.server is pool.servers[1]
    # Expired: balanced again.
    assert not decide(pool, "192.0.2.1", None, 2000.0 + 1200.0).persisted


def test_decide_source_ip_failover_and_draining() -> None:
    pool = make_pool(PersistenceConfig(type="source_ip", timeout=100.0))
    a = decide(pool, "192.0.2.1", None, 0.0).server
    assert a is pool.servers[0]
    a.up = False
    b = decide(pool, "192.0.2.1", None, 1.0).server
    assert b is not None and b is not a
    a.up = True
    assert decide(pool, "192.0.2.1", None, 2.0).server is b  # the new server sticks
    # Draining: honoured, but not renewed, so it runs out.
    b.admin = "draining"
    assert decide(pool, "192.0.2.1", None, 50.0).server is b
    assert decide(pool, "192.0.2.1", None, 102.5).server is not b  # renewed last at 2.0


def test_decide_source_ip_uses_source_hash_when_configured() -> None:
    pool = make_pool(PersistenceConfig(type="source_ip"), balance="source_hash")
    probe = Pool(PoolConfig("lync-ext", SERVERS, balance="source_hash"))
    for ip in ("192.0.2.1", "198.51.100.20", "2001:db8::5"):
        assert decide(pool, ip, None, 0.0).server.name == probe.choose(client_ip=ip).name  # type: ignore[union-attr]
