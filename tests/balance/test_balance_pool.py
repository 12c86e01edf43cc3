"""Balancing order, eligibility and admin states: plain tables, no I/O."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from revproxy.balance.pool import Pool, Server
from revproxy.config.model import PoolConfig, ServerConfig


def make_pool(
    weights: tuple[int, ...] = (1, 1, 1),
    balance: str = "round_robin",
    states: tuple[str, ...] = (),
    seed: int = 7,
) -> Pool:
    servers = tuple(
        ServerConfig(f"10.0.0.{i + 1}", 80, weight=w, state=states[i] if states else "enabled")
        for i, w in enumerate(weights)
    )
    return Pool(PoolConfig("web", servers, balance=balance), rng=random.Random(seed))


def names(pool: Pool, n: int, **kwargs: object) -> list[str]:
    out = []
    for _ in range(n):
        server = pool.choose(**kwargs)  # type: ignore[arg-type]
        out.append(server.name[-4:-3] if server else "-")  # "10.0.0.1:80" -> "1"
    return out


@pytest.mark.parametrize(
    "weights, expected",
    [
        ((1, 1, 1), "123123123"),
        ((5, 1, 1), "1121311" * 2),  # smooth: the heavy server's turns are spread out
        ((2, 1), "121121"),
        ((3, 2), "12121" * 2),
        ((1,), "1111"),
    ],
)
def test_round_robin_order(weights: tuple[int, ...], expected: str) -> None:
    pool = make_pool(weights)
    assert "".join(names(pool, len(expected))) == expected


def test_round_robin_skips_down_disabled_draining_and_excluded() -> None:
    pool = make_pool((1, 1, 1, 1), states=("enabled", "disabled", "draining", "enabled"))
    assert "".join(names(pool, 4)) == "1414"
    pool.servers[3].up = False
    assert "".join(names(pool, 3)) == "111"
    assert pool.choose(exclude=[pool.servers[0]]) is None


def test_weighted_round_robin_with_exclusion_keeps_proportions() -> None:
    pool = make_pool((5, 1, 1))
    c = pool.servers[2]
    assert Counter(names(pool, 60, exclude=[c])) == Counter({"1": 50, "2": 10})


def test_choose_none_when_nothing_is_eligible() -> None:
    pool = make_pool((1, 2), states=("disabled", "draining"))
    assert pool.choose() is None


@pytest.mark.parametrize(
    "weights, active, expected",
    [
        ((1, 1, 1), (3, 0, 5), "2"),
        ((1, 1, 1), (2, 2, 1), "3"),
        ((1, 3, 1), (1, 1, 1), "2"),  # tie on active: the heavier server
    ],
)
def test_least_conn_picks_fewest_active(
    weights: tuple[int, ...], active: tuple[int, ...], expected: str
) -> None:
    pool = make_pool(weights, "least_conn")
    for server, n in zip(pool.servers, active, strict=True):
        server.active = n
    assert set(names(pool, 6)) == {expected}


def test_least_conn_rotates_among_equals() -> None:
    pool = make_pool((1, 1, 1), "least_conn")
    assert sorted(names(pool, 3)) == ["1", "2", "3"]


def test_least_conn_follows_load_as_it_changes() -> None:
    pool = make_pool((1, 1), "least_conn")
    picked = []
    for _ in range(4):  # requests that never finish spread evenly
        server = pool.choose()
        assert server is not None
        server.active += 1
        picked.append(server.name)
    assert Counter(picked) == Counter({"10.0.0.1:80": 2, "10.0.0.2:80": 2})


def test_random_two_never_picks_the_busiest_of_three() -> None:
    pool = make_pool((1, 1, 1), "random_two")
    for server, n in zip(pool.servers, (10, 4, 0), strict=True):
        server.active = n
    counts = Counter(names(pool, 300))
    assert "1" not in counts
    assert counts["3"] > counts["2"]  # 3 wins every draw it is in: two of three


def test_random_two_prefers_less_loaded_of_two() -> None:
    pool = make_pool((1, 1), "random_two")
    pool.servers[0].active = 1
    assert set(names(pool, 50)) == {"2"}


def test_random_two_weighted_sampling_with_equal_load() -> None:
    pool = make_pool((8, 1, 1), "random_two")
    counts = Counter(names(pool, 2000))
    # The heavy server is in almost every pair and wins ties by weight.
    assert counts["1"] > 1800


def test_random_two_single_candidate_and_none() -> None:
    pool = make_pool((1, 1), "random_two")
    pool.servers[0].up = False
    assert set(names(pool, 5)) == {"2"}
    pool.servers[1].admin = "disabled"
    assert pool.choose() is None


CLIENTS = [f"192.0.2.{i}" for i in range(1, 255)] + [f"2001:db8::{i:x}" for i in range(1, 200)]


def test_source_hash_is_stable_and_spreads() -> None:
    pool = make_pool((1, 1, 1, 1), "source_hash")
    first = {ip: pool.choose(client_ip=ip) for ip in CLIENTS}
    again = make_pool((1, 1, 1, 1), "source_hash", seed=99)  # another process or replica
    assert {ip: s.name for ip, s in first.items() if s} == {
        ip: s.name for ip in CLIENTS if (s := again.choose(client_ip=ip))
    }
    counts = Counter(s.name for s in first.values() if s)
    assert len(counts) == 4 and min(counts.values()) > len(CLIENTS) / 8


def test_source_hash_fixed_values() -> None:
    # Pinned so a change of hash (which would move every client) is noticed.
    pool = make_pool((1, 1, 1, 1), "source_hash")
    chosen = [pool.choose(client_ip=ip) for ip in ("192.0.2.1", "192.0.2.2", "198.51.100.7")]
    assert [s.name if s else None for s in chosen] == ["10.0.0.4:80", "10.0.0.1:80", "10.0.0.4:80"]


def test_source_hash_removing_a_server_moves_only_its_clients() -> None:
    pool = make_pool((1, 1, 1, 1), "source_hash")
    before = {ip: pool.choose(client_ip=ip) for ip in CLIENTS}
    gone = pool.servers[1]
    gone.up = False
    after = {ip: pool.choose(client_ip=ip) for ip in CLIENTS}
    for ip in CLIENTS:
        if before[ip] is gone:
            assert after[ip] is not gone
        else:
            assert after[ip] is before[ip]
    # And configured away entirely (a reload): the same answer.
    remaining = tuple(s.config for s in pool.servers if s is not gone)
    smaller = Pool(PoolConfig("web", remaining, balance="source_hash"))
    for ip in CLIENTS:
        s, expected = smaller.choose(client_ip=ip), after[ip]
        assert s is not None and expected is not None and s.name == expected.name


def test_source_hash_weights() -> None:
    pool = make_pool((3, 1), "source_hash")
    counts = Counter(s.name for ip in CLIENTS if (s := pool.choose(client_ip=ip)))
    assert 0.65 < counts["10.0.0.1:80"] / len(CLIENTS) < 0.85


def test_source_hash_without_client_ip_rotates() -> None:
    pool = make_pool((1, 1), "source_hash")
    assert "".join(names(pool, 4)) == "1212"


def test_affinity_kept_unless_down_disabled_or_excluded() -> None:
    pool = make_pool((1, 1, 1), states=("enabled", "enabled", "draining"))
    a, b, c = pool.servers
    assert pool.choose(affinity=b) is b
    assert pool.choose(affinity=c) is c  # draining still honours existing persistence
    b.up = False
    assert pool.choose(affinity=b) is not b
    b.up = True
    b.admin = "disabled"
    assert pool.choose(affinity=b) is not b
    assert pool.choose(exclude=[c], affinity=c) is a


@pytest.mark.parametrize(
    "admin, up, shown",
    [
        ("enabled", True, "up"),
        ("enabled", False, "down"),
        ("disabled", True, "disabled"),
        ("disabled", False, "disabled"),
        ("draining", True, "draining"),
        ("draining", False, "draining"),
    ],
)
def test_state_name(admin: str, up: bool, shown: str) -> None:
    server = Server(ServerConfig("10.0.0.1", 80, state=admin), "web", up)
    assert server.admin == admin
    assert server.state_name == shown


def test_initial_health_and_setters() -> None:
    servers = (ServerConfig("10.0.0.1", 80), ServerConfig("10.0.0.2", 80))
    pool = Pool(PoolConfig("web", servers), health={"10.0.0.1:80": False})
    assert [s.up for s in pool.servers] == [False, True]
    assert pool.set_up("10.0.0.1:80", True) and pool.servers[0].up
    assert not pool.set_up("10.9.9.9:80", True)
    assert pool.set_admin("10.0.0.2:80", "draining") and pool.servers[1].admin == "draining"
    with pytest.raises(ValueError):
        pool.set_admin("10.0.0.2:80", "off")
