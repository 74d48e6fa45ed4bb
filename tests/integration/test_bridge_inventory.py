"""bridge/info and bridge/devices on a real broker (issue 18, item 6): retained, so a
subscriber that comes later (a dashboard, a script) finds what the bridge runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiomqtt
import pytest

from bridge import __version__

pytestmark = pytest.mark.integration


async def _retained(broker: Any, topic: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(topic)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                async for message in client.messages:
                    if message.retain:
                        found[str(message.topic)] = bytes(message.payload)  # type: ignore[arg-type]
    return found


async def test_info_and_devices_are_retained_for_later_subscribers(
    broker, sim_servers, mqtt_watcher, run_bridge
) -> None:
    server = await sim_servers((1, 2))
    watcher = await mqtt_watcher(broker, "modbus/#")
    points = [{"name": "level", "table": "holding", "address": 0, "type": "uint16",
               "unit": "cm", "writable": True}]  # fmt: skip
    bridge = await run_bridge(
        {
            "version": 1,
            "mqtt": {"host": broker.host, "port": broker.port, "client_id": "inv"},
            "hosts": [{"name": "gw", "address": "127.0.0.1", "port": server.port}],
            "devices": [{"name": "tank-{unit}", "host": "gw", "units": [1, 2], "points": points}],
        }
    )
    await watcher.wait_for("modbus/bridge/devices", timeout=10)
    assert await bridge.terminate() == 0
    retained = await _retained(broker, "modbus/bridge/#")
    info = json.loads(retained["modbus/bridge/info"])
    assert info["version"] == __version__ and info["client_id"] == "inv"
    assert info["config"]["devices"] == 2 and info["config"]["points"] == 2
    devices = json.loads(retained["modbus/bridge/devices"])
    assert [(d["name"], d["host"], d["unit"]) for d in devices] == [
        ("tank-1", "gw", 1),
        ("tank-2", "gw", 2),
    ]
    assert devices[0]["link"] == f"127.0.0.1:{server.port}"
    assert devices[0]["points"] == [
        {"name": "level", "table": "holding", "address": 0, "type": "uint16", "unit": "cm",
         "writable": True}
    ]  # fmt: skip
    assert devices[1]["topics"]["set"] == "modbus/tank-2/set"
