"""Reading wrk's text report into numbers.

wrk (4.x) has no machine-readable output unless driven by a Lua script, so the bench
parses the plain report printed with `--latency`. Only the lines the bench needs are
read; anything else is ignored, and a report without the request count is an error.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

# wrk prints times scaled to the largest unit that keeps the number >= 1.
_TIME_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

_TIME = r"([0-9.]+)(us|ms|s|m|h)"
_PERCENTILE_RE = re.compile(r"^\s*([0-9.]+)%\s+" + _TIME + r"\s*$", re.MULTILINE)
_REQUESTS_RE = re.compile(r"^\s*(\d+) requests in " + _TIME + r",", re.MULTILINE)
_RPS_RE = re.compile(r"^Requests/sec:\s+([0-9.]+)\s*$", re.MULTILINE)
_SOCKET_ERRORS_RE = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)
_NON_2XX_RE = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_LATENCY_AVG_RE = re.compile(r"^\s*Latency\s+" + _TIME, re.MULTILINE)


class WrkParseError(ValueError):
    """The text is not a complete wrk report."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    latency_avg_s: float | None
    p50_s: float | None
    p75_s: float | None
    p90_s: float | None
    p99_s: float | None
    connect_errors: int = 0
    read_errors: int = 0
    write_errors: int = 0
    timeout_errors: int = 0
    non_2xx: int = 0  # wrk counts every status >= 400 here

    @property
    def socket_errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeout_errors

    @property
    def errors(self) -> int:
        return self.socket_errors + self.non_2xx

    def to_dict(self) -> dict[str, float | int | None]:
        d: dict[str, float | int | None] = asdict(self)
        d["socket_errors"] = self.socket_errors
        d["errors"] = self.errors
        return d


def time_to_seconds(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS_S[unit]


def parse_wrk(text: str) -> WrkResult:
    """Parse the report of `wrk --latency`; raises WrkParseError if it is incomplete."""
    m = _REQUESTS_RE.search(text)
    if m is None:
        raise WrkParseError("no 'N requests in T' line in wrk output")
    requests = int(m.group(1))
    duration = time_to_seconds(m.group(2), m.group(3))

    m = _RPS_RE.search(text)
    if m is not None:
        rps = float(m.group(1))
    else:
        rps = requests / duration if duration > 0 else 0.0

    percentiles: dict[str, float] = {}
    for pm in _PERCENTILE_RE.finditer(text):
        key = f"{float(pm.group(1)):g}"  # "99", "99.9"
        percentiles[key] = time_to_seconds(pm.group(2), pm.group(3))

    m = _LATENCY_AVG_RE.search(text)
    avg = time_to_seconds(m.group(1), m.group(2)) if m else None

    connect = read = write = timeout = 0
    m = _SOCKET_ERRORS_RE.search(text)
    if m is not None:
        connect, read, write, timeout = (int(g) for g in m.groups())
    m = _NON_2XX_RE.search(text)
    non_2xx = int(m.group(1)) if m else 0

    return WrkResult(
        requests=requests,
        duration_s=duration,
        rps=rps,
        latency_avg_s=avg,
        p50_s=percentiles.get("50"),
        p75_s=percentiles.get("75"),
        p90_s=percentiles.get("90"),
        p99_s=percentiles.get("99"),
        connect_errors=connect,
        read_errors=read,
        write_errors=write,
        timeout_errors=timeout,
        non_2xx=non_2xx,
    )
