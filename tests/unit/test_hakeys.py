"""Home Assistant's modbus names in a bridge configuration: `check` says ours."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridge import hakeys
from bridge.config import parse_config
from bridge.errors import ConfigError

DOCS = Path(__file__).parents[2] / "docs" / "migrating.md"

BASE = """
version: 1
hosts:
  - {name: gw, address: 192.0.2.1}
devices:
  - name: meter
    host: gw
    unit: 1
    points:
      - {name: v, table: holding, address: 0, type: uint16}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={})
    return [p.message for p in info.value.problems]


def test_slave_is_unit_not_scale() -> None:
    [message] = problems(BASE.replace("    unit: 1\n", "    unit: 1\n    slave: 3\n"))
    assert message == "unknown key 'slave': Home Assistant's name; here it is 'unit'"
    assert "scale" not in message


@pytest.mark.parametrize(
    ("key", "ours"),
    [
        ("input_type: holding", "'table'"),
        ("data_type: int16", "'type'"),
        ("swap: word", "'byte_order' and 'word_order'"),
        ("scan_interval: 5", "'interval'"),
        ("unit_of_measurement: V", "'unit'"),
        ("device_address: 2", "the device's 'unit'"),
    ],
)
def test_point_keys_of_home_assistant(key: str, ours: str) -> None:
    text = BASE.replace("type: uint16}", f"type: uint16, {key}}}")
    [message] = problems(text)
    assert f"Home Assistant's name; here it is {ours}" in message


def test_host_in_a_host_is_address() -> None:
    text = BASE.replace("{name: gw, address: 192.0.2.1}", "{name: gw, host: 192.0.2.1}")
    assert "unknown key 'host': Home Assistant's name; here it is 'address'" in problems(text)


def test_type_float_names_both_widths() -> None:
    [message] = problems(BASE.replace("type: uint16", "type: float"))
    assert message == (
        "unknown type 'float': write 'float32' (most devices: 2 registers) or 'float64'"
        " (4 registers)"
    )


def test_a_look_alike_that_is_not_home_assistant_s_still_gets_did_you_mean() -> None:
    [message] = problems(BASE.replace("type: uint16", "type: uint16, sacle: 2"))
    assert message == "unknown key 'sacle' (did you mean 'scale'?)"


def test_our_own_key_of_the_same_name_is_not_touched() -> None:
    # `type` is Home Assistant's in a hub, ours in a point
    assert parse_config(BASE, env={}).devices[0].points[0].type.value == "uint16"
    assert hakeys.key_hint(hakeys.POINT, "type") is None
    assert hakeys.key_hint(hakeys.HOST, "type") is not None


def test_the_table_names_keys_that_are_not_ours_and_agrees_with_the_docs() -> None:
    from bridge.config import _DEVICE_KEYS, _HOST_KEYS
    from bridge.config_points import POINT_YAML_KEYS

    ours = {hakeys.HOST: _HOST_KEYS, hakeys.DEVICE: _DEVICE_KEYS, hakeys.POINT: POINT_YAML_KEYS}
    docs = DOCS.read_text()
    for section, keys in hakeys.KEYS.items():
        for key in keys:
            assert key not in ours[section], (section, key)  # never shadows a key of ours
            assert f"`{key}" in docs, key  # docs/migrating.md names it
    for key, values in hakeys.VALUES.items():
        assert key in POINT_YAML_KEYS
        for value in values:
            assert value in docs or value in ("int", "uint", "float"), value
    # the tables the importer converts with, and check's phrases are built on
    for theirs in (*hakeys.INPUT_TYPES, *hakeys.WRITE_TYPES, *hakeys.SWAPS, *hakeys.CLAMPS):
        assert re.search(rf"`[^`]*\b{theirs}`", docs), theirs  # `swap: byte`, `coils`
    for theirs, ours in hakeys.RENAMED.items():
        assert f"| `{theirs}` | `{ours}` |" in docs, theirs
