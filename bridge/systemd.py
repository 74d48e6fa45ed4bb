"""systemd integration as a feature of the bridge (`Type=notify`, `WatchdogSec=`).

Under systemd with ``Type=notify`` (``$NOTIFY_SOCKET``, `bridge.notify`) the bridge says
``READY=1`` once its configuration is loaded and its MQTT link is up (the first connect),
so `systemctl start` returns, and `systemctl reload` is sent, only when the bridge takes
SIGHUP as a reload. With ``WatchdogSec=`` it pings from the event loop at half that
interval; a loop that stops turning stops the pings, and systemd restarts the bridge.
``STOPPING=1`` when shutdown begins. Outside systemd it does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib

from bridge.feature import Feature, Hub
from bridge.notify import Notifier


class Systemd(Feature):
    name = "systemd"

    def __init__(self, hub: Hub, notifier: Notifier | None = None) -> None:
        super().__init__(hub)
        self.notifier = Notifier() if notifier is None else notifier
        self.ready = False
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.notifier.enabled and self.notifier.watchdog is not None:
            self._watchdog = asyncio.create_task(self.notifier.keep_alive(), name="watchdog")

    def connected(self) -> None:
        if self.ready:
            return
        self.ready = True
        config = self.hub.config
        self.notifier.ready(
            f"{len(config.hosts)} hosts, {len(config.devices)} devices; MQTT connected to "
            f"{config.mqtt.host}:{config.mqtt.port}"
        )

    def stopping(self) -> None:
        self.notifier.stopping()

    async def stop(self) -> None:
        task, self._watchdog = self._watchdog, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
