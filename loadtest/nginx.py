"""nginx in front of the demo servers: the reference a broadcast run compares revproxy with.

The nginx configuration is derived from the configuration revproxy runs in the same
run (deploy/examples/demo.toml on free ports, see demo.py): the listener and the
service that takes the clients' host name, that service's pool, timeouts and
forwarding headers, and the worker count. What nginx cannot do the same way is said
in a comment in the generated file, next to the directive concerned. The certificate
is the same as revproxy's: the demo loads meet.demo.test's from a PKCS#12 file, which
nginx cannot read, so nginx gets the PEM export of the same certificate with the same
intermediate.
"""

from __future__ import annotations

import ipaddress
import math
import os
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from loadtest.demo import (
    DEMO_CONFIG,
    DemoServers,
    answers,
    demo_config,
    free_port,
    stop_process,
    wait_for,
)
from revproxy.config.load import parse_config
from revproxy.config.model import Config, ListenerConfig, PoolConfig, ServiceConfig
from revproxy.tls.context import LEGACY_CIPHERS, MODERN_CIPHERS

# revproxy's min_tls_version -> nginx's protocol names from that version up.
_PROTOCOLS = ("1.0", "1.1", "1.2", "1.3")
# revproxy's balancing -> nginx's upstream directive ("" = round robin, nginx's default).
_BALANCE = {
    "round_robin": "",
    "least_conn": "least_conn;",
    "random_two": "random two least_conn;",
    "source_hash": "hash $remote_addr consistent;",
}
# nginx's own bookkeeping fds per worker (listeners, log files, the master's channel).
_SPARE_FDS = 256


def find_nginx() -> str | None:
    """The nginx binary: on PATH, or in the sbin folders Debian and source builds use."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    return shutil.which("nginx", path=search)


def _protocols(min_version: str) -> str:
    return " ".join(f"TLSv{v}" for v in _PROTOCOLS[_PROTOCOLS.index(min_version) :])


def _ciphers(min_version: str, ciphers: str) -> str:
    return ciphers or (LEGACY_CIPHERS if min_version in ("1.0", "1.1") else MODERN_CIPHERS)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def route(config: Config, listener_name: str, host: str) -> tuple[ListenerConfig, ServiceConfig]:
    """The listener called `listener_name` and its service for `host` (exact names only)."""
    listener = next(item for item in config.listeners if item.name == listener_name)
    for service in config.services_for(listener):
        if host in service.hosts or "*" in service.hosts:
            return listener, service
    raise LookupError(f"no service for {host} on listener {listener_name}")


def nginx_config(
    config: Config,
    *,
    listener: str,
    host: str,
    port: int,
    connections: int,
    workdir: Path,
    certificate: Path,
    key: Path,
    ip_name: str,
) -> str:
    """nginx's version of revproxy's `config` for the requests to `host` on `listener`.

    nginx listens on 127.0.0.1:`port`; `connections` is how many proxied connections
    the run holds at once; `certificate` (leaf and intermediate) and `key` are PEM
    files; `ip_name` is the name checked in a server's certificate when the pool
    names its servers by address (see the comment written with it).
    """
    front, service = route(config, listener, host)
    pool = config.pool(service.pool)
    t, limits = service.timeouts, service.limits
    workers = config.global_.workers or os.cpu_count() or 1
    line_kib = math.ceil(limits.max_request_line / 1024)
    head_buffers = math.ceil(limits.max_header_bytes / (line_kib * 1024))
    # Every proxied connection could land on one worker; each costs it two fds.
    worker_connections = 2 * connections + _SPARE_FDS
    lines = [
        "# nginx in front of the demo servers, written by loadtest/nginx.py: the same shape as",
        f"# revproxy's service {service.name!r} (listener {front.name!r}, pool {pool.name!r})",
        f"# in {config.source}.",
        f"worker_processes {workers};",
        f"worker_rlimit_nofile {worker_connections + _SPARE_FDS};",
        f"pid {workdir / 'nginx.pid'};",
        f"error_log {workdir / 'error.log'} notice;",
        "daemon off;",
        "master_process on;",
        "",
        "events {",
        f"    worker_connections {worker_connections};",
        "}",
        "",
        "http {",
        *(
            ["    # revproxy writes an access log line per request; nginx here writes none."]
            if config.access_log.enabled
            else []
        ),
        "    access_log off;",
        *(
            f"    {name}_temp_path {workdir / (name + '_temp')};"
            for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        ),
        "",
        f"    client_header_timeout {t.client_header:g}s;",
        f"    client_body_timeout {t.client_body_idle:g}s;",
        f"    keepalive_timeout {t.keepalive_idle:g}s;",
        "    keepalive_requests 1000000;  # revproxy has no limit on requests per connection",
        "    # revproxy's head limits: the request line, the whole head; 0 = no body limit.",
        f"    large_client_header_buffers {head_buffers} {line_kib}k;",
        f"    client_max_body_size {limits.max_body_bytes};",
        "",
        *_upstream(pool),
        "",
        "    server {",
        *_listen(front, port, certificate, key),
        f"        server_name {' '.join(service.hosts)};",
        "",
        "        location / {",
        *_proxy(pool, service, config.access_log.request_id_header, ip_name),
        "        }",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _upstream(pool: PoolConfig) -> list[str]:
    health = pool.health
    lines = [f"    upstream {pool.name.replace('-', '_')} {{"]
    if _BALANCE.get(pool.balance):
        lines.append(f"        {_BALANCE[pool.balance]}")
    if health.type != "none":
        lines += [
            f"        # revproxy checks {health.type.upper()} {health.method} {health.path} every "
            f"{health.interval:g} s; nginx",
            "        # (open source) has no active checks, only passive ones: "
            f"{health.fall} failed requests",
            f"        # within {health.interval:g} s take a server out for {health.interval:g} s.",
        ]
    for server in pool.servers:
        options = f" weight={server.weight}" if server.weight != 1 else ""
        if health.type != "none":
            options += f" max_fails={health.fall} fail_timeout={health.interval:g}s"
        if server.state == "disabled":
            options += " down"
        lines.append(f"        server {server.host}:{server.port}{options};")
    # revproxy keeps max_idle_per_server idle connections per server in each worker;
    # nginx's keepalive is per worker for the whole upstream.
    lines += [
        f"        keepalive {pool.max_idle_per_server * len(pool.servers)};",
        f"        keepalive_timeout {pool.idle_timeout:g}s;",
        "        keepalive_requests 1000000;",
        "    }",
    ]
    return lines


def _listen(front: ListenerConfig, port: int, certificate: Path, key: Path) -> list[str]:
    # revproxy binds each worker's listener with SO_REUSEPORT, as reuseport does.
    listen = f"        listen 127.0.0.1:{port}{' ssl' if front.tls else ''} reuseport"
    lines = [f"{listen} backlog={front.backlog};"]
    if front.tls:
        lines += [
            f"        ssl_certificate {certificate};",
            f"        ssl_certificate_key {key};",
            f"        ssl_protocols {_protocols(front.min_tls_version)};",
            f"        ssl_ciphers {_ciphers(front.min_tls_version, front.ciphers)};",
            "        # revproxy serves the certificate the client's SNI names (one listener, two",
            "        # certificates); the broadcast only asks for this one.",
        ]
    return lines


def _proxy(pool: PoolConfig, service: ServiceConfig, request_id: str, ip_name: str) -> list[str]:
    t = service.timeouts
    h = service.headers
    scheme = "https" if pool.tls else "http"
    lines = [
        f"            proxy_pass {scheme}://{pool.name.replace('-', '_')};",
        "            proxy_http_version 1.1;",
        '            proxy_set_header Connection "";  # keep-alive to the servers',
        "            proxy_set_header Host $http_host;  # passed through unchanged",
    ]
    if h.x_forwarded_for:
        lines.append("            proxy_set_header X-Forwarded-For $remote_addr;")
    if h.x_forwarded_proto:
        lines.append("            proxy_set_header X-Forwarded-Proto $scheme;")
    if h.x_forwarded_host:
        lines.append("            proxy_set_header X-Forwarded-Host $http_host;")
    if h.via:
        lines.append(f'            proxy_set_header Via "1.1 {h.via_name}";')
    if request_id:
        lines.append(f"            proxy_set_header {request_id} $request_id;")
    lines += [
        f"            proxy_connect_timeout {t.server_connect:g}s;",
        "            # revproxy waits server_response_header for the head and server_body_idle",
        "            # between body reads; nginx has one read timeout for both.",
        f"            proxy_read_timeout {max(t.server_response_header, t.server_body_idle):g}s;",
        f"            proxy_send_timeout {t.client_body_idle:g}s;",
        "            # nginx's default: responses are read into nginx's buffers (spooled to",
        "            # disk when large); revproxy streams them with flow control.",
        "            proxy_buffering on;",
        "            proxy_request_buffering off;  # request bodies stream, as in revproxy",
        f"            proxy_next_upstream_tries {service.retries + 1};",
        f"            proxy_next_upstream_timeout {service.retry_window:g}s;",
    ]
    if service.ntlm_pinning:
        lines += [
            "            # revproxy keeps an NTLM-authenticated server connection with its",
            "            # client (ntlm_pinning); nginx open source cannot.",
        ]
    if not pool.tls:
        return lines
    lines += [
        f"            proxy_ssl_protocols {_protocols(pool.min_tls_version)};",
        f"            proxy_ssl_ciphers {_ciphers(pool.min_tls_version, pool.ciphers)};",
        "            # revproxy does a full handshake for every new server connection.",
        "            proxy_ssl_session_reuse off;",
    ]
    if not pool.verify:
        return [*lines, "            proxy_ssl_verify off;"]
    if pool.ca is None:
        raise ValueError(f"pool {pool.name}: nginx needs a CA file to verify the servers")
    name = pool.server_name or pool.servers[0].host
    if _is_ip(name):
        lines += [
            "            # revproxy names no server_name for this pool, so it sends no SNI and",
            f"            # checks the server's address ({name}) against the certificate's IP",
            "            # addresses; nginx checks a certificate's DNS names only, so it checks",
            "            # (and sends as SNI) a DNS name of the same certificate.",
        ]
        name = ip_name
    lines += [
        "            proxy_ssl_verify on;",
        "            proxy_ssl_verify_depth 100;  # OpenSSL's default, as revproxy",
        f"            proxy_ssl_trusted_certificate {pool.ca};",
        "            proxy_ssl_server_name on;",
        f"            proxy_ssl_name {name};",
    ]
    return lines


@dataclass
class Nginx:
    """A running nginx: its master process (the workers are its children) and port."""

    workdir: Path
    proc: subprocess.Popen[bytes]
    port: int
    _logs: list[IO[bytes]] = field(default_factory=list)

    def log_tail(self, size: int = 3000) -> str:
        text = ""
        for name in ("error.log", "nginx.out"):
            path = self.workdir / name
            if path.exists():
                text += path.read_text(errors="replace")[-size:]
        return text

    def stop(self) -> None:
        stop_process(self.proc)
        for log in self._logs:
            log.close()


def start_nginx(
    workdir: Path,
    servers: DemoServers,
    *,
    workers: int,
    connections: int,
    tls: bool = True,
    host: str = "meet.demo.test",
    timeout: float = 30.0,
) -> Nginx:
    """Start nginx in front of `servers` the way start_demo starts revproxy; wait until
    it answers `host`. Its configuration and logs go to `workdir`."""
    binary = find_nginx()
    if binary is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx)")
    from revproxy.demo.certs import INTERNAL_SERVER_NAMES

    workdir.mkdir(parents=True, exist_ok=True)
    # The revproxy configuration this run would use, validated by revproxy's loader.
    toml_text = demo_config(servers.playing(), workers=workers)
    config = parse_config(tomllib.loads(toml_text), DEMO_CONFIG)
    certs = servers.certs
    chain = workdir / "meet-chain.pem"
    chain.write_text(
        certs.meet.read_text().rstrip("\n") + "\n" + certs.public_intermediate.read_text()
    )
    port = free_port()
    path = workdir / "nginx.conf"
    path.write_text(
        nginx_config(
            config,
            listener="https" if tls else "http",
            host=host,
            port=port,
            connections=connections,
            workdir=workdir,
            certificate=chain,
            key=certs.meet_key,
            ip_name=INTERNAL_SERVER_NAMES[1],
        )
    )
    out = open(workdir / "nginx.out", "wb")  # noqa: SIM115 (closed by Nginx.stop)
    proc = subprocess.Popen(
        [binary, "-p", f"{workdir}/", "-e", str(workdir / "error.log"), "-c", str(path)],
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=workdir,
        start_new_session=True,
    )
    nginx = Nginx(workdir, proc, port, [out])

    def started() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {proc.returncode}:\n{nginx.log_tail()}")
        return answers(port, host, certs.public_root if tls else None)

    try:
        wait_for(started, timeout, "nginx to answer")
    except BaseException:
        nginx.stop()
        raise
    return nginx
