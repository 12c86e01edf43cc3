"""Turning the bench's runs into a comparison table and the list of targets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

MIB = 1 << 20
FLAT_GROWTH_BYTES = 32 * MIB

# Targets for revproxy relative to nginx, measured on the same machine in the same run.
RPS_TARGET = 0.9
RPS_PER_CPU_TARGET = 0.7
P99_TARGET = 1.5
KEEPALIVE_SCENARIOS = ("keepalive-plain", "keepalive-tls")
# Where the bare relay is measured too: what Python, uvloop and its TLS layer cost alone.
FLOOR_SCENARIOS = (*KEEPALIVE_SCENARIOS, "tls-new-conn")

Run = Mapping[str, Any]


def ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return num / den


def best_run(runs: Sequence[Run]) -> Run | None:
    """The run with the highest requests/s: the least disturbed by everything else."""
    ok = [r for r in runs if r.get("ok")]
    return max(ok, key=lambda r: r["rps"]) if ok else None


def compare(nginx: Run | None, revproxy: Run | None) -> dict[str, float | None]:
    n, r = nginx or {}, revproxy or {}
    return {
        "rps": ratio(r.get("rps"), n.get("rps")),
        "rps_per_cpu_s": ratio(r.get("rps_per_cpu_s"), n.get("rps_per_cpu_s")),
        "p99": ratio(r.get("p99_s"), n.get("p99_s")),
    }


def targets(
    scenarios: Mapping[str, Mapping[str, Any]], memory: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Each target with its measured value and PASS, FAIL or n/a (not measured)."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, passed: bool | None, unit: str = "") -> None:
        status = "n/a" if passed is None else ("PASS" if passed else "FAIL")
        out.append({"target": name, "value": value, "unit": unit, "status": status})

    for name in KEEPALIVE_SCENARIOS:
        if name in scenarios:
            v = scenarios[name]["ratios"]["rps"]
            add(f"{name}: rps ratio >= {RPS_TARGET}", v, None if v is None else v >= RPS_TARGET)
    for name, s in scenarios.items():
        v = s["ratios"]["rps_per_cpu_s"]
        add(
            f"{name}: req/CPU-s ratio >= {RPS_PER_CPU_TARGET}",
            v,
            None if v is None else v >= RPS_PER_CPU_TARGET,
        )
    for name, s in scenarios.items():
        # "At the same load": the paced runs where there are some; flat out, each proxy's
        # p99 mostly restates its throughput.
        same = s.get("same_load")
        if same:
            v = same["ratios"]["p99"]
            # Where the runs asked, when that is not the flat-out path (same_load in run.py).
            where = f", {same['path']}" if same.get("corked") else ""
            label = (
                f"{name}: p99 ratio at the same load ({same['offered_rps']} rps{where})"
                f" <= {P99_TARGET}"
            )
        else:
            v = s["ratios"]["p99"]
            label = f"{name}: p99 ratio (flat out) <= {P99_TARGET}"
        add(label, v, None if v is None else v <= P99_TARGET)
    for m in memory:
        if m["proxy"] != "revproxy":
            continue
        add(
            f"memory flat, {m['direction']} {m['size_bytes'] >> 20} MiB"
            f" (growth < {FLAT_GROWTH_BYTES >> 20} MiB)",
            m["growth"] / MIB,
            bool(m["flat"]) if m["ok"] else False,
            " MiB",
        )
    return out


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _dur(v: float | None) -> str:
    if v is None:
        return "-"
    if v < 1e-3:
        return f"{v * 1e6:.0f}us"
    if v < 1.0:
        return f"{v * 1e3:.2f}ms"
    return f"{v:.2f}s"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [
        "  ".join(
            h.rjust(w) if i else h.ljust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(lines)


def scenario_table(scenarios: Mapping[str, Mapping[str, Any]]) -> str:
    headers = [
        "scenario",
        "nginx rps",
        "revproxy rps",
        "ratio",
        "nginx CPU s",
        "revproxy CPU s",
        "nginx req/CPU-s",
        "revproxy req/CPU-s",
        "ratio",
        "p99 nginx",
        "p99 revproxy",
        "ratio",
        "errors n/r",
    ]
    rows = []
    for name, s in scenarios.items():
        n, r, q = s.get("nginx") or {}, s.get("revproxy") or {}, s["ratios"]
        rows.append(
            [
                name,
                _num(n.get("rps"), ".0f"),
                _num(r.get("rps"), ".0f"),
                _num(q["rps"], ".2f"),
                _num(n.get("cpu_s"), ".2f"),
                _num(r.get("cpu_s"), ".2f"),
                _num(n.get("rps_per_cpu_s"), ".0f"),
                _num(r.get("rps_per_cpu_s"), ".0f"),
                _num(q["rps_per_cpu_s"], ".2f"),
                _dur(n.get("p99_s")),
                _dur(r.get("p99_s")),
                _num(q["p99"], ".2f"),
                f"{_num(n.get('errors'), 'd')}/{_num(r.get('errors'), 'd')}",
            ]
        )
    return _table(headers, rows)


def floor_table(scenarios: Mapping[str, Mapping[str, Any]]) -> str:
    """The bare uvloop relay against nginx; empty if it was not measured."""
    headers = ["floor (bare relay)", "rps", "ratio", "CPU s", "req/CPU-s", "ratio", "p99"]
    rows = []
    for name, s in scenarios.items():
        f = s.get("floor")
        if not f:
            continue
        q = s["floor_ratios"]
        rows.append(
            [
                name,
                _num(f.get("rps"), ".0f"),
                _num(q["rps"], ".2f"),
                _num(f.get("cpu_s"), ".2f"),
                _num(f.get("rps_per_cpu_s"), ".0f"),
                _num(q["rps_per_cpu_s"], ".2f"),
                _dur(f.get("p99_s")),
            ]
        )
    return _table(headers, rows) if rows else ""


def _per_request(run: Run | None) -> str:
    """'user + system' microseconds of CPU per request of a run, '-' if not known."""
    if not run or not run.get("requests") or run.get("cpu_user_s") is None:
        return "-"
    n = run["requests"]
    return f"{run['cpu_user_s'] / n * 1e6:.1f} + {run['cpu_system_s'] / n * 1e6:.1f}"


def cpu_table(scenarios: Mapping[str, Mapping[str, Any]]) -> str:
    """CPU per request of each proxy's kept run, split into user and system time."""
    headers = ["CPU us per request, user + system", "nginx", "revproxy", "floor (bare relay)"]
    rows = [
        [
            name,
            _per_request(s.get("nginx")),
            _per_request(s.get("revproxy")),
            _per_request(s.get("floor")),
        ]
        for name, s in scenarios.items()
    ]
    return _table(headers, rows)


def same_load_table(scenarios: Mapping[str, Mapping[str, Any]]) -> str:
    """Latency of both proxies at one offered load; empty if no scenario has such runs."""
    headers = [
        "same load",
        "offered rps",
        "nginx rps",
        "revproxy rps",
        "p50 nginx",
        "p50 revproxy",
        "p99 nginx",
        "p99 revproxy",
        "ratio",
        "p99 backend alone",
    ]
    rows = []
    for name, s in scenarios.items():
        same = s.get("same_load")
        if not same:
            continue
        rows.append(_same_load_row(name, same))
        if same.get("corked"):
            # The backend's TCP_CORK tail, shown, not judged (bench/README.md).
            rows.append(_same_load_row(f"{name}, corked backend", same["corked"]))
    return _table(headers, rows) if rows else ""


def _same_load_row(name: str, same: Mapping[str, Any]) -> list[str]:
    n, r = same.get("nginx") or {}, same.get("revproxy") or {}
    b = same.get("backend") or {}
    return [
        name,
        str(same["offered_rps"]),
        _num(n.get("rps"), ".0f"),
        _num(r.get("rps"), ".0f"),
        _dur(n.get("p50_s")),
        _dur(r.get("p50_s")),
        _dur(n.get("p99_s")),
        _dur(r.get("p99_s")),
        _num(same["ratios"]["p99"], ".2f"),
        _dur(b.get("p99_s")),
    ]


def memory_table(memory: Sequence[Mapping[str, Any]]) -> str:
    headers = ["proxy", "transfer", "status", "MiB/s", "start RSS", "peak RSS", "growth", "flat"]
    rows = []
    for m in memory:
        rows.append(
            [
                m["proxy"],
                f"{m['direction']} {m['size_bytes'] >> 20} MiB",
                "ok" if m["ok"] else f"FAILED: {m.get('error', '')}"[:40],
                _num(m.get("mib_per_s"), ".0f"),
                _num(m["start_rss"] / MIB, ".1f") + " MiB",
                _num(m["peak_rss"] / MIB, ".1f") + " MiB",
                _num(m["growth"] / MIB, ".1f") + " MiB",
                "flat" if m["flat"] else "NOT flat",
            ]
        )
    return _table(headers, rows)


def targets_text(items: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for t in items:
        v = t["value"]
        shown = "-" if v is None else f"{v:.2f}{t.get('unit', '')}"
        lines.append(f"  {t['status']:<4}  {t['target']}  (measured {shown})")
    return "\n".join(lines)
