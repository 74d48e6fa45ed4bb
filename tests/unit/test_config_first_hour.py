"""What `check` must catch before the bridge runs (issue 18, item 1): every problem in
one run, each naming what it clashes with; possible mistakes as warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import parse_config
from bridge.errors import ConfigError


def config(hosts: str, devices: str) -> str:
    return f"version: 1\nhosts:\n{hosts}devices:\n{devices}"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={})
    return [str(p) for p in info.value.problems]


POINT = "    points: [{name: v, table: holding, address: 0, type: uint16}]\n"


def device(name: str, host: str, unit: int = 1) -> str:
    return f"  - name: {name}\n    host: {host}\n    unit: {unit}\n" + POINT


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("::1", "0:0:0:0:0:0:0:1"),  # one address, two spellings
        ("GW.example", "gw.example."),
    ],
)
def test_two_hosts_on_one_address_and_port_are_refused_naming_both(first: str, second: str) -> None:
    hosts = (
        f"  - {{name: a, address: '{first}'}}\n  - {{name: b, address: '{second}', port: 502}}\n"
    )
    [problem] = problems(config(hosts, device("d", "a") + device("e", "b")))
    assert "hosts[1].address: host 'b' has the address and port of host 'a' (hosts[0])" in problem
    assert "put all its devices on one host" in problem


def test_another_port_is_another_gateway() -> None:
    hosts = "  - {name: a, address: 192.0.2.1}\n  - {name: b, address: 192.0.2.1, port: 503}\n"
    assert len(parse_config(config(hosts, device("d", "a") + device("e", "b")), env={}).hosts) == 2


def test_two_devices_on_one_unit_are_a_warning_naming_both() -> None:
    hosts = "  - {name: gw, address: 192.0.2.1}\n"
    text = config(hosts, device("inverter", "gw", 3) + device("inverter_extra", "gw", 3))
    cfg = parse_config(text, env={})
    assert len(cfg.devices) == 2
    [warning] = cfg.warnings
    assert warning == (
        "<string>:11:11: devices[1].unit: device 'inverter_extra' polls unit 3 on host 'gw',"
        " as device 'inverter' (devices[0]) does: one device split in two is fine; otherwise"
        " one of them has the wrong unit"
    )


def test_a_duplicate_device_name_is_reported_with_the_other_problems() -> None:
    hosts = "  - {name: gw, address: 192.0.2.1}\n"
    bad_point = "    points: [{name: v, table: holding, address: 0, type: uint16, scale: 0}]\n"
    first = "  - name: meter\n    host: nowhere\n    unit: 1\n" + bad_point
    found = problems(config(hosts, first + device("meter", "gw", 2)))
    assert any("devices[0].host: unknown host 'nowhere'" in p for p in found)
    assert any("devices[0].points[0].scale: must not be zero" in p for p in found)
    assert any(
        "devices[1].name: device name 'meter' is already used by devices[0]" in p for p in found
    )


def test_overlapping_points_are_an_error_unless_said_on_purpose() -> None:
    hosts = "  - {name: gw, address: 192.0.2.1}\n"
    points = (
        "    points:\n"
        "      - {name: a, table: input, address: 0, type: float32}\n"
        "      - {name: b, table: input, address: 1, type: float32}\n"
    )
    text = config(hosts, "  - name: d\n    host: gw\n    unit: 1\n" + points)
    [problem] = problems(text)
    assert problem.startswith("<string>:10:42: devices[0].points[1].address: point 'b'")
    on_purpose = text.replace(
        "address: 1, type: float32}", "address: 1, type: float32, overlaps: true}"
    )
    assert len(parse_config(on_purpose, env={}).devices[0].points) == 2


def test_a_template_point_overlapping_a_device_point_is_shown_at_the_device() -> None:
    text = (
        "version: 1\nhosts:\n  - {name: gw, address: 192.0.2.1}\n"
        "templates:\n  meter:\n    points:\n"
        "      - {name: energy, table: holding, address: 10, type: uint32}\n"
        "devices:\n  - name: d\n    host: gw\n    unit: 1\n    template: meter\n"
        "    points:\n      - {name: power, table: holding, address: 11, type: uint16}\n"
    )
    [problem] = problems(text)
    assert (
        "devices[0].points[0].address: point 'power' (holding 11, uint16) overlaps point" in problem
    )
    assert "'energy' (holding 10..11, uint32)" in problem


def test_4xxxx_numbering_is_a_warning_with_the_probable_address() -> None:
    hosts = "  - {name: gw, address: 192.0.2.1}\n"
    points = "    points: [{name: v, table: holding, address: 40001, type: uint16}]\n"
    cfg = parse_config(config(hosts, "  - name: d\n    host: gw\n    unit: 1\n" + points), env={})
    [warning] = cfg.warnings
    assert "devices[0].points[0].address: holding 40001 looks like a manual's 1-based" in warning
    assert "write address: 0;" in warning


def test_a_valid_configuration_has_no_warning() -> None:
    hosts = "  - {name: gw, address: 192.0.2.1}\n"
    assert parse_config(config(hosts, device("d", "gw")), env={}).warnings == ()


def test_a_missing_serial_port_is_a_warning_at_its_line(tmp_path: Path) -> None:
    """Like every warning, with file:line:column and its path (the adapter may be
    plugged in later, so the configuration stays valid)."""
    missing = tmp_path / "ttyUSB7"
    hosts = f"  - name: bus\n    serial: {missing}\n"
    cfg = parse_config(config(hosts, device("d", "bus")), env={})
    assert cfg.warnings == (
        f"<string>:4:13: hosts[0].serial: serial port {missing} does not exist (yet): is the"
        " adapter plugged in? (a /dev/serial/by-id/... path names the adapter)",
    )


def test_a_duplicate_point_name_is_reported_with_the_points_problems() -> None:
    """A point name used twice is said in the same run as the problems of the points
    that carry it (an invalid first point still holds its name)."""
    hosts = "  - {name: gw, address: 192.0.2.1}\n"
    points = (
        "    points:\n"
        "      - {name: a, table: discrete, address: 0, writable: true}\n"
        "      - {name: a, table: holding, address: 1, type: float32, bit: 2}\n"
    )
    found = problems(config(hosts, "  - name: d\n    host: gw\n    unit: 1\n" + points))
    assert [p.split(": ", 2)[1] for p in found] == [
        "devices[0].points[0].writable",
        "devices[0].points[1].name",
        "devices[0].points[1].bit",
    ]
    assert "duplicate point name 'a' (also devices[0].points[0])" in found[1]
