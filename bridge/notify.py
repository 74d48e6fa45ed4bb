"""systemd's service notifications (`sd_notify(3)`), without a library: a datagram of
``KEY=value`` lines to the unix socket named by ``$NOTIFY_SOCKET``.

With ``Type=notify`` the unit is started (and `systemctl reload` waits) until the bridge
says ``READY=1``; with ``WatchdogSec=`` systemd expects ``WATCHDOG=1`` at least that
often (``$WATCHDOG_USEC``) and restarts a bridge that stops sending it. Outside systemd
(no ``$NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("bridge.notify")

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"


class Notifier:
    """Sends notifications to the service manager, if there is one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get(NOTIFY_SOCKET, "")
        # "@name" is a socket in the abstract namespace (a leading NUL byte).
        self.address = "\0" + path[1:] if path.startswith("@") else path
        self.watchdog = watchdog_interval(env)
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address.startswith(("/", "\0"))

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` lines; False when there is no manager or it failed (a
        failure is logged once: the bridge runs on)."""
        if not self.enabled:
            return False
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(message, self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("cannot notify the service manager (%s): %s", NOTIFY_SOCKET, exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def ping(self) -> bool:
        return self.send("WATCHDOG=1")

    async def keep_alive(self) -> None:
        """Ping the watchdog from the event loop, at half its interval, until cancelled.
        A loop that stops turning stops the pings, and systemd restarts the bridge."""
        interval = self.watchdog
        if interval is None or not self.enabled:
            return
        while True:
            self.ping()
            await asyncio.sleep(interval / 2)


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds within which systemd wants a ping (``$WATCHDOG_USEC``), or None: no
    watchdog, or one meant for another process (``$WATCHDOG_PID``)."""
    text = environ.get(WATCHDOG_USEC, "")
    pid = environ.get(WATCHDOG_PID, "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(text)
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None
