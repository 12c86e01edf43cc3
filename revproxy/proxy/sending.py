"""Large writes handed to a socket in several sends of whole TCP segments.

A proxy reads a body from one socket in pieces of up to 256 KiB and writes each piece to
the other. Written in one send each, such pieces gave the benchmark's 1 MiB responses a
99th percentile of 20-40 ms (at half load, on loopback, with BBR as the kernel's congestion
control): the connection's bandwidth estimate now and then collapsed to about 100 Mbit/s
and the rest of a response was paced out at that rate. The same pieces written as sends
of whole segments (the kernel checks whether the sender is application-limited at the
start of each send) kept the 99th percentile at 4-8 ms. Sends of 64 KiB, not a whole
number of loopback segments, cost more CPU for the small segment each one left.

So a piece longer than SEND_TARGET goes out in sends of the largest whole number of
segments (the socket's current MSS) that fits in SEND_TARGET, at least one segment: one
segment on loopback (MSS 65,483), 45 on Ethernet (MSS 1,448). The MSS is read at each large
write: it grows during a connection's first round trips.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Final

SEND_TARGET: Final = 64 * 1024


def send_size(sock: Any) -> int:
    """How many bytes to hand `sock` per send: whole segments, about SEND_TARGET.

    `sock` is what a transport gives for get_extra_info("socket"); without one (or its
    MSS), SEND_TARGET.
    """
    try:
        mss = int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG))
    except (AttributeError, OSError):
        return SEND_TARGET
    if mss <= 0:
        return SEND_TARGET
    return mss * max(1, SEND_TARGET // mss)


def write_in_sends(transport: asyncio.WriteTransport, data: bytes) -> None:
    """Write `data` to a socket's own transport in sends of send_size() bytes or less.

    Each piece the socket can take at once is a send of its own; what it cannot take is
    queued by the transport (and then sent together, as any queued writes are). A TLS
    layer's transport is not one of these: the layer divides what it encrypted instead.
    A send that fails closes the transport, and the rest is not written.
    """
    size = send_size(transport.get_extra_info("socket"))
    view = memoryview(data)
    for start in range(0, len(view), size):
        if transport.is_closing():
            return
        transport.write(view[start : start + size])


def write_out(transport: asyncio.WriteTransport, data: bytes) -> None:
    """Write `data` to a socket's own transport: more than SEND_TARGET bytes in several
    sends (write_in_sends), less in one write."""
    if len(data) > SEND_TARGET:
        write_in_sends(transport, data)
    else:
        transport.write(data)
