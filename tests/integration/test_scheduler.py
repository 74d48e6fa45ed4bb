"""Scheduler + HostSession in-process against the simulator: availability rules."""

from __future__ import annotations

import asyncio
import time

import pytest

from bridge.errors import ModbusRequestError
from bridge.model import DataType, Device, Host, Point, Table, TcpLink
from bridge.payloads import Value
from bridge.planner import plan_device
from bridge.scheduler import Scheduler, group_blocks
from bridge.session import HostSession
from bridge.sim import SimServer

pytestmark = pytest.mark.integration


async def test_failing_slow_group_keeps_device_offline_without_flapping(sim_servers) -> None:
    server: SimServer = await sim_servers([1])
    server.unit(1).set_registers("holding", 0, [7])
    # The slow point's register answers "server device failure" (exception 4).
    server.exception_hook = lambda unit, fc, address, count: 4 if address == 50 else None
    device = Device(
        name="d",
        host="gw",
        unit=1,
        interval=0.1,
        points=(
            Point("fast", Table.HOLDING, 0, DataType.UINT16, interval=0.1),
            Point("slow", Table.HOLDING, 50, DataType.UINT16, interval=0.5),
        ),
    )
    session = HostSession(Host(name="gw", link=TcpLink("127.0.0.1", port=server.port), timeout=0.3))
    seen: list[tuple[dict[str, Value], bool]] = []

    def on_poll(dev: Device, values: dict[str, Value], error: ModbusRequestError | None) -> None:
        seen.append((values, error is None))

    scheduler = Scheduler(
        group_blocks([device], {"d": plan_device(device)}), {"gw": session}, on_poll=on_poll
    )
    await session.start()
    scheduler.start()
    try:
        await asyncio.sleep(1.0)
        # Polls report what changed: a new value must get through the failing device.
        server.unit(1).set_registers("holding", 0, [8])
        await asyncio.sleep(1.0)
    finally:
        await scheduler.stop()
        await session.stop()
    first_failure = next(i for i, (_, ok) in enumerate(seen) if not ok)
    after = seen[first_failure:]
    # The fast group keeps delivering values, but the device never reports healthy
    # while its slow group fails.
    assert any(values.get("fast") == 8 for values, _ in after)
    assert not any(ok for _, ok in after), "availability flapped back online"


async def test_a_write_goes_ahead_of_the_rest_of_a_pass(sim_servers) -> None:
    # 20 devices in one pass behind a host that needs 20 ms between requests: a pass
    # queues about 400 ms of polls at once. A write sent meanwhile waits for the
    # request on the line and the one the worker holds, not for the whole pass.
    units = range(1, 21)
    server: SimServer = await sim_servers(units)
    devices = [
        Device(
            name=f"d{u}",
            host="gw",
            unit=u,
            interval=1.0,
            points=(Point("v", Table.HOLDING, 0, DataType.UINT16, interval=1.0),),
        )
        for u in units
    ]
    link = TcpLink("127.0.0.1", port=server.port)
    session = HostSession(Host(name="gw", link=link, timeout=0.5, pause=0.02), units=20)
    groups = group_blocks(devices, {d.name: plan_device(d) for d in devices})
    assert len({g.phase for g in groups}) == 1
    scheduler = Scheduler(groups, {"gw": session}, on_poll=lambda *_: None)
    await session.start()
    scheduler.start()
    try:
        # Wait for a pass to begin: a read after a quiet spell (between two passes).
        async with asyncio.timeout(5):
            while True:
                log = list(server.request_log)
                if len(log) > 20 and log[-1].time - log[-2].time > 0.1:
                    break
                await asyncio.sleep(0.002)
        t0 = time.monotonic()
        await session.write_registers(7, 100, [42], multiple=False)
        log = [r for r in server.request_log if r.time >= t0 - 0.001]
        [write] = [i for i, r in enumerate(log) if r.function == 6]
        assert write <= 2, [(r.unit, r.function) for r in log]
        await asyncio.sleep(0.5)
        assert server.unit(7).get_registers("holding", 100, 1) == [42]
        # The pass went on after the write, and its polls kept their deadlines.
        assert any(r.function == 3 for r in server.request_log if r.time > log[write].time)
        assert all(s.skipped == 0 for s in scheduler.stats.values())
    finally:
        await scheduler.stop()
        await session.stop()


async def test_a_device_poll_once_begun_is_not_spread_over_its_pass(sim_servers) -> None:
    # 10 devices of 3 blocks each, one pass: a device's three reads run back to back
    # (the pass hands the host's turn from one device to the next), so the change its
    # first read sees is published after its own reads, not after the whole pass.
    units = range(1, 11)
    server: SimServer = await sim_servers(units)
    points = tuple(
        Point(f"p{a}", Table.HOLDING, a, DataType.UINT16, interval=1.0) for a in (0, 50, 100)
    )
    devices = [Device(name=f"d{u}", host="gw", unit=u, interval=1.0, points=points) for u in units]
    session = HostSession(Host(name="gw", link=TcpLink("127.0.0.1", port=server.port)))
    groups = group_blocks(devices, {d.name: plan_device(d) for d in devices})
    assert len({g.phase for g in groups}) == 1 and all(len(g.blocks) == 3 for g in groups)
    scheduler = Scheduler(groups, {"gw": session}, on_poll=lambda *_: None)
    await session.start()
    scheduler.start()
    try:
        async with asyncio.timeout(5):
            while len(server.request_log) < 30:
                await asyncio.sleep(0.01)
    finally:
        await scheduler.stop()
        await session.stop()
    first_pass = [r.unit for r in list(server.request_log)[:30]]
    assert sorted(first_pass) == sorted(u for u in units for _ in range(3))
    for unit in units:
        where = [i for i, u in enumerate(first_pass) if u == unit]
        assert where[-1] - where[0] == 2, first_pass  # back to back
