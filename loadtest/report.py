"""The results of a run: plots over time, a summary table, and the objectives' verdict.

Inputs, all in the results folder: locust's CSV files (locust_stats.csv per request
name; locust_stats_history.csv for users over time), timeline.json (requests,
failures and response times per second, interactive requests apart from long polls,
written by loadtest/scenarios/common.py) and proxy.csv (the proxy's CPU, memory and
connections, from loadtest/procstat.py).

Latency percentiles over time come from the timeline, not from locust's history:
locust's "current" percentiles are over a sliding 10 s window and mix long polls
(whose response time is the server's hold) with everything else.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLOTS = ("requests.png", "latency.png", "errors.png", "proxy.png")
LONG_POLL = "[long poll] "


def percentile(hist: dict[int, int], q: float) -> float | None:
    """The q-th percentile (0-100) of a {milliseconds: count} histogram."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank = q / 100 * total
    seen = 0
    for ms in sorted(hist):
        seen += hist[ms]
        if seen >= rank:
            return float(ms)
    return float(max(hist))


@dataclass
class Series:
    """Per-second series from the timeline, x in seconds since the run's start."""

    t: list[int] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)  # all requests completed
    failures: list[int] = field(default_factory=list)
    p50: list[float | None] = field(default_factory=list)  # interactive requests only
    p95: list[float | None] = field(default_factory=list)
    p99: list[float | None] = field(default_factory=list)
    totals: dict[str, dict[int, int]] = field(default_factory=dict)  # group -> histogram
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # group -> (n, failed)


def read_timeline(path: Path, start: float) -> Series:
    series = Series()
    if not path.exists():
        return series
    rows = json.loads(path.read_text())["rows"]
    per_second: dict[int, dict[str, Any]] = {}
    for second, group, n, fail, hist in rows:
        hist = {int(k): int(v) for k, v in hist.items()}
        slot = per_second.setdefault(int(second), {"n": 0, "fail": 0, "rt": {}})
        slot["n"] += n
        slot["fail"] += fail
        total = series.totals.setdefault(group, {})
        done, failed = series.counts.get(group, (0, 0))
        series.counts[group] = (done + n, failed + fail)
        for ms, count in hist.items():
            total[ms] = total.get(ms, 0) + count
            if group == "request":
                slot["rt"][ms] = slot["rt"].get(ms, 0) + count
    if not per_second:
        return series
    for second in range(min(per_second), max(per_second) + 1):
        slot = per_second.get(second, {"n": 0, "fail": 0, "rt": {}})
        series.t.append(int(second - start))
        series.requests.append(slot["n"])
        series.failures.append(slot["fail"])
        series.p50.append(percentile(slot["rt"], 50))
        series.p95.append(percentile(slot["rt"], 95))
        series.p99.append(percentile(slot["rt"], 99))
    return series


def read_stats(results: Path) -> list[dict[str, str]]:
    """Per-request rows in locust's CSV column names: final figures from timeline.json
    when the scenario wrote them, else locust's last CSV snapshot."""
    path = results / "timeline.json"
    stats = json.loads(path.read_text()).get("stats") if path.exists() else None
    if not stats:
        return read_csv(results / "locust_stats.csv")
    columns = {
        "requests": "Request Count", "failures": "Failure Count", "p50": "50%", "p95": "95%",
        "p99": "99%", "max": "Max Response Time", "rps": "Requests/s", "method": "Type",
        "name": "Name",
    }  # fmt: skip
    return [
        {
            column: "" if entry.get(key) is None else str(entry[key])
            for key, column in columns.items()
        }
        for entry in stats
    ]


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _num(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "", "N/A") else None
    except ValueError:
        return None


# --- plots ------------------------------------------------------------------------------


def plot(
    results: Path,
    series: Series,
    history: list[dict[str, str]],
    proxy: list[dict[str, str]],
    start: float,
) -> list[Path]:
    """Write the PNG plots into `results`; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(results / name, dpi=100)
        plt.close(fig)
        written.append(results / name)

    users_t = [
        (_num(r.get("Timestamp")) or start) - start
        for r in history
        if r.get("Name") == "Aggregated"
    ]
    users = [_num(r.get("User Count")) or 0 for r in history if r.get("Name") == "Aggregated"]

    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(series.t, series.requests, label="requests/s (completed)", color="tab:blue")
    ax.set_xlabel("seconds")
    ax.set_ylabel("requests per second")
    ax.set_title("Throughput")
    if users:
        ax2 = ax.twinx()
        ax2.plot(users_t, users, color="tab:gray", linestyle="--", label="users")
        ax2.set_ylabel("users")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    save(fig, "requests.png")

    fig, ax = plt.subplots(figsize=(9, 4))
    for values, label in ((series.p50, "p50"), (series.p95, "p95"), (series.p99, "p99")):
        ax.plot(series.t, [float("nan") if v is None else v for v in values], label=label)
    ax.set_xlabel("seconds")
    ax.set_ylabel("milliseconds")
    ax.set_title("Response time of interactive requests (long polls excluded), per second")
    ax.legend()
    save(fig, "latency.png")

    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(series.t, series.failures, color="tab:red", label="failed requests/s")
    ax.set_xlabel("seconds")
    ax.set_ylabel("failures per second")
    ax.set_title(f"Errors ({sum(series.failures)} in total)")
    ax.set_ylim(bottom=0, top=max([1, *series.failures]) * 1.2)
    ax.legend()
    save(fig, "errors.png")

    rows = [r for r in proxy if r.get("time")]
    t = [(_num(r["time"]) or start) - start for r in rows]
    cpu = [_num(r.get("cpu_percent")) for r in rows]
    rss = [_num(r.get("rss_bytes")) for r in rows]
    if not any(v is not None for v in rss):  # no /proc: the proxy's own figures, if any
        rss = [_num(r.get("process_resident_memory_bytes")) for r in rows]
    conns = [_num(r.get("revproxy_client_connections")) for r in rows]
    panels = 3 if any(v is not None for v in conns) else 2
    fig, axes = plt.subplots(panels, 1, figsize=(9, 2.6 * panels), sharex=True)
    axes[0].plot(t, [float("nan") if v is None else v for v in cpu], color="tab:orange")
    axes[0].set_ylabel("CPU % of one core")
    axes[0].set_title("Proxy (main process and workers)")
    axes[1].plot(t, [float("nan") if v is None else v / 2**20 for v in rss], color="tab:green")
    axes[1].set_ylabel("RSS MiB")
    if panels == 3:
        axes[2].plot(t, [float("nan") if v is None else v for v in conns], color="tab:purple")
        axes[2].set_ylabel("client connections")
    if not rows:
        axes[0].text(0.5, 0.5, "no samples of the proxy", ha="center", transform=axes[0].transAxes)
    axes[-1].set_xlabel("seconds")
    save(fig, "proxy.png")
    return written


# --- summary ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Objectives:
    max_error_ratio: float | None = None  # failures / requests
    max_p99_ms: float | None = None  # interactive requests (long polls excluded)


def summarize(
    results: Path, objectives: Objectives, start: float, draw: bool = True
) -> tuple[str, dict[str, Any], bool]:
    """(table text, summary data, objectives met) for the run in `results`; writes plots,
    summary.txt and summary.json there."""
    stats = read_stats(results)
    history = read_csv(results / "locust_stats_history.csv")
    proxy = read_csv(results / "proxy.csv")
    series = read_timeline(results / "timeline.json", start)
    if draw:
        plot(results, series, history, proxy, start)

    header = (
        f"{'request':<34} {'reqs':>7} {'fails':>6} {'p50':>6} {'p95':>6} {'p99':>6} "
        f"{'max':>7} {'req/s':>7}"
    )
    lines = [header, "-" * len(header)]
    aggregated: dict[str, str] = {}
    for row in stats:
        if row.get("Name") == "Aggregated":
            aggregated = row
            continue
        lines.append(_row(row.get("Name", "?")[:34], row))
    total = int(_num(aggregated.get("Request Count")) or 0)
    failed = int(_num(aggregated.get("Failure Count")) or 0)
    lines.append("-" * len(header))
    if aggregated:
        lines.append(_row("all (locust's aggregate)", aggregated))
    groups: dict[str, Any] = {}
    for group, label in (("request", "interactive requests"), ("long poll", "long polls")):
        hist = series.totals.get(group)
        if not hist:
            continue
        n, fails = series.counts[group]
        p = {q: percentile(hist, q) for q in (50, 95, 99, 100)}
        groups[group] = {"requests": n, "failures": fails, **{f"p{q}": v for q, v in p.items()}}
        lines.append(
            f"{label:<34} {n:>7} {fails:>6} {_ms(p[50])} {_ms(p[95])} {_ms(p[99])} "
            f"{_ms(p[100], 7)} {'':>7}"
        )

    cpu = [v for r in proxy if (v := _num(r.get("cpu_percent"))) is not None]
    rss = [v for r in proxy if (v := _num(r.get("rss_bytes"))) is not None]
    proxy_data: dict[str, Any] = {}
    if cpu:
        proxy_data.update(cpu_avg=sum(cpu) / len(cpu), cpu_max=max(cpu))
    if rss:
        proxy_data.update(rss_start=rss[0], rss_max=max(rss))
    if proxy_data:
        lines.append(
            f"proxy: CPU {proxy_data.get('cpu_avg', 0):.0f}% average, "
            f"{proxy_data.get('cpu_max', 0):.0f}% peak (100% = one core); RSS "
            f"{proxy_data.get('rss_start', 0) / 2**20:.1f} MiB at start, "
            f"{proxy_data.get('rss_max', 0) / 2**20:.1f} MiB peak (all its processes)"
        )

    error_ratio = failed / total if total else 0.0
    p99 = (groups.get("request") or {}).get("p99")
    if p99 is None:
        p99 = _num(aggregated.get("99%"))
    verdicts: list[tuple[str, bool]] = []
    if total == 0:
        verdicts.append(("no request was made", False))
    if objectives.max_error_ratio is not None:
        ok = error_ratio <= objectives.max_error_ratio
        verdicts.append(
            (f"error ratio {error_ratio:.2%} (limit {objectives.max_error_ratio:.2%})", ok)
        )
    if objectives.max_p99_ms is not None:
        ok = p99 is not None and p99 <= objectives.max_p99_ms
        shown = "n/a" if p99 is None else f"{p99:.0f} ms"
        verdicts.append((f"p99 {shown} (limit {objectives.max_p99_ms:.0f} ms)", ok))
    met = all(ok for _, ok in verdicts)
    for text, ok in verdicts:
        lines.append(f"objective: {text}: {'met' if ok else 'MISSED'}")
    table = "\n".join(lines)
    data = {
        "requests": total,
        "failures": failed,
        "error_ratio": error_ratio,
        "p99_ms": p99,
        "groups": groups,
        "per_request": {
            row["Name"]: {
                "requests": int(_num(row.get("Request Count")) or 0),
                "failures": int(_num(row.get("Failure Count")) or 0),
                "p50": _num(row.get("50%")),
                "p95": _num(row.get("95%")),
                "p99": _num(row.get("99%")),
            }
            for row in stats
            if row.get("Name") and row.get("Name") != "Aggregated"
        },
        "proxy": proxy_data,
        "objectives": [{"check": text, "met": ok} for text, ok in verdicts],
        "objectives_met": met,
    }
    (results / "summary.txt").write_text(table + "\n")
    (results / "summary.json").write_text(json.dumps(data, indent=2) + "\n")
    return table, data, met


def _ms(value: float | None, width: int = 6) -> str:
    return f"{'-' if value is None else f'{value:.0f}':>{width}}"


def _row(name: str, row: dict[str, str]) -> str:
    return (
        f"{name:<34} {int(_num(row.get('Request Count')) or 0):>7} "
        f"{int(_num(row.get('Failure Count')) or 0):>6} {_ms(_num(row.get('50%')))} "
        f"{_ms(_num(row.get('95%')))} {_ms(_num(row.get('99%')))} "
        f"{_ms(_num(row.get('Max Response Time')), 7)} "
        f"{_num(row.get('Requests/s')) or 0:>7.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    """python -m loadtest.report RESULTS_DIR: plots and summary for a folder of results
    (for example a distributed run started by hand)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m loadtest.report")
    parser.add_argument("results", type=Path)
    parser.add_argument("--max-error-ratio", type=float, default=0.01)
    parser.add_argument("--max-p99-ms", type=float, default=1000.0)
    args = parser.parse_args(argv)
    rows = read_csv(args.results / "locust_stats_history.csv")
    start = min((_num(r.get("Timestamp")) or 0.0 for r in rows), default=0.0)
    objectives = Objectives(args.max_error_ratio, args.max_p99_ms)
    table, _, met = summarize(args.results, objectives, start)
    print(table)
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
