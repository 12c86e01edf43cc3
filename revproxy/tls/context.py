"""SSL contexts: the listener side (terminating TLS, certificate chosen by SNI) and the pool
side (re-encrypting towards real servers).

A listener gets one SSLContext per certificate. The first certificate's context is the one
the listening socket uses; its SNI callback looks the client's server name up in a
NameIndex and switches the connection to the matching certificate's context before the
server's first flight is written. The chosen name is recorded on the SSL object, so the
data plane can read it with `sni_of` without parsing the ClientHello again.

Old protocol versions (TLS 1.0/1.1) stay off unless the configuration asks for them; when it
does, every context built says so in the log, naming the listener or pool.
"""

from __future__ import annotations

import logging
import secrets
import ssl
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
)

from revproxy.config.model import ListenerConfig, PoolConfig, ServerConfig
from revproxy.tls.certificates import (
    LoadedCertificate,
    load_listener_certificates,
    load_pem_certificates,
    raise_for_errors,
)
from revproxy.tls.checks import WARNING
from revproxy.tls.errors import TLSConfigError
from revproxy.tls.names import NameIndex, normalize_host, wildcard_matches

__all__ = [
    "CertificateStore",
    "TLSConfigError",
    "build_listener_context",
    "build_pool_context",
    "served_names_of",
    "server_hostname",
    "sni_host_mismatch",
    "sni_of",
]

log = logging.getLogger("revproxy.tls")

ALPN_PROTOCOLS = ["http/1.1"]

_VERSIONS = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}
_OLD_VERSIONS = ("1.0", "1.1")

# TLS 1.2: forward secrecy (ECDHE) with an AEAD cipher only. TLS 1.3 suites are OpenSSL's.
MODERN_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
    ]
)
# TLS 1.0/1.1 have no AEAD suites: CBC with SHA-1 is what old clients and servers speak.
# OpenSSL 3 refuses the SHA-1 handshake signatures of those versions above security level 0.
LEGACY_CIPHERS = ":".join(
    [
        MODERN_CIPHERS,
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA",
        "ECDHE-RSA-AES256-SHA",
        "AES128-SHA",
        "AES256-SHA",
        "@SECLEVEL=0",
    ]
)

# Attributes set on each server-side SSL object by the SNI callback.
_SNI_ATTRIBUTE = "_revproxy_sni"
_NAMES_ATTRIBUTE = "_revproxy_served_names"


class DirectSSLObject(ssl.SSLObject):
    """An SSLObject whose methods the event loop calls are the C object's own.

    `ssl.SSLObject` wraps each method of the C object in a Python method that only passes
    the arguments on. The event loop calls `read`, `write` and `pending` for every TLS
    record and `do_handshake`, `unwrap`, `cipher` and `compression` for every connection,
    so here those are bound straight to the C object underneath: the same results and
    exceptions for the calls the event loop makes (`unwrap` is its `shutdown`). The C
    methods take positional arguments only, and `read` needs its size: `read(n)` and
    `read(n, buffer)`, never `read()` or keywords. Everything else (the SNI callback's
    attributes, `context`, `getpeercert`, `version`) is the ordinary SSLObject.

    On the server side `do_handshake` also makes sure a client whose handshake is refused
    hears why (see `_AlertFirst`).
    """

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> DirectSSLObject:
        made: DirectSSLObject = super()._create(*args, **kwargs)  # type: ignore[misc]
        raw = getattr(made, "_sslobj", None)
        if raw is not None:
            made.read = raw.read  # type: ignore[method-assign]
            made.write = raw.write  # type: ignore[method-assign]
            made.pending = raw.pending  # type: ignore[method-assign]
            outgoing = args[1] if len(args) > 1 else kwargs.get("outgoing")
            if kwargs.get("server_side") and isinstance(outgoing, ssl.MemoryBIO):
                made.do_handshake = _AlertFirst(raw, outgoing)  # type: ignore[method-assign]
            else:
                made.do_handshake = raw.do_handshake  # type: ignore[method-assign]
            made.unwrap = raw.shutdown  # type: ignore[method-assign]
            made.cipher = raw.cipher  # type: ignore[method-assign]
            made.compression = raw.compression  # type: ignore[method-assign]
        return made


class _AlertFirst:
    """A server-side handshake step that lets a refusal's alert reach the client.

    When OpenSSL refuses a handshake (a server name no certificate serves with
    unknown_sni = "reject", a protocol version or cipher the listener does not speak) it
    writes a fatal alert (unrecognized_name, protocol_version, handshake_failure) for the
    client; but the event loop drops the connection on the error without sending what
    was written, and the client sees only a closed connection. Here the error first
    reads as "waiting for the client", so the loop sends the alert; the client then
    closes (or, if it sends anything more, the next step raises the error itself; if it
    does neither, the handshake timeout ends the connection).
    """

    __slots__ = ("_step", "_outgoing", "_failed")

    def __init__(self, raw: Any, outgoing: ssl.MemoryBIO) -> None:
        self._step = raw.do_handshake
        self._outgoing = outgoing
        self._failed: ssl.SSLError | None = None

    def __call__(self) -> None:
        failed = self._failed
        if failed is not None:
            # Once: the loop ends the connection on it (later steps get OpenSSL's own
            # error), and no reference to it stays here.
            self._failed = None
            raise failed
        try:
            self._step()
            return
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            if not self._outgoing.pending:
                raise
            # Kept without its traceback, which would hold this frame and so this object.
            self._failed = exc.with_traceback(None)
        raise ssl.SSLWantReadError("alert to send; the handshake failed")


def sni_of(ssl_object: object) -> str | None:
    """The normalized server name the client sent in its ClientHello, or None without SNI.

    `ssl_object` is what `transport.get_extra_info("ssl_object")` returns for a connection
    accepted with a context from `build_listener_context`.
    """
    value = getattr(ssl_object, _SNI_ATTRIBUTE, None)
    return value if isinstance(value, str) else None


def server_hostname(pool: PoolConfig, server: ServerConfig) -> str:
    """The name to pass as `server_hostname` when connecting to `server`.

    It is sent as SNI (ADFS picks its certificate by it) and checked against the server's
    certificate. For an IP address OpenSSL sends no SNI (RFC 6066 section 3 forbids
    addresses there) and verifies the certificate's IP address SAN instead.
    """
    return pool.server_name or server.host


def _tls_version(value: str, owner: str) -> ssl.TLSVersion:
    try:
        return _VERSIONS[value]
    except KeyError:
        allowed = ", ".join(_VERSIONS)
        raise ValueError(f"{owner}: min_tls_version {value!r} is not one of {allowed}") from None


def _apply_protocol_settings(
    ctx: ssl.SSLContext, min_version: str, ciphers: str, owner: str
) -> None:
    version = _tls_version(min_version, owner)
    old = min_version in _OLD_VERSIONS
    ctx.sslobject_class = DirectSSLObject
    with warnings.catch_warnings():
        # Python deprecates the old versions; enabling them here is an explicit choice.
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = version
    if ciphers:
        if old and "@SECLEVEL" not in ciphers:
            ciphers += ":@SECLEVEL=0"
        chosen = ciphers
    else:
        chosen = LEGACY_CIPHERS if old else MODERN_CIPHERS
    try:
        ctx.set_ciphers(chosen)
    except ssl.SSLError:
        raise ValueError(f"{owner}: no usable cipher in {chosen!r}") from None
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.options &= ~ssl.OP_NO_TICKET
    ctx.set_alpn_protocols(ALPN_PROTOCOLS)


def _warn_old_tls(min_version: str, owner: str) -> None:
    if min_version in _OLD_VERSIONS:
        log.warning(
            "%s accepts TLS %s: protocol versions older than 1.2 are insecure and enabled "
            "only because min_tls_version says so",
            owner,
            min_version,
        )


def _certificate_context(listener: ListenerConfig, cert: LoadedCertificate) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_protocol_settings(
        ctx, listener.min_tls_version, listener.ciphers, f"listener {listener.name}"
    )
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    if cert.key is None:
        raise TLSConfigError(cert.config.cert, "no private key")
    # load_cert_chain reads files only: the assembled chain and the key (which may have
    # come out of a PKCS#12 file) go into a private temporary folder, the key encrypted
    # with a one-time password so that it never lies on disk in the clear.
    secret = secrets.token_urlsafe(24)
    key_pem = cert.key.private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(secret.encode())
    )
    with tempfile.TemporaryDirectory(prefix="revproxy-tls-") as tmp:
        bundle = Path(tmp) / "chain.pem"
        bundle.write_bytes(cert.chain_pem())
        key_path = Path(tmp) / "key.pem"
        key_path.write_bytes(key_pem)
        try:
            ctx.load_cert_chain(bundle, key_path, password=secret)
        except ssl.SSLError as exc:
            problem = exc.reason or str(exc)
            raise TLSConfigError(cert.config.cert, f"OpenSSL refused it: {problem}") from None
    return ctx


SniCallback = Callable[[ssl.SSLObject, str | None, ssl.SSLContext], int | None]


# SNI answers remembered per listener: clients send the same few names again and again, and
# each handshake would otherwise normalize and look its name up anew. Cleared when full, so
# a client sending many different names costs memory only up to this count.
_SNI_MEMORY = 1024


def _sni_selector(
    index: NameIndex[ssl.SSLContext],
    default: ssl.SSLContext,
    reject_unknown: bool,
    names: dict[int, tuple[str, ...]],
) -> SniCallback:
    # server name as sent -> (normalized name, chosen context or None, the names it serves)
    known: dict[str | None, tuple[str | None, ssl.SSLContext | None, tuple[str, ...]]] = {}

    def choose(
        server_name: str | None,
    ) -> tuple[str | None, ssl.SSLContext | None, tuple[str, ...]]:
        name: str | None = None
        if server_name is not None:
            try:
                name = normalize_host(server_name)
            except ValueError:
                name = None
        chosen = index.lookup(name) if name is not None else None
        return name, chosen, names[id(default if chosen is None else chosen)]

    def select(ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> int | None:
        answer = known.get(server_name)
        if answer is None:
            answer = choose(server_name)
            if len(known) >= _SNI_MEMORY:
                known.clear()
            known[server_name] = answer
        name, chosen, served = answer
        setattr(ssl_object, _SNI_ATTRIBUTE, name)
        setattr(ssl_object, _NAMES_ATTRIBUTE, served)
        if chosen is None:
            # RFC 6066 section 3: unrecognized_name is the alert for a name we do not serve.
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME if reject_unknown else None
        if chosen is not default:
            ssl_object.context = chosen
        return None

    return select


class CertificateStore:
    """A TLS listener's certificates: loaded, checked, one SSL context each, by name.

    Built from the files each time a worker starts; a reload (SIGHUP) starts new workers,
    so replaced files are served to new connections while the old workers finish the
    connections they hold with the certificate those were opened with. Raises
    TLSConfigError when a finding is an error; warnings are logged, infos too.
    """

    def __init__(self, listener: ListenerConfig) -> None:
        owner = f"listener {listener.name}"
        if not listener.certificates:
            raise ValueError(f"{owner}: TLS needs at least one certificate")
        if listener.unknown_sni not in ("default", "reject"):
            raise ValueError(f"{owner}: unknown_sni must be 'default' or 'reject'")
        loaded, findings = load_listener_certificates(listener)
        raise_for_errors(findings)
        for finding in findings:
            level = logging.WARNING if finding.severity == WARNING else logging.INFO
            log.log(level, "%s: %s: %s", owner, finding.file, finding.message)
        _warn_old_tls(listener.min_tls_version, owner)
        self.listener = listener
        self.certificates = tuple(loaded)
        self.findings = tuple(findings)
        contexts = [_certificate_context(listener, cert) for cert in loaded]
        self._contexts = contexts
        self.context = contexts[0]
        self._index = NameIndex((c.names, ctx) for c, ctx in zip(loaded, contexts, strict=True))
        names = {id(ctx): c.names for c, ctx in zip(loaded, contexts, strict=True)}
        self.context.sni_callback = _sni_selector(
            self._index, self.context, listener.unknown_sni == "reject", names
        )

    def certificate_for(self, sni: str | None) -> LoadedCertificate:
        """The certificate a client sending `sni` (normalized) gets: exact, wildcard, default."""
        chosen = self._index.lookup(sni) if sni is not None else None
        for cert, ctx in zip(self.certificates, self._contexts, strict=True):
            if ctx is chosen:
                return cert
        return self.certificates[0]


def build_listener_context(listener: ListenerConfig) -> ssl.SSLContext:
    """The server-side context of a TLS listener, choosing its certificate by SNI.

    Order: a certificate naming the SNI exactly, then one with a matching wildcard, then
    the first certificate of the listener; with `unknown_sni = "reject"` a client whose SNI
    no certificate names (or who sends none) gets an unrecognized_name alert instead.
    Raises TLSConfigError for an unusable file and ValueError for bad settings.
    """
    return CertificateStore(listener).context


def served_names_of(ssl_object: object) -> tuple[str, ...]:
    """The names of the certificate served on this connection (chosen by its SNI)."""
    value = getattr(ssl_object, _NAMES_ATTRIBUTE, ())
    return value if isinstance(value, tuple) else ()


def sni_host_mismatch(sni: str | None, host: bytes, served: Sequence[str] = ()) -> bool:
    """Whether a request's Host names a host its connection's certificate does not cover.

    True only when the client sent SNI, the Host header names another host, and the
    certificate chosen for the SNI (`served`: its names, see `served_names_of`) does not
    cover that host: RFC 9110 section 7.4 lets clients reuse a connection for any name its
    certificate is valid for, so those requests are legitimate; the others are answered
    421 Misdirected Request when the listener says sni_mismatch = "reject".
    A Host that is not a valid name is left to the request checks (False here).
    """
    if sni is None:
        return False
    try:
        name = normalize_host(host)
    except ValueError:
        return False
    if name == sni:
        return False
    return not any(n == name or wildcard_matches(n, name) for n in served)


def build_pool_context(pool: PoolConfig) -> ssl.SSLContext:
    """The client-side context for re-encrypted connections to a pool's servers.

    Servers are verified against `pool.ca` (or the system store) unless `pool.verify` is
    off. Connect with `server_hostname=server_hostname(pool, server)`.
    """
    owner = f"pool {pool.name}"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _apply_protocol_settings(ctx, pool.min_tls_version, pool.ciphers, owner)
    _warn_old_tls(pool.min_tls_version, owner)
    if not pool.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        log.warning("%s: server certificates are not verified (verify = false)", owner)
        return ctx
    if pool.ca is None:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        cas = load_pem_certificates(pool.ca, "CA")
        bundle = "".join(c.public_bytes(Encoding.PEM).decode("ascii") for c in cas)
        try:
            ctx.load_verify_locations(cadata=bundle)
        except ssl.SSLError as exc:
            raise TLSConfigError(pool.ca, f"OpenSSL refused the CA file: {exc.reason}") from None
    return ctx
