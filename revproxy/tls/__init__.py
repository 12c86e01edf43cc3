"""TLS: certificate loading and checks, host name matching, SSL contexts for listeners
(certificate chosen by SNI) and for pools (re-encryption towards real servers)."""

from revproxy.tls.certificates import LoadedCertificate, TLSConfigError, load_certificate
from revproxy.tls.context import build_listener_context, build_pool_context, server_hostname, sni_of
from revproxy.tls.names import NameIndex, normalize_host, wildcard_matches

__all__ = [
    "LoadedCertificate",
    "NameIndex",
    "TLSConfigError",
    "build_listener_context",
    "build_pool_context",
    "load_certificate",
    "normalize_host",
    "server_hostname",
    "sni_of",
    "wildcard_matches",
]
