"""The health state of one real server: up or down, and why it changed.

Pure: check results in, a `Change` out only when the verdict flips. Users of
other proxies ask for three things here, and this is where they are decided:

- No flapping. Active checks count consecutive results: `fall` failures in a
  row mark an up server down, `rise` successes in a row bring a down server
  back. Any opposite result restarts the count, so a server failing every
  other check keeps its state.
- New servers start unhealthy until proven (`start_down`), like HAProxy's
  "init-state down": the first passing check brings them up, without waiting
  for `rise` checks, so a fresh pool takes traffic after one interval.
- State survives a reload for servers that remain (`carry_over`).

Passive checks: live traffic reports connect failures and resets (and the
configured `passive_statuses`); `passive_failures` of them in a row mark the
server down at once, and it comes back only through `rise` active successes.
Without active checks there is nothing to bring it back, so passive marking is
then off.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from revproxy.config.model import Config, HealthCheckConfig


@dataclass(frozen=True, slots=True)
class Change:
    """The health verdict flipped."""

    up: bool
    reason: str


def _count(n: int, what: str) -> str:
    plural = "successes" if what == "success" else what + "s"
    return f"{n} consecutive {what if n == 1 else plural}"


class HealthState:
    """Counters and verdict for one server of one pool."""

    __slots__ = (
        "up",
        "rise",
        "fall",
        "passive_limit",
        "passive_statuses",
        "awaiting_first",
        "successes",
        "failures",
        "passive_failures",
    )

    def __init__(
        self,
        rise: int = 2,
        fall: int = 2,
        start_down: bool = True,
        passive_limit: int = 3,
        passive_statuses: tuple[int, ...] = (),
    ) -> None:
        self.rise = max(1, rise)
        self.fall = max(1, fall)
        self.passive_limit = passive_limit  # 0 = passive marking off
        self.passive_statuses = frozenset(passive_statuses)
        self.up = not start_down
        self.awaiting_first = start_down  # down since it appeared; one pass brings it up
        self.successes = 0  # consecutive active successes
        self.failures = 0  # consecutive active failures
        self.passive_failures = 0  # consecutive failures seen by live traffic

    @classmethod
    def for_config(cls, health: HealthCheckConfig) -> HealthState:
        """The state of a server that just appeared in a pool with these checks."""
        if health.type == "none":
            return cls(start_down=False, passive_limit=0)
        return cls(
            health.rise,
            health.fall,
            health.start_down,
            health.passive_failures,
            health.passive_statuses,
        )

    def reconfigured(self, health: HealthCheckConfig) -> HealthState:
        """A copy under new check settings, keeping the verdict and counters.

        With checks turned off the server is up: nothing could ever bring it back.
        """
        new = HealthState.for_config(health)
        if health.type == "none":
            return new
        new.up = self.up
        new.awaiting_first = self.awaiting_first
        new.successes = self.successes
        new.failures = self.failures
        new.passive_failures = self.passive_failures
        return new

    # -------------------------------------------------------------------- active checks

    def active(self, ok: bool, detail: str) -> Change | None:
        """Record one active check result; `detail` says what was seen."""
        if ok:
            self.failures = 0
            self.successes += 1
            if self.up:
                return None
            if self.awaiting_first:
                return self._set_up(f"first check passed: {detail}")
            if self.successes >= self.rise:
                return self._set_up(f"{_count(self.successes, 'success')}: {detail}")
            return None
        self.successes = 0
        self.failures += 1
        if self.up and self.failures >= self.fall:
            self.up = False
            return Change(False, f"{_count(self.failures, 'failure')}: {detail}")
        return None

    def _set_up(self, reason: str) -> Change:
        self.up = True
        self.awaiting_first = False
        self.passive_failures = 0
        return Change(True, reason)

    # ------------------------------------------------------------------- passive checks

    def passive_failure(self, detail: str) -> Change | None:
        """Live traffic failed on this server (connect failure, reset, bad status)."""
        if self.passive_limit <= 0:
            return None
        self.passive_failures += 1
        if self.up and self.passive_failures >= self.passive_limit:
            self.up = False
            self.successes = 0  # back only after `rise` active successes
            return Change(
                False, f"{_count(self.passive_failures, 'failure')} in live traffic: {detail}"
            )
        return None

    def passive_success(self) -> None:
        """Live traffic got a response from this server."""
        self.passive_failures = 0

    def passive_response(self, status: int) -> Change | None:
        """A response with `status` reached live traffic; some statuses count as failures."""
        if status in self.passive_statuses:
            return self.passive_failure(f"HTTP {status}")
        self.passive_failures = 0
        return None


StateKey = tuple[str, str]  # (pool name, server address)


def initial_states(config: Config) -> dict[StateKey, HealthState]:
    """The state of every server of every pool of a freshly loaded configuration."""
    return carry_over({}, config)


def carry_over(old: Mapping[StateKey, HealthState], config: Config) -> dict[StateKey, HealthState]:
    """States for `config`: servers that remain keep theirs, new ones start afresh.

    The old states are not modified.
    """
    states: dict[StateKey, HealthState] = {}
    for pool in config.pools:
        for server in pool.servers:
            key = (pool.name, server.address)
            previous = old.get(key)
            states[key] = (
                previous.reconfigured(pool.health)
                if previous is not None
                else HealthState.for_config(pool.health)
            )
    return states
