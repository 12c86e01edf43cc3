"""One load-test run: target, locust processes, proxy sampling, report.

With no target the demo is started on free ports (loadtest/demo.py) and torn down
afterwards. Locust runs headless as one process, or as a master with N workers on
loopback (the same command lines work across machines: see docs/loadtest.md). While
it runs a progress line shows users, throughput, failures and the proxy's CPU and
memory; at the end the results folder holds locust's CSV and HTML report, the
timeline, the proxy samples, plots and a summary, and the exit status says whether
the objectives were met (0), missed (1) or the run itself failed (2).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from loadtest import report
from loadtest.demo import REPO, Demo, free_port, start_demo, stop_process
from loadtest.procstat import Sampler

SCENARIOS = ("lync", "exchange", "generic")
STARTUP_SLACK = 60.0  # seconds allowed for locust (and its workers) to start and stop


@dataclass(frozen=True)
class Options:
    scenario: str = "generic"  # a name from SCENARIOS or a locustfile's path
    users: int = 20
    spawn_rate: float = 5.0
    duration: float = 60.0  # seconds
    workers: int = 0  # locust worker processes; 0 = one process does everything
    host: str = ""  # target base URL; "" = start the demo
    ca_file: str = ""
    resolve: str = ""
    proxy_pid: int | None = None
    metrics_url: str = ""
    results: str = ""  # folder; "" = loadtest/results/<time>-<scenario>
    hold: float = 20.0  # demo: long-poll hold, seconds
    proxy_workers: int = 1  # demo: proxy worker processes
    think_scale: float = 1.0
    long_poll_timeout: int = 180
    max_error_ratio: float | None = 0.01
    max_p99_ms: float | None = 1000.0


def locustfile(scenario: str) -> Path:
    if scenario in SCENARIOS:
        return REPO / "loadtest" / "scenarios" / f"{scenario}.py"
    path = Path(scenario)
    if not path.is_file():
        raise ValueError(f"{scenario}: not a scenario ({', '.join(SCENARIOS)}) nor a file")
    return path


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")


def locust_commands(options: Options, host: str, results: Path) -> list[list[str]]:
    """The master's (or single process's) command line first, then one per worker."""
    scenario_args = [
        "-f", str(locustfile(options.scenario)),
        "--host", host,
        "--ca-file", options.ca_file,
        "--resolve", options.resolve,
        "--think-scale", str(options.think_scale),
        "--long-poll-timeout", str(options.long_poll_timeout),
    ]  # fmt: skip
    main = [
        sys.executable, "-m", "locust", *scenario_args,
        "--headless",
        "-u", str(options.users),
        "-r", str(options.spawn_rate),
        "-t", f"{max(1, round(options.duration))}s",
        "--stop-timeout", "0",
        "--csv", str(results / "locust"),
        "--html", str(results / "report.html"),
        "--only-summary",
        "--timeline-file", str(results / "timeline.json"),
    ]  # fmt: skip
    if options.workers <= 0:
        return [main]
    port = free_port()
    main += [
        "--master",
        "--master-bind-host", "127.0.0.1",
        "--master-bind-port", str(port),
        "--expect-workers", str(options.workers),
        "--expect-workers-max-wait", "30",
    ]  # fmt: skip
    worker = [
        sys.executable, "-m", "locust", *scenario_args,
        "--worker", "--master-host", "127.0.0.1", "--master-port", str(port),
    ]  # fmt: skip
    return [main] + [worker] * options.workers


class Progress:
    """One line, rewritten in place on a terminal, printed every 5 s otherwise."""

    def __init__(self, out: TextIO, duration: float) -> None:
        self.out = out
        self.duration = duration
        self.tty = out.isatty()
        self.last = 0.0

    def show(self, elapsed: float, history: Path, sampler: Sampler) -> None:
        now = time.monotonic()
        if not self.tty and now - self.last < 5:
            return
        self.last = now
        row = _last_aggregated(history)
        users = row.get("User Count", "0")
        rps = float(row.get("Requests/s") or 0)
        total, failed = row.get("Total Request Count", "0"), row.get("Total Failure Count", "0")
        text = (
            f"[{elapsed:5.0f}/{self.duration:.0f} s] users {users:>5}  req/s {rps:7.1f}  "
            f"requests {total:>7}  failures {failed:>5}"
        )
        sample = sampler.latest()
        if sample is not None and sample.rss_bytes is not None:
            cpu = "-" if sample.cpu_percent is None else f"{sample.cpu_percent:.0f}%"
            text += f"  proxy CPU {cpu:>4} RSS {sample.rss_bytes / 2**20:.0f} MiB"
        if self.tty:
            self.out.write("\r" + text.ljust(110))
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def done(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def _last_aggregated(history: Path) -> dict[str, str]:
    try:
        with history.open(newline="") as f:
            rows = [row for row in csv.DictReader(f) if row.get("Name") == "Aggregated"]
    except OSError:
        return {}
    return rows[-1] if rows else {}


def run(options: Options, out: TextIO = sys.stdout) -> int:
    """Run the load test; 0 = objectives met, 1 = missed, 2 = the run failed."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = Path(options.scenario).stem
    results = Path(options.results or REPO / "loadtest" / "results" / f"{stamp}-{name}")
    results.mkdir(parents=True, exist_ok=True)
    try:
        locustfile(options.scenario)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    demo: Demo | None = None
    host, ca, resolve = options.host, options.ca_file, options.resolve
    proxy_pid, metrics_url = options.proxy_pid, options.metrics_url
    try:
        if not host:
            print("starting the demo (servers and proxy) on free ports...", file=out, flush=True)
            demo = start_demo(results / "demo", hold=options.hold, workers=options.proxy_workers)
            host, ca, resolve = demo.https_url, ca or str(demo.ca), resolve or "127.0.0.1"
            proxy_pid = demo.proxy.pid
            metrics_url = metrics_url or demo.metrics_url
            print(f"demo proxy pid {proxy_pid} at {host} (names resolve to 127.0.0.1)", file=out)
        options = _with(options, host=host, ca_file=ca, resolve=resolve)
        print(
            f"scenario {name}: {options.users} users (+{options.spawn_rate:g}/s) for "
            f"{options.duration:g} s, {options.workers or 'no'} locust workers; results in "
            f"{results}",
            file=out,
            flush=True,
        )
        sampler = Sampler(proxy_pid, metrics_url).start()
        start = time.time()
        try:
            code = _run_locust(options, host, results, sampler, out)
        finally:
            sampler.stop()
            sampler.write_csv(results / "proxy.csv")
        if code not in (0, 1) or not (results / "locust_stats.csv").exists():
            print(f"locust failed (exit {code}); see {results / 'locust.log'}", file=sys.stderr)
            return 2
        if metrics_url and sampler.metrics_error:
            print(f"note: {metrics_url} could not be read: {sampler.metrics_error}", file=out)
    finally:
        if demo is not None:
            demo.stop()
    objectives = report.Objectives(options.max_error_ratio, options.max_p99_ms)
    table, _, met = report.summarize(results, objectives, start)
    print(table, file=out)
    print(f"report: {results / 'report.html'}; plots: {', '.join(report.PLOTS)}", file=out)
    return 0 if met else 1


def _with(options: Options, **changes: Any) -> Options:
    from dataclasses import replace

    return replace(options, **changes)


def _run_locust(options: Options, host: str, results: Path, sampler: Sampler, out: TextIO) -> int:
    commands = locust_commands(options, host, results)
    logs = [results / "locust.log"] + [
        results / f"locust-worker-{i}.log" for i in range(1, len(commands))
    ]
    procs: list[subprocess.Popen[bytes]] = []
    files = [path.open("wb") for path in logs]
    try:
        for command, log in zip(commands, files, strict=True):
            procs.append(
                subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_env(),
                    cwd=REPO,
                    start_new_session=True,
                )
            )
        progress = Progress(out, options.duration)
        started = time.monotonic()
        deadline = started + options.duration + STARTUP_SLACK
        history = results / "locust_stats_history.csv"
        while procs[0].poll() is None and time.monotonic() < deadline:
            progress.show(time.monotonic() - started, history, sampler)
            time.sleep(0.5)
        progress.done()
        if procs[0].poll() is None:
            print("locust did not finish in time; stopping it", file=sys.stderr)
            stop_process(procs[0], 10)
            return 2
        for worker in procs[1:]:
            try:
                worker.wait(15)  # workers quit when the master tells them
            except subprocess.TimeoutExpired:
                stop_process(worker, 5)
        return procs[0].returncode
    finally:
        for proc in procs:
            stop_process(proc, 5)
        for f in files:
            f.close()
