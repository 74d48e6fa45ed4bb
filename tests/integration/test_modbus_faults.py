"""Modbus-side faults against the real daemon: dead units, hung hosts, late replies,
refused ranges and busy devices. Our own SimServer provides the fault timing."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest
from fleet import mqtt_section
from sockets import connections_to

from bridge.sim import SimServer, SimUnit

pytestmark = pytest.mark.integration

POINTS = [
    {"name": "a", "table": "holding", "address": 0, "type": "uint16"},
    {"name": "b", "table": "holding", "address": 1, "type": "uint16"},
]


def _config(
    broker: Any,
    server: SimServer,
    units: str,
    *,
    interval: str = "500ms",
    timeout: float = 0.3,
    points: list[dict[str, Any]] = POINTS,
    framer: str = "tcp",
    **device: Any,
) -> dict[str, Any]:
    host = {"name": "gw", "address": "127.0.0.1", "port": server.port, "timeout": timeout}
    return {
        "version": 1,
        "mqtt": mqtt_section(broker),
        "hosts": [host if framer == "tcp" else {**host, "framer": framer}],
        "devices": [
            {
                "name": "d{unit}",
                "host": "gw",
                "units": units,
                "interval": interval,
                "points": points,
                **device,
            }
        ],
    }


def _load(server: SimServer, unit: int, generation: int = 0) -> None:
    server.unit(unit).set_registers("holding", 0, [unit * 100 + generation, unit])


async def _state(
    watcher: Any, unit: int, generation: int = 0, *, since: int = 0, timeout: float = 10
) -> None:
    want = {"a": unit * 100 + generation, "b": unit}

    def match(m: Any) -> bool:
        if m.topic != f"modbus/d{unit}":
            return False
        doc = json.loads(m.payload)
        return all(doc.get(k) == v for k, v in want.items())

    await watcher.wait_for(match, timeout=timeout, since=since)


def _avail(unit: int, payload: bytes) -> Any:
    return lambda m: m.topic == f"modbus/d{unit}/availability" and m.payload == payload


async def test_dead_unit_does_not_stall_its_neighbours(
    broker, sim_servers, mqtt_watcher, run_bridge
) -> None:
    server = await sim_servers(range(1, 81))
    for unit in range(1, 81):
        _load(server, unit)
    watcher = await mqtt_watcher(broker, "modbus/#")
    bridge = await run_bridge(_config(broker, server, "1-80"))
    for unit in (1, 40, 80):
        await _state(watcher, unit)

    mark = watcher.mark()
    server.silent_units.add(7)
    await watcher.wait_for(_avail(7, b"offline"), timeout=5, since=mark)

    # Window of 6 s = 12 intervals: every live unit keeps (nearly) its interval.
    await asyncio.sleep(1.0)
    t0 = asyncio.get_running_loop().time()
    server.clear_log()
    await asyncio.sleep(6.0)
    reads = Counter(r.unit for r in server.request_log if r.function == 3)
    elapsed = asyncio.get_running_loop().time() - t0
    expected_cycles = elapsed / 0.5
    slow = {u: reads[u] for u in range(1, 81) if u != 7 and reads[u] < 0.8 * expected_cycles}
    assert not slow, f"units below 80% of their interval: {slow}"
    assert reads[7] <= 5, f"dead unit polled {reads[7]} times in 6 s: no backoff"

    # The socket was never recycled for one dead unit; values still flow.
    assert server.connections_total == 1
    assert connections_to(bridge.pid, {server.port}) == 1
    mark = watcher.mark()
    _load(server, 3, generation=1)
    await _state(watcher, 3, 1, since=mark, timeout=3)

    # The dead unit comes back: online again, without a new connection.
    server.silent_units.clear()
    await watcher.wait_for(_avail(7, b"online"), timeout=70, since=mark)
    assert server.connections_total == 1


async def test_gateway_allowing_one_connection_serves_80_units(
    broker, sim_servers, mqtt_watcher, run_bridge
) -> None:
    server = await sim_servers(range(1, 81))
    server.max_connections = 1
    for unit in range(1, 81):
        _load(server, unit)
    watcher = await mqtt_watcher(broker, "modbus/#")
    await run_bridge(_config(broker, server, "1-80"))
    for unit in range(1, 81):
        await _state(watcher, unit, timeout=15)
    await asyncio.sleep(2.0)
    assert server.connections_total == 1
    assert server.connections_refused == 0


async def test_hung_host_is_recycled_with_backoff_and_recovers(
    broker, sim_servers, mqtt_watcher, run_bridge
) -> None:
    server = await sim_servers(range(1, 6))
    for unit in range(1, 6):
        _load(server, unit)
    watcher = await mqtt_watcher(broker, "modbus/#")
    bridge = await run_bridge(_config(broker, server, "1-5"))
    for unit in range(1, 6):
        await _state(watcher, unit)
    assert server.connections_total == 1

    # The host accepts TCP but never answers, for 20 s.
    mark = watcher.mark()
    server.silent_all = True
    for unit in range(1, 6):
        await watcher.wait_for(_avail(unit, b"offline"), timeout=10, since=mark)
    open_max = 0
    for _ in range(40):
        await asyncio.sleep(0.5)
        open_max = max(open_max, connections_to(bridge.pid, {server.port}))
    opened_during_outage = server.connections_total - 1
    assert open_max <= 1, "never a second socket while the first is alive"
    assert opened_during_outage <= 8, f"{opened_during_outage} connections in 20 s: a storm"
    assert opened_during_outage >= 1, "a hung host must be recycled"

    for unit in range(1, 6):
        _load(server, unit, generation=5)
    mark = watcher.mark()
    server.silent_all = False
    for unit in range(1, 6):
        await watcher.wait_for(_avail(unit, b"online"), timeout=90, since=mark)
        await _state(watcher, unit, 5, since=mark, timeout=5)
    assert connections_to(bridge.pid, {server.port}) == 1


@pytest.mark.parametrize("framer", ["tcp", "rtu"])
async def test_late_replies_are_never_taken_for_later_requests(
    broker, sim_servers, mqtt_watcher, run_bridge, framer: str
) -> None:
    # TCP: pymodbus drops a reply with a stale transaction id. RTU has none: the
    # session drains the line after each timeout, so a late reply meets no request.
    # c/d form a second block of the same unit (same function, same count) polled on
    # its own interval, so a late reply for a/b may meet a request for c/d.
    points = [
        *POINTS,
        {"name": "c", "table": "holding", "address": 100, "type": "uint16", "interval": "300ms"},
        {"name": "d", "table": "holding", "address": 101, "type": "uint16", "interval": "300ms"},
    ]

    def load(unit: int, generation: int = 0) -> None:
        _load(server, unit, generation)
        server.unit(unit).set_registers("holding", 100, [10000 + unit * 100 + generation, unit])

    server = await sim_servers(range(1, 5), framing=framer)
    for unit in range(1, 5):
        load(unit)
    watcher = await mqtt_watcher(broker, "modbus/#")
    config = _config(
        broker, server, "1-4", interval="250ms", timeout=0.2, points=points, framer=framer
    )
    await run_bridge(config)
    for unit in range(1, 5):
        await _state(watcher, unit)

    # Units 2 and 3 answer late now and then: after the bridge gave up on them, while
    # it already waits for the next unit's answer on the same socket.
    async def flap() -> None:
        for i in range(16):
            server.per_unit_delay = {2: 0.35, 3: 0.3} if i % 2 == 0 else {}
            for unit in range(1, 5):
                load(unit, generation=i)
            await asyncio.sleep(0.5)
        server.per_unit_delay = {}

    mark = watcher.mark()
    await flap()
    for unit in range(1, 5):
        load(unit, generation=99)
    for unit in range(1, 5):
        await _state(watcher, unit, 99, since=mark, timeout=70)

    # Every value ever published belongs to the device it was published for.
    for m in watcher.messages[mark:]:
        if m.topic.count("/") == 1 and m.topic.startswith("modbus/d"):
            unit = int(m.topic.removeprefix("modbus/d"))
            doc = json.loads(m.payload)
            assert doc["b"] == unit and doc["a"] // 100 == unit, (m.topic, doc)
            if doc["c"] is not None:
                assert doc["d"] == unit and doc["c"] // 100 == 100 + unit, (m.topic, doc)
    late = [m for m in watcher.messages[mark:] if m.payload == b"offline"]
    assert late, "the test must actually produce late replies"


async def test_rejected_range_is_learned_and_skipped(broker, mqtt_watcher, run_bridge) -> None:
    unit = SimUnit(valid={"holding": [(0, 10), (12, 20)]})
    unit.set_registers("holding", 0, [11, 0, 0, 0, 0, 55])
    unit.set_registers("holding", 14, [1414])
    points = [
        {"name": "a", "table": "holding", "address": 0, "type": "uint16"},
        {"name": "b", "table": "holding", "address": 5, "type": "uint16"},
        {"name": "c", "table": "holding", "address": 10, "type": "uint16"},  # refused
        {"name": "d", "table": "holding", "address": 14, "type": "uint16"},
    ]
    server = SimServer({1: unit})
    await server.start()
    try:
        watcher = await mqtt_watcher(broker, "modbus/#")
        bridge = await run_bridge(
            _config(broker, server, "1", interval="250ms", points=points, max_gap=10)
        )
        msg = await watcher.wait_for(
            lambda m: m.topic == "modbus/d1" and json.loads(m.payload).get("d") == 1414,
            timeout=10,
        )
        assert json.loads(msg.payload) | {"last_seen": None} == {
            "a": 11,
            "b": 55,
            "c": None,
            "d": 1414,
            "last_seen": None,
        }
        avail = watcher.latest("modbus/d1/availability")
        assert avail is not None and avail.payload == b"online"
        assert not [m for m in watcher.messages if m.payload == b"offline"]

        # From now on the rest is read in merged blocks that avoid the refused range.
        server.clear_log()
        await asyncio.sleep(1.5)
        spans = Counter((r.address, r.count) for r in server.request_log if r.function == 3)
        assert set(spans) == {(0, 6), (14, 1)}, spans
        assert bridge.log().count("rejected with exception 2") == 1
    finally:
        await server.stop()


async def test_busy_device_is_retried_not_failed(
    broker, sim_servers, mqtt_watcher, run_bridge
) -> None:
    server = await sim_servers([1])
    _load(server, 1)
    busy = {"left": 0}

    def hook(unit: int, function: int, address: int, count: int) -> int | None:
        if busy["left"] > 0:
            busy["left"] -= 1
            return 6
        return None

    server.exception_hook = hook
    watcher = await mqtt_watcher(broker, "modbus/#")
    await run_bridge(_config(broker, server, "1", interval="500ms"))
    await _state(watcher, 1)
    mark = watcher.mark()
    busy["left"] = 2  # the next two requests answer "server device busy"
    _load(server, 1, generation=3)
    await _state(watcher, 1, 3, since=mark, timeout=5)
    assert busy["left"] == 0
    assert not [m for m in watcher.messages if m.payload == b"offline"]
