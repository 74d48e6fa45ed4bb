"""A real Home Assistant Core takes the bridge's discovery: entities with the right
platform, unit, device class and state; unavailable when the device is; its
number, switch and select controls reach the simulated device; nothing about
discovery in its log.

Runs a test Mosquitto, the simulator, the bridge process and Home Assistant Core
(`make ha-test`; 2025.4.4 and 2025.11.3 were tried, see conftest.py). The entity ids are
the ones the bridge suggests (`default_entity_id`, and `object_id` for releases before
2025.10) on every release, and Home Assistant logs no MQTT warning for the whole
discovery (2025.10 and later warn about every entity that has `object_id` without
`default_entity_id`). What Home Assistant showed is printed (`-s`) and written to
`ha-report.txt` in the test's temporary directory.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

pytestmark = pytest.mark.integration

CLIENT = "hass-test"
CONTROL_TOPIC = "homeassistant/device/control/bad/config"


def _words(fmt: str, value: float) -> list[int]:
    raw = struct.pack(">" + fmt, value)
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def _text(text: str) -> list[int]:
    raw = text.encode("latin-1").ljust(8, b"\x00")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, 8, 2)]


def _config(
    broker: Any, server: Any, *, device: str, unit: int, client: str, output: str
) -> dict[str, Any]:
    points = [
        {"name": "temp", "table": "input", "address": 0, "type": "int16", "scale": 0.1,
         "precision": 1, "unit": "°C", "device_class": "temperature",
         "state_class": "measurement"},
        {"name": "energy", "table": "input", "address": 2, "type": "uint32", "scale": 0.1,
         "precision": 1, "unit": "kWh", "device_class": "energy",
         "state_class": "total_increasing"},
        {"name": "flow", "table": "input", "address": 4, "type": "float32", "unit": "L/min",
         "device_class": "volume_flow_rate", "state_class": "measurement"},
        {"name": "setpoint", "table": "holding", "address": 0, "type": "int16", "scale": 0.5,
         "writable": True, "min": 20, "max": 80, "unit": "°C", "device_class": "temperature",
         "display_name": "Flow setpoint", "icon": "mdi:thermometer"},
        {"name": "mode", "table": "holding", "address": 1, "type": "uint16", "writable": True,
         "values": {0: "off", 1: "eco", 2: "comfort"}, "entity_category": "config"},
        {"name": "state", "table": "holding", "address": 2, "type": "uint16",
         "values": {0: "idle", 1: "heating", 2: "fault"}},
        {"name": "serial", "table": "holding", "address": 3, "type": "string", "length": 2,
         "entity_category": "diagnostic"},
        {"name": "label", "table": "holding", "address": 10, "type": "string", "length": 4,
         "writable": True, "display_name": "Nameplate"},
        {"name": "pump", "table": "coil", "address": 0, "writable": True,
         "device_class": "switch"},
        {"name": "alarm", "table": "discrete", "address": 0, "device_class": "problem"},
    ]  # fmt: skip
    return {
        "version": 1,
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "client_id": client,
            "base_topic": client,
            "output": output,
        },
        "homeassistant": {"enabled": True},
        "hosts": [{"name": "gw", "address": "127.0.0.1", "port": server.port, "timeout": 0.3}],
        "devices": [
            {
                "name": device,
                "host": "gw",
                "unit": unit,
                "interval": "500ms",
                "manufacturer": "Acme",
                "model": "B-200",
                "area": "Plant room",
                "heartbeat": "10s",
                "points": points,
            }
        ],
    }


def _load(server: Any, unit_id: int) -> None:
    unit = server.unit(unit_id)
    unit.set_registers(
        "input", 0, [*_words("h", 215), 0, *_words("I", 12345), *_words("f", math.nan)]
    )
    unit.set_registers("holding", 0, [90, 1, 1, *_words("H", 0x4142), *_words("H", 0x3132)])
    unit.set_registers("holding", 10, [*_words("H", 0x4B31), 0, 0, 0])  # "K1"
    unit.set_bits("coil", 0, [False])
    unit.set_bits("discrete", 0, [True])


def _mqtt_warning(line: str) -> bool:
    return (" WARNING " in line or " ERROR " in line) and "homeassistant.components.mqtt" in line


# A second bridge publishes a second device with attribute output (a topic per point).
ATTRIBUTE_CLIENT = "hass-attr"
ATTRIBUTE_EXPECTED = {
    "sensor.kettle_temp": "21.5",
    "sensor.kettle_flow": "unknown",  # null: an empty payload
    "number.kettle_setpoint": "45.0",
    "select.kettle_mode": "eco",
    "sensor.kettle_state": "heating",
    "sensor.kettle_serial": "AB12",
    "text.kettle_label": "K1",
    "switch.kettle_pump": "off",
    "binary_sensor.kettle_alarm": "on",
}

# entity id -> (state, unit, device class) as Home Assistant must show them
EXPECTED = {
    "sensor.boiler_temp": ("21.5", "°C", "temperature"),
    "sensor.boiler_energy": ("1234.5", "kWh", "energy"),
    "sensor.boiler_flow": ("unknown", "L/min", "volume_flow_rate"),  # NaN -> null -> unknown
    "number.boiler_setpoint": ("45.0", "°C", "temperature"),
    "select.boiler_mode": ("eco", None, None),
    "sensor.boiler_state": ("heating", None, "enum"),
    "sensor.boiler_serial": ("AB12", None, None),
    "text.boiler_label": ("K1", None, None),  # a writable string; named "Nameplate"
    "switch.boiler_pump": ("off", None, "switch"),
    "binary_sensor.boiler_alarm": ("on", None, "problem"),
}
BRIDGE_SENSORS = {
    f"sensor.{CLIENT.replace('-', '_')}_{name}"
    for name in ("uptime", "hosts_connected", "devices_online", "requests", "errors", "memory")
}


async def test_home_assistant_takes_discovery_and_controls_the_device(
    broker, sim_servers, run_bridge, home_assistant, *, ha_release, tmp_path: Path
) -> None:
    report: list[str] = []
    server = await sim_servers([1, 2])
    _load(server, 1)
    _load(server, 2)
    bridge = await run_bridge(
        _config(broker, server, device="boiler", unit=1, client=CLIENT, output="json")
    )
    second = await run_bridge(
        _config(
            broker, server, device="kettle", unit=2, client=ATTRIBUTE_CLIENT, output="attribute"
        )
    )
    ha = await home_assistant(broker.port)
    report.append(f"Home Assistant Core {ha_release.version} (HTTP API up, onboarded)")

    # -- entities: platform, unit, device class, state
    states = await ha.wait_entities(
        set(EXPECTED) | BRIDGE_SENSORS | set(ATTRIBUTE_EXPECTED), timeout=60
    )
    for entity_id, (state, unit, device_class) in EXPECTED.items():
        got = await ha.wait_state(entity_id, state, timeout=15)
        attrs = got["attributes"]
        report.append(
            f"{entity_id}: state={got['state']!r} unit={attrs.get('unit_of_measurement')!r}"
            f" device_class={attrs.get('device_class')!r}"
            f" name={attrs.get('friendly_name')!r}"
        )
        assert attrs.get("unit_of_measurement") == unit, entity_id
        assert attrs.get("device_class") == device_class, entity_id
    temp = states["sensor.boiler_temp"]["attributes"]
    assert temp["state_class"] == "measurement"
    assert states["sensor.boiler_energy"]["attributes"]["state_class"] == "total_increasing"
    setpoint = states["number.boiler_setpoint"]["attributes"]
    assert (setpoint["min"], setpoint["max"], setpoint["step"], setpoint["mode"]) == (
        20.0,
        80.0,
        0.5,
        "box",
    )
    assert setpoint["friendly_name"] == "boiler Flow setpoint"
    assert setpoint["icon"] == "mdi:thermometer"
    assert states["select.boiler_mode"]["attributes"]["options"] == ["off", "eco", "comfort"]
    assert states["sensor.boiler_state"]["attributes"]["options"] == ["idle", "heating", "fault"]
    for entity_id, state in ATTRIBUTE_EXPECTED.items():
        await ha.wait_state(entity_id, state, timeout=15)
    report.append(f"second bridge, output: attribute: {ATTRIBUTE_EXPECTED} (as expected)")

    # -- the device registry: device info, area, the bridge as via_device, categories
    device = {
        key: await ha.template(f"{{{{ device_attr('sensor.boiler_temp', '{key}') }}}}")
        for key in ("name", "manufacturer", "model")
    }
    area = await ha.template("{{ area_name('sensor.boiler_temp') }}")
    via = await ha.template(
        "{{ device_attr('sensor.boiler_temp', 'via_device_id')"
        f" == device_id('sensor.{CLIENT.replace('-', '_')}_uptime') }}}}"
    )
    report.append(f"device: {device}, area={area!r}, via the bridge device: {via}")
    assert device == {"name": "boiler", "manufacturer": "Acme", "model": "B-200"}
    assert area == "Plant room"
    assert via == "True"
    # the bridge's own sensors, from its first health report (within 5 s of its start)
    await ha.wait_state(f"sensor.{CLIENT.replace('-', '_')}_hosts_connected", "1")
    await ha.wait_state(f"sensor.{CLIENT.replace('-', '_')}_devices_online", "1")
    bridge_state = {e: (await ha.state(e))["state"] for e in sorted(BRIDGE_SENSORS)}
    report.append(f"bridge device sensors: {bridge_state}")

    # -- controls: number.set_value, switch.turn_on, select.select_option
    unit = server.unit(1)
    await ha.service("number", "set_value", entity_id="number.boiler_setpoint", value=62.5)
    await ha.wait_state("number.boiler_setpoint", "62.5")
    assert unit.get_registers("holding", 0) == [125]
    report.append("number.set_value 62.5 -> holding 0 = 125 (62.5 / scale 0.5); state 62.5")

    await ha.service("switch", "turn_on", entity_id="switch.boiler_pump")
    await ha.wait_state("switch.boiler_pump", "on")
    assert unit.get_bits("coil", 0) == [True]
    report.append("switch.turn_on -> coil 0 = 1; state on")

    await ha.service("select", "select_option", entity_id="select.boiler_mode", option="comfort")
    await ha.wait_state("select.boiler_mode", "comfort")
    assert unit.get_registers("holding", 1) == [2]
    report.append("select.select_option comfort -> holding 1 = 2; state comfort")

    await ha.service("text", "set_value", entity_id="text.boiler_label", value="Boiler 2")
    await ha.wait_state("text.boiler_label", "Boiler 2")
    assert unit.get_registers("holding", 10, 4) == _text("Boiler 2")
    report.append("text.set_value 'Boiler 2' -> holding 10..13; state 'Boiler 2'")

    await ha.service("switch", "turn_on", entity_id="switch.kettle_pump")
    await ha.wait_state("switch.kettle_pump", "on")
    assert server.unit(2).get_bits("coil", 0) == [True]
    await ha.service("number", "set_value", entity_id="number.kettle_setpoint", value=30)
    await ha.wait_state("number.kettle_setpoint", "30.0")
    assert server.unit(2).get_registers("holding", 0) == [60]
    await ha.service("text", "set_value", entity_id="text.kettle_label", value="Kettle")
    await ha.wait_state("text.kettle_label", "Kettle")
    assert server.unit(2).get_registers("holding", 10, 4) == _text("Kettle")
    report.append(
        "attribute output: switch.turn_on, number.set_value 30 and text.set_value reached unit 2"
    )

    # -- a value changed on the device shows up
    unit.set_registers("input", 0, _words("h", 198))
    await ha.wait_state("sensor.boiler_temp", "19.8")

    # -- the device goes offline: every entity of it unavailable; back: values again
    server.silent_units.add(1)
    for entity_id in EXPECTED:
        await ha.wait_state(entity_id, "unavailable", timeout=20)
    report.append(f"device silent -> all {len(EXPECTED)} entities unavailable")
    server.silent_units.discard(1)
    await ha.wait_state("sensor.boiler_temp", "19.8", timeout=30)
    await ha.wait_state("switch.boiler_pump", "on", timeout=10)
    report.append("device answers again -> values back")

    # -- Home Assistant's birth (a few seconds after it started) reached the bridge,
    # which published discovery and state again; the entities stayed as they were
    birth = "Home Assistant is online: publishing discovery and state again"
    deadline = asyncio.get_running_loop().time() + 30
    while birth not in bridge.log() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.3)
    assert birth in bridge.log()
    await ha.wait_state("select.boiler_mode", "comfort")
    report.append("Home Assistant's birth message -> the bridge republished discovery and state")

    # -- the bridge stops (last state `offline`): everything unavailable, the bridge too
    assert await second.terminate() == 0
    assert await bridge.terminate() == 0
    for entity_id in (*EXPECTED, *BRIDGE_SENSORS):
        await ha.wait_state(entity_id, "unavailable", timeout=15)
    report.append("bridge stopped -> all entities unavailable, the bridge's sensors too")

    # -- Home Assistant's log: no discovery problem, no template or state warning. First
    # controls: a bad payload (unknown device class) from elsewhere must show up there,
    # and so must, from 2025.10 on, an entity suggesting its id with `object_id` alone.
    control = {
        "dev": {"identifiers": ["control"], "name": "control"},
        "o": {"name": "control"},
        "cmps": {"bad": {"p": "sensor", "unique_id": "control-bad", "device_class": "voltag",
                         "state_topic": "control/state"},
                 "old": {"p": "sensor", "unique_id": "control-old", "object_id": "control_old",
                         "state_topic": "control/state"}},
    }  # fmt: skip
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish(CONTROL_TOPIC, json.dumps(control), qos=1)
    await ha.wait_log(lambda line: "voltag" in line, timeout=15)
    assert any("voltag" in line for line in ha.trouble())  # the check can see a problem
    warns_object_id = tuple(map(int, ha_release.version.split(".")[:2])) >= (2025, 10)
    if warns_object_id:
        await ha.wait_log(lambda line: "control_old" in line and "object_id" in line)
        assert any("deprecated option `object_id`" in line for line in ha.trouble())
    await ha.wait_entities({"sensor.control_old"})  # the id it suggested, on every release
    mqtt_warnings = [line for line in ha.log_text().splitlines() if _mqtt_warning(line)]
    trouble = [line for line in ha.trouble() if "control" not in line and "voltag" not in line]
    report.append(f"discovery/MQTT warnings or errors in Home Assistant's log: {len(trouble)}")
    report.append(
        f"  (all MQTT warnings: {len(mqtt_warnings)}, every one about the control payloads: "
        f"'voltag'{' and object_id' if warns_object_id else ''})"
    )
    report.extend(f"  {line}" for line in trouble)
    text = "\n".join(report)
    (tmp_path / "ha-report.txt").write_text(text + "\n")
    print("\n" + text)
    assert trouble == []
    assert all("control" in line or "voltag" in line for line in mqtt_warnings)
