"""A virtual null-modem cable: two pseudo-terminals joined by `socat`.

`plug()` starts socat with two stable link names (like /dev/serial/by-id/ names);
`unplug()` kills it, which hangs up both ends, and removes both links, as pulling a
USB adapter does. Plugging again recreates the links at the same paths.
A pty ignores baud rate and timing: bytes arrive at once.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


class SerialPair:
    def __init__(self, bridge: Path, device: Path) -> None:
        self.bridge = bridge  # the end the bridge opens
        self.device = device  # the end the simulated devices sit on
        self._process: subprocess.Popen[bytes] | None = None

    def plug(self, timeout: float = 5.0) -> None:
        if self._process is not None:
            return
        self._process = subprocess.Popen(
            [
                "socat",
                f"pty,raw,echo=0,link={self.bridge}",
                f"pty,raw,echo=0,link={self.device}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not (self.bridge.exists() and self.device.exists()):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("socat did not create the pty pair")
            time.sleep(0.01)

    def unplug(self, timeout: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait(timeout)
        # Killed, socat cannot remove its links: they are left dangling, pointing at
        # /dev/pts/N. Once that number is given to another pty (another test's pair, on
        # the other xdist worker or in another run), a bridge reopening this link would
        # open that pty, lock it and talk to someone else's bus: the links go with the
        # adapter, as udev removes /dev/serial/by-id/ names.
        for link in (self.bridge, self.device):
            if link.is_symlink():
                link.unlink()

    def pty_of(self, path: Path) -> str:
        """The /dev/pts/N a link points to (what a process's fd shows)."""
        return os.path.realpath(path)
