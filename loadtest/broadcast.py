"""A broadcast-sized run: N clients hold long polls through one proxy, then all are answered.

    python -m loadtest.broadcast --clients 10000        (make loadtest-broadcast)
    python -m loadtest.broadcast --clients 3000 --compare       (revproxy, then nginx)

Like a UCWA event channel or ActiveSync Direct Push at the scale of a large
audience: every client opens a TLS connection to the proxy and sends one long-poll
GET, which the proxy forwards (re-encrypted) to the demo servers, which hold it.
When all N are held the proxy's memory is measured; then the servers answer every
poll at once (POST /_demo/release, the "broadcast") and each client checks its
answer. The result: errors (target 0) and the proxy's memory per held connection,
(RSS of all its processes while held - RSS before) / N (target under 20 KiB).

The proxy is revproxy on the demo configuration, or with --proxy nginx an nginx
configured the same way as far as nginx allows (loadtest/nginx.py) in front of the
same demo servers: the figure a C proxy on the same OpenSSL reaches on this machine.
--compare measures both, one after the other, with the same settings.

File descriptors decide the process layout. Each process may hold RLIMIT_NOFILE fds
(20,000 on the reference machine). A proxied connection costs the proxy worker two
(client side and server side), so 10,000 connections need at least two workers
(about 10,000 fds each: SO_REUSEPORT spreads connections evenly); the clients and
the demo servers cost one per connection, so they are split likewise. The layout is
computed from the limit and printed.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from loadtest.demo import (
    DOMAIN,
    REPO,
    DemoServers,
    start_demo,
    start_demo_servers,
    stop_process,
    workers_for,
)
from loadtest.nginx import start_nginx
from loadtest.procstat import process_tree, tree_usage

EVENTS = "/ucwa/oauth/v1/applications/broadcast/events"
PROXIES = ("revproxy", "nginx")


class ClientProcess:
    """One broadcast_client process; its latest JSON line is kept as `state`."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.state: dict[str, Any] = {}
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loadtest.broadcast_client", *args],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=REPO,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.state = json.loads(line)
            except ValueError:
                self.log.write(line)

    def done(self) -> bool:
        return bool(self.state.get("done"))

    def stop(self) -> None:
        stop_process(self.proc, 10)
        self._reader.join(5)
        self.log.close()


# Connections per demo server process: one process falls behind with the TLS handshakes of
# more at the default opening rate, and then with the proxy's health checks, which mark its
# servers down (the proxy answers 503). The run measures the proxy, not the demo servers.
BACKEND_SHARE = 5000


@dataclass(frozen=True)
class Layout:
    """How many processes of each kind a run of `clients` connections uses."""

    clients: int
    fd_limit: int
    proxy_workers: int
    client_processes: int
    backend_processes: int

    @classmethod
    def of(cls, args: argparse.Namespace) -> Layout:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        n = args.clients
        return cls(
            clients=n,
            fd_limit=limit,
            proxy_workers=args.proxy_workers or max(2, workers_for(n, limit, 2)),
            client_processes=args.client_processes or max(1, math.ceil(n / 2500)),
            backend_processes=args.backend_processes
            or max(workers_for(n, limit, 1), math.ceil(n / BACKEND_SHARE)),
        )


@dataclass
class Target:
    """The proxy the clients go through, and the demo servers behind it."""

    proxy: str  # "revproxy" or "nginx"
    pid: int  # the proxy's main process: it and its descendants are measured
    port: int
    ca: Path  # verifies the proxy's certificate
    servers: DemoServers
    stop: Callable[[], None]


def start_target(proxy: str, results: Path, layout: Layout, hold: float, tls: bool) -> Target:
    """The demo servers and `proxy` in front of them, with `layout`'s worker count; their
    configuration and logs go to `results`/demo (and `results`/nginx)."""
    if proxy == "revproxy":
        demo = start_demo(
            results / "demo",
            hold=hold,
            workers=layout.proxy_workers,
            backend_processes=layout.backend_processes,
        )
        port = demo.ports["https" if tls else "http"]
        return Target(proxy, demo.proxy.pid, port, demo.ca, demo.servers, demo.stop)
    servers = start_demo_servers(results / "demo", hold=hold, processes=layout.backend_processes)
    try:
        nginx = start_nginx(
            results / "nginx",
            servers,
            workers=layout.proxy_workers,
            connections=layout.clients,
            tls=tls,
        )
    except BaseException:
        servers.stop()
        raise

    def stop() -> None:
        nginx.stop()
        servers.stop()

    return Target(proxy, nginx.proc.pid, nginx.port, servers.certs.public_root, servers, stop)


def _get_json(url: str, method: str = "GET", patience: float = 60.0) -> dict[str, Any]:
    """The JSON answer of a demo server's control endpoint, asked again (for up to
    `patience` seconds) while the server is too busy with connections to answer."""
    deadline = time.monotonic() + patience
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
                return dict(json.loads(response.read()))
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _backend_urls(servers: DemoServers) -> list[str]:
    # The plain listener that plays lync-fe1's port 8080, one per server process.
    return [f"http://127.0.0.1:{ports[8080]}" for ports in servers.ports]


def held(servers: DemoServers, patience: float = 60.0) -> int:
    """Long polls the demo servers hold now."""
    return sum(
        int(_get_json(f"{url}/_demo/held", patience=patience)["held"])
        for url in _backend_urls(servers)
    )


def proxy_memory(pid: int, samples: int = 3, gap: float = 1.0) -> tuple[int, int]:
    """Median RSS (bytes) and fds of the proxy's processes over a few samples."""
    rss, fds = [], []
    for i in range(samples):
        usage = tree_usage(pid)
        rss.append(usage.rss_bytes)
        fds.append(usage.fds)
        if i + 1 < samples:
            time.sleep(gap)
    return int(median(rss)), int(median(fds))


def per_process(pid: int) -> list[tuple[int, int, int]]:
    """(pid, RSS bytes, fds) of each proxy process."""
    out = []
    for member in process_tree(pid):
        usage = tree_usage(member, children=False)
        out.append((member, usage.rss_bytes, usage.fds))
    return out


def _clients(
    target: Target,
    args: argparse.Namespace,
    processes: int,
    path: str,
    count: int,
    rate: float,
    results: Path,
    tag: str,
) -> list[ClientProcess]:
    clients = []
    for i in range(processes):
        share = count // processes + (1 if i < count % processes else 0)
        client_args = [
            "--connect", f"127.0.0.1:{target.port}",
            "--name", f"meet.{DOMAIN}",
            "--ca", str(target.ca),
            "--path", path,
            "--count", str(share),
            "--rate", str(rate / processes),
            "--deadline", str(args.deadline),
        ]  # fmt: skip
        if args.plain:
            client_args.append("--plain")
        clients.append(ClientProcess(client_args, results / f"client-{tag}-{i}.log"))
    return clients


def _totals(clients: list[ClientProcess]) -> tuple[int, int, Counter[str]]:
    errors: Counter[str] = Counter()
    connected = answered = 0
    for client in clients:
        connected += int(client.state.get("connected", 0))
        answered += int(client.state.get("answered", 0))
        errors.update(client.state.get("errors", {}))
    return connected, answered, errors


def _shape(args: argparse.Namespace, layout: Layout) -> dict[str, Any]:
    """What a run was: clients, TLS or not, and the process layout."""
    return {
        "clients": layout.clients,
        "tls": not args.plain,
        "fd_limit": layout.fd_limit,
        "proxy_workers": layout.proxy_workers,
        "client_processes": layout.client_processes,
        "backend_processes": layout.backend_processes,
    }


def measure(args: argparse.Namespace, layout: Layout, proxy: str, results: Path) -> dict[str, Any]:
    """One run through `proxy`: warm-up, ramp, held measurement, broadcast; its summary."""
    n = layout.clients
    results.mkdir(parents=True, exist_ok=True)
    hold = args.deadline + 60  # the servers answer by themselves if nobody releases them
    target = start_target(proxy, results, layout, hold, not args.plain)
    clients: list[ClientProcess] = []
    summary: dict[str, Any] = {"proxy": proxy, **_shape(args, layout)}
    try:
        pid = target.pid
        # Warm-up: every worker builds its TLS contexts and server connections first.
        warm = _clients(
            target,
            args,
            1,
            f"{EVENTS}?ack=1&timeout=0",
            20 * layout.proxy_workers,
            50.0,
            results,
            "warmup",
        )
        _wait(lambda: all(c.done() for c in warm), 60, "the warm-up")
        warm_errors = _totals(warm)[2]
        for client in warm:
            client.stop()
        if warm_errors:
            raise RuntimeError(f"the warm-up failed: {dict(warm_errors)} (see {results})")
        time.sleep(1.0)
        base_rss, base_fds = proxy_memory(pid)
        print(f"{proxy} before: RSS {base_rss / 2**20:.1f} MiB, {base_fds} fds", flush=True)

        started = time.monotonic()
        clients = _clients(
            target,
            args,
            layout.client_processes,
            f"{EVENTS}?ack=1&timeout={hold:.0f}",
            n,
            args.rate,
            results,
            "poll",
        )
        ramp_deadline = started + args.deadline - 30
        holding = 0
        while time.monotonic() < ramp_deadline:
            try:
                holding = held(target.servers, patience=0)
            except OSError:
                pass  # the servers are busy accepting; the next round asks again
            connected, _, errors = _totals(clients)
            usage = tree_usage(pid)
            print(
                f"[{time.monotonic() - started:5.0f} s] connected {connected:>6}  held "
                f"{holding:>6}  errors {sum(errors.values()):>4}  {proxy} RSS "
                f"{usage.rss_bytes / 2**20:7.1f} MiB  fds {usage.fds:>6}",
                flush=True,
            )
            if holding >= n or sum(errors.values()) + holding >= n:
                break
            time.sleep(2.0)
        ramp_seconds = time.monotonic() - started
        time.sleep(args.settle)
        held_rss, held_fds = proxy_memory(pid)
        holding = held(target.servers)
        workers = per_process(pid)
        per_conn = (held_rss - base_rss) / max(1, holding)
        print(
            f"{proxy} while {holding} held: RSS {held_rss / 2**20:.1f} MiB, {held_fds} fds; "
            f"{per_conn / 1024:.1f} KiB per held connection",
            flush=True,
        )

        released_at = time.time()
        released = sum(
            int(_get_json(f"{u}/_demo/release", "POST")["released"])
            for u in _backend_urls(target.servers)
        )
        _wait(lambda: all(c.done() for c in clients), 60, "every client's answer")
        connected, answered, errors = _totals(clients)
        last = max((float(c.state.get("last_answer") or 0) for c in clients), default=0.0)
        summary.update(
            connected=connected,
            held=holding,
            released=released,
            answered=answered,
            errors=dict(errors),
            warmup_errors=dict(warm_errors),
            ramp_seconds=round(ramp_seconds, 1),
            delivery_seconds=round(max(0.0, last - released_at), 2),
            proxy_rss_before=base_rss,
            proxy_rss_held=held_rss,
            proxy_fds_before=base_fds,
            proxy_fds_held=held_fds,
            bytes_per_connection=round(per_conn),
            kib_per_connection=round(per_conn / 1024, 2),
            processes=[{"pid": p, "rss": r, "fds": f} for p, r, f in workers],
        )
    finally:
        for client in clients:
            client.stop()
        target.stop()
    return summary


def _errors(summary: dict[str, Any]) -> int:
    return sum(summary.get("errors", {}).values()) + sum(summary.get("warmup_errors", {}).values())


def passed(summary: dict[str, Any], max_kib: float) -> bool:
    """No errors, every client answered, and the memory per held connection on target."""
    return (
        _errors(summary) == 0
        and summary.get("answered") == summary["clients"]
        and summary.get("kib_per_connection", 1e9) <= max_kib
    )


def report(summary: dict[str, Any], max_kib: float, details: Path) -> bool:
    """Print one run's result; True when it passed."""
    ok = passed(summary, max_kib)
    proxy, processes = summary["proxy"], summary["processes"]
    print(
        f"\n{proxy}, clients {summary['clients']}: held {summary.get('held')}, answered "
        f"{summary.get('answered')}, errors {_errors(summary)} {summary.get('errors') or ''}\n"
        f"ramp {summary.get('ramp_seconds')} s; broadcast answered everyone in "
        f"{summary.get('delivery_seconds')} s\n"
        f"{proxy} RSS {summary['proxy_rss_before'] / 2**20:.1f} -> "
        f"{summary['proxy_rss_held'] / 2**20:.1f} MiB over {len(processes)} processes: "
        f"{summary.get('kib_per_connection')} KiB per held "
        f"{'TLS ' if summary['tls'] else ''}connection (target {max_kib:g} KiB)\n"
        + "\n".join(
            f"  pid {p['pid']}: RSS {p['rss'] / 2**20:.1f} MiB, {p['fds']} fds" for p in processes
        )
        + f"\n{'PASS' if ok else 'FAIL'}; details in {details}",
        flush=True,
    )
    return ok


def report_comparison(runs: dict[str, dict[str, Any]]) -> float | None:
    """Print the runs side by side; the ratio of revproxy's figure to nginx's."""
    mib = 2**20
    rows = [
        ("held / answered", lambda s: f"{s.get('held')} / {s.get('answered')}"),
        ("errors", lambda s: str(_errors(s))),
        ("ramp, broadcast (s)", lambda s: f"{s['ramp_seconds']}, {s['delivery_seconds']}"),
        ("processes", lambda s: str(len(s["processes"]))),
        ("RSS before (MiB)", lambda s: f"{s['proxy_rss_before'] / mib:.1f}"),
        ("RSS held (MiB)", lambda s: f"{s['proxy_rss_held'] / mib:.1f}"),
        ("KiB per held connection", lambda s: f"{s['kib_per_connection']:.2f}"),
    ]
    names = list(runs)
    print(f"\n{'':<26}" + "".join(f"{name:>16}" for name in names))
    for label, cell in rows:
        print(f"{label:<26}" + "".join(f"{cell(runs[name]):>16}" for name in names))
    nginx = runs["nginx"]["kib_per_connection"]
    ratio = round(runs["revproxy"]["kib_per_connection"] / nginx, 2) if nginx > 0 else None
    print(f"revproxy/nginx per held connection: {ratio if ratio is not None else 'n/a'}")
    return ratio


def run(args: argparse.Namespace) -> int:
    layout = Layout.of(args)
    n = layout.clients
    proxies = PROXIES if args.compare else (args.proxy,)
    label = "-".join(proxies) if args.proxy != "revproxy" or args.compare else ""
    results = Path(
        args.results
        or REPO
        / "loadtest"
        / "results"
        / f"{time.strftime('%Y%m%d-%H%M%S')}-broadcast-{n}{'-' + label if label else ''}"
    )
    results.mkdir(parents=True, exist_ok=True)
    print(
        f"broadcast through {' then '.join(proxies)}: {n} "
        f"{'plain HTTP' if args.plain else 'TLS'} long polls; fd limit {layout.fd_limit} "
        f"per process; a proxied connection holds 2 fds in its worker, so "
        f"{layout.proxy_workers} proxy workers (~{2 * n // layout.proxy_workers} fds each); "
        f"{layout.client_processes} client processes (~{n // layout.client_processes} "
        f"connections each); {layout.backend_processes} demo server processes; results in "
        f"{results}",
        flush=True,
    )
    if not args.compare:
        summary = measure(args, layout, args.proxy, results)
        (results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return 0 if report(summary, args.max_kib, results / "summary.json") else 1

    runs: dict[str, dict[str, Any]] = {}
    for proxy in proxies:
        print(f"\n--- {proxy} ---", flush=True)
        folder = results / proxy
        runs[proxy] = measure(args, layout, proxy, folder)
        (folder / "summary.json").write_text(json.dumps(runs[proxy], indent=2) + "\n")
        report(runs[proxy], args.max_kib, folder / "summary.json")
    ratio = report_comparison(runs)
    ok = all(passed(summary, args.max_kib) for summary in runs.values())
    combined = {
        **_shape(args, layout),
        "kib_per_connection": {name: s["kib_per_connection"] for name, s in runs.items()},
        "ratio_revproxy_to_nginx": ratio,
        "passed": {name: passed(s, args.max_kib) for name, s in runs.items()},
        "runs": runs,
    }
    (results / "summary.json").write_text(json.dumps(combined, indent=2) + "\n")
    print(
        f"{'PASS' if ok else 'FAIL'} (target {args.max_kib:g} KiB per held connection for "
        f"each proxy); details in {results / 'summary.json'}",
        flush=True,
    )
    return 0 if ok else 1


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            print(f"timed out after {timeout:g} s waiting for {what}", file=sys.stderr)
            return
        time.sleep(0.2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.broadcast", description=__doc__)
    parser.add_argument("--clients", type=int, default=10_000, help="held long polls")
    parser.add_argument(
        "--proxy", choices=PROXIES, default="revproxy", help="the proxy the clients go through"
    )
    parser.add_argument(
        "--compare", action="store_true", help="revproxy, then nginx; both figures and the ratio"
    )
    parser.add_argument("--rate", type=float, default=500.0, help="new connections per second")
    parser.add_argument("--proxy-workers", type=int, default=0, help="0 = from the fd limit")
    parser.add_argument("--client-processes", type=int, default=0, help="0 = one per 2,500")
    parser.add_argument("--backend-processes", type=int, default=0, help="0 = from the fd limit")
    parser.add_argument("--plain", action="store_true", help="plain HTTP on both sides")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--deadline", type=float, default=240.0, help="seconds for the run")
    parser.add_argument("--max-kib", type=float, default=20.0, help="KiB per held connection")
    parser.add_argument("--results", default="", help="folder (default loadtest/results/...)")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.rate <= 0:
        parser.error("--clients and --rate must be positive")
    if args.compare and args.proxy != "revproxy":
        parser.error("--compare measures both proxies; leave out --proxy")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
