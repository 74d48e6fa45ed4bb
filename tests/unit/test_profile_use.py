"""Profiles in use: named by a device or a template, points dropped, replaced or added,
user folders before the built-in ones, problems reported inside the profile's file, and
`modbus-bridge profiles`. (The profiles themselves: tests/unit/test_profiles.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.config import parse_config
from bridge.config_profiles import BUILTIN, find_profiles, load_profiles
from bridge.errors import ConfigError
from bridge.model import BridgeConfig, Device, Order
from bridge.planner import plan_device

HEAD = """\
version: 1
hosts:
  - {name: gw, address: 10.0.0.1}
"""

ACME = """\
manufacturer: ACME
model: M1
kind: meter
source: {title: M1 Modbus map, date: 2024-05-01}
word_order: little
points:
  - {name: power, table: input, address: 0, type: float32, unit: W, device_class: power,
     state_class: measurement}
  - {name: voltage, table: input, address: 2, type: int16, unit: V, device_class: voltage,
     state_class: measurement, scale_factor: voltage_sf}
  - {name: voltage_sf, table: input, address: 3, type: int16}
"""


def config(text: str, tmp_path: Path | None = None) -> BridgeConfig:
    source = "c.yaml" if tmp_path is None else str(tmp_path / "c.yaml")
    return parse_config(HEAD + text, source=source, env={})


def problems(text: str, tmp_path: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config(text, tmp_path)
    return [str(p) for p in info.value.problems]


def device(cfg: BridgeConfig, name: str = "m") -> Device:
    return next(d for d in cfg.devices if d.name == name)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A user profile folder with acme/m1 and a replacement for eastron/sdm630."""
    mine = tmp_path / "profiles"
    (mine / "acme").mkdir(parents=True)
    (mine / "acme" / "m1.yaml").write_text(ACME)
    (mine / "eastron").mkdir()
    (mine / "eastron" / "sdm630.yaml").write_text(ACME.replace("ACME", "Mine"))
    return mine


def test_a_device_names_a_profile_and_gets_its_points_and_header() -> None:
    m = device(config("devices:\n  - {name: m, host: gw, unit: 1, profile: eastron/sdm630}\n"))
    assert (m.manufacturer, m.model, m.profile) == ("Eastron", "SDM630", "eastron/sdm630")
    power = m.point("power")
    assert power is not None and power.unit == "W" and power.device_class == "power"
    assert len(m.points) == len(next(p for p in load_profiles()[0] if p.name == m.profile).points)


def test_points_are_dropped_replaced_and_added_per_device() -> None:
    m = device(
        config(
            """\
devices:
  - name: m
    host: gw
    unit: 1
    profile: eastron/sdm630
    model: SDM630-MCT
    drop: [phase_angle_l1, phase_angle_l2]
    points:
      - {name: power, table: input, address: 52, type: float32, unit: kW, scale: 0.001,
         device_class: power, state_class: measurement, interval: 5s}
      - {name: relay, table: coil, address: 0}
"""
        )
    )
    names = [p.name for p in m.points]
    assert "phase_angle_l1" not in names and "phase_angle_l2" not in names
    assert "phase_angle_l3" in names and names[-1] == "relay"
    power = m.point("power")
    assert power is not None and (power.unit, power.interval) == ("kW", 5.0)
    assert m.model == "SDM630-MCT" and m.manufacturer == "Eastron"


def test_a_template_names_a_profile_and_a_device_uses_the_template() -> None:
    cfg = config(
        """\
templates:
  grid:
    profile: eastron/sdm630
    drop: [current_n]
    area: Cellar
devices:
  - {name: m, host: gw, unit: 1, template: grid, drop: [frequency]}
"""
    )
    m = device(cfg)
    assert m.profile == "eastron/sdm630" and m.area == "Cellar" and m.manufacturer == "Eastron"
    assert m.point("current_n") is None and m.point("frequency") is None
    assert m.point("voltage_l1") is not None


def test_a_user_folder_comes_before_the_built_in_profiles(folder: Path, tmp_path: Path) -> None:
    cfg = config(
        f"""\
profiles: [{folder}]
devices:
  - {{name: m, host: gw, unit: 1, profile: eastron/sdm630}}
  - {{name: a, host: gw, unit: 2, profile: acme/m1, drop: []}}
""",
        tmp_path,
    )
    assert cfg.profiles == (str(folder),)
    mine = device(cfg)
    assert mine.manufacturer == "Mine" and [p.name for p in mine.points] == [
        "power",
        "voltage",
        "voltage_sf",
    ]
    acme = device(cfg, "a")
    assert acme.point("power").word_order is Order.LITTLE  # type: ignore[union-attr]
    assert acme.point("voltage").scale_factor == "voltage_sf"  # type: ignore[union-attr]
    found = find_profiles([folder])
    assert found["eastron/sdm630"] == str(folder / "eastron" / "sdm630.yaml")
    assert found["eastron/sdm230"] == str(BUILTIN / "eastron" / "sdm230.yaml")


def test_a_relative_folder_is_found_from_the_configuration_file(
    folder: Path, tmp_path: Path
) -> None:
    cfg = config(
        "profiles: [profiles]\ndevices:\n  - {name: m, host: gw, unit: 1, profile: acme/m1}\n",
        tmp_path,
    )
    assert device(cfg).manufacturer == "ACME"


def test_problems_in_a_profile_are_reported_in_its_file(folder: Path, tmp_path: Path) -> None:
    bad = folder / "acme" / "bad.yaml"
    bad.write_text(
        """\
manufacturer: ACME
model: Bad
kind: meters
source: {title: Bad map}
points:
  - {name: power, table: input, address: 0, type: float32, unit: V, device_class: power}
  - {name: v, table: input, address: 2, type: int16, scale_factor: nothing}
"""
    )
    found = problems(
        f"profiles: [{folder}]\ndevices:\n  - {{name: m, host: gw, unit: 1, profile: acme/bad}}\n",
        tmp_path,
    )
    assert found == [
        f"{tmp_path}/c.yaml:6:43: devices[0].profile: profile 'acme/bad' has problems ({bad})",
        f"{bad}:3:7: kind: unknown kind 'meters' (did you mean 'meter'?)",
        f"{bad}:4:9: source: the document needs its version or its date",
        f"{bad}:6:66: points[0].unit: unit 'V' does not fit device class 'power' "
        "(it takes one of: GW, MW, TW, W, kW, mW)",
    ]
    # the same file, listed: its problems, and the others still listed
    profiles, listed = load_profiles([folder])
    assert [str(p) for p in listed] == found[1:]
    assert "acme/m1" in [p.name for p in profiles]


def test_a_scale_factor_the_device_dropped_is_reported_at_the_drop(
    folder: Path, tmp_path: Path
) -> None:
    text = (
        f"profiles: [{folder}]\ndevices:\n"
        "  - {name: m, host: gw, unit: 1, profile: acme/m1, drop: [voltage_sf]}\n"
    )
    assert problems(text, tmp_path) == [
        f"{tmp_path}/c.yaml:6:59: devices[0].drop[0]: 'voltage_sf' is the scale factor of "
        "voltage: drop that too"
    ]


def test_wrong_uses_are_reported_where_they_are_written(tmp_path: Path) -> None:
    found = problems(
        """\
profiles: [nowhere]
templates:
  t: {points: [{name: a, table: holding, address: 0, type: uint16}]}
devices:
  - {name: a, host: gw, unit: 1, profile: eastron/sdm63}
  - {name: b, host: gw, unit: 2, profile: eastron/sdm630, template: t}
  - {name: c, host: gw, unit: 3, profile: eastron/sdm630, drop: [voltage_l4]}
  - {name: d, host: gw, unit: 4, drop: [x], points: [{name: a, table: coil, address: 0}]}
  - {name: e, host: gw, unit: 5, profile: sdm630}
""",
        tmp_path,
    )
    c = f"{tmp_path}/c.yaml"
    assert found == [
        f"{c}:4:12: profiles[0]: profile folder 'nowhere' does not exist",
        f"{c}:8:43: devices[0].profile: unknown profile 'eastron/sdm63' (did you mean "
        "'eastron/sdm630'?); `modbus-bridge profiles` lists the built-in ones",
        f"{c}:9:34: devices[1].profile: give either 'template' or 'profile', not both "
        "(a template can name a profile)",
        f"{c}:10:66: devices[2].drop[0]: no point 'voltage_l4' to drop (did you mean "
        "'voltage_l3'?)",
        f"{c}:11:41: devices[3].drop[0]: drop removes points of a template or profile; "
        "there is none",
        f"{c}:12:43: devices[4].profile: unknown profile 'sdm630' (did you mean "
        "'eastron/sdm630'?); `modbus-bridge profiles` lists the built-in ones",
    ]


# -- modbus-bridge profiles


def test_profiles_lists_every_profile_with_its_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "MANUFACTURER", "MODEL", "SOURCE", "DOCUMENT"]
    assert len(lines) == 1 + len(find_profiles())
    sdm630 = next(line for line in lines if line.startswith("eastron/sdm630 "))
    assert "meter" in sdm630 and "Eastron" in sdm630 and "SDM630Modbus MID V2" in sdm630


def test_profiles_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profiles", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    sdm630 = next(p for p in doc if p["name"] == "eastron/sdm630")
    assert sdm630["kind"] == "meter" and sdm630["builtin"] is True
    assert sdm630["source"]["title"].startswith("SDM630Modbus")
    assert {p["kind"] for p in doc} >= {"meter", "inverter"}


def test_profiles_show_prints_the_points(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profiles", "show", "eastron/sdm630"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("eastron/sdm630: Eastron SDM630 (meter)\nsource: SDM630Modbus")
    row = next(line for line in out.splitlines() if line.startswith("voltage_l1 "))
    assert row.split() == ["voltage_l1", "input", "0", "float32", "V", "voltage", "measurement"]
    assert main(["profiles", "show", "eastron/sdm630", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["points"][0] == {
        "name": "voltage_l1",
        "table": "input",
        "address": 0,
        "type": "float32",
        "unit": "V",
        "device_class": "voltage",
        "state_class": "measurement",
        "writable": False,
    }


def test_profiles_with_a_configuration_takes_its_folders(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        HEAD
        + "profiles: [profiles]\ndevices:\n  - {name: m, host: gw, unit: 1, profile: acme/m1}\n"
    )
    assert main(["profiles", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "acme/m1 *" in out and "eastron/sdm630 *" in out and "eastron/sdm230 " in out
    assert main(["profiles", "show", "acme/m1", "-c", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["word_order"] == "little" and doc["builtin"] is False
    assert doc["points"][1]["scale_factor"] == "voltage_sf"


def test_profiles_show_an_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profiles", "show", "eastron/sdm63"]) == 2
    assert "unknown profile 'eastron/sdm63' (did you mean 'eastron/sdm630'?)" in (
        capsys.readouterr().err
    )
    assert main(["profiles", "show"]) == 2


# -- max_read: a device that takes fewer registers per request than Modbus allows


def test_max_read_comes_from_the_profile_and_caps_every_read() -> None:
    cfg = config(
        """\
templates:
  small: {profile: eastron/sdm630, max_read: 40}
devices:
  - {name: m, host: gw, unit: 1, profile: eastron/sdm630}
  - {name: t, host: gw, unit: 2, template: small}
  - {name: d, host: gw, unit: 3, template: small, max_read: 20}
  - name: own
    host: gw
    unit: 4
    max_gap: 2000
    points: [{name: a, table: holding, address: 0, type: uint16},
             {name: b, table: holding, address: 120, type: uint16},
             {name: c, table: coil, address: 0}, {name: e, table: coil, address: 1999}]
"""
    )
    assert [d.max_read for d in cfg.devices] == [80, 40, 20, 125]
    for d in cfg.devices:
        blocks = plan_device(d)
        assert all(b.count <= d.max_read for b in blocks if not b.table.is_bits), d.name
    own = plan_device(device(cfg, "own"))
    assert [(b.table.value, b.start, b.count) for b in own] == [
        ("coil", 0, 2000),  # bits are not capped by max_read
        ("holding", 0, 121),
    ]
    assert len(plan_device(device(cfg))) < len(plan_device(device(cfg, "d")))


def test_a_point_longer_than_max_read_is_refused() -> None:
    found = problems(
        """\
devices:
  - name: m
    host: gw
    unit: 1
    max_read: 4
    points: [{name: s, table: holding, address: 0, type: string, length: 8}]
"""
    )
    assert found == [
        "c.yaml:9:74: devices[0].points[0].length: s needs 8 registers, more than the "
        "device's max_read (4)"
    ]
    assert problems(
        "devices:\n  - {name: m, host: gw, unit: 1, max_read: 126, profile: eastron/sdm630}\n"
    ) == ["c.yaml:5:44: devices[0].max_read: must be between 1 and 125, got 126"]
