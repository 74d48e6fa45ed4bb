"""Devices that map themselves, in the real Home Assistant: a meter and an inverter
named by their profiles (`profile: eastron/sdm630`, `profile: huawei/sun2000`) and a
SunSpec device (`sunspec: true`: models 1, 103, 160 with two modules, 203, 802 built
from pysunspec2's definitions) become entities with the right units and device
classes, each showing the value the bridge publishes, and Home Assistant logs no MQTT
or discovery warning about them.

The simulator holds a distinct value in every register a profile reads, encoded here
with `struct` from the profile file itself (not with the bridge's codec). What Home
Assistant showed is printed (`-s`).
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml

import bridge
from bridge.sim import SimUnit
from tests.sunspec_image import PROOF_MODELS, build_image

pytestmark = pytest.mark.integration

PROFILES = {"meter": ("eastron/sdm630", 1), "inverter": ("huawei/sun2000", 2)}
SUNSPEC_UNIT = 3
# the standard names of the SunSpec device: (unit, device class) Home Assistant must show
SUNSPEC_EXPECTED = {
    "ac_power": ("W", "power"),
    "power": ("W", "power"),
    "soc": ("%", "battery"),
    "pv2_voltage": ("V", "voltage"),
}
FORMATS = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f"}
FORMATS |= {"int64": "q", "uint64": "Q", "float64": "d"}


def _points(profile: str) -> list[dict[str, Any]]:
    path = Path(bridge.__file__).parent / "profiles" / f"{profile}.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return list(doc["points"])


def _registers(point: dict[str, Any], n: int) -> list[int] | list[bool]:
    """A distinct raw value for the n-th point, as the device would hold it."""
    kind = point.get("type", "bool")
    if point["table"] in ("coil", "discrete"):
        return [n % 2 == 0]
    if kind == "string":
        text = f"P{n:0{2 * point['length'] - 1}d}"[: 2 * point["length"]]
        return [int.from_bytes(text[i : i + 2].encode(), "big") for i in range(0, len(text), 2)]
    if kind == "bool" or "bit" in point:
        return [1]
    if "values" in point:
        return [int(next(iter(point["values"])))]
    raw = struct.pack(">" + FORMATS[kind], 3 + n if kind != "float32" else 100.0 + 1.5 * n)
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if point.get("word_order") == "little":
        words.reverse()
    return words


def _same(ha: str, ours: Any) -> bool:
    if ours is None:
        return ha in ("unknown", "unavailable")
    if isinstance(ours, bool):
        return ha == ("on" if ours else "off")
    if isinstance(ours, str):
        return ha == ours
    try:
        return math.isclose(float(ha), float(ours), rel_tol=1e-9, abs_tol=1e-9)
    except ValueError:
        return False


async def test_profiles_become_entities_with_their_units_and_classes(
    broker, sim_servers, run_bridge, mqtt_watcher, home_assistant, *, ha_release
) -> None:
    image = build_image(PROOF_MODELS).image
    lo, hi = min(image), max(image) + 1
    sunspec = SimUnit(valid={"holding": [(lo, hi)]})
    sunspec.set_registers("holding", lo, [image.get(a, 0) for a in range(lo, hi)])
    units = {unit: SimUnit() for _, unit in PROFILES.values()} | {SUNSPEC_UNIT: sunspec}
    server = await sim_servers(units)
    expected: dict[str, dict[str, Any]] = {}  # "<device>_<point>" -> the profile's point
    for device, (profile, unit) in PROFILES.items():
        for n, point in enumerate(_points(profile)):
            if point.get("scale_factor"):
                continue  # the scale factor's own register holds 0 (the default image)
            data = _registers(point, n)
            if isinstance(data[0], bool):
                server.unit(unit).set_bits(point["table"], point["address"], data)
            else:
                server.unit(unit).set_registers(point["table"], point["address"], data)
            if point.get("homeassistant", True):
                expected[f"{device}_{point['name']}"] = point
    watcher = await mqtt_watcher(broker, "devices/#")
    discovery = await mqtt_watcher(broker, "homeassistant/device/devices/inv/config")
    await run_bridge(
        {
            "version": 1,
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "base_topic": "devices",
                "client_id": "devices",
            },
            "homeassistant": {"enabled": True},
            "hosts": [{"name": "gw", "address": "127.0.0.1", "port": server.port}],
            "devices": [
                *(
                    {"name": d, "host": "gw", "unit": unit, "profile": profile, "interval": "2s"}
                    for d, (profile, unit) in PROFILES.items()
                ),
                {"name": "inv", "host": "gw", "unit": SUNSPEC_UNIT, "sunspec": True}
                | {"interval": "2s", "write_multiple": True},
            ],
        }
    )
    ha = await home_assistant(broker.port)

    def entity_of(states: dict[str, Any], key: str) -> str | None:
        found = [e for e in states if e.split(".", 1)[1] == key]
        return found[0] if len(found) == 1 else None

    wrong: list[str] = ["not compared yet"]
    states: dict[str, Any] = {}
    for _ in range(90):
        states = await ha.states()
        published = {
            device: json.loads(m.payload)
            for device in (*PROFILES, "inv")
            if (m := watcher.latest(f"devices/{device}")) is not None
        }
        wrong = []
        # the SunSpec device: every entity its discovery announces (a quantity published
        # under a standard name too is one entity, by that name) shows the published value
        sunspec_state = published.get("inv", {})
        announced = discovery.latest("homeassistant/device/devices/inv/config")
        cmps = json.loads(announced.payload)["cmps"] if announced else {}
        if len(cmps) < 100:
            wrong.append(f"inv: {len(cmps)} entities announced so far")
        for name, cmp in sorted(cmps.items()):
            entity = cmp["default_entity_id"]
            ours = sunspec_state.get(name, "missing")
            if entity not in states:
                wrong.append(f"{entity}: no entity")
            elif not _same(states[entity]["state"], ours):
                wrong.append(f"{entity}: HA {states[entity]['state']!r}, published {ours!r}")
        for name, (unit_of, device_class) in SUNSPEC_EXPECTED.items():
            entity = entity_of(states, f"inv_{name}")
            attrs = states[entity]["attributes"] if entity else {}
            shown = (attrs.get("unit_of_measurement"), attrs.get("device_class"))
            if shown != (unit_of, device_class):
                wrong.append(f"inv_{name}: {shown}, wanted {(unit_of, device_class)}")
        for key, point in sorted(expected.items()):
            device, name = key.split("_", 1)
            entity = entity_of(states, key)
            if entity is None:
                wrong.append(f"{key}: no entity")
                continue
            attrs = states[entity]["attributes"]
            if attrs.get("unit_of_measurement") != point.get("unit"):
                wrong.append(f"{entity}: unit {attrs.get('unit_of_measurement')!r}")
            sensor = entity.startswith("sensor.")
            # a point with labels is an enum sensor unless its profile names a class
            want = point.get("device_class") or ("enum" if "values" in point else None)
            if sensor and attrs.get("device_class") != want:
                wrong.append(f"{entity}: device_class {attrs.get('device_class')!r}")
            ours = published.get(device, {}).get(name, "missing")
            if not _same(states[entity]["state"], ours):
                wrong.append(f"{entity}: HA {states[entity]['state']!r}, published {ours!r}")
        if not wrong:
            break
        await asyncio.sleep(1)
    print(
        f"Home Assistant Core {ha_release.version}: {len(expected)} profile entities, "
        f"{len(cmps)} SunSpec entities of {len(sunspec_state) - 1} points published"
    )
    for name in SUNSPEC_EXPECTED:
        entity = entity_of(states, f"inv_{name}")
        if entity is not None:
            attrs = states[entity]["attributes"]
            print(f"  {entity} = {states[entity]['state']} {attrs.get('unit_of_measurement')}")
    for key in sorted(expected):
        entity = entity_of(states, key)
        if entity is not None:
            attrs = states[entity]["attributes"]
            print(
                f"  {entity} = {states[entity]['state']} {attrs.get('unit_of_measurement') or ''}"
                f" ({attrs.get('device_class')})"
            )
    assert not wrong, "\n".join(wrong[:40])
    trouble = ha.trouble()
    assert not trouble, "\n".join(trouble)
