"""Fixtures shared by the whole-proxy tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import ScriptedServer


@pytest.fixture
def servers() -> Iterator[list[ScriptedServer]]:
    """Scripted servers a test starts and appends here; stopped when it ends."""
    started: list[ScriptedServer] = []
    yield started
    for server in started:
        server.stop()
