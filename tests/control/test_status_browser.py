"""The status page in a real browser: headless Chromium renders it with one server up and
one down; the rendered DOM has the state words and the screenshot has both colours.

Needs `chromium` on PATH (skipped otherwise). The screenshot is kept under
test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from harness import (
    REPO,
    ProxyProcess,
    ScriptedServer,
    admin_url,
    dead_port,
    http_call,
    simple_config,
    wait_for,
)

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser")) if p is not None), None
)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")

GREEN = (0x2E, 0x7D, 0x32)
RED = (0xC6, 0x28, 0x28)


def _pixels(png: bytes) -> set[tuple[int, int, int]]:
    """The distinct colours of an 8-bit RGB or RGBA, non-interlaced PNG."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, data = 8, b""
    width = height = channels = 0
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0 and colour in (2, 6)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            data += body
    raw = zlib.decompress(data)
    stride = width * channels
    previous = bytearray(stride)
    colours: set[tuple[int, int, int]] = set()
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + pred) & 0xFF
        colours.update((line[x], line[x + 1], line[x + 2]) for x in range(0, stride, channels))
        previous = line
    return colours


def _near(colours: set[tuple[int, int, int]], want: tuple[int, int, int]) -> bool:
    return any(all(abs(a - b) <= 10 for a, b in zip(c, want, strict=True)) for c in colours)


def test_status_page_in_chromium(tmp_path: Path) -> None:
    assert CHROMIUM is not None
    alive = ScriptedServer().start()
    dead = dead_port()
    health = '[pools.p.health]\ntype = "tcp"\ninterval = 0.3\ntimeout = 0.2\nfall = 1\nrise = 1\n'
    config = simple_config(0, servers=[alive.port, dead], pool_extra=health)
    proxy = ProxyProcess(config + '\n[admin]\nbind = "127.0.0.1:0"\n', tmp_path)
    try:
        admin = admin_url(proxy)

        def states() -> list[str]:
            (pool,) = json.loads(http_call(admin + "/api/status")[1])["pools"]
            return [s["state"] for s in pool["servers"]]

        wait_for(lambda: states() == ["up", "down"], 10, "one server up, one down")
        browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        dom = subprocess.run(
            [*browser, "--virtual-time-budget=3000", "--dump-dom", admin + "/"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        assert "revproxy status" in dom
        assert '<span class="state up">up</span>' in dom
        assert '<span class="state down">down</span>' in dom
        assert f"127.0.0.1:{dead}" in dom
        artifacts = REPO / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        shot = artifacts / "status-page.png"
        shot.unlink(missing_ok=True)
        subprocess.run(
            [*browser, f"--screenshot={shot}", "--window-size=1280,900", admin + "/"],
            capture_output=True,
            timeout=60,
        )
        colours = _pixels(shot.read_bytes())
        assert _near(colours, GREEN), "no green (up) on the rendered page"
        assert _near(colours, RED), "no red (down) on the rendered page"
    finally:
        assert proxy.stop() == 0
        alive.stop()
