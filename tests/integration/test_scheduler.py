"""Scheduler + HostSession in-process against the simulator: availability rules."""

from __future__ import annotations

import asyncio

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
