"""The point rules as pure functions: a `Point` built here, no YAML, findings checked."""

from __future__ import annotations

from typing import Any

from bridge.config_rules import (
    POINT_RULES,
    check_homeassistant,
    check_keys,
    check_point,
    numbering_hint,
    overlap_message,
    overlapping,
)
from bridge.model import DataType, EntityCategory, Point, StateClass, Table


def point(**given: Any) -> Point:
    base: dict[str, Any] = {
        "name": "p",
        "table": Table.HOLDING,
        "address": 0,
        "type": DataType.UINT16,
        "interval": 1.0,
    }
    return Point(**{**base, **given})


def test_a_valid_point_has_no_findings() -> None:
    assert check_point(point(), {"name", "table", "address", "type"}) == []
    assert check_homeassistant(point(unit="V", device_class="voltage")) == []


def test_a_coil_that_is_not_bool_stops_the_other_rules() -> None:
    p = point(table=Table.COIL, type=DataType.FLOAT32, bit=3)
    assert check_point(p, {"type", "bit"}) == [
        ("type", "points in the coil table must be type bool, not float32")
    ]


def test_a_finding_is_about_the_key_the_user_wrote() -> None:
    p = point(writable=False, minimum=5.0, maximum=1.0)
    assert check_point(p, {"min", "max"}) == [
        ("min", "min (5) is greater than max (1)"),
        ("min", "'min' needs writable: true"),
        ("max", "'max' needs writable: true"),
    ]


def test_a_default_does_not_fire_a_rule_about_a_written_key() -> None:
    p = point(type=DataType.INT16, values=((0, "off"), (1, "on")))
    assert check_point(p, {"values"}) == []
    assert check_point(p, {"values", "scale"}) == [
        ("values", "values cannot be combined with scale or offset")
    ]


def test_a_raw_value_out_of_range_is_found_at_its_entry() -> None:
    p = point(type=DataType.BOOL, values=((0, "off"), (2, "odd")))
    assert check_point(p, {"values"}) == [("values.2", "raw value 2 does not fit a bool (0 or 1)")]


def test_a_missing_length_is_about_the_point() -> None:
    assert check_point(point(type=DataType.STRING), set()) == [
        ("", "missing required key 'length' (registers of the string)")
    ]


def test_a_write_past_the_address_space() -> None:
    p = point(writable=True, type=DataType.FLOAT64, write_address=65534)
    assert check_point(p, {"writable", "write_address"}) == [
        ("write_address", "the write ends at 65537, past 65535")
    ]


def test_keys_alone() -> None:
    found = check_keys({"name": "set", "scale": 0, "deadband": -1.0, "icon": " "})
    assert [key for key, _ in found] == ["name", "scale", "deadband", "icon"]


def test_home_assistant_rules() -> None:
    found = dict(
        check_homeassistant(
            point(
                device_class="voltage",
                unit="kWh",
                state_class=StateClass.MEASUREMENT,
                entity_category=EntityCategory.CONFIG,
                icon="flash",
            )
        )
    )
    assert set(found) == {"unit", "entity_category", "icon"}
    assert "does not fit device class 'voltage'" in found["unit"]


def test_every_rule_is_a_row_of_the_table() -> None:
    assert len(POINT_RULES) == len(set(POINT_RULES))
    assert all(rule(point(), set()) is not None for rule in POINT_RULES)


# -- between the points of a device (issue 18: what breaks the bridge's promise)


def test_a_float32_one_register_after_another_overlaps() -> None:
    a = point(name="a", table=Table.INPUT, type=DataType.FLOAT32)
    b = point(name="b", table=Table.INPUT, address=1, type=DataType.FLOAT32)
    assert overlapping([a, b]) == [(0, 1)]
    assert overlap_message(a, b) == (
        "point 'b' (input 1..2, float32) overlaps point 'a' (input 0..1, float32): a value"
        " takes the registers from its address on (its type's width); if both are meant,"
        " write overlaps: true on one of them"
    )


def test_what_does_not_overlap() -> None:
    word = point(name="w", address=5)
    assert overlapping([word, point(name="x", address=6)]) == []  # neighbours
    assert overlapping([word, point(name="x", table=Table.INPUT, address=5)]) == []  # tables
    bits = [point(name=f"b{n}", address=5, bit=n) for n in (0, 1, 2)]
    assert overlapping([word, *bits]) == []  # a register and its bits, bits of one register
    assert overlapping([point(name="x", address=5, overlaps=True), word]) == []  # on purpose


def test_one_bit_twice_overlaps_and_the_later_point_is_named() -> None:
    first = point(name="x", address=7, bit=3)
    long = point(name="s", address=2, type=DataType.STRING, length=4)  # 2..5
    later = [long, point(name="y", address=5), first, point(name="z", address=7, bit=3)]
    assert overlapping(later) == [(0, 1), (2, 3)]


def test_numbering_hint() -> None:
    assert numbering_hint([point(address=40000)]) is None  # below 40001: an address
    assert numbering_hint([point(table=Table.COIL, type=DataType.BOOL, address=40001)]) is None
    found = numbering_hint([point(address=100), point(address=40011), point(address=40013)])
    assert found is not None
    index, message = found
    assert index == 1
    assert 'holding 40011 looks like a manual\'s 1-based "4xxxx" register number' in message
    assert "write address: 10, and subtract 40001 from the 1 other point;" in message
    found = numbering_hint([point(table=Table.INPUT, address=30001)])
    assert found is not None and "write address: 0;" in found[1]
