"""The `revproxy` command: run, check, demo; more subcommands live in revproxy/commands/."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from revproxy.config.load import ConfigError, load_config_with_warnings
from revproxy.tls.certificates import TLSConfigError

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "deploy" / "examples" / "demo.toml"
DEV_CERTS = REPO / "certs" / "dev"


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )


def cmd_check(args: argparse.Namespace) -> int:
    from revproxy.config.templates import render_expanded
    from revproxy.process.master import prepare
    from revproxy.tls.certificates import check_listener_names, inspect_listener
    from revproxy.tls.checks import ERROR

    try:
        config, warnings = load_config_with_warnings(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    errors = 0
    for listener in config.listeners:
        if not listener.tls:
            continue
        for finding in inspect_listener(listener):
            print(finding, file=sys.stderr)
            errors += finding.severity == ERROR
    warnings += check_listener_names(config)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if errors:
        return 1
    try:
        prepare(config)
    except TLSConfigError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.config}: ok ({len(config.listeners)} listeners, {len(config.services)} services,"
        f" {len(config.pools)} pools)"
    )
    if args.expand:
        print(render_expanded(config))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from revproxy.process.master import serve

    try:
        config, warnings = load_config_with_warnings(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    _setup_logging(config.global_.log_level)
    for warning in warnings:
        logging.getLogger("revproxy.config").warning("%s", warning)
    try:
        return serve(args.config, args.pid_file)
    except TLSConfigError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 2


def cmd_demo(args: argparse.Namespace) -> int:
    """Development certificates, demo real servers, and the proxy on the demo configuration."""
    from revproxy.demo.certs import ensure_dev_certs
    from revproxy.demo.layout import SERVER_SETS, listen_args, wait_until_listening
    from revproxy.process.master import serve

    certs = ensure_dev_certs(DEV_CERTS)
    token = DEV_CERTS / "admin.token"
    if not token.exists():
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(24) + "\n")
    _setup_logging("info")
    backends = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "revproxy.demo.backends",
                *listen_args(address, lync, mail),
                "--cert",
                str(certs.internal_server),
                "--key",
                str(certs.internal_server_key),
            ],
            start_new_session=True,
        )
        for address, lync, mail in SERVER_SETS
    ]
    try:
        # The proxy's first health checks run at once: with the servers already listening,
        # they pass, and the first requests find every pool up.
        wait_until_listening(backends)
    except RuntimeError as exc:
        print(f"revproxy demo: {exc}", file=sys.stderr)
        _stop(backends)
        return 1
    cacert = os.path.relpath(certs.public_root)
    print(
        "\nrevproxy demo: try\n"
        f"  curl --resolve meet.demo.test:8443:127.0.0.1 --cacert {cacert}"
        " https://meet.demo.test:8443/meet/abc\n"
        f"  curl --resolve mail.demo.test:8443:127.0.0.1 --cacert {cacert}"
        " https://mail.demo.test:8443/owa/\n"
        "  curl -H 'Host: lyncdiscover.demo.test' http://127.0.0.1:8000/\n"
        "Status page: http://127.0.0.1:9000/  (admin token: "
        f"{os.path.relpath(token)})\n"
        "Ctrl-C stops it.\n",
        file=sys.stderr,
        flush=True,
    )
    try:
        return serve(str(DEMO_CONFIG))
    finally:
        _stop(backends)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for proc in processes:
        proc.terminate()
    for proc in processes:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


def build_parser() -> argparse.ArgumentParser:
    from revproxy.commands import cert, control, loadtest, template

    parser = argparse.ArgumentParser(prog="revproxy", description="HTTPS reverse proxy")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (cert, control, loadtest, template):
        module.register(sub)
    run = sub.add_parser("run", help="run the proxy with a configuration file")
    run.add_argument("-c", "--config", required=True, help="TOML configuration file")
    run.add_argument("--pid-file", help="write the main process id here (for revproxy reload)")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="validate a configuration file and exit")
    check.add_argument("-c", "--config", required=True, help="TOML configuration file")
    check.add_argument(
        "--expand", action="store_true", help="print the settings in effect, templates expanded"
    )
    check.set_defaults(func=cmd_check)
    demo = sub.add_parser("demo", help="run the demo: servers, certificates and proxy")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
