"""What OpenSSL alone keeps per TLS connection, without any proxy around it.

    python -m loadtest.tls_memory [--connections 2000]

Completes N TLS handshakes in memory (ssl.MemoryBIO pairs, one process, no sockets),
passes one request and response over each, and keeps one side of every connection:
the RSS growth divided by N is what an idle, established connection costs on that side.
Printed for the side a proxy holds towards its clients (server side) and towards
re-encrypted real servers (client side, verifying the server), with and without the
TLS 1.3 session tickets the server sends, and with TLS 1.2.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import ssl
import sys
from collections.abc import Sequence
from typing import Any

import trustme

NAME = "fe1.internal.test"


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Pair:
    """Server and client contexts for one variant."""

    def __init__(self, tickets: bool, tls12: bool) -> None:
        ca = trustme.CA()
        self.server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert(NAME).configure_cert(self.server)
        self.client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ca.configure_trust(self.client)
        if not tickets:
            self.server.num_tickets = 0
        if tls12:
            self.client.maximum_version = ssl.TLSVersion.TLSv1_2

    def connect(self) -> tuple[Any, Any]:
        """One established connection: (server side, client side), each with its BIOs."""
        s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
        server = self.server.wrap_bio(s_in, s_out, server_side=True)
        client = self.client.wrap_bio(c_in, c_out, server_hostname=NAME)
        for _ in range(10):
            for side in (client, server):
                try:
                    side.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        client.write(b"GET / HTTP/1.1\r\nHost: " + NAME.encode() + b"\r\n\r\n")
        s_in.write(c_out.read())
        server.read(65536)
        server.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        c_in.write(s_out.read())
        client.read(65536)
        return (server, s_in, s_out), (client, c_in, c_out)


def per_connection(pair: Pair, side: int, n: int) -> float:
    """Bytes of RSS per established connection, keeping only `side` (0 server, 1 client)."""
    for _ in range(50):
        pair.connect()
    gc.collect()
    _trim()
    before = _rss()
    kept = [pair.connect()[side] for _ in range(n)]
    gc.collect()
    _trim()
    grown = _rss() - before
    del kept
    return grown / n


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.tls_memory", description=__doc__)
    parser.add_argument("--connections", type=int, default=2000, help="connections kept")
    args = parser.parse_args(argv)
    if args.connections < 100:
        parser.error("--connections must be at least 100")
    print(f"{ssl.OPENSSL_VERSION}, Python {sys.version.split()[0]}, {args.connections} connections")
    print(f"{'variant':<36} {'server side':>12} {'client side':>12}")
    for label, tickets, tls12 in (
        ("TLS 1.3, 2 session tickets (default)", True, False),
        ("TLS 1.3, no session tickets", False, False),
        ("TLS 1.2", True, True),
    ):
        pair = Pair(tickets, tls12)
        server = per_connection(pair, 0, args.connections) / 1024
        client = per_connection(pair, 1, args.connections) / 1024
        print(f"{label:<36} {server:>9.1f} KiB {client:>9.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
