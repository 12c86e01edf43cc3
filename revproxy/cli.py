"""The `revproxy` command: run, check, demo; more subcommands live in revproxy/commands/."""

from __future__ import annotations

import argparse
import logging
import os
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
    from revproxy.process.master import prepare

    try:
        config, warnings = load_config_with_warnings(args.config)
        prepare(config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except TLSConfigError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 1
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"{args.config}: ok ({len(config.listeners)} listeners, {len(config.services)} services,"
        f" {len(config.pools)} pools)"
    )
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
        return serve(args.config)
    except TLSConfigError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 2


def cmd_demo(args: argparse.Namespace) -> int:
    """Development certificates, demo real servers, and the proxy on the demo configuration."""
    from revproxy.demo.certs import ensure_dev_certs
    from revproxy.process.master import serve

    certs = ensure_dev_certs(DEV_CERTS)
    _setup_logging("info")
    backends = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "revproxy.demo.backends",
            "--listen",
            "lync-fe1=127.0.0.1:4443:tls",
            "--listen",
            "lync-fe1=127.0.0.1:8080",
            "--listen",
            "mail1=127.0.0.1:4444:tls",
            "--listen",
            "mail1=127.0.0.1:8081",
            "--cert",
            str(certs.internal_server),
            "--key",
            str(certs.internal_server_key),
        ],
        start_new_session=True,
    )
    cacert = os.path.relpath(certs.public_root)
    print(
        "\nrevproxy demo: try\n"
        f"  curl --resolve meet.demo.test:8443:127.0.0.1 --cacert {cacert}"
        " https://meet.demo.test:8443/meet/abc\n"
        f"  curl --resolve mail.demo.test:8443:127.0.0.1 --cacert {cacert}"
        " https://mail.demo.test:8443/owa/\n"
        "  curl -H 'Host: lyncdiscover.demo.test' http://127.0.0.1:8000/\n"
        "Ctrl-C stops it.\n",
        file=sys.stderr,
        flush=True,
    )
    try:
        return serve(str(DEMO_CONFIG))
    finally:
        backends.terminate()
        try:
            backends.wait(5)
        except subprocess.TimeoutExpired:
            backends.kill()


def build_parser() -> argparse.ArgumentParser:
    from revproxy.commands import cert, control, template

    parser = argparse.ArgumentParser(prog="revproxy", description="HTTPS reverse proxy")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (cert, control, template):
        module.register(sub)
    run = sub.add_parser("run", help="run the proxy with a configuration file")
    run.add_argument("-c", "--config", required=True, help="TOML configuration file")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="validate a configuration file and exit")
    check.add_argument("-c", "--config", required=True, help="TOML configuration file")
    check.set_defaults(func=cmd_check)
    demo = sub.add_parser("demo", help="run the demo: servers, certificates and proxy")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
