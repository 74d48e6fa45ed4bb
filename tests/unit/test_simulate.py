"""`modbus-bridge sim`'s pure parts: ports, plausible and moving values, what a unit holds,
and the configuration pointed at the simulator. No socket: the simulator's request
handler is called directly."""

from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import Any

import pytest

from bridge.codec import decode_point
from bridge.config import parse_config, retarget
from bridge.model import BridgeConfig, Device, Host, SerialLink, TcpLink
from bridge.sim import SimUnit
from bridge.simulate import (
    SimFleet,
    assign_ports,
    banner,
    initial_value,
    next_value,
    read,
    scale_factors,
    store,
    targets,
    value_range,
    with_scale_factors,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.yaml"


def _example() -> BridgeConfig:
    return parse_config(EXAMPLE.read_text(), source=str(EXAMPLE), env={})


def _tcp(name: str, port: int) -> Host:
    return Host(name, TcpLink("192.0.2.1", port))


def test_ports_are_offset_and_never_shared() -> None:
    hosts = [
        _tcp("a", 502),
        _tcp("b", 502),  # another gateway on the same port: the next one up
        Host("bus", SerialLink("/dev/ttyUSB0")),  # no port
        _tcp("c", 503),  # its port was taken by b
        _tcp("d", 1502),
    ]
    assert assign_ports(hosts, 10000) == {"a": 10502, "b": 10503, "c": 10504, "d": 11502}
    assert assign_ports(hosts, 0)["b"] == 503
    with pytest.raises(ValueError, match=r"outside 1\.\.65535"):
        assign_ports([_tcp("a", 60000)], 10000)


def test_every_point_of_the_example_gets_a_value_it_can_hold() -> None:
    rng = random.Random(1)
    config = _example()
    for device in config.devices:
        unit = SimUnit()
        # as the simulator serves them: a scaled point under its simulated scale factor
        for p in with_scale_factors(device, scale_factors(device)):
            value = initial_value(p, device, rng)
            assert value is not None, p.name
            store(unit, p, value)
            assert read(unit, p) == value, (device.name, p.name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                lo, hi = value_range(p)
                assert lo <= value <= hi


def _device(config: BridgeConfig, name: str) -> Device:
    return next(d for d in config.devices if d.name == name)


def test_values_move_as_their_kind_does() -> None:
    rng = random.Random(7)
    meter = _device(_example(), "meter-1")
    voltage, energy = meter.point("voltage_l1"), meter.point("import_energy")
    assert voltage is not None and energy is not None
    volts = [initial_value(voltage, meter, rng)]
    kwh = [initial_value(energy, meter, rng)]
    for _ in range(60):
        volts.append(next_value(voltage, volts[-1], rng))
        kwh.append(next_value(energy, kwh[-1], rng))
    assert len(set(volts)) > 10  # a measurement wanders ...
    assert all(200 < v < 260 for v in volts)  # ... around its typical value (230 V)
    assert kwh == sorted(kwh) and kwh[-1] > kwh[0]  # a counter counts up
    text = _device(_example(), "boiler").point("model")
    assert text is not None
    assert next_value(text, "SIM", rng) == "SIM"  # text stays


def test_bits_of_one_register_add_up() -> None:
    config = parse_config(
        """
version: 1
hosts: [{name: gw, address: 192.0.2.1}]
devices:
  - name: d
    host: gw
    unit: 1
    byte_order: little
    points:
      - {name: a, table: holding, address: 5, type: uint16, bit: 0}
      - {name: b, table: holding, address: 5, type: uint16, bit: 9}
      - {name: c, table: input, address: 0, type: uint16, values: {0: idle, 7: run}}
""",
        env={},
    )
    [device] = config.devices
    unit = SimUnit()
    a, b, c = device.points
    store(unit, a, True)
    store(unit, b, True)
    store(unit, c, "run")
    assert read(unit, a) is True and read(unit, b) is True
    assert decode_point(a, unit.get_registers("holding", 5)) is True
    store(unit, a, False)
    assert (read(unit, a), read(unit, b)) == (False, True)
    assert unit.get_registers("input", 0) == [0x0700]  # byte_order: little


def _write(fleet: SimFleet, host: str, unit: int, pdu: bytes) -> bytes:
    server = next(s.server for s in fleet.hosts if s.host.name == host)
    reply = server._execute(unit, pdu)
    assert reply is not None and reply[0] == pdu[0], reply
    return reply


def test_a_point_written_elsewhere_shows_the_written_value_at_once() -> None:
    """The example's `run` is read from discrete 3 and written to coil 8: a device that
    mirrors its command shows the new state in the next read (the bridge reads back)."""
    fleet = SimFleet(_example(), seed=3)
    boiler = _device(fleet.config, "boiler")
    run, setpoint = boiler.point("run"), boiler.point("setpoint")
    assert run is not None and setpoint is not None
    for state in (True, False, True):
        _write(fleet, "gw-b", 7, struct.pack(">BHH", 5, 8, 0xFF00 if state else 0))
        unit = fleet.hosts[1].server.unit(7)
        assert read(unit, run) is state
    # a writable register keeps what is written, and values move only where read-only
    _write(fleet, "gw-b", 7, struct.pack(">BHH", 6, 100, 425))
    before = {p.name: read(unit, p) for p in boiler.points}
    for _ in range(20):
        fleet.tick()
    after = {p.name: read(unit, p) for p in boiler.points}
    assert before["setpoint"] == after["setpoint"] == 42.5
    assert before["run"] == after["run"] is True
    assert before["voltage"] != after["voltage"]


def test_serial_and_tcp_hosts_are_pointed_at_the_simulator() -> None:
    config = _example()
    fleet = SimFleet(config, port_offset=10000)
    fleet.hosts[2].pty.path = "/dev/pts/77"  # type: ignore[union-attr]  # as if started
    want = targets(fleet)
    assert want == {
        "gw-a": {"address": "127.0.0.1", "port": 10502},
        "gw-b": {"address": "127.0.0.1", "port": 10503},
        "bus1": {"serial": "/dev/pts/77"},
    }
    text = retarget(EXAMPLE.read_text(), str(EXAMPLE), want)
    moved = parse_config(text, env={})
    assert [h.describe() for h in moved.hosts] == [
        "127.0.0.1:10502",
        "127.0.0.1:10503",
        "/dev/pts/77 9600 8N1",
    ]
    # everything else as written: devices, points, labels such as `off`, ${VAR}
    assert moved.devices == config.devices
    assert "${MQTT_PASSWORD:-}" in text


def test_retarget_keeps_merge_keys_flow_mappings_and_quoting() -> None:
    text = """\
version: 1
x-gw: &gw {timeout: 2s, port: 1502}
hosts:
  - {<<: *gw, name: a, address: "gw-a.local"}
  - <<: *gw
    name: b
    address: 192.0.2.8
devices:
  - {name: d, host: a, unit: 1, points: [{name: m, table: holding, address: 0,
     type: uint16, values: {0: off, 1: 'on'}}]}
  - {name: e, host: b, unit: 1, points: [{name: m, table: coil, address: 0}]}
"""
    out = retarget(text, "t.yaml", {"a": {"address": "127.0.0.1", "port": 20000}})
    config: Any = parse_config(out, env={})
    assert [h.describe() for h in config.hosts] == ["127.0.0.1:20000", "192.0.2.8:1502"]
    assert config.hosts[0].timeout == 2.0
    assert config.devices[0].points[0].values == ((0, "off"), (1, "on"))


def test_the_banner_says_a_sunspec_device_is_not_simulated() -> None:
    """The simulator serves the points of the configuration; a `sunspec: true` device
    takes its points from a model chain on the device, which it does not lay out."""
    text = (
        "version: 1\nhosts:\n  - {name: gw, address: 192.0.2.1}\ndevices:\n"
        "  - {name: inverter, host: gw, unit: 126, sunspec: true}\n"
        "  - {name: meter, host: gw, unit: 2,\n"
        "     points: [{name: v, table: input, address: 0, type: uint16}]}\n"
    )
    fleet = SimFleet(parse_config(text, env={}), port_offset=10000)
    [line] = [line for line in banner(fleet, "x.yaml", None, 0).splitlines() if "SunSpec" in line]
    assert line.startswith("  SunSpec   not simulated: inverter (sunspec: true)")
    assert "SunSpec" not in banner(SimFleet(_example()), "x.yaml", None, 0)
