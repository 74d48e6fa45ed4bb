"""The device profiles in bridge/profiles: headers, units, the vocabulary, and every
point decoded from a register image in which every register holds a distinct,
non-zero value.

Every profile is read by the bridge's own profile reader, and used by a device that
names it (`profile: maker/model`) through the configuration reader: a point the
reader refuses (an unknown key, a unit that does not fit its device class) fails
here as it would in a user's file.

Two checks of each point's decoding, independent of the codec:
- the image: for each point a distinct raw value is encoded at its registers (its
  type, byte and word order), every other register read holds a distinct filler; the
  planned blocks are decoded and each point must give its raw value * scale. Two
  points on one register (a transcription slip) give one of them the other's value.
- the document's own numbers (`DOCUMENT_FACTS`): registers as the manufacturer's
  document shows an example value, and the value in our units, written from the
  document (its units, weights, word order) and not from the profile.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

import bridge
from bridge import vocabulary
from bridge.codec import decode_registers, encode_registers
from bridge.config import parse_config
from bridge.config_profiles import Profile, load_profiles
from bridge.model import DataType, Device, Point, Table
from bridge.planner import decode_block, plan_device

PROFILES = Path(bridge.__file__).parent / "profiles"
FILES = sorted(PROFILES.glob("*/*.yaml"))


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


@functools.cache
def catalog() -> dict[str, Profile]:
    """Every built-in profile, read by the bridge's own profile reader; none may fail."""
    profiles, problems = load_profiles()
    assert [str(p) for p in problems] == []
    return {p.name: p for p in profiles}


def _text(value: object) -> str | None:
    """An enum's value, or the text itself (the model keeps some keys as enums)."""
    return None if value is None else str(getattr(value, "value", value))


def unit_problems(p: Point) -> list[str]:
    """A number with a physical meaning needs its unit and a state class. Exempt:
    labels (`values`), bits, strings, power factors (no unit), and diagnostic points
    (codes and settings)."""
    if not p.type.is_numeric or p.values or p.bit is not None:
        return []
    if p.device_class == "power_factor" or _text(p.entity_category) == "diagnostic":
        return []
    problems = []
    if not p.unit:
        problems.append(f"{p.name}: no unit")
    if not p.state_class and not p.writable:  # a control is a number entity, no state class
        problems.append(f"{p.name}: no state_class")
    return problems


def load(path: Path) -> tuple[Profile, Device]:
    """The profile as read, and a device that names it (`profile: maker/model`), as a
    user's configuration would: through the configuration reader, every rule applied."""
    config = {
        "version": 1,
        "hosts": [{"name": "gw", "address": "127.0.0.1"}],
        "devices": [{"name": "dev", "host": "gw", "unit": 1, "profile": _id(path)}],
    }
    text = yaml.safe_dump(config, allow_unicode=True, sort_keys=False)
    return catalog()[_id(path)], parse_config(text, source="<test>").devices[0]


def test_there_are_profiles_of_enough_makers() -> None:
    makers: dict[str, set[str]] = {}
    for profile in catalog().values():
        makers.setdefault(profile.kind, set()).add(profile.manufacturer)
    assert len(catalog()) == len(FILES) >= 15
    assert len(makers["meter"]) >= 6
    assert len(makers.get("inverter", set()) | makers.get("battery", set())) >= 3


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_header(path: Path) -> None:
    profile, device = load(path)
    assert profile.kind in vocabulary.KINDS
    assert profile.source.title and (profile.source.version or profile.source.date)
    assert path.stem == path.stem.lower() and path.parent.name == path.parent.name.lower()
    assert device.profile == _id(path)
    assert (device.manufacturer, device.model) == (profile.manufacturer, profile.model)


GOOD_HEADER = """\
manufacturer: Acme
model: M1
kind: meter
source: {title: Acme M1 Modbus map, version: "1.0"}
"""
POINTS = """\
points:
  - {name: voltage, table: input, address: 0, type: float32, unit: V,
     device_class: voltage, state_class: measurement}
"""


def _problems_of(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "acme").mkdir(exist_ok=True)
    (tmp_path / "acme" / "m1.yaml").write_text(text, encoding="utf-8")
    _, problems = load_profiles([tmp_path])
    return [p.message for p in problems if "acme" in str(p)]


def test_a_profile_without_its_source_fails(tmp_path: Path) -> None:
    assert _problems_of(tmp_path, GOOD_HEADER + POINTS) == []
    no_source = GOOD_HEADER.replace('source: {title: Acme M1 Modbus map, version: "1.0"}\n', "")
    assert _problems_of(tmp_path, no_source + POINTS) == ["missing required key 'source'"]
    no_edition = GOOD_HEADER.replace(', version: "1.0"', "")
    assert _problems_of(tmp_path, no_edition + POINTS) == [
        "the document needs its version or its date"
    ]


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_every_physical_point_has_its_unit(path: Path) -> None:
    _, device = load(path)
    assert [problem for p in device.points for problem in unit_problems(p)] == []


def test_a_point_without_its_unit_fails() -> None:
    voltage = Point(
        name="voltage",
        table=Table.INPUT,
        address=0,
        type=DataType.FLOAT32,
        interval=1.0,
        device_class="voltage",
    )
    assert unit_problems(voltage) == ["voltage: no unit", "voltage: no state_class"]


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_standard_names_follow_the_vocabulary(path: Path) -> None:
    _, device = load(path)
    problems = [
        problem
        for p in device.points
        for problem in vocabulary.check_point(
            p.name, p.unit, _text(p.device_class), _text(p.state_class)
        )
    ]
    assert problems == []


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_no_point_is_writable_unless_marked_in_the_profile(path: Path) -> None:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    marked = {p["name"] for p in doc["points"] if p.get("writable")}
    _, device = load(path)
    assert {p.name for p in device.points if p.writable} == marked


# -- the register image -------------------------------------------------------------


_FIRST_WORD = {
    DataType.FLOAT32: (0x447A, 0xC47A),  # about ±1000, the low word makes it distinct
    DataType.FLOAT64: (0x408F, 0xC08F),
}


def _raw_for(p: Point, n: int) -> int | float:
    """The n-th point's raw value: its registers (most significant first) all non-zero
    and unlike any other point's; negative for every other signed point, so a
    signed/unsigned or word-order slip shows."""
    negative = n % 2 == 1
    first = _FIRST_WORD.get(p.type)
    if first is not None:
        words = [first[negative], *(0x1000 * (i + 1) + n for i in range(p.count - 1))]
    else:
        words = [
            (0x9000 if negative else 0x1000) + n,
            *(0x1000 * (i + 2) + n for i in range(p.count - 1)),
        ]
    raw = decode_registers(p.type, words)
    assert not isinstance(raw, str | bool)
    return raw


def _expected(p: Point, raw: int | float) -> Any:
    if p.values:
        return dict(p.values).get(int(raw), int(raw))
    value = raw * p.scale + p.offset
    if p.precision is not None:
        value = round(value, p.precision)
    return value


def _filler(address: int) -> int:
    return 0xA000 | (address * 37 + 11) & 0x0FFF or 0xA001


def image_of(device: Device) -> tuple[dict[tuple[Table, int], int], dict[str, Any]]:
    """Registers holding each point's distinct raw value, and the values expected."""
    image: dict[tuple[Table, int], int] = {}
    expected: dict[str, Any] = {}
    owner: dict[tuple[Table, int], str] = {}
    bits: dict[tuple[Table, int], int] = {}
    for n, p in enumerate(device.points):
        if p.bit is not None:  # bits of one register: each point its own bit
            key = (p.table, p.address)
            assert owner.get(key, "bits") == "bits", f"{p.name} and {owner[key]} share {key}"
            owner[key] = "bits"
            on = n % 2 == 0
            bits[key] = bits.get(key, 0x4000 if p.bit != 14 else 0x2000) | (on << p.bit)
            image[key] = bits[key]
            expected[p.name] = on
            continue
        if p.type is DataType.STRING:
            text = f"P{n:0{2 * p.count - 1}d}"[: 2 * p.count]
            regs = encode_registers(p.type, text, byte_order=p.byte_order, length=p.count)
            expected[p.name] = text
        else:
            raw = _raw_for(p, n)
            regs = encode_registers(p.type, raw, byte_order=p.byte_order, word_order=p.word_order)
            expected[p.name] = _expected(p, raw)
        for i, reg in enumerate(regs):
            key = (p.table, p.address + i)
            assert key not in owner, f"{p.name} and {owner[key]} share {p.table.value} {key[1]}"
            owner[key] = p.name
            image[key] = reg
    return image, expected


def read_all(device: Device, image: Mapping[tuple[Table, int], int]) -> dict[str, Any]:
    """Every planned block read from the image and decoded, as the scheduler does."""
    values: dict[str, Any] = {}
    for block in plan_device(device):
        data = [image.get((block.table, a), _filler(a)) for a in range(block.start, block.end)]
        values.update(decode_block(block, data))
    return values


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, float) and isinstance(got, int | float) and not isinstance(got, bool):
        return math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)
    return bool(got == want)


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_every_point_decodes_its_own_registers(path: Path) -> None:
    _, device = load(path)
    image, expected = image_of(device)
    assert all(image.values()), "a register of the image is zero"
    got = read_all(device, image)
    wrong = {n: (got.get(n), want) for n, want in expected.items() if not _same(got.get(n), want)}
    assert wrong == {}
    numbers = [repr(v) for v in got.values() if not isinstance(v, bool)]
    assert len(set(numbers)) == len(numbers), "two points decoded to one value"


# -- numbers as the manufacturers' documents give them --------------------------------
# (profile, point, table, address, registers as on the wire, value in our units)
DOCUMENT_FACTS: list[tuple[str, str, Table, int, list[int], float]] = [
    # Eastron: IEEE 754 floats, high word first, already in V, W, kWh
    ("eastron/sdm630", "voltage_l1", Table.INPUT, 0, [0x4366, 0x0000], 230.0),
    ("eastron/sdm630", "import_energy", Table.INPUT, 72, [0x4479, 0xC000], 999.0),
    ("eastron/sdm630", "voltage_l1_l2", Table.INPUT, 200, [0x43C8, 0x0000], 400.0),
    ("eastron/sdm230", "frequency", Table.INPUT, 70, [0x4248, 0x0000], 50.0),
    ("eastron/sdm72d-m", "power", Table.INPUT, 52, [0xC47A, 0x0000], -1000.0),
    # ABB: 32-bit high word first; 0.1 V, 0.01 A, 0.01 W; 64-bit energies in 0.01 kWh
    ("abb/b23", "voltage_l1", Table.HOLDING, 0x5B00, [0x0000, 0x08FC], 230.0),
    ("abb/b23", "power", Table.HOLDING, 0x5B14, [0xFFFE, 0x7960], -1000.0),
    ("abb/b23", "import_energy", Table.HOLDING, 0x5000, [0, 0, 0x0001, 0x86A0], 1000.0),
    ("abb/b23", "power_factor_l1", Table.HOLDING, 0x5B3B, [0xFC7C], -0.9),
    # Carlo Gavazzi: INT32 least significant word first; Volt*10, W*10, kWh*10
    ("carlo_gavazzi/em24", "voltage_l1", Table.INPUT, 0x00, [0x08FC, 0x0000], 230.0),
    ("carlo_gavazzi/em24", "power", Table.INPUT, 0x28, [0x8AD0, 0xFFFF], -3000.0),
    ("carlo_gavazzi/em24", "import_energy", Table.INPUT, 0x42, [0x86A0, 0x0001], 10000.0),
    ("carlo_gavazzi/em340", "frequency", Table.INPUT, 0x33, [0x01F4], 50.0),
    # CHINT: floats in 0.1 V / 0.001 A / 0.1 W / 0.01 Hz, energy in kWh
    ("chint/dtsu666", "voltage_l1", Table.HOLDING, 0x2006, [0x450F, 0xC000], 230.0),
    ("chint/dtsu666", "current_l1", Table.HOLDING, 0x200C, [0x459C, 0x4000], 5.0),
    ("chint/dtsu666", "frequency", Table.HOLDING, 0x2044, [0x459C, 0x4000], 50.0),
    # Schneider: registers counted from 1 (3028 is address 3027); kW and INT64 Wh
    ("schneider/iem3000", "voltage_l1", Table.HOLDING, 3027, [0x4366, 0x0000], 230.0),
    ("schneider/iem3000", "power", Table.HOLDING, 3059, [0x3FC0, 0x0000], 1500.0),
    ("schneider/iem3000", "import_energy", Table.HOLDING, 3203, [0, 0, 0x0012, 0xD687], 1234.567),
    # Siemens: the offset is the address; energies are doubles in Wh
    ("siemens/pac2200", "voltage_l1", Table.INPUT, 1, [0x4366, 0x0000], 230.0),
    ("siemens/pac2200", "power_factor_l1", Table.INPUT, 37, [0x3F00, 0x0000], 0.5),
    ("siemens/pac2200", "import_energy", Table.INPUT, 801, [0x412E, 0x8480, 0, 0], 1000.0),
    # Finder: floats; the energy counters in Wh
    ("finder/7m38", "voltage_l1", Table.INPUT, 2500, [0x4366, 0x0000], 230.0),
    ("finder/7m38", "import_energy", Table.INPUT, 2752, [0x4640, 0xE400], 12.345),
    ("finder/7m24", "power", Table.INPUT, 2536, [0xC3FA, 0x0000], -500.0),
    # Janitza: floats, energies in Wh
    ("janitza/umg96rm", "voltage_l1", Table.HOLDING, 19000, [0x4366, 0x0000], 230.0),
    ("janitza/umg96rm", "power", Table.HOLDING, 19026, [0xC47A, 0x0000], -1000.0),
    ("janitza/umg96rm", "import_energy", Table.HOLDING, 19068, [0x4640, 0xE400], 12.345),
    # Huawei: value = raw / gain; the meter's power is positive on feed-in
    ("huawei/sun2000", "pv1_voltage", Table.HOLDING, 32016, [0x0DB1], 350.5),
    ("huawei/sun2000", "ac_power", Table.HOLDING, 32080, [0x0000, 0x1388], 5000.0),
    ("huawei/sun2000", "grid_power", Table.HOLDING, 37113, [0x0000, 0x07D0], -2000.0),
    ("huawei/sun2000", "soc", Table.HOLDING, 37004, [0x02F3], 75.5),
    # Sungrow: register n is address n - 1; U32/S32 low word first; export positive
    ("sungrow/sh", "dc_power", Table.INPUT, 5016, [0x1388, 0x0000], 5000.0),
    ("sungrow/sh", "grid_power", Table.INPUT, 13009, [0x05DC, 0x0000], -1500.0),
    ("sungrow/sh", "soc", Table.INPUT, 13022, [0x028F], 65.5),
    ("sungrow/sh", "frequency", Table.INPUT, 5035, [0x01F4], 50.0),
    # Growatt: H word then L word; 0.1 W, 0.01 Hz, 0.1 kWh
    ("growatt/tl3-x", "ac_power", Table.INPUT, 35, [0x0000, 0xC350], 5000.0),
    ("growatt/tl3-x", "frequency", Table.INPUT, 37, [0x1388], 50.0),
    ("growatt/tl3-x", "energy_total", Table.INPUT, 55, [0x0001, 0xE240], 12345.6),
    # Victron: the sheet's scale factor divides; battery power positive = charging
    ("victron/gx", "battery_voltage", Table.HOLDING, 840, [0x020C], 52.4),
    ("victron/gx", "battery_power", Table.HOLDING, 842, [0xFB50], -1200.0),
    ("victron/gx", "grid_power_l1", Table.HOLDING, 820, [0x015E], 350.0),
]


def _profile(name: str) -> Device:
    return load(PROFILES / f"{name}.yaml")[1]


@pytest.mark.parametrize("fact", DOCUMENT_FACTS, ids=[f"{f[0]}:{f[1]}" for f in DOCUMENT_FACTS])
def test_document_numbers_decode_to_the_documented_value(
    fact: tuple[str, str, Table, int, list[int], float],
) -> None:
    profile, point, table, address, registers, value = fact
    device = _profile(profile)
    [p] = [p for p in device.points if p.name == point]
    assert (p.table, p.address) == (table, address)
    image = {(table, address + i): r for i, r in enumerate(registers)}
    got = read_all(device, {**dict.fromkeys(image_of(device)[0], 1), **image})[point]
    assert math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-9)


def test_every_profile_has_document_numbers() -> None:
    assert {_id(p) for p in FILES} <= {f[0] for f in DOCUMENT_FACTS}


def test_docs_list_every_profile_and_every_standard_name() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "profiles.md").read_text(encoding="utf-8")
    assert [_id(p) for p in FILES if f"| `{_id(p)}` |" not in docs] == []
    missing = [
        t.name
        for t in vocabulary.TERMS
        if f"| `{t.name}` | {t.unit or '—'} | {t.device_class or '—'} |" not in docs
    ]
    assert missing == []


# Registers one read may ask for, as the manufacturers' documents give them (values of
# 32 bits each take two): Eastron's 40 and 30 values a request, Carlo Gavazzi's 11 words
# for function 04h. A profile of these devices that forgot its max_read would merge
# reads the meter refuses.
DOCUMENT_READ_LIMITS = {"eastron/sdm630": 80, "eastron/sdm72d-m": 60, "carlo_gavazzi/em24": 11}


@pytest.mark.parametrize("name", sorted(DOCUMENT_READ_LIMITS))
def test_a_documented_read_limit_caps_every_read(name: str) -> None:
    device = _profile(name)
    assert device.max_read == DOCUMENT_READ_LIMITS[name]
    assert max(block.count for block in plan_device(device)) <= device.max_read


# The widest read known to be answered through Huawei's SDongle: huawei-solar-lib reads
# up to 64 registers a request (the document's own limit could not be checked; see the
# profile's header). The profile's blocks stay within it.
SDONGLE_KNOWN_READ = 64


def test_the_sun2000_profile_reads_no_more_than_known_to_work_through_the_sdongle() -> None:
    device = _profile("huawei/sun2000")
    widest = max(block.count for block in plan_device(device))
    assert widest <= SDONGLE_KNOWN_READ
