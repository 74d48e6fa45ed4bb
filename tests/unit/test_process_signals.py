"""Signals before the event loop runs: SIGHUP must not end a reloadable process."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CODE = """
import os, signal
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
