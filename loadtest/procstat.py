"""The proxy's CPU, memory and connections during a run, sampled once a second.

From /proc when the proxy runs on this machine (its main process and every
descendant: the workers), and from the admin server's /metrics when there is one
(then also the proxy's own connection and request counters). Either source may be
missing; the samples say which values they have.
"""

from __future__ import annotations

import csv
import os
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# Series read from /metrics (summed over their labels).
METRICS = (
    "revproxy_client_connections",
    "revproxy_server_active_requests",
    "revproxy_requests_total",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
)


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        if os.path.exists(f"/proc/{current}"):
            tree.append(current)
            todo.extend(children.get(current, []))
    return tree


@dataclass(frozen=True)
class TreeUsage:
    cpu_seconds: float  # user + system time of the processes alive now
    rss_bytes: int
    fds: int
    processes: int


def tree_usage(pid: int, children: bool = True) -> TreeUsage:
    """Usage of `pid` and (unless children=False) its descendants."""
    cpu, rss, fds, alive = 0.0, 0, 0, 0
    for member in process_tree(pid) if children else [pid]:
        try:
            with open(f"/proc/{member}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{member}/statm", "rb") as f:
                resident = int(f.read().split()[1])
            fds += len(os.listdir(f"/proc/{member}/fd"))
        except (OSError, IndexError, ValueError):
            continue  # it ended between the listing and the read
        # Fields after the command name: utime and stime are the 12th and 13th.
        cpu += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        rss += resident * PAGE_SIZE
        alive += 1
    return TreeUsage(cpu, rss, fds, alive)


def scrape(url: str, timeout: float = 2.0) -> dict[str, float]:
    """The METRICS series of a Prometheus text page, summed over labels."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback)
        text = response.read().decode("utf-8", "replace")
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in METRICS:
            try:
                values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
            except ValueError:
                continue
    return values


@dataclass
class Sample:
    t: float  # seconds since the epoch
    cpu_percent: float | None = None  # of one core, whole process tree
    rss_bytes: int | None = None
    fds: int | None = None
    processes: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class Sampler:
    """Samples in a background thread until stop(); `samples` is the history."""

    def __init__(self, pid: int | None, metrics_url: str = "", interval: float = 1.0) -> None:
        self.pid = pid
        self.metrics_url = metrics_url
        self.interval = interval
        self.samples: list[Sample] = []
        self.metrics_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proxy-sampler", daemon=True)
        self._last: tuple[float, float] | None = None  # (monotonic, cpu seconds)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def take(self) -> Sample:
        sample = Sample(time.time())
        if self.pid is not None and os.path.exists(f"/proc/{self.pid}"):
            usage = tree_usage(self.pid)
            now = time.monotonic()
            if self._last is not None and now > self._last[0]:
                busy = max(0.0, usage.cpu_seconds - self._last[1])
                sample.cpu_percent = 100.0 * busy / (now - self._last[0])
            self._last = (now, usage.cpu_seconds)
            sample.rss_bytes, sample.fds = usage.rss_bytes, usage.fds
            sample.processes = usage.processes
        if self.metrics_url:
            try:
                sample.metrics = scrape(self.metrics_url)
                self.metrics_error = ""
            except (OSError, ValueError) as exc:
                self.metrics_error = str(exc)
        return sample

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.take())
            self._stop.wait(self.interval)

    def write_csv(self, path: Path) -> None:
        names = sorted({name for s in self.samples for name in s.metrics})
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["time", "cpu_percent", "rss_bytes", "fds", "processes", *names])
            for s in self.samples:
                writer.writerow(
                    [
                        f"{s.t:.3f}",
                        "" if s.cpu_percent is None else f"{s.cpu_percent:.1f}",
                        "" if s.rss_bytes is None else s.rss_bytes,
                        "" if s.fds is None else s.fds,
                        "" if s.processes is None else s.processes,
                        *(s.metrics.get(name, "") for name in names),
                    ]
                )
