"""TLS: certificate loading (PEM, DER, PKCS#12), chain assembly and checks, host name
matching, SSL contexts for listeners (certificate chosen by SNI) and for pools
(re-encryption towards real servers)."""

from revproxy.tls.certificates import (
    LoadedCertificate,
    check_listener_names,
    inspect_listener,
    load_certificate,
    read_certificate,
)
from revproxy.tls.checks import Finding
from revproxy.tls.context import (
    CertificateStore,
    build_listener_context,
    build_pool_context,
    served_names_of,
    server_hostname,
    sni_host_mismatch,
    sni_of,
)
from revproxy.tls.errors import TLSConfigError
from revproxy.tls.names import NameIndex, normalize_host, wildcard_matches

__all__ = [
    "CertificateStore",
    "Finding",
    "LoadedCertificate",
    "NameIndex",
    "TLSConfigError",
    "build_listener_context",
    "build_pool_context",
    "check_listener_names",
    "inspect_listener",
    "load_certificate",
    "normalize_host",
    "read_certificate",
    "served_names_of",
    "server_hostname",
    "sni_host_mismatch",
    "sni_of",
    "wildcard_matches",
]
