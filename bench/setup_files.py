"""Files the bench writes into its temporary directory before starting anything.

A self-signed certificate shared by both proxies, the backend's content, and the
configuration of the backend nginx, the nginx proxy and revproxy. The two proxy
configurations are kept as close as their formats allow: same listeners, same
certificate, TLS 1.2 and 1.3, keep-alive towards the backend, no request buffering.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

SMALL_BODY = "revproxy bench: a small response body, padded to one hundred bytes " + "." * 31
ONE_MIB = 1 << 20
# /1m again, from a backend location without tcp_nopush (see backend_nginx_conf).
PROMPT_1M = "/1m-prompt"
ONE_GIB = 1 << 30

# Keep-alive connections are never recycled by count during a run: a cap would add
# reconnects (and TLS handshakes) that measure the cap, not the proxy.
_KEEPALIVE_REQUESTS = 10_000_000


@dataclass(frozen=True, slots=True)
class Ports:
    backend: int
    sink: int
    nginx_plain: int
    nginx_tls: int
    revproxy_plain: int
    revproxy_tls: int


def write_certificate(directory: Path, key_type: str = "rsa") -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1; returns (cert, key) paths."""
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if key_type == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def write_backend_content(www: Path, big_size: int) -> None:
    """/small is answered by the configuration; /1m and /1g are files (1g is sparse)."""
    www.mkdir(parents=True, exist_ok=True)
    (www / "1m").write_bytes(os.urandom(ONE_MIB))
    with (www / "1g").open("wb") as f:
        f.truncate(big_size)


def _nginx_main(prefix: Path, workers: int) -> str:
    """The part of an nginx configuration that keeps every file inside prefix."""
    return f"""\
daemon off;
master_process on;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 4096;
}}
"""


def _nginx_http_common(prefix: Path) -> str:
    return f"""\
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    keepalive_requests {_KEEPALIVE_REQUESTS};
"""


def backend_nginx_conf(prefix: Path, www: Path, port: int) -> str:
    return (
        _nginx_main(prefix, 1)
        + "http {\n"
        + _nginx_http_common(prefix)
        + f"""\
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {www};
        location = /small {{
            default_type text/plain;
            return 200 "{SMALL_BODY}";
        }}
        location = /1m {{
            default_type application/octet-stream;
        }}
        # The same file sent as it is read, without TCP_CORK: the same-load runs.
        location = {PROMPT_1M} {{
            default_type application/octet-stream;
            tcp_nopush off;
            alias {www}/1m;
        }}
        location = /1g {{
            default_type application/octet-stream;
        }}
    }}
}}
"""
    )


def proxy_nginx_conf(
    prefix: Path,
    plain_port: int,
    tls_port: int,
    backend_port: int,
    sink_port: int,
    cert: Path,
    key: Path,
    workers: int = 2,
) -> str:
    return (
        _nginx_main(prefix, workers)
        + "http {\n"
        + _nginx_http_common(prefix)
        + f"""\
    upstream b {{
        server 127.0.0.1:{backend_port};
        keepalive 64;
        keepalive_requests {_KEEPALIVE_REQUESTS};
    }}
    upstream sink {{
        server 127.0.0.1:{sink_port};
        keepalive 8;
    }}
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_timeout 10m;
    client_max_body_size 0;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    # What revproxy sends by default: Host as the client sent it, the X-Forwarded-*
    # fields (replacing any from an untrusted client) and a request id.
    proxy_set_header Host $http_host;
    proxy_set_header X-Forwarded-For $remote_addr;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Forwarded-Host $http_host;
    proxy_set_header X-Request-ID $request_id;
    proxy_request_buffering off;
    server {{
        listen 127.0.0.1:{plain_port} backlog=4096;
        listen 127.0.0.1:{tls_port} ssl backlog=4096;
        location / {{
            proxy_pass http://b;
        }}
        location /sink {{
            proxy_pass http://sink;
        }}
    }}
}}
"""
    )


def revproxy_toml(
    plain_port: int,
    tls_port: int,
    backend_port: int,
    sink_port: int,
    cert: Path,
    key: Path,
    workers: int = 2,
) -> str:
    return f"""\
# revproxy configuration written by bench/run.py; mirrors the nginx proxy's.
[global]
workers = {workers}
log_level = "warning"

# No per-request logging, like nginx's access_log off.
[access_log]
enabled = false

[listeners.plain]
bind = "127.0.0.1:{plain_port}"

[listeners.tls]
bind = "127.0.0.1:{tls_port}"
tls = true
  [[listeners.tls.certificates]]
  cert = "{cert}"
  key = "{key}"

[services.bench]
hosts = ["*"]
pool = "backend"

[services.sink]
hosts = ["*"]
paths = ["/sink"]
pool = "sink"

[pools.backend]
servers = ["127.0.0.1:{backend_port}"]
max_idle_per_server = 64

[pools.sink]
servers = ["127.0.0.1:{sink_port}"]
"""
