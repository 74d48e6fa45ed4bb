"""The bridge daemon (`python -m bridge run`) as a child process, for tests that need
the real thing: integration tests and the Home Assistant test."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
_LIMIT_SHIM = (
    "-c",
    "import os, resource, sys; soft, hard = map(int, sys.argv[1].split(':')); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])",
)


class BridgeProcess:
    """The bridge daemon in a child process, stopped with SIGTERM like systemd would."""

    def __init__(
        self,
        config: dict[str, Any],
        workdir: Path,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        nofile: int | tuple[int, int] | None = None,
    ):
        self.config_path = workdir / "bridge.yaml"
        self.write_config(config)
        self.log_path = workdir / "bridge.log"
        # Files the bridge keeps by default (the Sparkplug bdSeq) go to the test's folder,
        # not to the home of whoever runs the tests.
        base = {k: v for k, v in os.environ.items() if k != "STATE_DIRECTORY"}
        base["XDG_STATE_HOME"] = str(workdir / "state")
        self.env = {**base, **(env or {})}
        self.args = args  # after `run -c <file>`, e.g. ("--shard", "1/2")
        # The child's descriptor limit, if given: soft and hard, or both the same.
        self.nofile = (nofile, nofile) if isinstance(nofile, int) else nofile
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    def write_config(self, config: dict[str, Any] | str) -> None:
        """Replace the configuration file (a dict as YAML, or the text as given)."""
        if isinstance(config, str):
            text = config
        else:
            # Written the way a person types it: enum labels such as off/on unquoted,
            # which YAML 1.1 reads as booleans unless the loader keeps the text.
            text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
            text = text.replace(": 'off'", ": off").replace(": 'on'", ": on")
        self.config_path.write_text(text)

    def reload(self) -> None:
        """SIGHUP, as `systemctl reload` sends it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        # A descriptor limit is set by a shim that then becomes the bridge (same pid).
        shim = [] if self.nofile is None else [*_LIMIT_SHIM, "{}:{}".format(*self.nofile)]
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *shim,
                "-m",
                "bridge",
                "--log-level",
                "debug",
                "run",
                "-c",
                str(self.config_path),
                *self.args,
            ],
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait; returns the exit code (kills on timeout)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.proc.poll() is None and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.returncode = self.proc.returncode
        self._log.close()
        return self.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
