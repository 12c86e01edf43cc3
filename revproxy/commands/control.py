"""`revproxy` subcommands that act on a running proxy: reload, status, server.

They talk to the admin API named in the configuration file (its address, and
its token for actions). `reload` checks the file first, and without an admin
server signals the main process directly: the pid comes from --pid-file, or
else from the process list (the `revproxy run` with the same file).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from revproxy.config.load import ConfigError, load_config
from revproxy.config.model import Config
from revproxy.tls.certificates import TLSConfigError


class ControlError(Exception):
    pass


def _load(path: str) -> Config:
    from revproxy.process.master import prepare

    try:
        config = load_config(path)
        prepare(config)
    except ConfigError as exc:
        raise ControlError(str(exc)) from exc
    except TLSConfigError as exc:
        raise ControlError(f"{path}: {exc}") from exc
    return config


def _admin_url(config: Config, override: str | None) -> str:
    if override:
        return override if "://" in override else f"http://{override}"
    admin = config.admin
    if not admin.enabled:
        raise ControlError(f"{config.source}: no admin server is configured ([admin])")
    if admin.port == 0:
        raise ControlError("the admin server listens on a port chosen at start: give --admin")
    host = f"[{admin.host}]" if ":" in admin.host else admin.host
    if host in ("0.0.0.0", "[::]"):
        host = "127.0.0.1"
    return f"http://{host}:{admin.port}"


def _token(config: Config, override: str | None) -> str | None:
    path = Path(override) if override else config.admin.token_file
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ControlError(f"cannot read the admin token: {exc}") from exc


def call(
    base: str, method: str, path: str, token: str | None = None, timeout: float = 70.0
) -> tuple[int, Any]:
    """One admin API request; (HTTP status, decoded JSON body)."""
    request = urllib.request.Request(base.rstrip("/") + path, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if method == "POST":
        request.data = b""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, {"error": body.decode(errors="replace")}
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ControlError(f"cannot reach the admin server at {base}: {reason}") from exc


def find_main_pid(config_path: str) -> int:
    """The main process of the `revproxy run` serving `config_path`, from /proc."""
    wanted = os.path.realpath(config_path)
    candidates: dict[int, int] = {}  # pid -> parent pid
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            cwd = os.readlink(f"/proc/{entry}/cwd")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        if "run" not in args:
            continue
        if not any(a.endswith("revproxy") or a == "revproxy.cli" for a in args):
            continue
        for flag in ("-c", "--config"):
            if flag in args and args.index(flag) + 1 < len(args):
                given = args[args.index(flag) + 1]
                if os.path.realpath(os.path.join(cwd, given)) == wanted:
                    candidates[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    # Workers and the control process are forks with the same command line: keep the root.
    mains = [pid for pid, ppid in candidates.items() if ppid not in candidates]
    if len(mains) != 1:
        raise ControlError(
            f"found {len(mains)} running revproxy processes for {config_path}: give --pid-file"
        )
    return mains[0]


# ---------------------------------------------------------------------- subcommands


def cmd_reload(args: argparse.Namespace) -> int:
    try:
        config = _load(args.config)
        print(f"{args.config}: ok", file=sys.stderr)
        if config.admin.enabled and not args.pid_file and (args.admin or config.admin.port):
            status, body = call(
                _admin_url(config, args.admin),
                "POST",
                "/api/reload",
                _token(config, args.token_file),
            )
            if status == 200 and body.get("ok"):
                print(f"reloaded (generation {body.get('generation')})")
                return 0
            print(f"reload failed ({status}): {body.get('error')}", file=sys.stderr)
            return 1
        if args.pid_file:
            try:
                pid = int(Path(args.pid_file).read_text().strip())
            except (OSError, ValueError) as exc:
                raise ControlError(f"cannot read the pid file: {exc}") from exc
        else:
            pid = find_main_pid(args.config)
        os.kill(pid, signal.SIGHUP)
        print(f"reload signalled to revproxy pid {pid}")
        return 0
    except (ControlError, ProcessLookupError, PermissionError) as exc:
        print(f"revproxy reload: {exc}", file=sys.stderr)
        return 1


def cmd_status(args: argparse.Namespace) -> int:
    from revproxy.control.page import render_text

    try:
        config = load_config(args.config)
        status, body = call(_admin_url(config, args.admin), "GET", "/api/status", timeout=10)
    except (ConfigError, ControlError) as exc:
        print(f"revproxy status: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"revproxy status: the admin server answered {status}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        sys.stdout.write(render_text(body, colour=sys.stdout.isatty()))
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        status, body = call(
            _admin_url(config, args.admin),
            "POST",
            f"/api/servers/{urllib.parse.quote(args.pool, safe='')}/"
            f"{urllib.parse.quote(args.server, safe='')}/{args.action}",
            _token(config, args.token_file),
            timeout=10,
        )
    except (ConfigError, ControlError) as exc:
        print(f"revproxy server: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"revproxy server: refused ({status}): {body.get('error')}", file=sys.stderr)
        return 1
    print(f"{body['pool']} {body['server']}: {body['admin']}")
    return 0


def _common(parser: argparse.ArgumentParser, token: bool = True) -> None:
    parser.add_argument("-c", "--config", required=True, help="the running proxy's TOML file")
    parser.add_argument("--admin", help="admin server HOST:PORT (default: from the file)")
    if token:
        parser.add_argument("--token-file", help="admin token file (default: from the file)")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this module's subcommands to the `revproxy` parser."""
    reload = sub.add_parser(
        "reload", help="check a configuration file, then make the running proxy load it"
    )
    _common(reload)
    reload.add_argument(
        "--pid-file", help="signal the pid in this file instead of using the admin API"
    )
    reload.set_defaults(func=cmd_reload)

    status = sub.add_parser(
        "status", help="show listeners, services and servers of a running proxy"
    )
    _common(status, token=False)
    status.add_argument("--json", action="store_true", help="print the raw JSON state")
    status.set_defaults(func=cmd_status)

    server = sub.add_parser("server", help="enable, disable or drain a real server")
    server.add_argument("action", choices=("enable", "disable", "drain"))
    server.add_argument("pool")
    server.add_argument("server", help="the server's address as configured, e.g. 10.0.0.5:4443")
    _common(server)
    server.set_defaults(func=cmd_server)
