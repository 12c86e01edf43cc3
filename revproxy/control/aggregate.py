"""Statistics of all workers added up, correct across worker restarts and reloads.

Every worker sends the totals it counted since it started (see proxy/stats.py),
tagged with its pid. The last snapshot per pid is kept; when a worker ends its
final snapshot (or, when it was killed, the last one received) moves into a
retained total. A counter is then retained + the sum over live workers, and
never counts one worker twice. Gauges (open connections) are summed over live
workers only.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

Labels = tuple[str, ...]
Series = dict[tuple[str, Labels], float]
Hists = dict[tuple[str, Labels], list[float]]


@dataclass
class WorkerView:
    pid: int
    generation: int
    started: float
    listening: bool
    received: float  # time.monotonic() of the last snapshot
    counters: Series = field(default_factory=dict)
    gauges: Series = field(default_factory=dict)
    histograms: Hists = field(default_factory=dict)


def _series(table: Any) -> Series:
    out: Series = {}
    if not isinstance(table, dict):
        return out
    for name, rows in table.items():
        for row in rows:
            out[(name, tuple(str(x) for x in row[:-1]))] = float(row[-1])
    return out


def _hists(table: Any) -> Hists:
    out: Hists = {}
    if not isinstance(table, dict):
        return out
    for name, rows in table.items():
        for row in rows:
            out[(name, tuple(str(x) for x in row[:-1]))] = [float(x) for x in row[-1]]
    return out


def _add_hist(into: Hists, key: tuple[str, Labels], values: list[float]) -> None:
    have = into.get(key)
    if have is None:
        into[key] = list(values)
    else:
        for i, v in enumerate(values):
            have[i] += v


class Aggregator:
    """Snapshots in, sums out."""

    STALE = 3.0  # a worker silent this long is checked for life

    def __init__(self) -> None:
        self.workers: dict[int, WorkerView] = {}
        self.retained_counters: Series = {}
        self.retained_histograms: Hists = {}
        self.exited = 0

    def receive(self, message: dict[str, Any], now: float | None = None) -> None:
        """A worker's snapshot: {"pid", "generation", "started", "listening", "final",
        "stats": WorkerStats.snapshot()}."""
        pid = int(message["pid"])
        stats = message.get("stats") or {}
        view = WorkerView(
            pid=pid,
            generation=int(message.get("generation", 0)),
            started=float(message.get("started", 0.0)),
            listening=bool(message.get("listening", False)),
            received=time.monotonic() if now is None else now,
            counters=_series(stats.get("counters")),
            gauges=_series(stats.get("gauges")),
            histograms=_hists(stats.get("histograms")),
        )
        self.workers[pid] = view
        if message.get("final"):
            self.retire(pid)

    def retire(self, pid: int) -> None:
        """Worker `pid` ended: its totals move into the retained total."""
        view = self.workers.pop(pid, None)
        if view is None:
            return
        self.exited += 1
        for key, value in view.counters.items():
            self.retained_counters[key] = self.retained_counters.get(key, 0.0) + value
        for key, values in view.histograms.items():
            _add_hist(self.retained_histograms, key, values)

    def prune(self, now: float | None = None) -> None:
        """Retire workers that went silent and no longer exist (killed)."""
        now = time.monotonic() if now is None else now
        for pid, view in list(self.workers.items()):
            if now - view.received < self.STALE:
                continue
            try:
                os.kill(pid, 0)
                alive = _not_zombie(pid)
            except ProcessLookupError:
                alive = False
            except PermissionError:
                alive = True
            if not alive:
                self.retire(pid)

    # ------------------------------------------------------------------ sums

    def counters(self) -> Series:
        out = dict(self.retained_counters)
        for view in self.workers.values():
            for key, value in view.counters.items():
                out[key] = out.get(key, 0.0) + value
        return out

    def gauges(self) -> Series:
        out: Series = {}
        for view in self.workers.values():
            for key, value in view.gauges.items():
                out[key] = out.get(key, 0.0) + value
        return out

    def histograms(self) -> Hists:
        out: Hists = {k: list(v) for k, v in self.retained_histograms.items()}
        for view in self.workers.values():
            for key, values in view.histograms.items():
                _add_hist(out, key, values)
        return out

    def listening(self) -> bool:
        return any(v.listening for v in self.workers.values())


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Rates:
    """Per-second rates of some counters, over the last few seconds."""

    WINDOW = 5.0

    def __init__(self) -> None:
        self._samples: list[tuple[float, dict[Any, float]]] = []

    def sample(self, values: dict[Any, float], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._samples.append((now, values))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.WINDOW:
            self._samples.pop(0)

    def rate(self, key: Any) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        if t1 <= t0:
            return 0.0
        return max(0.0, (last.get(key, 0.0) - first.get(key, 0.0)) / (t1 - t0))
