"""A scale taken from another register, end to end: the simulator serves the registers,
the real bridge reads them through a real Mosquitto. The published value has the scale
factor applied (a scale factor read far from its point, in the same block), a changed
scale factor rescales a value whose register did not change, and a write lands divided
by 10^sf."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from broker import free_port

from bridge.config import parse_config
from bridge.simulate import SimFleet

pytestmark = pytest.mark.integration

CONFIG = """\
version: 1
mqtt: {{host: 127.0.0.1, port: {mqtt}}}
hosts:
  - {{name: inv, address: 127.0.0.1, port: {modbus}}}
devices:
  - name: inverter
    host: inv
    unit: 1
    interval: 0.2s
    max_gap: 0
    points:
      - {{name: limit, table: holding, address: 0, type: int16, writable: true, unit: W,
         scale_factor: limit_sf}}
      - {{name: limit_sf, table: holding, address: 1, type: int16}}
      - {{name: voltage, table: holding, address: 100, type: uint16, unit: V,
         scale_factor: voltage_sf}}
      - {{name: voltage_sf, table: holding, address: 2, type: int16}}
"""


def s16(value: int) -> int:
    return value & 0xFFFF


async def test_values_publish_and_write_with_their_scale_factor(
    broker: Any, mqtt_watcher: Any, run_bridge: Any, tmp_path: Path
) -> None:
    text = CONFIG.format(mqtt=broker.port, modbus=free_port())
    fleet = SimFleet(parse_config(text, env={}), seed=1)
    await fleet.start()
    try:
        await _run(fleet, text, broker, mqtt_watcher, run_bridge)
    finally:
        await fleet.stop()


async def _run(fleet: SimFleet, text: str, broker: Any, mqtt_watcher: Any, run_bridge: Any) -> None:
    assert fleet._task is not None
    fleet._task.cancel()  # values hold still: the test sets the registers
    unit = fleet.hosts[0].server.unit(1)
    unit.set_registers("holding", 0, [1234, s16(-2), s16(-1)])
    unit.set_registers("holding", 100, [2301])

    watcher = await mqtt_watcher(broker, "modbus/#")
    bridge = await run_bridge(text)
    state = await watcher.wait_for(
        lambda m: m.topic == "modbus/inverter" and m.json().get("voltage") is not None, timeout=15
    )
    values = {k: v for k, v in state.json().items() if k != "last_seen"}
    assert values == {"limit": 12.34, "limit_sf": -2, "voltage": 230.1, "voltage_sf": -1}

    # Only the scale factor changes: the value is published again, rescaled.
    unit.set_registers("holding", 2, [s16(-2)])
    await watcher.wait_for(
        lambda m: m.topic == "modbus/inverter" and m.json().get("voltage") == 23.01, timeout=10
    )

    async with aiomqtt.Client(broker.host, broker.port) as client:
        mark = watcher.mark()
        await client.publish("modbus/inverter/set", json.dumps({"limit": 56.78}), qos=1)
        answer = await watcher.wait_for("modbus/inverter/set/result", since=mark, timeout=10)
    assert answer.json() == {"status": "ok", "data": {"limit": 56.78}}
    assert unit.get_registers("holding", 0, 1) == [5678]  # 56.78 / 10^-2

    assert await bridge.terminate() == 0
    assert "Traceback" not in bridge.log()
