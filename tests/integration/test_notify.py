"""systemd's notify protocol, end to end (issue 18, item 6): the bridge run as systemd
would run a `Type=notify` unit with `WatchdogSec=`, with a NOTIFY_SOCKET of the test's
own. READY=1 comes only once the configuration is loaded and the MQTT link is up (the
broker is started late on purpose), WATCHDOG=1 keeps coming from the event loop,
STOPPING=1 at SIGTERM; SIGHUPs sent all through the start-up (from the moment the
process has taken over the signal, as Python starts) do not end it.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

SIGHUP_BIT = 1 << (signal.SIGHUP - 1)


def _config(broker: Any, port: int) -> dict[str, Any]:
    return {
        "version": 1,
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": "notify-test"},
        "hosts": [{"name": "gw", "address": "127.0.0.1", "port": port, "timeout": 0.5}],
        "devices": [
            {"name": "dev", "host": "gw", "unit": 1, "interval": "500ms",
             "points": [{"name": "x", "table": "holding", "address": 0, "type": "uint16"}]}
        ],
    }  # fmt: skip


def _takes_sighup(pid: int) -> bool:
    """The process ignores or catches SIGHUP (so it no longer ends it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    masks = {k: int(v, 16) for k, _, v in (line.partition(":\t") for line in status.splitlines())
             if k in ("SigIgn", "SigCgt")}  # fmt: skip
    return any(mask & SIGHUP_BIT for mask in masks.values())


async def test_ready_after_mqtt_watchdog_pings_and_sighup_in_start_up(
    broker_factory, sim_servers, run_bridge, tmp_path: Path
) -> None:
    server = await sim_servers((1,))
    broker = broker_factory(start=False)  # MQTT comes up late: READY must wait for it
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    received: list[tuple[float, str]] = []

    async def collect(until: float) -> None:
        while time.monotonic() < until:
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 4096), until - time.monotonic())
            except TimeoutError:
                return
            received.extend((time.monotonic(), line) for line in data.decode().splitlines())

    env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}
    try:
        bridge = await run_bridge(_config(broker, server.port), env=env)
        deadline = time.monotonic() + 10
        while not _takes_sighup(bridge.pid):
            assert bridge.alive() and time.monotonic() < deadline
            await asyncio.sleep(0.005)
        # SIGHUP all through start-up: the bridge must live on.
        hups = 0
        collector = asyncio.create_task(collect(time.monotonic() + 2.0))
        while not collector.done():
            bridge.reload()
            hups += 1
            await asyncio.sleep(0.05)
        assert bridge.alive(), bridge.log()
        lines = [line for _, line in received]
        assert "READY=1" not in lines  # no broker yet
        assert lines.count("WATCHDOG=1") >= 3  # pinged every 0.5 s meanwhile
        started = time.monotonic()
        await broker.astart()
        await collect(started + 10)
        ready = [t for t, line in received if line == "READY=1"]
        assert len(ready) == 1 and ready[0] >= started, received
        assert any(line.startswith("STATUS=") and "MQTT connected" in line for _, line in received)
        pings = [t for t, line in received if line == "WATCHDOG=1" and t > ready[0]]
        assert len(pings) >= 2
        mark = len(received)
        assert await bridge.terminate() == 0
        await collect(time.monotonic() + 0.5)
        assert "STOPPING=1" in [line for _, line in received[mark:]]
        assert hups > 10 and "Traceback" not in bridge.log()
    finally:
        sock.close()
