"""The unit tier opens no socket and starts no process: every test here runs with both
forbidden, so a test that needs either fails at once and belongs in tests/integration.

asyncio's own event loop keeps working: its wake-up pipe is a `socketpair()`, which
neither connects nor binds.

Hypothesis runs without its clocks (no deadline per example, no "too slow" health
check): the profile is loaded in tests/conftest.py, for every tier.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest


class IOInUnitTest(AssertionError):
    pass


def _forbidden(what: str) -> Any:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise IOInUnitTest(
            f"a unit test {what}: move it to tests/integration (tests/unit/conftest.py)"
        )

    return refuse


@pytest.fixture(autouse=True)
def _no_sockets_no_processes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for method in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, method, _forbidden(f"opens a socket ({method})"))
    monkeypatch.setattr(subprocess.Popen, "__init__", _forbidden("starts a process"))
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "execv", "execve"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, _forbidden(f"starts a process (os.{name})"))
    yield
