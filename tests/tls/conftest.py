"""Fixtures for the TLS tests: a trustme PKI and a uvloop TLS server on loopback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from tls_testkit import LoopThread

# The whole-proxy harness (ProxyProcess, ScriptedServer) lives with the e2e tests.
_E2E = str(Path(__file__).resolve().parent.parent / "e2e")
if _E2E not in sys.path:
    sys.path.append(_E2E)


@pytest.fixture(scope="session")
def root_ca() -> trustme.CA:
    return trustme.CA(organization_name="Test Root")


@pytest.fixture(scope="session")
def intermediate_ca(root_ca: trustme.CA) -> trustme.CA:
    return root_ca.create_child_ca()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    runner = LoopThread()
    try:
        yield runner
    finally:
        runner.close()
