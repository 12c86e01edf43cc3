"""The chunked transfer coding, RFC 9112 §7.1: where a body ends, and what it decodes to.

Every valid body is fed whole, byte by byte and split in two at every position, always
followed by pipelined bytes that must be left unconsumed. Every invalid body must fail
however it is split.
"""

from __future__ import annotations

import pytest

from revproxy.http.chunked import MAX_LINE, MAX_TRAILERS, ChunkedReader, ChunkError

NEXT = b"GET /next HTTP/1.1\r\n"  # a pipelined request after the body

# (id, encoded body, decoded payload)
VALID: list[tuple[str, bytes, bytes]] = [
    ("empty", b"0\r\n\r\n", b""),
    ("one-chunk", b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
    ("two-chunks", b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
    ("uppercase-hex", b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
    ("lowercase-hex", b"a\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
    ("leading-zeros", b"0005\r\nhello\r\n000\r\n\r\n", b"hello"),
    ("sixteen-digits", b"0000000000000005\r\nhello\r\n0\r\n\r\n", b"hello"),
    ("data-with-crlf", b"4\r\n\r\n\r\n\r\n0\r\n\r\n", b"\r\n\r\n"),
    ("data-looks-like-size", b"3\r\n0\r\n\r\n0\r\n\r\n", b"0\r\n"),
    ("ext-token", b"5;name=value\r\nhello\r\n0\r\n\r\n", b"hello"),
    ("ext-name-only", b"5;name\r\nhello\r\n0;last\r\n\r\n", b"hello"),
    ("ext-quoted", b'5;a="b c;d=\\"e\\""\r\nhello\r\n0\r\n\r\n', b"hello"),
    ("ext-several", b'5;a=1;b;c="x"\r\nhello\r\n0\r\n\r\n', b"hello"),
    ("ext-bws", b"5 ;a=b\r\nhello\r\n0\t; a = b\r\n\r\n", b"hello"),
    ("ext-quoted-empty", b'5;a=""\r\nhello\r\n0\r\n\r\n', b"hello"),
    ("ext-quoted-obs-text", b'5;a="\xe9"\r\nhello\r\n0\r\n\r\n', b"hello"),
    ("trailer", b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n", b"hello"),
    ("trailers", b"0\r\nA: 1\r\nB:\r\nC:  c  \r\n\r\n", b""),
    ("binary", b"3\r\n\x00\xff\n\r\n0\r\n\r\n", b"\x00\xff\n"),
]

# (id, encoded body) that must raise ChunkError
INVALID: list[tuple[str, bytes]] = [
    ("data-not-followed-by-crlf", b"5\r\nhelloX\r\n0\r\n\r\n"),
    # Sizes a server reading a signed 64-bit number would take as negative.
    ("size-2-64-minus-1", b"ffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
    ("size-2-63", b"8000000000000000\r\nhello\r\n0\r\n\r\n"),
    ("size-2-62", b"4000000000000000\r\nhello\r\n0\r\n\r\n"),
    ("data-too-long", b"3\r\nhello\r\n0\r\n\r\n"),
    ("data-followed-by-lf", b"5\r\nhello\n0\r\n\r\n"),
    ("data-followed-by-cr-only", b"5\r\nhello\r0\r\n\r\n"),
    ("size-bare-lf", b"5\nhello\r\n0\r\n\r\n"),
    ("last-bare-lf", b"5\r\nhello\r\n0\n\r\n"),
    ("end-bare-lf", b"5\r\nhello\r\n0\r\n\n"),
    ("size-bare-cr", b"5\rhello\r\n0\r\n\r\n"),
    ("size-trailing-space", b"5 \r\nhello\r\n0\r\n\r\n"),
    ("size-trailing-tab", b"5\t\r\nhello\r\n0\r\n\r\n"),
    ("size-leading-space", b" 5\r\nhello\r\n0\r\n\r\n"),
    ("size-inner-space", b"1 0\r\n0123456789abcdef\r\n0\r\n\r\n"),
    ("size-empty", b"\r\nhello\r\n0\r\n\r\n"),
    ("size-negative", b"-5\r\nhello\r\n0\r\n\r\n"),
    ("size-plus", b"+5\r\nhello\r\n0\r\n\r\n"),
    ("size-0x", b"0x5\r\nhello\r\n0\r\n\r\n"),
    ("size-not-hex", b"g\r\nhello\r\n0\r\n\r\n"),
    ("size-underscore", b"1_0\r\n0123456789abcdef\r\n0\r\n\r\n"),
    ("size-17-digits", b"00000000000000005\r\nhello\r\n0\r\n\r\n"),
    ("size-overflow", b"10000000000000000\r\nhello\r\n0\r\n\r\n"),
    ("ext-empty", b"5;\r\nhello\r\n0\r\n\r\n"),
    ("ext-no-name", b"5;=b\r\nhello\r\n0\r\n\r\n"),
    ("ext-empty-value", b"5;a=\r\nhello\r\n0\r\n\r\n"),
    ("ext-unterminated-quote", b'5;a="b\r\nhello\r\n0\r\n\r\n'),
    ("ext-control", b"5;a=\x01\r\nhello\r\n0\r\n\r\n"),
    ("ext-space-in-value", b"5;a=b c\r\nhello\r\n0\r\n\r\n"),
    ("ext-comma", b"5,a\r\nhello\r\n0\r\n\r\n"),
    ("trailer-no-colon", b"0\r\nX-A b\r\n\r\n"),
    ("trailer-space-before-colon", b"0\r\nX-A : b\r\n\r\n"),
    ("trailer-obs-fold", b"0\r\nX-A: b\r\n c\r\n\r\n"),
    ("trailer-empty-name", b"0\r\n: b\r\n\r\n"),
    ("trailer-nul", b"0\r\nX-A: b\x00\r\n\r\n"),
    ("trailer-bare-cr", b"0\r\nX-A: b\rc\r\n\r\n"),
    ("trailer-bare-lf", b"0\r\nX-A: b\n\r\n"),
    ("size-line-too-long", b"5;a=" + b"b" * MAX_LINE + b"\r\nhello\r\n0\r\n\r\n"),
    ("size-line-too-long-no-end", b"5;a=" + b"b" * (MAX_LINE * 2)),
    ("trailer-line-too-long", b"0\r\nX: " + b"y" * MAX_LINE + b"\r\n\r\n"),
    (
        "trailers-too-large",
        b"0\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(20)) + b"\r\n",
    ),
]


def feed_split(body: bytes, cuts: list[int]) -> tuple[int, bytes, ChunkedReader]:
    """Feed `body` cut at `cuts`; return (bytes consumed, decoded payload, reader)."""
    reader = ChunkedReader()
    out: list[bytes] = []
    used = 0
    bounds = [0, *cuts, len(body)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        piece = body[start:end]
        n = reader.feed(piece, out)
        assert 0 <= n <= len(piece)
        used += n
        if n < len(piece):
            # The body ended inside this piece: nothing more is taken.
            assert reader.done
            break
    return used, b"".join(out), reader


def splits(length: int) -> list[list[int]]:
    plans = [[], list(range(1, length))]
    plans += [[i] for i in range(1, length)]
    return plans


@pytest.mark.parametrize(("body", "payload"), [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_valid(body: bytes, payload: bytes) -> None:
    data = body + NEXT
    for cuts in splits(len(data)):
        used, decoded, reader = feed_split(data, cuts)
        assert reader.done, cuts
        assert used == len(body), cuts
        assert data[used:] == NEXT
        assert decoded == payload, cuts
        assert reader.feed(b"more") == 0


@pytest.mark.parametrize("body", [c[1] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid(body: bytes) -> None:
    plans = splits(len(body)) if len(body) < 200 else [[], [len(body) // 2], [1, 2, 3]]
    for cuts in plans:
        with pytest.raises(ChunkError):
            feed_split(body, cuts)


def test_case_ids_unique() -> None:
    ids = [c[0] for c in VALID] + [c[0] for c in INVALID]
    assert len(ids) == len(set(ids))


def test_incomplete_body_is_not_done() -> None:
    body = b"5\r\nhello\r\n0\r\nX: y\r\n\r\n"
    for end in range(len(body)):
        reader = ChunkedReader()
        assert reader.feed(body[:end]) == end
        assert not reader.done


def test_without_out_only_tracks() -> None:
    reader = ChunkedReader()
    assert reader.feed(memoryview(b"3\r\nabc\r\n0\r\n\r\nrest")) == 13
    assert reader.done


def test_empty_feed() -> None:
    reader = ChunkedReader()
    assert reader.feed(b"") == 0
    assert not reader.done


def test_large_chunk_streams_through() -> None:
    payload = bytes(range(256)) * 4096
    body = b"%x\r\n" % len(payload) + payload + b"\r\n0\r\n\r\n"
    reader = ChunkedReader()
    out: list[bytes] = []
    used = sum(reader.feed(body[i : i + 65536], out) for i in range(0, len(body), 65536))
    assert used == len(body) and reader.done
    assert b"".join(out) == payload


# The limits are the same however the line arrives (a pending line may hold its CR).
# Sixteen trailer lines of 1024 bytes with their CRLF fill MAX_TRAILERS exactly.
assert MAX_TRAILERS == 16 * 1024
LIMITS: list[tuple[str, bytes, bool]] = [
    ("size-line-at-limit", b"5;a=" + b"b" * (MAX_LINE - 4) + b"\r\nhello\r\n0\r\n\r\n", True),
    ("size-line-over-limit", b"5;a=" + b"b" * (MAX_LINE - 3) + b"\r\nhello\r\n0\r\n\r\n", False),
    ("trailer-at-limit", b"0\r\nX: " + b"y" * (MAX_LINE - 3) + b"\r\n\r\n", True),
    ("trailer-over-limit", b"0\r\nX: " + b"y" * (MAX_LINE - 2) + b"\r\n\r\n", False),
    (
        "trailers-at-limit",
        b"0\r\n" + b"X: " + b"y" * (MAX_TRAILERS - 5) + b"\r\n\r\n",
        False,  # one line that long is over the line limit first
    ),
    (
        "trailers-total-at-limit",
        b"0\r\n" + b"".join(b"X%03d: " % i + b"y" * 1016 + b"\r\n" for i in range(16)) + b"\r\n",
        True,
    ),
    (
        "trailers-total-over-limit",
        b"0\r\n"
        + b"".join(b"X%03d: " % i + b"y" * 1016 + b"\r\n" for i in range(16))
        + b"Z: 1\r\n\r\n",
        False,
    ),
]


@pytest.mark.parametrize(("body", "ok"), [c[1:] for c in LIMITS], ids=[c[0] for c in LIMITS])
@pytest.mark.parametrize("step", [1, 7, 4096, 100000])
def test_limits_do_not_depend_on_split(body: bytes, ok: bool, step: int) -> None:
    cuts = list(range(step, len(body), step))
    if ok:
        used, _, reader = feed_split(body, cuts)
        assert reader.done and used == len(body)
    else:
        with pytest.raises(ChunkError):
            feed_split(body, cuts)
