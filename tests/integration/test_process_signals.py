"""Signals before the event loop runs, in a child process: SIGHUP must not end a
reloadable process."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

# The child starts with SIGHUP's default action, as a command started from a terminal
# does: the test must not depend on how the suite was started (`nohup make test` runs
# it with SIGHUP ignored, and children inherit that).
CODE = """
import os, signal
signal.signal(signal.SIGHUP, signal.SIG_DFL)
from bridge.process import Process
p = Process(hard_exit_after=1.0, reloadable={reloadable})
p.hold_reloads()
os.kill(os.getpid(), signal.SIGHUP)
print("alive")
"""


def _run(reloadable: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CODE.format(reloadable=reloadable)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_reload_request_during_start_up_is_ignored_not_fatal() -> None:
    result = _run(reloadable=True)
    assert result.returncode == 0 and result.stdout.strip() == "alive", result.stderr


def test_other_commands_keep_sighups_default() -> None:
    result = _run(reloadable=False)  # `demo` in a closed terminal: the hangup ends it
    assert result.returncode == -signal.SIGHUP
