"""HealthMonitor against real loopback servers: transitions, passive reports, reload."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import replace
from pathlib import Path

import pytest
from probe_servers import Backend, closed_port, response, until

from revproxy.balance.health import HealthMonitor
from revproxy.config.model import (
    Config,
    GlobalConfig,
    HealthCheckConfig,
    PoolConfig,
    ServerConfig,
)

FAST = HealthCheckConfig(type="http", interval=0.2, timeout=0.15, fall=2, rise=2)


def config(*pools: PoolConfig) -> Config:
    return Config(Path("test.toml"), GlobalConfig(), (), (), pools)


Event = tuple[str, str, bool, str]


def test_server_stopped_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="revproxy.health")
    events: list[Event] = []

    async def main() -> None:
        backend = await Backend(response(200)).start()
        port = backend.port
        address = f"127.0.0.1:{port}"
        pool = PoolConfig("web", (ServerConfig("127.0.0.1", port),), health=FAST)
        monitor = HealthMonitor(config(pool), lambda *e: events.append(e), rng=random.Random(3))
        key = ("web", address)
        assert not monitor.snapshot()[key].up  # start_down: unproven
        await monitor.start()
        try:
            await until(lambda: len(events) == 1)
            assert events[0] == ("web", address, True, "first check passed: HTTP 200")

            await backend.stop()
            await until(lambda: len(events) == 2)
            assert events[1] == (
                "web",
                address,
                False,
                f"2 consecutive failures: connect refused to {address}",
            )
            assert not monitor.is_up("web", address)

            await backend.start(port)
            await until(lambda: len(events) == 3)
            assert events[2] == ("web", address, True, "2 consecutive successes: HTTP 200")
            # More passing checks change nothing.
            await until(lambda: monitor.snapshot()[key].successes >= 4)
            assert len(events) == 3
            snap = monitor.snapshot()[key]
            assert snap.up and snap.checked and snap.last_result == "HTTP 200"
            assert snap.last_check_at is not None and snap.last_duration is not None
            assert snap.last_change_reason == "2 consecutive successes: HTTP 200"
        finally:
            await monitor.stop()
            await backend.stop()

    asyncio.run(main())
    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "revproxy.health"]
    assert [level for level, _ in logged] == ["INFO", "WARNING", "INFO"]
    assert "is down: 2 consecutive failures: connect refused" in logged[1][1]


def test_intermittent_server_does_not_flap() -> None:
    events: list[Event] = []

    async def main() -> None:
        backend = await Backend(response(200)).start()
        pool = PoolConfig(
            "web",
            (ServerConfig("127.0.0.1", backend.port),),
            health=replace(FAST, start_down=False),
        )
        monitor = HealthMonitor(config(pool), lambda *e: events.append(e))
        key = ("web", f"127.0.0.1:{backend.port}")
        answers = iter([response(503), response(200)] * 4)

        # Alternate the answer after every check: fail, ok, fail, ok ...
        def flip() -> None:
            backend.answer = next(answers)

        seen = 0

        def checked_again() -> bool:
            return len(backend.heads) > seen

        await monitor.start()
        try:
            for _ in range(6):
                flip()
                await until(checked_again)
                seen = len(backend.heads)
            await until(lambda: monitor.snapshot()[key].last_check_at is not None)
            assert events == []
            assert monitor.is_up(*key)
        finally:
            await monitor.stop()
            await backend.stop()

    asyncio.run(main())


def test_passive_failures_then_active_recovery() -> None:
    events: list[Event] = []

    async def main() -> None:
        backend = await Backend(response(200)).start()
        address = f"127.0.0.1:{backend.port}"
        health = replace(FAST, start_down=False, interval=0.5, timeout=0.4, passive_failures=2)
        pool = PoolConfig("web", (ServerConfig("127.0.0.1", backend.port),), health=health)
        monitor = HealthMonitor(config(pool), lambda *e: events.append(e))
        monitor.passive_failure("web", address, "connect refused")
        monitor.passive_success("web", address)
        monitor.passive_failure("web", address, "connect refused")
        assert events == []
        monitor.passive_failure("web", address, "connection reset")
        assert events == [
            ("web", address, False, "2 consecutive failures in live traffic: connection reset")
        ]
        monitor.passive_failure("nope", address, "x")  # unknown server: ignored
        await monitor.start()
        try:
            await until(lambda: len(events) == 2)
            assert events[1] == ("web", address, True, "2 consecutive successes: HTTP 200")
        finally:
            await monitor.stop()
            await backend.stop()

    asyncio.run(main())


def test_passive_statuses_and_pools_without_checks() -> None:
    events: list[Event] = []
    checked = PoolConfig(
        "a",
        (ServerConfig("127.0.0.1", 81),),
        health=replace(FAST, start_down=False, passive_failures=1, passive_statuses=(502,)),
    )
    unchecked = PoolConfig("b", (ServerConfig("127.0.0.1", 82),))
    monitor = HealthMonitor(config(checked, unchecked), lambda *e: events.append(e))
    monitor.passive_response("a", "127.0.0.1:81", 200)
    monitor.passive_response("a", "127.0.0.1:81", 502)
    assert events == [
        ("a", "127.0.0.1:81", False, "1 consecutive failure in live traffic: HTTP 502")
    ]
    for _ in range(5):  # nothing could bring it back: passive marking is off without checks
        monitor.passive_failure("b", "127.0.0.1:82", "connect refused")
    snap = monitor.snapshot()
    assert snap[("b", "127.0.0.1:82")].up and not snap[("b", "127.0.0.1:82")].checked
    assert monitor.up_states("a") == {"127.0.0.1:81": False}


def test_update_keeps_state_and_starts_and_stops_loops() -> None:
    events: list[Event] = []

    async def main() -> None:
        kept = await Backend(response(200)).start()
        added = await Backend(response(200)).start()
        gone = await Backend(response(200)).start()
        kept_addr, added_addr = f"127.0.0.1:{kept.port}", f"127.0.0.1:{added.port}"
        first = config(
            PoolConfig(
                "web",
                (ServerConfig("127.0.0.1", kept.port), ServerConfig("127.0.0.1", gone.port)),
                health=FAST,
            )
        )
        monitor = HealthMonitor(first, lambda *e: events.append(e))
        await monitor.start()
        try:
            await until(lambda: len(events) == 2)  # both proven up
            second = config(
                PoolConfig(
                    "web",
                    (ServerConfig("127.0.0.1", kept.port), ServerConfig("127.0.0.1", added.port)),
                    health=FAST,
                )
            )
            monitor.update(second)
            snap = monitor.snapshot()
            assert set(snap) == {("web", kept_addr), ("web", added_addr)}
            assert snap[("web", kept_addr)].up  # kept its state: no new "first check"
            assert not snap[("web", added_addr)].up  # new: starts down
            await until(lambda: len(events) == 3)
            assert events[2] == ("web", added_addr, True, "first check passed: HTTP 200")
            # The removed server is no longer probed.
            probes = len(gone.heads)
            await until(lambda: len(added.heads) >= 3)
            assert len(gone.heads) == probes
            assert [e[1] for e in events].count(kept_addr) == 1
        finally:
            await monitor.stop()
            for backend in (kept, added, gone):
                await backend.stop()

    asyncio.run(main())


def test_check_that_cannot_be_set_up_fails_cleanly(tmp_path: Path) -> None:
    events: list[Event] = []

    async def main() -> None:
        port = closed_port()
        health = replace(FAST, type="https", start_down=False, fall=1, ca=tmp_path / "missing.pem")
        pool = PoolConfig("web", (ServerConfig("127.0.0.1", port),), health=health)
        monitor = HealthMonitor(config(pool), lambda *e: events.append(e))
        await monitor.start()
        try:
            await until(lambda: len(events) == 1)
            assert not events[0][2] and "check cannot run" in events[0][3]
        finally:
            await monitor.stop()

    asyncio.run(main())
