"""Health transitions: rise/fall, start_down, passive marking, reload carry-over."""

from __future__ import annotations

from pathlib import Path

import pytest

from revproxy.balance.health_state import (
    Change,
    HealthState,
    carry_over,
    initial_states,
)
from revproxy.config.model import (
    Config,
    GlobalConfig,
    HealthCheckConfig,
    PoolConfig,
    ServerConfig,
)


def run(state: HealthState, pattern: str) -> list[Change | None]:
    """Feed a pattern of "+" (pass) and "-" (fail) active results."""
    return [state.active(c == "+", "HTTP 200" if c == "+" else "HTTP 503") for c in pattern]


def ups(state: HealthState, pattern: str) -> str:
    """The verdict after each result, as a string of "U"/"D"."""
    out = []
    for c in pattern:
        state.active(c == "+", "x")
        out.append("U" if state.up else "D")
    return "".join(out)


@pytest.mark.parametrize(
    "rise, fall, start_down, pattern, expected",
    [
        # Starts up: fall=2 consecutive failures mark it down, rise=2 bring it back.
        (2, 2, False, "+--++", "UUDDU"),
        (2, 2, False, "-+-+-+-+", "UUUUUUUU"),  # intermittent: never flaps
        (3, 2, False, "--+-+++", "UDDDDDU"),
        (1, 1, False, "-+-+", "DUDU"),
        (2, 3, False, "--+---", "UUUUUD"),
        # Starts down: the first passing check brings it up, then rise/fall as usual.
        (2, 2, True, "--+", "DDU"),
        (3, 2, True, "+", "U"),
        (2, 2, True, "+--+-++", "UUDDDDU"),
    ],
)
def test_active_transitions(
    rise: int, fall: int, start_down: bool, pattern: str, expected: str
) -> None:
    state = HealthState(rise, fall, start_down)
    assert ("D" if start_down else "U") == ("U" if state.up else "D")
    assert ups(state, pattern) == expected


def test_change_returned_only_on_flips_with_reasons() -> None:
    state = HealthState(rise=2, fall=3, start_down=False)
    changes = run(state, "+---" + "-" + "++" + "+")
    flips = [(i, c) for i, c in enumerate(changes) if c is not None]
    assert flips == [
        (3, Change(False, "3 consecutive failures: HTTP 503")),
        (6, Change(True, "2 consecutive successes: HTTP 200")),
    ]


def test_start_down_reason_and_single_failure_wording() -> None:
    state = HealthState(rise=2, fall=1, start_down=True)
    assert state.active(True, "TCP connect ok") == Change(
        True, "first check passed: TCP connect ok"
    )
    assert state.active(False, "connect refused to 127.0.0.1:8080") == Change(
        False, "1 consecutive failure: connect refused to 127.0.0.1:8080"
    )


def test_passive_failures_mark_down_and_active_rise_brings_back() -> None:
    state = HealthState(rise=2, fall=2, start_down=False, passive_limit=3)
    assert state.passive_failure("connect refused") is None
    state.passive_success()  # a success in between restarts the count
    assert state.passive_failure("connect refused") is None
    assert state.passive_failure("reset") is None
    change = state.passive_failure("connect refused")
    assert change == Change(False, "3 consecutive failures in live traffic: connect refused")
    assert not state.up
    assert state.passive_failure("again") is None  # already down: no second change
    # Only active checks bring it back, and they need rise successes (not a single one).
    assert state.active(True, "HTTP 200") is None
    assert state.active(True, "HTTP 200") == Change(True, "2 consecutive successes: HTTP 200")
    assert state.passive_failures == 0


def test_passive_statuses() -> None:
    state = HealthState(start_down=False, passive_limit=2, passive_statuses=(502, 503))
    assert state.passive_response(503) is None
    assert state.passive_response(200) is None  # resets
    assert state.passive_response(502) is None
    change = state.passive_response(503)
    assert change is not None and not change.up and "HTTP 503" in change.reason


def test_passive_off() -> None:
    state = HealthState(start_down=False, passive_limit=0)
    assert all(state.passive_failure("x") is None for _ in range(10))
    assert state.up


def test_for_config_without_checks_is_up_and_ignores_passive() -> None:
    state = HealthState.for_config(HealthCheckConfig(type="none", start_down=True))
    assert state.up
    assert all(state.passive_failure("x") is None for _ in range(5))


CHECKED = HealthCheckConfig(type="http", rise=2, fall=2, start_down=True)


def config(*pools: PoolConfig) -> Config:
    return Config(Path("test.toml"), GlobalConfig(), (), (), pools)


def pool(name: str, hosts: tuple[str, ...], health: HealthCheckConfig = CHECKED) -> PoolConfig:
    return PoolConfig(name, tuple(ServerConfig(h, 80) for h in hosts), health=health)


def test_carry_over_keeps_remaining_servers() -> None:
    old = initial_states(config(pool("a", ("10.0.0.1", "10.0.0.2")), pool("b", ("10.0.0.1",))))
    assert not any(s.up for s in old.values())  # start_down
    old[("a", "10.0.0.1:80")].active(True, "ok")
    old[("b", "10.0.0.1:80")].active(True, "ok")
    old[("a", "10.0.0.2:80")].active(False, "no")
    new = carry_over(
        old,
        config(
            pool("a", ("10.0.0.1", "10.0.0.2", "10.0.0.3"), replace_fall(CHECKED, 5)),
            pool("c", ("10.0.0.1",)),
        ),
    )
    assert set(new) == {("a", "10.0.0.1:80"), ("a", "10.0.0.2:80"), ("a", "10.0.0.3:80"),
                        ("c", "10.0.0.1:80")}  # fmt: skip
    assert new[("a", "10.0.0.1:80")].up  # kept
    assert new[("a", "10.0.0.1:80")].fall == 5  # new settings apply
    assert new[("a", "10.0.0.2:80")].failures == 1  # counters kept
    assert not new[("a", "10.0.0.3:80")].up  # new server: starts down
    assert not new[("c", "10.0.0.1:80")].up  # keyed by pool: another pool is another server
    assert new[("a", "10.0.0.1:80")] is not old[("a", "10.0.0.1:80")]  # old left alone


def test_carry_over_checks_turned_off_means_up() -> None:
    old = initial_states(config(pool("a", ("10.0.0.1",))))
    new = carry_over(old, config(pool("a", ("10.0.0.1",), HealthCheckConfig(type="none"))))
    assert new[("a", "10.0.0.1:80")].up


def replace_fall(health: HealthCheckConfig, fall: int) -> HealthCheckConfig:
    from dataclasses import replace

    return replace(health, fall=fall)
