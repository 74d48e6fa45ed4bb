"""Home Assistant discovery end to end, on a real Mosquitto with the real bridge process:
retained discovery for every device, the birth message, removal of stale discovery at
start, and commands sent the way Home Assistant sends them."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import pytest
from fleet import mqtt_section

pytestmark = pytest.mark.integration

PREFIX = "homeassistant"
CLIENT = "bridge-under-test"


def _points() -> list[dict[str, Any]]:
    return [
        {"name": "temp", "table": "input", "address": 0, "type": "int16", "scale": 0.1,
         "unit": "°C", "device_class": "temperature", "state_class": "measurement"},
        {"name": "setpoint", "table": "holding", "address": 0, "type": "int16", "scale": 0.5,
         "writable": True, "min": 20, "max": 80, "unit": "°C"},
        {"name": "pump", "table": "coil", "address": 0, "writable": True},
        {"name": "mode", "table": "holding", "address": 1, "type": "uint16", "writable": True,
         "values": {0: "off", 1: "eco", 2: "comfort"}},
        {"name": "alarm", "table": "discrete", "address": 0},
    ]  # fmt: skip


def _config(broker: Any, server: Any, units: list[int], **ha: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "mqtt": mqtt_section(broker),
        "homeassistant": {"enabled": True, **ha},
        "hosts": [{"name": "gw", "address": "127.0.0.1", "port": server.port, "timeout": 0.5}],
        "devices": [
            {
                "name": f"boiler-{unit}",
                "host": "gw",
                "unit": unit,
                "interval": "200ms",
                "manufacturer": "Acme",
                "points": _points(),
            }
            for unit in units
        ],
    }


def _topic(device: str) -> str:
    return f"{PREFIX}/device/{CLIENT}/{device}/config"


def _load(server: Any, unit: int) -> None:
    u = server.unit(unit)
    u.set_registers("input", 0, [struct.unpack(">H", struct.pack(">h", 215))[0]])  # 21.5 °C
    u.set_registers("holding", 0, [90, 1])  # setpoint 45.0, mode eco
    u.set_bits("coil", 0, [False])
    u.set_bits("discrete", 0, [True])


async def test_discovery_is_retained_for_every_device(
    broker, sim_servers, mqtt_watcher, run_bridge
) -> None:
    server = await sim_servers([1, 2, 3])
    for unit in (1, 2, 3):
        _load(server, unit)
    live = await mqtt_watcher(broker, "modbus/#")
    await run_bridge(_config(broker, server, [1, 2, 3]))
    for unit in (1, 2, 3):
        await live.wait_for(f"modbus/boiler-{unit}", timeout=10)
    # A client that connects later (Home Assistant starting) gets every device at once.
    late = await mqtt_watcher(broker, f"{PREFIX}/#")
    for device in ("bridge", "boiler-1", "boiler-2", "boiler-3"):
        message = await late.wait_for(_topic(device), timeout=5)
        assert message.retain
        doc = message.json()
        assert doc["o"]["name"] == "modbus-mqtt-bridge"
        assert doc["dev"]["identifiers"] == [f"{CLIENT}/{device}"]
    doc = late.latest(_topic("boiler-2")).json()  # type: ignore[union-attr]
    assert doc["dev"]["manufacturer"] == "Acme"
    assert doc["state_topic"] == "modbus/boiler-2"
    assert [a["topic"] for a in doc["availability"]] == [
        "modbus/bridge/state",
        "modbus/boiler-2/availability",
    ]
    assert {k: c["p"] for k, c in doc["cmps"].items()} == {
        "temp": "sensor",
        "setpoint": "number",
        "pump": "switch",
        "mode": "select",
        "alarm": "binary_sensor",
    }
    assert doc["cmps"]["setpoint"]["command_topic"] == "modbus/boiler-2/setpoint/set"


async def test_birth_republishes_discovery_then_state(
    broker, sim_servers, mqtt_watcher, run_bridge
) -> None:
    server = await sim_servers([1, 2])
    for unit in (1, 2):
        _load(server, unit)
    watcher = await mqtt_watcher(broker, "#")
    await run_bridge(_config(broker, server, [1, 2]))
    for unit in (1, 2):
        await watcher.wait_for(f"modbus/boiler-{unit}", timeout=10)
    await watcher.wait_for(_topic("boiler-2"), timeout=5)

    since = watcher.mark()
    # Home Assistant's birth: `online`, not retained, on its status topic.
    async with _client(broker) as ha:
        await ha.publish(f"{PREFIX}/status", b"online", qos=1, retain=False)
    for unit in (1, 2):
        config = await watcher.wait_for(_topic(f"boiler-{unit}"), timeout=5, since=since)
        state = await watcher.wait_for(f"modbus/boiler-{unit}", timeout=5, since=since)
        assert config.time <= state.time  # discovery first, then the state
        assert state.json()["setpoint"] == 45.0
        availability = await watcher.wait_for(
            f"modbus/boiler-{unit}/availability", timeout=5, since=since
        )
        assert availability.text == "online"
    # Anything else on the status topic (its last will `offline`) changes nothing.
    since = watcher.mark()
    async with _client(broker) as ha:
        await ha.publish(f"{PREFIX}/status", b"offline", qos=1, retain=False)
        await ha.publish("modbus/boiler-1/get", b"", qos=1)  # a marker: answered after
    await watcher.wait_for("modbus/boiler-1/set/result", timeout=5, since=since)
    assert not [m for m in watcher.messages[since:] if m.topic.startswith(f"{PREFIX}/device/")]


async def test_stale_discovery_of_this_bridge_is_cleared_at_start(
    broker, sim_servers, mqtt_watcher, run_bridge
) -> None:
    server = await sim_servers([1, 2])
    for unit in (1, 2):
        _load(server, unit)
    # Someone else's retained discovery under our client id: never touched.
    foreign = {"dev": {"identifiers": ["zigbee-1"]}, "o": {"name": "zigbee2mqtt"}, "cmps": {}}
    async with _client(broker) as other:
        await other.publish(_topic("foreign"), json.dumps(foreign), qos=1, retain=True)

    first = await run_bridge(_config(broker, server, [1, 2]))
    watcher = await mqtt_watcher(broker, f"{PREFIX}/#")
    await watcher.wait_for(_topic("boiler-2"), timeout=10)
    assert await first.terminate() == 0

    # Restart without boiler-2, and with the pump of boiler-1 left out of Home Assistant.
    config = _config(broker, server, [1])
    config["devices"][0]["points"][2]["homeassistant"] = False
    since = watcher.mark()
    await run_bridge(config)
    cleared = await watcher.wait_for(
        lambda m: m.topic == _topic("boiler-2") and m.payload == b"", timeout=10, since=since
    )
    assert cleared.payload == b""
    stub = await watcher.wait_for(
        lambda m: m.topic == _topic("boiler-1") and "pump" in m.json()["cmps"],
        timeout=10,
        since=since,
    )
    assert stub.json()["cmps"]["pump"] == {"p": "switch"}  # how HA removes one entity
    assert stub.json()["cmps"]["temp"]["p"] == "sensor"

    # What is retained now: boiler-2 gone, the foreign message untouched.
    check = await mqtt_watcher(broker, f"{PREFIX}/#")
    await check.wait_for(_topic("boiler-1"), timeout=5)
    await check.wait_for(_topic("foreign"), timeout=5)
    assert check.latest(_topic("foreign")).json() == foreign  # type: ignore[union-attr]
    assert check.latest(_topic("boiler-2")) is None


async def test_command_sent_like_home_assistant_reaches_the_device(
    broker, sim_servers, mqtt_watcher, run_bridge
) -> None:
    """Home Assistant's number, switch and select send plain payloads on the
    command_topic from discovery; each lands on the device."""
    server = await sim_servers([1])
    _load(server, 1)
    watcher = await mqtt_watcher(broker, "#")
    await run_bridge(_config(broker, server, [1]))
    doc = (await watcher.wait_for(_topic("boiler-1"), timeout=10)).json()
    await watcher.wait_for("modbus/boiler-1/availability", timeout=10)
    commands = {key: c.get("command_topic") for key, c in doc["cmps"].items()}

    async with _client(broker) as ha:
        # number.set_value sends the number as text ("62" or "62.5")
        await ha.publish(commands["setpoint"], b"62.5", qos=0)
        # switch.turn_on sends payload_on
        await ha.publish(commands["pump"], doc["cmps"]["pump"]["payload_on"].encode(), qos=0)
        # select.select_option sends the option
        await ha.publish(commands["mode"], b"comfort", qos=0)
    unit = server.unit(1)
    await watcher.wait_for(
        lambda m: (
            m.topic == "modbus/boiler-1"
            and m.json().get("setpoint") == 62.5
            and m.json().get("pump") is True
            and m.json().get("mode") == "comfort"
        ),
        timeout=10,
    )
    assert unit.get_registers("holding", 0, 2) == [125, 2]
    assert unit.get_bits("coil", 0) == [True]
    result = "modbus/boiler-1/set/result"  # the answers may trail the state
    await watcher.wait_for(lambda m: len(watcher.on(result)) >= 3, timeout=5)
    results = [m.json() for m in watcher.on(result)]
    assert [r["status"] for r in results] == ["ok", "ok", "ok"]


def _client(broker: Any) -> Any:
    import aiomqtt

    return aiomqtt.Client(broker.host, broker.port)


async def test_a_retained_birth_is_not_filtered_out_like_a_retained_command(
    broker, sim_servers, mqtt_watcher, run_bridge
) -> None:
    """Commands are subscribed with "do not send retained"; Home Assistant's status topic
    is not: some setups retain the birth message, and it must still count."""
    server = await sim_servers([1])
    _load(server, 1)
    async with _client(broker) as ha:
        await ha.publish(f"{PREFIX}/status", b"online", qos=1, retain=True)
    watcher = await mqtt_watcher(broker, "modbus/#")
    bridge = await run_bridge(_config(broker, server, [1]))
    await watcher.wait_for("modbus/boiler-1", timeout=10)
    deadline = asyncio.get_running_loop().time() + 5
    while "Home Assistant is online" not in bridge.log():
        assert asyncio.get_running_loop().time() < deadline, bridge.log()[-2000:]
        await asyncio.sleep(0.1)
