"""Retained commands, said exactly (issue 18, item 4), against a real Mosquitto.

A command published with the retain flag while the bridge is subscribed arrives live and
is executed; clearing it the documented way (`mosquitto_pub -r -n`: an empty retained
message, which the broker passes on to live subscribers) is ignored without an answer or
a warning; after the clear nothing is replayed when the bridge connects again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt
import pytest
from fleet import mqtt_section

from bridge.sim import SimServer

pytestmark = pytest.mark.integration

WRITES = frozenset({5, 6, 15, 16, 22})
POINTS = [
    {"name": "level", "table": "holding", "address": 0, "type": "uint16", "writable": True},
    {"name": "label", "table": "holding", "address": 4, "type": "string", "length": 4,
     "writable": True},
]  # fmt: skip


def _config(broker: Any, server: SimServer, protocol: str) -> dict[str, Any]:
    return {
        "version": 1,
        "mqtt": mqtt_section(broker, protocol=protocol),
        "hosts": [{"name": "gw", "address": "127.0.0.1", "port": server.port, "timeout": 0.5}],
        "devices": [
            {"name": "boiler", "host": "gw", "unit": 1, "interval": "500ms", "points": POINTS}
        ],
    }


def _writes(server: SimServer) -> list[tuple[int, int | None, list[int]]]:
    return [
        (r.function, r.address, list(r.values or ()))
        for r in server.request_log
        if r.function in WRITES
    ]


async def _publish(broker: Any, topic: str, payload: bytes, *, retain: bool = False) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish(topic, payload, qos=1, retain=retain)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_live_retained_command_runs_and_clearing_it_is_silent(
    broker, sim_servers, mqtt_watcher, run_bridge, protocol: str
) -> None:
    server = await sim_servers((1,))
    watcher = await mqtt_watcher(broker, "modbus/#")
    bridge = await run_bridge(_config(broker, server, protocol))
    await watcher.wait_for(
        lambda m: m.topic == "modbus/boiler/availability" and m.payload == b"online", timeout=10
    )

    # `mosquitto_pub -r` while the bridge listens: a live command, executed.
    mark = watcher.mark()
    await _publish(broker, "modbus/boiler/level/set", b"30", retain=True)
    answer = await watcher.wait_for("modbus/boiler/set/result", since=mark)
    assert answer.json() == {"status": "ok", "data": {"level": 30}}
    assert _writes(server) == [(6, 0, [30])]

    # Cleared the documented way, on both set topics: no answer, no warning. A command
    # sent right after gets the next answer (the clears would have been answered first).
    mark = watcher.mark()
    await _publish(broker, "modbus/boiler/level/set", b"", retain=True)
    await _publish(broker, "modbus/boiler/set", b"", retain=True)
    await _publish(broker, "modbus/boiler/set", b'{"level": 31, "transaction": "after"}')
    answer = await watcher.wait_for("modbus/boiler/set/result", since=mark)
    assert answer.json()["transaction"] == "after"
    await asyncio.sleep(0.5)
    assert [m.json().get("transaction") for m in watcher.messages[mark:]
            if m.topic == "modbus/boiler/set/result"] == ["after"]  # fmt: skip
    assert _writes(server) == [(6, 0, [30]), (6, 0, [31])]
    log = bridge.log()
    assert "empty payload (a retained command cleared): ignored" in log
    assert "WARNING" not in log, log

    # An empty text is still writable, as JSON.
    mark = watcher.mark()
    await _publish(broker, "modbus/boiler/set", b'{"label": ""}')
    answer = await watcher.wait_for("modbus/boiler/set/result", since=mark)
    assert answer.json() == {"status": "ok", "data": {"label": ""}}

    # The clear reached the broker: after a restart of the bridge nothing is replayed.
    assert await bridge.terminate() == 0
    mark = watcher.mark()
    again = await run_bridge(_config(broker, server, protocol))
    await watcher.wait_for(
        lambda m: m.topic == "modbus/boiler/availability" and m.payload == b"online",
        timeout=10,
        since=mark,
    )
    await asyncio.sleep(1.0)
    assert watcher.on("modbus/boiler/set/result")[-1].json()["data"] == {"label": ""}
    assert "retained" not in again.log()
