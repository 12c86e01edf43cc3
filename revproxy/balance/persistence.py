"""Persistence: sending a client back to the server it used before.

Pure: tables, cookie text and one decision function, no I/O. Two kinds, per
pool (`PersistenceConfig.type`):

- source_ip: a bounded table client IP -> server, forgotten after `timeout`
  seconds without use (20 minutes is usual). It lives in each worker; where
  several workers or replicas must agree without sharing a table, the
  source_hash balancing method gives the same stickiness statelessly.
- cookie: the proxy inserts a cookie naming the server. Its value is a hash of
  the pool name and server address, so every worker and replica decodes it
  alike with no shared state, and it survives restarts and scaling.

A persisted server that is down, disabled or excluded (a retry after it
failed) is replaced: the choice falls back to balancing, the table entry or
cookie is rewritten to the new server (HAProxy's "redispatch"). A draining
server still honours existing persistence but gets no new one, and a draining
server's table entries are not refreshed, so they run out.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from revproxy.config.model import PersistenceConfig

if TYPE_CHECKING:
    from revproxy.balance.pool import Pool, Server

DEFAULT_MAX_ENTRIES = 100_000


class SourceIPTable:
    """Client IP -> server name, each entry valid `timeout` seconds after it was written.

    Entries stay in write order, which is also expiry order, so expired entries are
    dropped from the front and, when the table is full, the oldest one is evicted.
    """

    __slots__ = ("timeout", "max_entries", "_entries")

    def __init__(self, timeout: float = 1200.0, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.timeout = timeout
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ip: str, now: float) -> str | None:
        """The server name remembered for `ip`, or None when unknown or expired."""
        entry = self._entries.get(ip)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._entries[ip]
            return None
        return entry[0]

    def remember(self, ip: str, server: str, now: float) -> None:
        """Persist `ip` to `server` for the next `timeout` seconds."""
        entries = self._entries
        entries[ip] = (server, now + self.timeout)
        entries.move_to_end(ip)
        self.expire(now)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    def expire(self, now: float) -> int:
        """Drop expired entries; returns how many."""
        entries = self._entries
        dropped = 0
        while entries:
            ip, (_, expiry) = next(iter(entries.items()))
            if expiry > now:
                break
            del entries[ip]
            dropped += 1
        return dropped


# ---------------------------------------------------------------------------- cookies


def cookie_value(pool_name: str, server_address: str) -> str:
    """The cookie value naming a server: 16 hex digits of blake2b(pool, address).

    Deterministic, so any worker or replica maps it back without shared state, and it
    does not reveal the server's address.
    """
    digest = hashlib.blake2b(digest_size=8, person=b"revproxy-cookie")
    digest.update(pool_name.encode())
    digest.update(b"\0")
    digest.update(server_address.encode())
    return digest.hexdigest()


def server_for_cookie(pool: Pool, value: str) -> Server | None:
    """The pool's server a cookie value names, or None."""
    return pool.server_for_cookie(value)


@functools.lru_cache(maxsize=256)
def _cookie_attributes(cfg: PersistenceConfig) -> bytes:
    # RFC 6265 section 4.1.1: attribute values must not carry ";" or control characters.
    for key, text in (("cookie_path", cfg.cookie_path), ("cookie_domain", cfg.cookie_domain)):
        if any(c == ";" or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            raise ValueError(f"{key} {text!r} cannot go in a Set-Cookie header")
    parts = []
    if cfg.cookie_path:
        parts.append(f"; Path={cfg.cookie_path}")
    if cfg.cookie_domain:
        parts.append(f"; Domain={cfg.cookie_domain}")
    if cfg.cookie_max_age > 0:
        parts.append(f"; Max-Age={cfg.cookie_max_age}")
    if cfg.cookie_secure:
        parts.append("; Secure")
    if cfg.cookie_httponly:
        parts.append("; HttpOnly")
    return "".join(parts).encode("latin-1")


def set_cookie_header(cfg: PersistenceConfig, value: str) -> bytes:
    """The value of the Set-Cookie header that persists a client with `value`.

    With cookie_max_age 0 there is no Max-Age (nor Expires): a session cookie, as
    Lync's MS-WSMAN cookie must be.
    """
    pair = f"{cfg.cookie_name}={value}".encode("latin-1")
    return pair + _cookie_attributes(cfg)


def cookie_from_request(cookie_header_values: list[bytes], name: str) -> str | None:
    """The value of the first cookie called `name` in the request's Cookie headers.

    RFC 6265 section 5.4 has user agents send `name=value` pairs joined by "; "; we
    also accept missing or extra whitespace and a value in double quotes (section
    4.1.1). Names compare case-sensitively.
    """
    wanted = name.encode("latin-1")
    for header in cookie_header_values:
        for pair in header.split(b";"):
            key, eq, value = pair.partition(b"=")
            if not eq or key.strip(b" \t") != wanted:
                continue
            value = value.strip(b" \t")
            if len(value) >= 2 and value[:1] == b'"' and value[-1:] == b'"':
                value = value[1:-1]
            return value.decode("latin-1")
    return None


# ---------------------------------------------------------------------------- decision


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a request goes and what, if anything, to tell the client."""

    server: Server | None  # None: no server may take it (503)
    set_cookie: bytes | None = None  # Set-Cookie value to add to the response
    persisted: bool = False  # the server came from persistence, not from balancing


def decide(
    pool: Pool,
    client_ip: str,
    cookie: str | None,
    now: float,
    exclude: Collection[Server] = (),
    connection_cookie: str | None = None,
) -> Decision:
    """Choose the server for one request, honouring the pool's persistence.

    `cookie` is the persistence cookie the request carried (see `cookie_from_request`),
    `now` a monotonic time for the source-IP table, `exclude` the servers a retry must
    avoid. `connection_cookie` is the value an earlier response on the same client
    connection already set: without `cookie_always` that is persistence enough and it
    is not repeated; with it (Microsoft's MS-WSMAN rule) every response whose request
    lacked the cookie gets it again.
    """
    cfg = pool.config.persistence
    kind = cfg.type
    if kind == "cookie":
        affinity = pool.server_for_cookie(cookie) if cookie else None
        if affinity is None and connection_cookie:
            affinity = pool.server_for_cookie(connection_cookie)
        server = pool.choose(exclude, client_ip, affinity)
        if server is None:
            return Decision(None)
        persisted = server is affinity
        if cookie == server.cookie or (
            not cfg.cookie_always and connection_cookie == server.cookie
        ):
            return Decision(server, None, persisted)
        return Decision(server, set_cookie_header(cfg, server.cookie), persisted)
    table = pool.sticky
    if kind == "source_ip" and table is not None and client_ip:
        name = table.lookup(client_ip, now)
        affinity = pool.server(name) if name is not None else None
        server = pool.choose(exclude, client_ip, affinity)
        if server is None:
            return Decision(None)
        if server.eligible:  # not draining: (re)new the entry
            table.remember(client_ip, server.name, now)
        return Decision(server, None, server is affinity)
    return Decision(pool.choose(exclude, client_ip))
