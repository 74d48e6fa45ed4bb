"""`modbus-bridge import homeassistant`, proven against the real Home Assistant.

One `modbus:` configuration runs twice against the same simulated device: in a real
Home Assistant Core (its own modbus integration polls the simulator) and in the bridge,
on the file `import homeassistant` made of it. Every entity's state in Home Assistant
must equal the value the bridge publishes for its point: every `data_type` with every
`swap` Home Assistant accepts for it, integer and float scales and offsets, `precision`
given and defaulted, `custom` structures with and without a byte order, strings, binary
sensors on coils, discrete inputs and registers, a switch. The values are distinct and
not zero. What was compared is printed (`-s`).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.hass import slugify
from bridge.hassimport import import_file

pytestmark = pytest.mark.integration

FORMATS = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}
SWAPS = {1: (None, "byte"), 2: (None, "byte", "word", "word_byte")}
# `data_type: custom`: Home Assistant unpacks the bytes with the structure as written;
# without an order (or with `@`, `=`) that is this machine's own (little-endian), and
# a native `l` is as wide as this machine's long
STRUCTURES = (">i", "i", "=h", "<H", "@f", "<d", "!Q", "l", "<l", ">q")
NUMBERS = ({}, {"scale": 0.1, "offset": -40}, {"scale": 0.01, "offset": 5, "precision": 3})


def _swap(registers: list[int], swap: str | None) -> list[int]:
    """Home Assistant's swap; applied twice it is undone, so it also makes the image."""
    regs = list(registers)
    if swap in ("byte", "word_byte"):
        regs = [((r & 0xFF) << 8) | (r >> 8) for r in regs]
    if swap in ("word", "word_byte"):
        regs.reverse()
    return regs


def _value(rng: random.Random, data_type: str) -> float:
    if data_type.startswith("float"):
        return round(rng.uniform(-5000, 5000), 3)
    bits = int(data_type.removeprefix("u").removeprefix("int"))
    if data_type.startswith("u"):
        return rng.randrange(1, 2**bits)
    return rng.randrange(-(2 ** (bits - 1)), 2 ** (bits - 1))


def _entities(rng: random.Random) -> tuple[list[dict[str, Any]], dict[tuple[str, int], list[int]]]:
    """Home Assistant sensors of every kind, and the registers that hold their values."""
    sensors: list[dict[str, Any]] = []
    image: dict[tuple[str, int], list[int]] = {}
    address = {"holding": 0, "input": 0}
    n = 0
    for data_type, fmt in FORMATS.items():
        width = struct.calcsize(fmt) // 2
        for swap in SWAPS[min(width, 2)]:
            for numbers in NUMBERS:
                table = ("holding", "input")[n % 2]
                n += 1
                raw = struct.pack(">" + fmt, _value(rng, data_type))
                words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
                image[table, address[table]] = _swap(words, swap)
                entity: dict[str, Any] = {
                    "name": f"v{n} {data_type} {swap or 'plain'}",
                    "slave": 1,
                    "address": address[table],
                    "input_type": table,
                    "data_type": data_type,
                    "scan_interval": 1,
                    **numbers,
                }
                if swap:
                    entity["swap"] = swap
                sensors.append(entity)
                address[table] += width
    for i, structure in enumerate(STRUCTURES):
        size = struct.calcsize(structure)
        char = structure[-1]
        kind = {"f": "float32", "d": "float64"}.get(char)
        kind = kind or f"{'u' if char.isupper() else ''}int{8 * size}"
        raw = struct.pack(structure, _value(rng, kind))
        words = [int.from_bytes(raw[j : j + 2], "big") for j in range(0, size, 2)]
        table = ("holding", "input")[n % 2]
        n += 1
        image[table, address[table]] = words
        entity = {"name": f"c{n} {structure}", "slave": 1, "address": address[table]}
        entity.update(input_type=table, data_type="custom", structure=structure)
        entity.update(count=size // 2, scan_interval=1, **NUMBERS[i % len(NUMBERS)])
        sensors.append(entity)
        address[table] += size // 2
    for swap in (None, "byte"):
        text = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(6))
        words = [int.from_bytes(text[i : i + 2].encode(), "big") for i in range(0, 6, 2)]
        image["holding", address["holding"]] = _swap(words, swap)
        entity = {"name": f"text {swap or 'plain'}", "slave": 1, "scan_interval": 1}
        entity.update(address=address["holding"], data_type="string", count=3)
        if swap:
            entity["swap"] = swap
        sensors.append(entity)
        address["holding"] += 3
    image["holding", address["holding"]] = [0x0003]  # binary sensor on a register: bit 0
    return sensors, image


def _flag(name: str, address: int, table: str) -> dict[str, Any]:
    return {"name": name, "slave": 1, "address": address, "input_type": table, "scan_interval": 1}


def _ha_modbus(port: int, sensors: list[dict[str, Any]], flag_register: int) -> list[Any]:
    return [
        {
            "name": "plant",
            "type": "tcp",
            "host": "127.0.0.1",
            "port": port,
            "timeout": 2,
            "sensors": sensors,
            "binary_sensors": [
                _flag("coil flag", 0, "coil"),
                _flag("input flag", 0, "discrete_input"),
                _flag("register flag", flag_register, "holding"),
            ],
            "switches": [
                {"name": "pump", "slave": 1, "address": 1, "write_type": "coil"}
                | {"scan_interval": 1, "verify": None}
            ],
        }
    ]


def _same(ha: str, ours: Any) -> bool:
    if ours is None:
        return ha in ("unknown", "unavailable")
    if isinstance(ours, bool):
        return ha == ("on" if ours else "off")
    if isinstance(ours, str):
        return ha == ours
    if ha in ("unknown", "unavailable"):
        return False
    return math.isclose(float(ha), float(ours), rel_tol=1e-12, abs_tol=1e-9)


async def test_imported_configuration_publishes_what_home_assistant_shows(
    broker, sim_servers, run_bridge, mqtt_watcher, home_assistant, *, ha_release, tmp_path: Path
) -> None:
    rng = random.Random(21)
    sensors, image = _entities(rng)
    flag_register = max(a for (t, a) in image if t == "holding")
    server = await sim_servers([1])
    unit = server.unit(1)
    for (table, address), words in image.items():
        unit.set_registers(table, address, words)
    unit.set_bits("coil", 0, [True, True])
    unit.set_bits("discrete", 0, [True])

    modbus = _ha_modbus(server.port, sensors, flag_register)
    # one file for both: Home Assistant includes it, the importer reads it
    source = tmp_path / "ha" / "modbus.yaml"
    source.parent.mkdir()
    source.write_text(yaml.safe_dump(modbus, sort_keys=False))
    conversion = import_file(source)
    assert conversion.left_out == ()
    config = yaml.safe_load(conversion.text)
    config["mqtt"].update(port=broker.port, base_topic="imported", client_id="imported")
    config["homeassistant"]["enabled"] = False  # Home Assistant shows its own modbus entities
    watcher = await mqtt_watcher(broker, "imported/plant")
    await run_bridge(config)
    ha = await home_assistant(broker.port, "modbus: !include modbus.yaml\n")

    names = [slugify(s["name"]) for s in sensors]
    entity_ids = {f"sensor.{n}" for n in names}
    entity_ids |= {"binary_sensor.coil_flag", "binary_sensor.input_flag"}
    entity_ids |= {"binary_sensor.register_flag", "switch.pump"}
    await ha.wait_entities(entity_ids, timeout=90)

    async def compare() -> list[str]:
        states = await ha.states()
        message = watcher.latest("imported/plant")
        ours = json.loads(message.payload) if message else {}
        wrong = []
        for entity_id in sorted(entity_ids):
            point = entity_id.split(".", 1)[1]
            if not _same(states[entity_id]["state"], ours.get(point)):
                wrong.append(
                    f"{entity_id}: HA {states[entity_id]['state']!r} ours {ours.get(point)!r}"
                )
        return wrong

    wrong: list[str] = ["not compared yet"]
    for _ in range(60):
        wrong = await compare()
        if not wrong:
            break
        await asyncio.sleep(1)
    states = await ha.states()
    print(f"Home Assistant Core {ha_release.version}: {len(entity_ids)} entities compared")
    for entity_id in sorted(entity_ids):
        print(f"  {entity_id} = {states[entity_id]['state']}")
    assert not wrong, "\n".join(wrong)
