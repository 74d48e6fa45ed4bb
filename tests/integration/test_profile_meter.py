"""One meter profile end to end: `profile: eastron/sdm630`, the real bridge process, our
Modbus simulator holding a distinct value in every register the profile reads, and a
real Mosquitto. Every point arrives with its value, and Home Assistant discovery
carries the profile's units and classes.

The register image is built here with `struct` from the SDM630's document (IEEE 754
floats, high word first, input registers from 30001 at address 0), not with the
bridge's codec.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
import yaml
from fleet import mqtt_section

import bridge

pytestmark = pytest.mark.integration

PROFILE = Path(bridge.__file__).parent / "profiles" / "eastron" / "sdm630.yaml"
CLIENT = "bridge-under-test"


def _points() -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = yaml.safe_load(PROFILE.read_text(encoding="utf-8"))["points"]
    return points


def _image(points: list[dict[str, Any]]) -> dict[str, float]:
    """A distinct float for each point: 100.0, 101.5, 103.0 ... (exact in float32)."""
    return {p["name"]: 100.0 + 1.5 * n for n, p in enumerate(points)}


def _load(server: Any, points: list[dict[str, Any]], values: dict[str, float]) -> None:
    unit = server.unit(1)
    for p in points:
        assert p["type"] == "float32"  # the SDM630's document: every value a float
        hi, lo = struct.unpack(">HH", struct.pack(">f", values[p["name"]]))
        unit.set_registers(p["table"], p["address"], [hi, lo])


async def test_sdm630_profile_publishes_every_point_with_its_units(
    broker, sim_servers, mqtt_watcher, run_bridge
) -> None:
    points = _points()
    values = _image(points)
    server = await sim_servers([1])
    _load(server, points, values)
    watcher = await mqtt_watcher(broker, "#")
    await run_bridge(
        {
            "version": 1,
            "mqtt": mqtt_section(broker),
            "homeassistant": {"enabled": True},
            "hosts": [{"name": "gw", "address": "127.0.0.1", "port": server.port}],
            "devices": [{"name": "meter", "host": "gw", "unit": 1, "profile": "eastron/sdm630"}],
        }
    )
    state = (await watcher.wait_for("modbus/meter", timeout=10)).json()
    assert {name: state.get(name) for name in values} == values

    discovery = (
        await watcher.wait_for(f"homeassistant/device/{CLIENT}/meter/config", timeout=5)
    ).json()
    assert discovery["dev"]["manufacturer"] == "Eastron"
    assert discovery["dev"]["model"] == "SDM630"
    cmps = discovery["cmps"]
    assert set(cmps) == set(values)
    shown = {
        name: (c.get("device_class"), c.get("unit_of_measurement"), c.get("state_class"))
        for name, c in cmps.items()
    }
    assert shown["voltage_l1"] == ("voltage", "V", "measurement")
    assert shown["power"] == ("power", "W", "measurement")
    assert shown["import_energy"] == ("energy", "kWh", "total_increasing")
    assert shown["import_reactive_energy"] == (None, "kvarh", "total_increasing")
    assert shown["power_factor"] == ("power_factor", None, "measurement")
    assert all(c["p"] == "sensor" for c in cmps.values())
