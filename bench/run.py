"""revproxy against nginx, as reverse proxies in front of the same fast backend.

One run starts a backend nginx (1 worker) and a body-discarding sink, then nginx and
revproxy as proxies (2 workers each, plain and TLS listeners, keep-alive upstream),
drives each with wrk, reads the CPU the proxy's processes used from /proc, pushes
1 GiB through each in both directions while sampling their memory, prints a table
and writes bench/results/latest.json. See bench/README.md for how to read it.

Exit status: 0 when the measurement completed (whatever the figures), 2 when the
bench itself failed (a tool missing, a proxy that did not start or died), 130 on
Ctrl-C. Everything started here is stopped on the way out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import processes
import report
import setup_files
from processes import Server, StartError
from wrk_output import WrkParseError, parse_wrk

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DEFAULT_OUTPUT = BENCH_DIR / "results" / "latest.json"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SAMPLE_INTERVAL_S = 0.2


class BenchError(RuntimeError):
    """The bench could not measure (as opposed to a proxy measuring badly)."""


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    scheme: str
    path: str
    connections: int
    close: bool = False  # one connection per request
    # Where the same-load runs ask instead, if not `path` (see same_load).
    paced_path: str | None = None

    def url(self, proxy: Proxy) -> str:
        port = proxy.tls_port if self.scheme == "https" else proxy.plain_port
        return f"{self.scheme}://127.0.0.1:{port}{self.path}"

    def paced(self) -> Scenario:
        """The scenario as the same-load runs measure it."""
        return self if self.paced_path is None else replace(self, path=self.paced_path)


@dataclass
class Proxy:
    name: str  # "nginx" or "revproxy"
    label: str  # what actually runs under that name
    server: Server
    plain_port: int
    tls_port: int
    extra_logs: tuple[Path, ...] = ()

    def check_alive(self) -> None:
        if not self.server.alive():
            raise BenchError(
                f"{self.name} exited during the bench\n" + self.server.log_tail(self.extra_logs)
            )


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark revproxy against nginx as reverse proxies.",
    )
    p.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run (8)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    p.add_argument("--big-connections", type=int, default=10, help="wrk connections for 1mib (10)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per proxy (1)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="pairs of runs per proxy and scenario, in swapped order (1: nginx, revproxy,"
        " revproxy, nginx)",
    )
    p.add_argument(
        "--scenarios",
        default="keepalive-plain,keepalive-tls,1mib,tls-new-conn",
        help="comma-separated subset of the scenarios, in order",
    )
    p.add_argument("--only", choices=("nginx", "revproxy"), help="measure one proxy only")
    p.add_argument(
        "--fake-revproxy",
        action="store_true",
        help="run a second nginx in revproxy's place (exercises the bench itself)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the 1 GiB transfers")
    p.add_argument(
        "--no-floor",
        action="store_true",
        help="skip the bare uvloop relay (bench/floor.py) in the keep-alive and"
        " new-connection scenarios",
    )
    p.add_argument(
        "--big-size", type=parse_size, default=setup_files.ONE_GIB, help="size of /1g (1g)"
    )
    p.add_argument("--key-type", choices=("rsa", "ec"), default="rsa", help="certificate key")
    p.add_argument("--python", default=sys.executable, help="interpreter that runs revproxy")
    p.add_argument("--start-timeout", type=float, default=30.0, help="seconds to wait for ports")
    p.add_argument(
        "--transfer-timeout", type=float, default=120.0, help="seconds per 1 GiB transfer"
    )
    p.add_argument(
        "--same-load",
        type=float,
        default=0.5,
        help="latency runs at this share of the slower proxy's requests/s, offered to both"
        " (0.5; 0 skips them)",
    )
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.duration > 60:
        p.error("--duration must be in (0, 60]")
    if not 0 <= args.same_load < 1:
        p.error("--same-load must be in [0, 1)")
    if not 1 <= args.rounds <= 5:
        p.error("--rounds must be in [1, 5]")
    if not 1 <= args.connections <= 10000 or not 1 <= args.big_connections <= 10000:
        p.error("connections must be in [1, 10000]")
    return args


def scenarios_from(args: argparse.Namespace) -> list[Scenario]:
    known = {
        "keepalive-plain": Scenario("keepalive-plain", "http", "/small", args.connections),
        "keepalive-tls": Scenario("keepalive-tls", "https", "/small", args.connections),
        "1mib": Scenario(
            "1mib", "http", "/1m", args.big_connections, paced_path=setup_files.PROMPT_1M
        ),
        "tls-new-conn": Scenario("tls-new-conn", "https", "/small", args.connections, True),
    }
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in known]
    if unknown:
        raise BenchError(f"unknown scenario(s) {unknown}; known: {list(known)}")
    return [known[s] for s in chosen]


def tool_version(argv: Sequence[str]) -> str:
    try:
        cp = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    out = (cp.stdout + cp.stderr).strip().splitlines()
    return out[0].strip() if out else "unknown"


def forwarding_path(python: str) -> str:
    """How revproxy run by `python` from the repository forwards: compiled or pure Python."""
    try:
        cp = subprocess.run(
            [python, "-c", "import revproxy.native as n; print(n.describe())"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO_DIR,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return cp.stdout.strip() or "unknown"


def tcp_congestion_control() -> str:
    """The kernel's default TCP congestion control: it shapes the 1 MiB latency tail."""
    try:
        return Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    except OSError:
        return "unknown"


def git_revision() -> str:
    try:
        cp = subprocess.run(
            ["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return cp.stdout.strip() or "unknown"


# --- starting things -----------------------------------------------------------------


def start_nginx(name: str, tmp: Path, conf_text: str) -> tuple[Server, Path]:
    prefix = tmp / name
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(conf_text)
    server = Server(
        name=name,
        argv=[NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)],
        log_dir=tmp,
    )
    server.start()
    return server, prefix / "error.log"


def start_all(
    args: argparse.Namespace, tmp: Path, servers: list[Server]
) -> tuple[setup_files.Ports, list[Proxy], Proxy | None, Proxy]:
    """Backend, sink and proxies, each appended to servers as soon as it is started.

    Also returns the backend as a Proxy of its own (plain HTTP only): the same-load runs
    measure it alone too, so a latency tail of its own is not taken for the proxies'.
    """
    ports = setup_files.Ports(*(processes.free_port() for _ in range(6)))
    cert, key = setup_files.write_certificate(tmp, args.key_type)
    www = tmp / "www"
    setup_files.write_backend_content(www, args.big_size)

    backend, backend_log = start_nginx(
        "backend", tmp, setup_files.backend_nginx_conf(tmp / "backend", www, ports.backend)
    )
    servers.append(backend)
    sink = Server("sink", [args.python, str(BENCH_DIR / "sink.py"), str(ports.sink)], tmp)
    sink.start()
    servers.append(sink)
    backend.wait_ready([ports.backend], 10, http_port=ports.backend, extra_logs=[backend_log])
    sink.wait_ready([ports.sink], 10, http_port=ports.sink, http_path="/sink")

    proxies: list[Proxy] = []
    logs: tuple[Path, ...]
    upstream = (ports.backend, ports.sink, cert, key)
    if args.only in (None, "nginx"):
        conf = setup_files.proxy_nginx_conf(
            tmp / "nginx", ports.nginx_plain, ports.nginx_tls, *upstream
        )
        server, log = start_nginx("nginx", tmp, conf)
        servers.append(server)
        proxies.append(Proxy("nginx", "nginx", server, ports.nginx_plain, ports.nginx_tls, (log,)))
    if args.only in (None, "revproxy"):
        if args.fake_revproxy:
            conf = setup_files.proxy_nginx_conf(
                tmp / "fake-revproxy", ports.revproxy_plain, ports.revproxy_tls, *upstream
            )
            server, log = start_nginx("fake-revproxy", tmp, conf)
            label, logs = "nginx standing in for revproxy (--fake-revproxy)", (log,)
        else:
            conf_path = tmp / "revproxy.toml"
            conf_path.write_text(
                setup_files.revproxy_toml(ports.revproxy_plain, ports.revproxy_tls, *upstream)
            )
            server = Server(
                "revproxy",
                [args.python, "-m", "revproxy", "run", "-c", str(conf_path)],
                tmp,
                cwd=REPO_DIR,
            )
            server.start()
            label, logs = "revproxy", ()
        servers.append(server)
        proxies.append(
            Proxy("revproxy", label, server, ports.revproxy_plain, ports.revproxy_tls, logs)
        )
    floor = None
    if args.only is None and not args.fake_revproxy and not args.no_floor:
        floor_ports = (processes.free_port(), processes.free_port())
        server = Server(
            "floor",
            [
                args.python,
                str(BENCH_DIR / "floor.py"),
                *(str(port) for port in floor_ports),
                str(ports.backend),
                str(cert),
                str(key),
            ],
            tmp,
        )
        server.start()
        servers.append(server)
        floor = Proxy("floor", "bare uvloop relay (bench/floor.py)", server, *floor_ports)
    for proxy in proxies + ([floor] if floor else []):
        waited = proxy.server.wait_ready(
            [proxy.plain_port, proxy.tls_port],
            args.start_timeout,
            http_port=proxy.plain_port,
            extra_logs=proxy.extra_logs,
        )
        check_content(proxy)
        print(f"{proxy.name}: up in {waited:.1f} s (pid {proxy.server.pid})", flush=True)
    alone = Proxy("backend", "the backend alone, no proxy", backend, ports.backend, 0)
    return ports, proxies, floor, alone


def check_content(proxy: Proxy) -> None:
    """A proxy that answers wrongly is not measured: check /small and /1m once each way."""
    checks = [
        (f"http://127.0.0.1:{proxy.plain_port}/small", len(setup_files.SMALL_BODY)),
        (f"https://127.0.0.1:{proxy.tls_port}/small", len(setup_files.SMALL_BODY)),
        (f"http://127.0.0.1:{proxy.plain_port}/1m", setup_files.ONE_MIB),
        (f"http://127.0.0.1:{proxy.plain_port}{setup_files.PROMPT_1M}", setup_files.ONE_MIB),
        (f"https://127.0.0.1:{proxy.tls_port}/1m", setup_files.ONE_MIB),
    ]
    for url, size in checks:
        argv = ["curl", "-sSk", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}", url]
        try:
            cp = subprocess.run(argv, capture_output=True, timeout=20)
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"{proxy.name}: no answer from {url}") from e
        body, _, code = cp.stdout.rpartition(b"\n")
        if cp.returncode != 0 or code != b"200" or len(body) != size:
            raise BenchError(
                f"{proxy.name}: {url} gave status {code.decode(errors='replace')!r} and"
                f" {len(body)} bytes (expected 200 and {size}); curl: "
                + cp.stderr.decode(errors="replace").strip()[:200]
            )
        if size == len(setup_files.SMALL_BODY) and body.decode() != setup_files.SMALL_BODY:
            raise BenchError(f"{proxy.name}: {url} returned a different body")


# --- measuring -----------------------------------------------------------------------


# wrk script that paces requests: before each one a connection waits a random time,
# exponentially distributed around MEAN_MS, so all connections together offer about
# connections * 1000 / MEAN_MS requests per second (a little less: the response time adds).
_PACING_LUA = """-- written by bench/run.py: paced requests for the same-load latency runs
local mean_ms = %f
function delay()
  return math.floor(-mean_ms * math.log(1 - math.random()) + 0.5)
end
"""


def pacing_script(tmp: Path, connections: int, rate: float) -> Path:
    """A wrk script that makes `connections` connections offer about `rate` requests/s."""
    path = tmp / f"pace-{rate:.0f}.lua"
    path.write_text(_PACING_LUA % (1000.0 * connections / rate))
    return path


def run_wrk(
    url: str, connections: int, duration: float, close: bool, script: Path | None = None
) -> str:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"wrk did not finish: {' '.join(argv)}") from e
    if cp.returncode != 0:
        return (cp.stdout + cp.stderr).strip() or f"wrk exited with {cp.returncode}"
    return cp.stdout


def measure(
    proxy: Proxy,
    scenario: Scenario,
    duration: float,
    round_no: int,
    pacing: tuple[float, Path] | None = None,
) -> dict[str, Any]:
    """One wrk run against one proxy, with the CPU its processes spent meanwhile.

    `pacing`: (offered requests/s, wrk script) for a run at a set load instead of as fast
    as the proxy answers.
    """
    proxy.check_alive()
    before = processes.cpu_split_by_process(proxy.server.pid)
    text = run_wrk(
        scenario.url(proxy),
        scenario.connections,
        duration,
        scenario.close,
        None if pacing is None else pacing[1],
    )
    after = processes.cpu_split_by_process(proxy.server.pid)
    spent: dict[int, tuple[float, float]] = {}
    for pid, (user, system) in after.items():
        user_before, system_before = before.get(pid, (0.0, 0.0))
        spent[pid] = (user - user_before, system - system_before)
    # Per process too: shows whether the workers shared the connections.
    by_pid = {pid: round(user + system, 3) for pid, (user, system) in spent.items()}
    cpu = sum(by_pid.values())
    run: dict[str, Any] = {
        "proxy": proxy.name,
        "scenario": scenario.name,
        "round": round_no,
        "url": scenario.url(proxy),
        "connections": scenario.connections,
        "offered_rps": None if pacing is None else round(pacing[0]),
        "cpu_s": round(cpu, 3),
        # User (the proxy's own code and libraries) and system time (the kernel's share).
        "cpu_user_s": round(sum(user for user, _ in spent.values()), 3),
        "cpu_system_s": round(sum(system for _, system in spent.values()), 3),
        "cpu_s_by_pid": {str(pid): t for pid, t in sorted(by_pid.items())},
    }
    try:
        result = parse_wrk(text)
    except WrkParseError as e:
        run.update(ok=False, error=f"{e}: {text.strip()[:300]}", rps=0.0)
        proxy.check_alive()
        return run
    run.update(result.to_dict())
    run["ok"] = True
    run["rps_per_cpu_s"] = result.requests / cpu if cpu > 0 else None
    return run


def describe(run: dict[str, Any]) -> str:
    if not run.get("ok"):
        return f"FAILED {run.get('error', '')}"
    p99 = run.get("p99_s")
    p99_text = "-" if p99 is None else f"{p99 * 1e3:.2f} ms"
    return (
        f"{run['rps']:>9.0f} rps  p99 {p99_text:>9}  CPU {run['cpu_s']:5.2f} s"
        f"  errors {run['errors']}"
    )


def run_scenarios(
    args: argparse.Namespace,
    proxies: list[Proxy],
    scenarios: list[Scenario],
    runs: list[dict[str, Any]],
    tmp: Path,
    floor: Proxy | None = None,
    backend: Proxy | None = None,
) -> dict[str, dict[str, Any]]:
    """Each scenario as A, B then B, A (rounds times); keeps each proxy's best-rps run.

    Every run is appended to runs as it completes, so an interrupted bench still
    records what it measured.
    """
    if args.warmup > 0:
        for proxy in proxies:
            for url in (
                f"http://127.0.0.1:{proxy.plain_port}/small",
                f"https://127.0.0.1:{proxy.tls_port}/small",
            ):
                run_wrk(url, args.connections, args.warmup, close=False)
    summary: dict[str, dict[str, Any]] = {}
    for scenario in scenarios:
        order = (proxies + proxies[::-1]) * args.rounds
        for i, proxy in enumerate(order):
            run = measure(proxy, scenario, args.duration, 1 + i // len(proxies))
            runs.append(run)
            print(f"  {scenario.name:<16} {proxy.name:<9} {describe(run)}", flush=True)
            time.sleep(0.5)
        best = {
            p.name: report.best_run(
                [
                    r
                    for r in runs
                    if r["scenario"] == scenario.name
                    and r["proxy"] == p.name
                    and not r.get("same_load")
                ]
            )
            for p in proxies
        }
        summary[scenario.name] = {
            "nginx": best.get("nginx"),
            "revproxy": best.get("revproxy"),
            "ratios": report.compare(best.get("nginx"), best.get("revproxy")),
        }
        if floor is not None and scenario.name in report.FLOOR_SCENARIOS:
            floor_runs = []
            for round_no in (1, 2):
                run = measure(floor, scenario, args.duration, round_no)
                runs.append(run)
                floor_runs.append(run)
                print(f"  {scenario.name:<16} {floor.name:<9} {describe(run)}", flush=True)
                time.sleep(0.5)
            kept = report.best_run(floor_runs)
            summary[scenario.name]["floor"] = kept
            summary[scenario.name]["floor_ratios"] = report.compare(best.get("nginx"), kept)
        if args.same_load > 0 and len(proxies) == 2:
            summary[scenario.name]["same_load"] = same_load(
                args, proxies, scenario, summary[scenario.name], runs, tmp, backend
            )
    return summary


def same_load(
    args: argparse.Namespace,
    proxies: list[Proxy],
    scenario: Scenario,
    saturated: dict[str, Any],
    runs: list[dict[str, Any]],
    tmp: Path,
    backend: Proxy | None = None,
) -> dict[str, Any] | None:
    """Latency of both proxies at one offered load, a share of what the slower one carried.

    Flat out, each proxy's latency follows from its own throughput (connections / rps);
    at the same offered load below both maxima it shows how long each makes a request wait.
    For plain HTTP scenarios the backend is also measured alone at that load (`backend`):
    what both proxies inherit from it, such as its own latency tail.

    A scenario with a `paced_path` is measured there (the backend sending promptly), and
    then once more on its own path at the same load, kept under "corked": not judged,
    shown beside it (see the README, "Latency at the same load").
    """
    carried = [saturated[p.name]["rps"] for p in proxies if saturated.get(p.name)]
    if len(carried) != 2:
        return None
    rate = args.same_load * min(carried)
    pacing = (rate, pacing_script(tmp, scenario.connections, rate))
    result = _paced_set(args, proxies, scenario.paced(), pacing, runs, backend)
    if scenario.paced_path is not None:
        result["corked"] = _paced_set(args, proxies, scenario, pacing, runs, backend)
    return result


def _paced_set(
    args: argparse.Namespace,
    proxies: list[Proxy],
    scenario: Scenario,
    pacing: tuple[float, Path],
    runs: list[dict[str, Any]],
    backend: Proxy | None,
) -> dict[str, Any]:
    """Each proxy twice at the offered load (and the backend alone for plain HTTP)."""
    rate = pacing[0]
    paced: dict[str, dict[str, Any]] = {}
    order = proxies + proxies[::-1]
    if backend is not None and scenario.scheme == "http":
        order += [backend, backend]
    for i, proxy in enumerate(order):
        round_no = 1 + i // len(proxies) if i < 2 * len(proxies) else i - 2 * len(proxies) + 1
        run = measure(proxy, scenario, args.duration, round_no, pacing)
        run["same_load"] = True
        runs.append(run)
        print(
            f"  {scenario.name:<16} {proxy.name:<9} {describe(run)}  at {rate:.0f} rps offered"
            f" ({scenario.path})"
        )
        time.sleep(0.5)
        # Of each proxy's two runs, the one with the lower p99: the least disturbed.
        kept = paced.get(proxy.name)
        if run.get("ok") and (kept is None or run["p99_s"] < kept["p99_s"]):
            paced[proxy.name] = run
    nginx, revproxy = paced.get("nginx"), paced.get("revproxy")
    return {
        "offered_rps": round(rate),
        "path": scenario.path,
        "nginx": nginx,
        "revproxy": revproxy,
        "backend": paced.get("backend"),
        "ratios": report.compare(nginx, revproxy),
    }


def transfer(
    proxy: Proxy, direction: str, tmp: Path, big_file: Path, size: int, timeout: float
) -> dict[str, Any]:
    """Download /1g or upload to /sink through proxy with curl, sampling the proxy's RSS."""
    proxy.check_alive()
    base = f"http://127.0.0.1:{proxy.plain_port}"
    response = tmp / f"{proxy.name}-{direction}.response"
    argv = ["curl", "-sS", "-o", "/dev/null", "--max-time", f"{timeout:g}"]
    argv += ["-w", "%{http_code} %{size_download} %{size_upload} %{time_total}"]
    if direction == "upload":
        argv[3] = str(response)
        argv += ["-X", "POST", "-H", "Expect:", "-T", str(big_file), f"{base}/sink"]
    else:
        argv.append(f"{base}/1g")
    pid = proxy.server.pid
    start_rss = peak_rss = processes.rss_bytes(pid)
    samples = [start_rss]
    started = time.monotonic()
    curl = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while curl.poll() is None:
            rss = processes.rss_bytes(pid)
            samples.append(rss)
            peak_rss = max(peak_rss, rss)
            if time.monotonic() - started > timeout + 10:
                curl.kill()
                break
            time.sleep(SAMPLE_INTERVAL_S)
        out, err = curl.communicate(timeout=10)
    finally:
        if curl.poll() is None:
            curl.kill()
            curl.wait()
    elapsed = time.monotonic() - started
    result: dict[str, Any] = {
        "proxy": proxy.name,
        "direction": direction,
        "size_bytes": size,
        "seconds": elapsed,
        "start_rss": start_rss,
        "peak_rss": peak_rss,
        "end_rss": processes.rss_bytes(pid),
        "growth": peak_rss - start_rss,
        "samples": len(samples),
        "curl": out.strip(),
    }
    fields = out.split()
    error = ""
    if curl.returncode != 0:
        error = f"curl exit {curl.returncode}: {err.strip()[:200]}"
    elif len(fields) != 4 or fields[0] != "200":
        error = f"unexpected curl result {out.strip()!r}"
    elif direction == "download" and int(fields[1]) != size:
        error = f"downloaded {fields[1]} of {size} bytes"
    elif direction == "upload":
        got = response.read_text(errors="replace").strip() if response.exists() else ""
        if got != f"received {size} bytes":
            error = f"sink answered {got[:80]!r}"
    result["ok"] = not error
    if error:
        result["error"] = error
    curl_seconds = float(fields[3]) if len(fields) == 4 else 0.0
    result["curl_seconds"] = curl_seconds
    result["mib_per_s"] = size / curl_seconds / report.MIB if not error and curl_seconds else None
    result["flat"] = result["growth"] < report.FLAT_GROWTH_BYTES
    return result


def run_memory(
    args: argparse.Namespace, proxies: list[Proxy], tmp: Path, memory: list[dict[str, Any]]
) -> None:
    big_file = tmp / "www" / "1g"  # the sparse file served as /1g is also the upload body
    for proxy in proxies:
        for direction in ("download", "upload"):
            m = transfer(proxy, direction, tmp, big_file, args.big_size, args.transfer_timeout)
            memory.append(m)
            state = "ok" if m["ok"] else f"FAILED {m.get('error')}"
            print(
                f"  {direction:<8} {proxy.name:<9} {m['seconds']:6.2f} s"
                f"  RSS {m['start_rss'] / report.MIB:.1f} -> peak {m['peak_rss'] / report.MIB:.1f}"
                f" MiB (+{m['growth'] / report.MIB:.1f})  {state}",
                flush=True,
            )
            time.sleep(0.5)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _jsonable(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def write_results(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    missing = [t for t in ("wrk", "curl") if shutil.which(t) is None]
    if not os.access(NGINX, os.X_OK):
        missing.append("nginx")
    if missing:
        print(f"bench failed: missing {', '.join(missing)} (make sysdeps)", file=sys.stderr)
        return 2
    try:
        scenarios = scenarios_from(args)
    except BenchError as e:
        print(f"bench failed: {e}", file=sys.stderr)
        return 2

    began = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="revproxy-bench-"))
    os.chmod(tmp, 0o755)  # nginx workers started by root run as an unprivileged user
    servers: list[Server] = []
    runs: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    results: dict[str, Any] = {
        "status": "running",
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "tcp_congestion_control": tcp_congestion_control(),
            "python": platform.python_version(),
            "nginx": tool_version([NGINX, "-v"]).removeprefix("nginx version: "),
            "wrk": tool_version(["wrk", "-v"]),
            "revision": git_revision(),
            "forwarding_path": forwarding_path(args.python),
            "revproxy_is": (
                "not measured (--only nginx)"
                if args.only == "nginx"
                else "nginx (--fake-revproxy)"
                if args.fake_revproxy
                else "revproxy"
            ),
            "selection": (
                f"each scenario runs nginx, revproxy, then revproxy, nginx ({args.rounds}"
                " time(s)); for each proxy the run with the highest requests/s is kept"
            ),
        },
        "options": {k: _jsonable(v) for k, v in vars(args).items()},
        "runs": runs,
        "memory": memory,
    }
    status = 2
    try:
        print(f"bench: temporary directory {tmp}", flush=True)
        path = results["meta"]["forwarding_path"]
        print(f"bench: revproxy's forwarding path: {path}", flush=True)
        if not path.startswith("compiled"):
            print("bench: WARNING: not the compiled forwarding path (run make)", flush=True)
        _, proxies, floor, backend = start_all(args, tmp, servers)
        n_runs = 2 * args.rounds * len(proxies)
        if args.same_load > 0 and len(proxies) == 2:
            n_runs += 4  # and 2 of the backend alone in each plain HTTP scenario
        estimate = len(scenarios) * n_runs * (args.duration + 0.6)
        if args.same_load > 0 and len(proxies) == 2:
            twice = sum(1 for s in scenarios if s.paced_path is not None)
            estimate += twice * 6 * (args.duration + 0.6)
        print(
            f"bench: {len(scenarios)} scenarios x {n_runs} runs of"
            f" {args.duration:g} s (about {estimate:.0f} s), then the big transfers",
            flush=True,
        )
        summary = run_scenarios(args, proxies, scenarios, runs, tmp, floor, backend)
        results["scenarios"] = summary
        if not args.no_memory:
            run_memory(args, proxies, tmp, memory)
        results["targets"] = report.targets(summary, memory)
        results["status"] = "complete"
        status = 0
    except (BenchError, StartError) as e:
        results["status"] = "failed"
        results["error"] = str(e)
        print(f"bench failed: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        results["status"] = "interrupted"
        print("bench interrupted", file=sys.stderr)
        status = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # teardown is not to be interrupted
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for server in reversed(servers):
            server.stop()
        # What each server said (errors and warnings): kept, as the directory is not.
        results["logs"] = {
            server.name: server.log_tail(
                [tmp / server.name / "error.log"] if server.argv[0] == NGINX else [], lines=20
            )
            for server in servers
        }
        results["seconds"] = round(time.monotonic() - began, 1)
        write_results(args.output, results)
        if args.keep_tmp:
            print(f"bench: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    if status == 0:
        print_summary(results)
    print(f"bench: results in {args.output} ({results['seconds']:.0f} s)")
    return status


def print_summary(results: dict[str, Any]) -> None:
    meta = results["meta"]
    print()
    print(
        f"revproxy {meta['revision']} vs {meta['nginx']} on {meta['cpus']} CPUs"
        f" (revproxy column: {meta['revproxy_is']});"
        f" best of {2 * results['options']['rounds']} runs per proxy;"
        f" revproxy's forwarding path: {meta.get('forwarding_path', 'unknown')};"
        f" TCP congestion control: {meta.get('tcp_congestion_control', 'unknown')}"
    )
    print(report.scenario_table(results["scenarios"]))
    floor = report.floor_table(results["scenarios"])
    if floor:
        print()
        print(floor)
    print()
    print(report.cpu_table(results["scenarios"]))
    same = report.same_load_table(results["scenarios"])
    if same:
        print()
        print(same)
    if results["memory"]:
        print()
        print(report.memory_table(results["memory"]))
    print()
    print("targets (revproxy relative to nginx):")
    print(report.targets_text(results["targets"]))


if __name__ == "__main__":
    sys.exit(main())
