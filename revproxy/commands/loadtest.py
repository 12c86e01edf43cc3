"""`revproxy loadtest`: replay a realistic mix of users against the proxy and report.

The harness lives in the repository's loadtest/ folder (locust scenarios, the demo
target, plots); this module is its command line. It needs the `loadtest` extra
(locust, matplotlib) and a source checkout. docs/loadtest.md explains every option.

    revproxy loadtest --scenario lync --users 50 --duration 60
    python -m revproxy.commands.loadtest ...     (the same, without the main CLI)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = ("lync", "exchange", "generic")


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-s",
        "--scenario",
        default="generic",
        help=f"{', '.join(SCENARIOS)}, or a locustfile's path (default generic)",
    )
    parser.add_argument("-u", "--users", type=_positive(int), default=20, help="default 20")
    parser.add_argument(
        "-r", "--spawn-rate", type=_positive(float), default=5.0, help="users started per second"
    )
    parser.add_argument(
        "-t", "--duration", type=_positive(float), default=60.0, help="seconds (default 60)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="locust worker processes on this machine with a master (default 0: one process)",
    )
    target = parser.add_argument_group("target (default: start the demo on free ports)")
    target.add_argument("--host", default="", help="base URL, e.g. https://contoso.com:443")
    target.add_argument("--ca-file", default="", help="CA certificates that verify the proxy")
    target.add_argument("--resolve", default="", help="connect every name to this address")
    target.add_argument("--proxy-pid", type=int, help="sample this proxy's /proc (same machine)")
    target.add_argument("--metrics-url", default="", help="the proxy's admin /metrics URL")
    demo = parser.add_argument_group("demo")
    demo.add_argument(
        "--hold", type=float, default=20.0, help="seconds servers hold long polls (default 20)"
    )
    demo.add_argument(
        "--proxy-workers", type=_positive(int), default=1, help="proxy worker processes"
    )
    mix = parser.add_argument_group("users")
    mix.add_argument(
        "--think-scale", type=float, default=1.0, help="multiply think times (default 1)"
    )
    mix.add_argument(
        "--long-poll-timeout",
        type=int,
        default=180,
        help="seconds long polls ask to be held (default 180)",
    )
    goals = parser.add_argument_group("objectives (exit status 1 when missed)")
    goals.add_argument("--max-error-ratio", type=float, default=0.01, help="default 0.01")
    goals.add_argument(
        "--max-p99-ms", type=float, default=1000.0, help="interactive requests (default 1000)"
    )
    parser.add_argument("--results", default="", help="folder (default loadtest/results/...)")


def cmd_loadtest(args: argparse.Namespace) -> int:
    missing = [m for m in ("locust", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        print(
            f"revproxy loadtest needs {', '.join(missing)}: pip install -e '.[loadtest]'",
            file=sys.stderr,
        )
        return 2
    if not (REPO / "loadtest" / "run.py").is_file():
        print(
            "revproxy loadtest runs from a source checkout (loadtest/ is missing)", file=sys.stderr
        )
        return 2
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from loadtest.run import Options, run

    options = Options(
        scenario=args.scenario,
        users=args.users,
        spawn_rate=args.spawn_rate,
        duration=args.duration,
        workers=max(0, args.workers),
        host=args.host,
        ca_file=args.ca_file,
        resolve=args.resolve,
        proxy_pid=args.proxy_pid,
        metrics_url=args.metrics_url,
        results=args.results,
        hold=args.hold,
        proxy_workers=args.proxy_workers,
        think_scale=args.think_scale,
        long_poll_timeout=args.long_poll_timeout,
        max_error_ratio=args.max_error_ratio,
        max_p99_ms=args.max_p99_ms,
    )
    return run(options)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this module's subcommands to the `revproxy` parser."""
    parser = sub.add_parser(
        "loadtest",
        help="run a load test (locust scenarios) and write a report with plots",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    add_arguments(parser)
    parser.set_defaults(func=cmd_loadtest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="revproxy loadtest")
    add_arguments(parser)
    return cmd_loadtest(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
