"""Modbus RTU on a serial port: a virtual null-modem cable (socat pty pair) with our
simulator on the far end, and pymodbus's own serial server as a second opinion
(a framing mistake shared by our client and our simulator cannot pass both).

A pty ignores baud rate and timing, so these tests prove framing, CRC checks,
backoff, recovery and file descriptors; the 3.5-character gaps are kept by the
session's code (see bridge/wire.py) but not timed here.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from fleet import TEMPLATE, expected, load_unit, mqtt_section, same

from bridge.sim import SimSerial, SimServer

pytestmark = pytest.mark.integration


def _config(
    broker: Any,
    port: Path,
    units: range,
    *,
    baudrate: int = 19200,
    interval: str = "500ms",
    **host: Any,
):
    return {
        "version": 1,
        "health_interval": "1s",
        "mqtt": mqtt_section(broker),
        "hosts": [
            {
                "name": "bus1",
                "serial": str(port),
                "baudrate": baudrate,
                "timeout": "300ms",
                **host,
            }
        ],
        "templates": {"meter": TEMPLATE},
        "devices": [
            {"name": "m{unit}", "host": "bus1", "units": f"{units.start}-{units.stop - 1}",
             "template": "meter", "interval": interval,
             "points": [{"name": "setpoint", "table": "holding", "address": 40,
                         "type": "uint16", "writable": True}]}
        ],
    }  # fmt: skip


def _port_fds(pid: int, pty: str | None) -> list[str]:
    """The bridge's file descriptors on the serial port `pty` (a /dev/pts/N), and on
    any pty that was closed and deleted under it (an old port it failed to let go)."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        if target == pty or (target.startswith("/dev/pts/") and target.endswith("(deleted)")):
            out.append(target)
    return out


async def _bus(serial_pair: Any, units: range) -> tuple[SimServer, SimSerial]:
    """Simulated units with the fleet's values, on the device end of the cable."""
    server = SimServer(units)
    for unit in units:
        load_unit(server, unit)
    device = SimSerial(server, str(serial_pair.device))
    await device.start()
    return server, device


async def _state(
    watcher: Any, unit: int, generation: int = 0, since: int = 0, timeout: float = 10
) -> None:
    want = expected(unit, generation)
    await watcher.wait_for(
        lambda m: m.topic == f"modbus/m{unit}" and same(m.json(), want),
        timeout=timeout,
        since=since,
    )


@pytest.mark.parametrize(("baudrate", "drip"), [(9600, 0.001), (19200, 0.0)])
async def test_several_units_on_one_bus_read_write_and_line_faults(
    broker, mqtt_watcher, run_bridge, serial_pair, *, baudrate: int, drip: float
) -> None:
    server, device = await _bus(serial_pair, range(1, 5))
    # At 9600 baud a real line delivers a reply byte by byte: so does the simulator.
    server.drip = drip
    watcher = await mqtt_watcher(broker, "modbus/#")
    # Four units of five blocks each, every second. Every 500 ms kept a 9600-baud line
    # with byte-by-byte replies so busy that a unit which missed its first poll on a
    # loaded machine could stay in backoff past the 10 s this test waits (seen once in a
    # whole run): every second leaves the line idle time for the probes.
    config = _config(broker, serial_pair.bridge, range(1, 5), baudrate=baudrate, interval="1s")
    bridge = await run_bridge(config)
    try:
        for unit in range(1, 5):
            await _state(watcher, unit)
        assert len(_port_fds(bridge.pid, serial_pair.pty_of(serial_pair.bridge))) == 1

        # A write lands on the bus and is read back.
        mark = watcher.mark()
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.publish("modbus/m2/set", b'{"setpoint": 215}', qos=1)
        result = await watcher.wait_for("modbus/m2/set/result", since=mark)
        assert result.json() == {"status": "ok", "data": {"setpoint": 215}}
        assert server.unit(2).get_registers("holding", 40) == [215]

        # Line faults: unit 3's replies arrive with a bad CRC, unit 4 answers too late
        # (after its 0.3 s timeout, while the line is being drained).
        server.corrupt_units.add(3)
        server.per_unit_delay[4] = 0.45
        mark = watcher.mark()
        load_unit(server, 1, generation=1)
        await _state(watcher, 1, generation=1, since=mark)  # unit 1 is never fooled
        await watcher.wait_for(
            lambda m: m.topic == "modbus/m3/availability" and m.payload == b"offline",
            timeout=10,
            since=mark,
        )
        await asyncio.sleep(2.5)
        health = watcher.latest("modbus/bridge/health").json()["hosts"]["bus1"]
        assert health["crc_errors"] >= 1 and health["units"]["3"]["crc_errors"] >= 1
        assert health["units"]["4"]["timeouts"] >= 1
        assert health["stray_frames"] >= 1  # unit 4's late replies, seen and dropped
        assert health["sockets_opened"] == 1
        for unit in (1, 2):  # neighbours keep their values and their interval
            assert same(watcher.latest(f"modbus/m{unit}").json(), expected(unit, unit == 1))
        assert watcher.latest("modbus/m1/availability").payload == b"online"
        assert "Traceback" not in bridge.log()
    finally:
        await bridge.terminate()
        await device.stop()


async def test_unplugged_adapter_is_reopened_when_it_comes_back(
    broker, mqtt_watcher, run_bridge, serial_pair
) -> None:
    server, device = await _bus(serial_pair, range(1, 3))
    watcher = await mqtt_watcher(broker, "modbus/#")
    bridge = await run_bridge(_config(broker, serial_pair.bridge, range(1, 3)))
    try:
        await _state(watcher, 1)
        await _state(watcher, 2)

        # The cable is pulled: the devices go offline, the bridge keeps running.
        mark = watcher.mark()
        await device.stop()
        serial_pair.unplug()
        for unit in (1, 2):
            await watcher.wait_for(
                lambda m, u=unit: (
                    m.topic == f"modbus/m{u}/availability" and m.payload == b"offline"
                ),
                timeout=10,
                since=mark,
            )
        await asyncio.sleep(2.0)
        assert bridge.alive()
        log = bridge.log()
        assert log.count("does not exist: is the USB adapter plugged in?") == 1, log[-3000:]
        assert _port_fds(bridge.pid, None) == []  # the old port is closed, not leaked

        # Plugged back at the same path: everything returns without a restart.
        serial_pair.plug()
        device = SimSerial(server, str(serial_pair.device))
        await device.start()
        mark = watcher.mark()
        load_unit(server, 1, generation=3)
        # The port is reopened on the reconnect backoff (jittered, growing while the
        # cable was out): allow the same minute for both units.
        await _state(watcher, 1, generation=3, since=mark, timeout=60)
        await watcher.wait_for(
            lambda m: m.topic == "modbus/m2/availability" and m.payload == b"online",
            timeout=60,
            since=mark,
        )
        assert len(_port_fds(bridge.pid, serial_pair.pty_of(serial_pair.bridge))) == 1
        assert "Traceback" not in bridge.log()
    finally:
        await bridge.terminate()
        await device.stop()


async def test_dead_unit_costs_a_timeout_per_backoff_step_not_per_cycle(
    broker, mqtt_watcher, run_bridge, serial_pair
) -> None:
    _, device = await _bus(serial_pair, range(1, 3))  # unit 3 is not on the bus
    watcher = await mqtt_watcher(broker, "modbus/#")
    bridge = await run_bridge(_config(broker, serial_pair.bridge, range(1, 4)))
    try:
        await _state(watcher, 1)
        await asyncio.sleep(6.0)
        health = watcher.latest("modbus/bridge/health").json()
        # 12 cycles in 6 s at 500 ms; backoff from the interval doubling, full jitter.
        assert 1 <= health["hosts"]["bus1"]["units"]["3"]["timeouts"] <= 6, health
        for name in ("m1", "m2"):
            assert health["devices"][name]["cycles"] >= 11
            assert health["devices"][name]["missed_cycles"] == 0
    finally:
        await bridge.terminate()
        await device.stop()


async def test_against_pymodbus_serial_server(
    broker, mqtt_watcher, run_bridge, serial_pair
) -> None:
    # A server we did not write, on the same virtual cable.
    from pymodbus import FramerType
    from pymodbus.server import ModbusSerialServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    devices = [
        SimDevice(
            id=unit,
            simdata=[SimData(0, count=4, values=[unit, 100 + unit, 0x4049, 0x0FDB],
                             datatype=DataType.REGISTERS)],
        )
        for unit in (5, 6)
    ]  # fmt: skip
    server = ModbusSerialServer(
        devices, framer=FramerType.RTU, port=str(serial_pair.device), baudrate=19200
    )
    await server.serve_forever(background=True)
    watcher = await mqtt_watcher(broker, "modbus/#")
    config = _config(broker, serial_pair.bridge, range(5, 7))
    del config["templates"]
    config["devices"] = [
        {
            "name": f"p{unit}",
            "host": "bus1",
            "unit": unit,
            "interval": "500ms",
            "points": [
                {"name": "id", "table": "holding", "address": 0, "type": "uint16",
                 "writable": True},
                {"name": "other", "table": "holding", "address": 1, "type": "uint16"},
                {"name": "pi", "table": "holding", "address": 2, "type": "float32"},
            ],
        }
        for unit in (5, 6)
    ]  # fmt: skip
    bridge = await run_bridge(config)
    try:
        for unit in (5, 6):
            await watcher.wait_for(
                lambda m, u=unit: (
                    m.topic == f"modbus/p{u}"
                    and m.json().get("id") == u
                    and m.json().get("other") == 100 + u
                    and abs(m.json().get("pi", 0) - 3.1415927) < 1e-6
                ),
                timeout=10,
            )
        mark = watcher.mark()
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.publish("modbus/p6/id/set", b"42", qos=1)
        result = await watcher.wait_for("modbus/p6/set/result", since=mark)
        assert result.json() == {"status": "ok", "data": {"id": 42}}
    finally:
        await bridge.terminate()
        await server.shutdown()


async def test_a_port_locked_by_another_program_is_named_and_taken_once_free(
    broker, mqtt_watcher, run_bridge, serial_pair
) -> None:
    # ModemManager, a second bridge or a terminal program on the adapter: the bridge
    # opens a port with an exclusive lock, so the open fails; the log names who holds it.
    import fcntl

    _, device = await _bus(serial_pair, range(1, 2))
    holder = os.open(serial_pair.bridge, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    watcher = await mqtt_watcher(broker, "modbus/#")
    bridge = await run_bridge(_config(broker, serial_pair.bridge, range(1, 2)))
    try:
        wanted = f"is locked by another program: pid {os.getpid()} ("
        async with asyncio.timeout(10):
            while wanted not in bridge.log():
                await asyncio.sleep(0.1)
        line = next(x for x in bridge.log().splitlines() if wanted in x)
        assert "socat" not in line, line  # it has the port open, but holds no lock
        assert watcher.latest("modbus/m1") is None
        os.close(holder)  # the other program lets go: the bridge takes the port
        holder = -1
        await _state(watcher, 1, timeout=30)
        assert len(_port_fds(bridge.pid, serial_pair.pty_of(serial_pair.bridge))) == 1
    finally:
        if holder >= 0:
            os.close(holder)
        await bridge.terminate()
        await device.stop()
