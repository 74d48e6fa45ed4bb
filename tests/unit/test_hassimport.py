"""`modbus-bridge import homeassistant`: Home Assistant's modbus configuration converted.

The conversion is checked by the bridge's own configuration reader (what `check`
runs), point by point against the source entities, and its values against Home
Assistant's decoding rules on a register image (swap, struct, scale, offset,
precision). `tests/homeassistant/test_import.py` runs the real Home Assistant.
"""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import pytest

from bridge import cli
from bridge.config import config_from_bytes
from bridge.hassimport import ImportError_, import_file
from bridge.model import BridgeConfig, DataType, Device, Order, Parity, SerialLink, Table
from bridge.planner import decode_block, plan_device

HERE = Path(__file__).parent.parent / "configs" / "homeassistant"


def _imported() -> tuple[BridgeConfig, str]:
    conversion = import_file(HERE / "configuration.yaml")
    return config_from_bytes(conversion.text.encode(), source="imported.yaml"), conversion.text


def _device(config: BridgeConfig, name: str) -> Device:
    return next(d for d in config.devices if d.name == name)


def test_the_output_is_a_valid_configuration_with_every_mappable_entity() -> None:
    config, _ = _imported()
    assert [h.name for h in config.hosts] == ["solar", "heatpump", "bus"]
    assert sorted(d.name for d in config.devices) == ["bus", "heatpump", "solar-1", "solar-2"]
    solar = _device(config, "solar-1")
    assert solar.unit == 1 and solar.interval == 5  # the most common scan_interval
    names = [p.name for p in solar.points]
    assert names[:6] == [
        "pv_power",
        "energy_today",
        "grid_voltage",
        "phase_currents",
        "phase_currents_1",  # slave_count: 2 -> two more entities at the next addresses
        "phase_currents_2",
    ]
    energy = solar.point("energy_today")
    assert energy is not None
    assert (energy.table, energy.address, energy.type) == (Table.INPUT, 102, DataType.UINT32)
    assert energy.word_order is Order.LITTLE and energy.byte_order is Order.BIG  # swap: word
    assert (energy.scale, energy.precision, energy.unit) == (0.01, 2, "kWh")
    assert energy.interval == 30 and energy.device_class == "energy"
    assert [p.address for p in solar.points if p.name.startswith("phase_currents")] == [
        110,
        111,
        112,
    ]
    model = solar.point("model")
    assert model is not None and (model.type, model.length) == (DataType.STRING, 4)


def test_secrets_and_includes_are_followed_and_unrelated_tags_left_alone() -> None:
    config, _ = _imported()
    heatpump = next(h for h in config.hosts if h.name == "heatpump")
    assert heatpump.describe() == "192.168.1.40:8899"  # host: !secret heatpump_host
    assert heatpump.rtu  # rtuovertcp


def test_switches_climates_and_binary_sensors_become_writable_and_bit_points() -> None:
    config, _ = _imported()
    solar = _device(config, "solar-1")
    export = solar.point("export_limit")
    assert export is not None and export.writable and export.type is DataType.BOOL
    relay = solar.point("relay_1")  # verify reads a discrete input, writes the coil
    assert relay is not None and relay.table is Table.DISCRETE and relay.address == 7
    assert relay.written_at == (Table.COIL, 3)
    mode = solar.point("mode_switch")
    assert mode is not None and mode.value_map == {5: "on", 2: "off"}
    alarm = solar.point("alarm_bit")  # a binary sensor on a register: its lowest bit
    assert alarm is not None and alarm.bit == 0
    heatpump = _device(config, "heatpump")
    target = heatpump.point("living_room_target")
    assert target is not None and target.writable
    assert (target.minimum, target.maximum, target.address) == (10, 28, 1)
    hvac = heatpump.point("living_room_mode")
    assert hvac is not None and hvac.value_map == {0: "off", 1: "heat", 2: "auto"}


def test_what_cannot_be_carried_over_is_listed_with_its_line_and_reason() -> None:
    conversion = import_file(HERE / "configuration.yaml")
    left = {p.describe() for p in conversion.left_out}
    assert any("modbus.yaml:60" in p and "float16" in p for p in left), left
    assert any("modbus.yaml:138" in p and "udp" in p for p in left), left
    assert any("min_value" in p for p in left) and any("max_value" in p for p in left)
    assert "# Left out (4)" in conversion.text
    # every generated item names its source line
    assert "- name: pv_power" in conversion.text
    line = next(x for x in conversion.text.splitlines() if "- name: pv_power" in x)
    assert line.endswith("# modbus.yaml:7")
    # every host, device and point: its first line names where it came from
    items = [x for x in conversion.text.splitlines() if x.lstrip().startswith("- ")]
    assert len(items) == conversion.hosts + conversion.devices + conversion.points
    assert all(re.search(r"# modbus\.yaml:\d+$", x) for x in items), items


def test_the_command_exits_1_when_something_was_left_out_and_0_when_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["import", "homeassistant", str(HERE / "configuration.yaml")]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("# Imported") and "left out: modbus.yaml:60" in err
    clean = tmp_path / "modbus.yaml"
    clean.write_text(
        "- name: hub\n  type: tcp\n  host: 10.0.0.2\n  port: 502\n  sensors:\n"
        "    - {name: T, address: 3, slave: 4}\n"
    )
    out_file = tmp_path / "bridge.yaml"
    assert cli.main(["import", "homeassistant", str(clean), "-o", str(out_file)]) == 0
    config = config_from_bytes(out_file.read_bytes(), source="bridge.yaml")
    assert [(d.name, d.unit, [p.name for p in d.points]) for d in config.devices] == [
        ("hub", 4, ["t"])
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "modbus:\n  - name: x\n    type: tcp\n    host: !secret nope\n    port: 1\n",
            "!secret nope",
        ),
        ("modbus: !include_dir_merge_list modbus/\n", "!include_dir_merge_list"),
        ("sensor:\n  - platform: template\n", "no Home Assistant modbus configuration"),
        ("modbus: [unclosed\n", "not valid YAML"),
        ("modbus: !include nowhere.yaml\n", "nowhere.yaml: cannot read"),
    ],
)
def test_files_that_cannot_be_imported_say_why(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "configuration.yaml"
    path.write_text(text)
    with pytest.raises(ImportError_, match=None) as caught:
        import_file(path)
    assert expected in str(caught.value)
    assert cli.main(["import", "homeassistant", str(path)]) == 2


def _ha_value(entity: dict[str, object], registers: list[int]) -> object:
    """Home Assistant's sensor decoding as its modbus integration does it: swap bytes
    and/or registers, unpack big-endian with the type's struct, scale, offset, then
    precision (2 for floats, else 0, unless given)."""
    regs = list(registers)
    swap = entity.get("swap")
    if swap in ("byte", "word_byte"):
        regs = [((r & 0xFF) << 8) | (r >> 8) for r in regs]
    if swap in ("word", "word_byte"):
        regs.reverse()
    raw = b"".join(r.to_bytes(2, "big") for r in regs)
    char = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f"}
    (value,) = struct.unpack(">" + char[str(entity["data_type"])], raw)
    value = float(entity.get("scale", 1)) * value + float(entity.get("offset", 0))  # type: ignore[arg-type]
    floats = entity["data_type"] == "float32"
    precision = int(entity.get("precision", 2 if floats else 0))  # type: ignore[call-overload]
    return round(value) if precision == 0 else round(value, precision)


@pytest.mark.parametrize(
    ("data_type", "swap"),
    [
        (t, s)
        for t in ("int16", "uint16", "int32", "uint32", "float32")
        for s in (None, "byte", "word", "word_byte")
        if not (s in ("word", "word_byte") and t.endswith("16"))  # refused by Home Assistant
    ],
)
@pytest.mark.parametrize("number", [(1, 0, None), (0.1, -40, None), (0.01, 5, 3)])
def test_values_decode_as_home_assistant_decodes_them(
    tmp_path: Path, data_type: str, swap: str | None, number: tuple[float, float, int | None]
) -> None:
    scale, offset, precision = number
    entity: dict[str, object] = {"name": "V", "address": 10, "data_type": data_type}
    entity.update({"scale": scale, "offset": offset})
    if swap:
        entity["swap"] = swap
    if precision is not None:
        entity["precision"] = precision
    lines = ["- name: hub", "  type: tcp", "  host: 10.0.0.2", "  port: 502", "  sensors:"]
    lines.append("    - {" + ", ".join(f"{k}: {v}" for k, v in entity.items()) + "}")
    path = tmp_path / "modbus.yaml"
    path.write_text("\n".join(lines) + "\n")
    config = config_from_bytes(import_file(path).text.encode(), source="x")
    (device,) = config.devices
    for registers in ([0x1234, 0xABCD], [0x4120, 0x0001], [0xFFFF, 0x8000], [0x0102, 0x0304]):
        width = 1 if data_type.endswith("16") else 2
        (block,) = plan_device(device)
        ours = decode_block(block, registers[:width])["v"]
        theirs = _ha_value(entity, registers[:width])
        if isinstance(theirs, float) and math.isnan(theirs):
            assert ours is None
        else:
            assert ours == pytest.approx(theirs), (registers, entity)


def _ha_custom(structure: str, registers: list[int], scale: float, offset: float) -> float:
    """Home Assistant's `data_type: custom`: the registers' bytes (each big-endian)
    unpacked with the structure as written, on this machine, then scale and offset,
    shown with 2 decimals unless `precision` says otherwise."""
    raw = b"".join(r.to_bytes(2, "big") for r in registers)
    (value,) = struct.unpack(structure, raw)
    return round(scale * value + offset, 2)


@pytest.mark.parametrize(
    ("structure", "count", "ours"),
    [
        (">i", 2, DataType.INT32),
        ("i", 2, DataType.INT32),  # no order: this machine's, little-endian
        ("@I", 2, DataType.UINT32),
        ("=h", 1, DataType.INT16),
        ("<H", 1, DataType.UINT16),
        ("!f", 2, DataType.FLOAT32),
        ("d", 4, DataType.FLOAT64),
        ("<q", 4, DataType.INT64),
        ("1Q", 4, DataType.UINT64),
        ("<l", 2, DataType.INT32),  # a standard long: 4 bytes
        ("l", 4, DataType.INT64),  # a native long on a 64-bit machine: 8 bytes
    ],
)
@pytest.mark.parametrize(("scale", "offset"), [(1, 0), (0.1, -40)])
def test_a_custom_structure_decodes_as_home_assistant_unpacks_it(
    tmp_path: Path, *, structure: str, count: int, ours: DataType, scale: float, offset: float
) -> None:
    if struct.calcsize(structure) != 2 * count:
        pytest.skip(f"{structure!r} is not {count} registers on this machine")
    path = tmp_path / "modbus.yaml"
    path.write_text(
        "- name: hub\n  type: tcp\n  host: 10.0.0.2\n  port: 502\n  sensors:\n"
        f"    - {{name: V, address: 0, data_type: custom, structure: '{structure}', "
        f"count: {count}, scale: {scale}, offset: {offset}}}\n"
    )
    conversion = import_file(path)
    assert conversion.left_out == ()
    (device,) = config_from_bytes(conversion.text.encode(), source="x").devices
    (point,) = device.points
    assert point.type is ours and point.precision == 2  # Home Assistant's default for custom
    (block,) = plan_device(device)
    for registers in ([0x1234, 0xABCD, 0x0102, 0x8304], [0x4120, 0x0001, 0xFFFF, 0x0000]):
        theirs = _ha_custom(structure, registers[:count], scale, offset)
        assert decode_block(block, registers[:count])["v"] == pytest.approx(theirs), registers


@pytest.mark.parametrize(
    ("structure", "count", "reason"),
    [
        (">2h", 2, "one value per point"),
        (">hH", 2, "one value per point"),
        (">e", 1, "no 16-bit float type"),
        (">b", 1, "'b' is not a type of the bridge"),
        (">i", 1, "does not fill count: 1 registers"),
    ],
)
def test_a_custom_structure_that_does_not_map_is_left_out_with_its_reason(
    tmp_path: Path, structure: str, count: int, reason: str
) -> None:
    path = tmp_path / "modbus.yaml"
    path.write_text(
        "- name: hub\n  type: tcp\n  host: 10.0.0.2\n  port: 502\n  sensors:\n"
        f"    - {{name: V, address: 0, data_type: custom, structure: '{structure}', "
        f"count: {count}}}\n"
    )
    conversion = import_file(path)
    (problem,) = conversion.left_out
    assert problem.where == "modbus.yaml:6" and reason in problem.reason, problem
    assert cli.main(["import", "homeassistant", str(path)]) == 1


def test_a_custom_string_is_a_string(tmp_path: Path) -> None:
    path = tmp_path / "modbus.yaml"
    path.write_text(
        "- name: hub\n  type: tcp\n  host: 10.0.0.2\n  port: 502\n  sensors:\n"
        "    - {name: V, address: 0, data_type: custom, structure: '8s', count: 4}\n"
    )
    (device,) = config_from_bytes(import_file(path).text.encode(), source="x").devices
    (point,) = device.points
    assert (point.type, point.length) == (DataType.STRING, 4)


def test_a_custom_structure_with_swap_byte_reverses_each_register() -> None:
    conversion = import_file(HERE / "configuration.yaml")
    config = config_from_bytes(conversion.text.encode(), source="x")
    battery = _device(config, "solar-2").point("battery_temperature")
    assert battery is not None
    # structure '>i' with swap: byte: the bytes of each register reversed, then big-endian
    assert (battery.type, battery.byte_order, battery.word_order) == (
        DataType.INT32,
        Order.LITTLE,
        Order.BIG,
    )
    assert (battery.scale, battery.offset, battery.precision) == (0.1, -40, 2)


@pytest.mark.parametrize(
    ("write_type", "table", "multiple"),
    [
        ("coil", Table.COIL, False),
        ("coils", Table.COIL, True),
        ("holding", Table.HOLDING, False),
        ("holdings", Table.HOLDING, True),
    ],
)
def test_a_switch_writes_with_the_function_home_assistant_uses(
    tmp_path: Path, write_type: str, table: Table, *, multiple: bool
) -> None:
    """`coils` and `holdings` are Home Assistant's functions 15 and 16: the device
    gets `write_multiple: true`, and a note says so."""
    path = tmp_path / "modbus.yaml"
    path.write_text(
        "- name: hub\n  type: tcp\n  host: 10.0.0.2\n  port: 502\n  switches:\n"
        f"    - {{name: S, address: 4, write_type: {write_type}, verify: }}\n"
    )
    conversion = import_file(path)
    (device,) = config_from_bytes(conversion.text.encode(), source="x").devices
    (point,) = device.points
    assert (point.table, point.address, point.writable) == (table, 4, True)
    assert device.write_multiple is multiple
    noted = [n.reason for n in conversion.notes if "writes with function" in n.reason]
    assert noted == ([f"write_type: {write_type}: the device writes with function "
                      f"{15 if table is Table.COIL else 16}"] if multiple else [])  # fmt: skip


def test_a_serial_hub_keeps_its_line_settings() -> None:
    config = config_from_bytes(import_file(HERE / "configuration.yaml").text.encode(), source="x")
    bus = next(h for h in config.hosts if h.name == "bus")
    assert isinstance(bus.link, SerialLink)
    link = bus.link
    assert (link.port, link.baudrate, link.parity, link.stopbits, link.bytesize) == (
        "/dev/ttyUSB0",
        9600,
        Parity.EVEN,
        1,
        8,
    )
    assert bus.pause == 0.05  # message_wait_milliseconds: 50
