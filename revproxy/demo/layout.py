"""Where the demo's real servers listen: two sets, like two front ends of a pool.

`make run` starts one process per set, so stopping one process takes one server of
every pool down (and the status page shows it). The ports match deploy/examples/demo.toml.
"""

from __future__ import annotations

# (address, name of the Lync front end, name of the mailbox server)
SERVER_SETS = (
    ("127.0.0.11", "lync-fe1", "mail1"),
    ("127.0.0.12", "lync-fe2", "mail2"),
)


def listen_args(address: str, lync: str, mail: str) -> list[str]:
    """`--listen` arguments of revproxy.demo.backends for one set of servers."""
    return [
        "--listen",
        f"{lync}={address}:4443:tls",
        "--listen",
        f"{lync}={address}:8080",
        "--listen",
        f"{mail}={address}:4444:tls",
        "--listen",
        f"{mail}={address}:8081",
    ]
