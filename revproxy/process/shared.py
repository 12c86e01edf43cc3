"""State the control process publishes to every worker, through shared memory.

The main process maps an anonymous shared region before it forks anything, so
the control process and every worker (including those started later) see the
same pages. One writer (the control process) publishes a JSON document of
per-server state; workers look at a version counter once a second and read the
document only when it changed.

Layout: an 8-byte sequence number, a 4-byte length, then the JSON text. The
sequence is odd while a write is under way (a seqlock): a reader that sees an
odd sequence, or a different sequence after reading, tries again.
"""

from __future__ import annotations

import json
import logging
import mmap
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from revproxy.config.model import Config
    from revproxy.proxy.runtime import Runtime

log = logging.getLogger("revproxy.shared")

SIZE = 1 << 20  # one MiB of JSON: thousands of servers
_HEADER = struct.Struct("<QI")
_SEQ = struct.Struct("<Q")

ADMIN_STATES = ("enabled", "disabled", "draining")

# {pool: {server address: {"up": bool, "admin": "enabled" | "disabled" | "draining",
#  "pending": true while a server that starts down waits for its first check result}}}
ServerState = dict[str, dict[str, dict[str, Any]]]


class SharedState:
    """The shared region; create it in the main process before forking."""

    def __init__(self, size: int = SIZE) -> None:
        self._map = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)
        self._size = size
        self._seen = 0  # a reader's last version applied

    # ---------------------------------------------------------------- writer (control process)

    def publish(self, document: dict[str, Any]) -> bool:
        data = json.dumps(document, separators=(",", ":")).encode()
        if _HEADER.size + len(data) > self._size:
            log.error("server state too large to publish (%d bytes)", len(data))
            return False
        m = self._map
        seq = _SEQ.unpack_from(m, 0)[0]
        if seq % 2:  # a writer died mid-write; carry on from there
            seq += 1
        _SEQ.pack_into(m, 0, seq + 1)
        m[_HEADER.size : _HEADER.size + len(data)] = data
        _HEADER.pack_into(m, 0, seq + 1, len(data))
        _SEQ.pack_into(m, 0, seq + 2)
        return True

    # ---------------------------------------------------------------- readers (workers)

    @property
    def version(self) -> int:
        return int(_SEQ.unpack_from(self._map, 0)[0])

    def read(self) -> dict[str, Any] | None:
        """The current document, or None when none was published yet (or on contention)."""
        m = self._map
        for _ in range(5):
            seq, length = _HEADER.unpack_from(m, 0)
            if seq == 0:
                return None
            if seq % 2:
                continue
            data = m[_HEADER.size : _HEADER.size + length]
            if _SEQ.unpack_from(m, 0)[0] != seq:
                continue
            try:
                document = json.loads(data)
            except ValueError:
                return None
            self._seen = seq
            return document if isinstance(document, dict) else None
        return None

    def read_if_changed(self) -> dict[str, Any] | None:
        """Like read(), but None when nothing changed since the last successful read."""
        if self.version == self._seen:
            return None
        return self.read()


def any_pending(document: dict[str, Any] | None) -> bool | None:
    """Whether a published document names a server still waiting for its first check;
    None when there is no document (yet)."""
    servers = document.get("servers") if document else None
    if not isinstance(servers, dict):
        return None
    return any(
        isinstance(entry, dict) and bool(entry.get("pending"))
        for pool in servers.values()
        if isinstance(pool, dict)
        for entry in pool.values()
    )


def config_server_state(config: Config) -> ServerState:
    """Server state as the configuration alone says: up unless active checks must pass first
    (health start_down), admin state as set."""
    return {
        pool.name: {
            s.address: {
                "up": pool.health.type == "none" or not pool.health.start_down,
                "admin": s.state,
            }
            for s in pool.servers
        }
        for pool in config.pools
    }


def apply_server_state(runtime: Runtime, state: ServerState) -> int:
    """Set each of the runtime's servers' state from `state`; returns how many changed.

    Servers `state` does not name keep theirs (a worker of an older configuration, or a
    server added by a reload the publisher has not seen yet). Until the balancer knows
    admin states itself, a server takes new requests only when it is up and enabled.
    """
    changed = 0
    for pool in runtime.pools.values():
        servers = state.get(pool.name)
        if not servers:
            continue
        for server in pool.servers:
            entry = servers.get(server.name)
            if not isinstance(entry, dict):
                continue
            up = bool(entry.get("up", True))
            admin = entry.get("admin", "enabled")
            if admin not in ADMIN_STATES:
                admin = "enabled"
            before = getattr(server, "admin", admin)
            try:
                server.admin = admin  # type: ignore[attr-defined]
                changed += before != admin
            except AttributeError:
                # This Server has no admin attribute: fold the admin state into `up`.
                up = up and admin == "enabled"
            if server.up != up:
                changed += 1
                server.up = up
    return changed
