"""The scheduler's state per poll group, against a session in memory (no socket): what a
group learns, how it backs off, and that removing a device forgets all of it."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from bridge import scheduler as scheduler_module
from bridge.errors import ExceptionReply, ModbusRequestError, RequestTimeout
from bridge.model import DataType, Device, Point, Table
from bridge.payloads import Value
from bridge.planner import plan_device
from bridge.scheduler import Scheduler, group_blocks


class Memory:
    """A host session in memory: holding registers, addresses it refuses, units that
    do not answer."""

    def __init__(self) -> None:
        self.registers = dict.fromkeys(range(20), 7)
        self.refused: set[int] = set()
        self.silent = False
        self.reads: list[tuple[int, int]] = []
        self.generation = 1
        self.connected = True
        self.free = True  # the link is idle: a probe may go (`HostSession.probe`)
        self.probe_costs = 0.01
        self.probes = 0

    async def read(
        self, unit: int, table: Table, start: int, count: int, *, priority: int = 0
    ) -> list[int]:
        self.reads.append((start, count))
        await asyncio.sleep(0)
        if self.silent:
            raise RequestTimeout("gw", unit, "no answer")
        if self.refused & set(range(start, start + count)):
            raise ExceptionReply("gw", unit, 2, f"read holding {start}+{count}")
        return [self.registers[a] for a in range(start, start + count)]

    async def wait_free(self, until: float) -> bool:
        await asyncio.sleep(0)
        return self.free

    async def probe(self, unit: int, table: Table, start: int, count: int) -> list[int] | None:
        self.probes += 1
        return await self.read(unit, table, start, count)


def _device(name: str = "d", interval: float = 0.05) -> Device:
    points = tuple(
        Point(f"p{a}", Table.HOLDING, a, DataType.UINT16, interval=interval) for a in (0, 1, 5)
    )
    return Device(name=name, host="gw", unit=1, interval=interval, points=points)


Polls = list[tuple[str, dict[str, Value], ModbusRequestError | None]]


def _scheduler(session: Memory, *devices: Device) -> tuple[Scheduler, Polls]:
    polls: Polls = []
    plan = {d.name: plan_device(d) for d in devices}
    sessions: Any = {"gw": session}
    scheduler = Scheduler(
        group_blocks(devices, plan),
        sessions,
        on_poll=lambda device, values, error: polls.append((device.name, values, error)),
    )
    return scheduler, polls


async def _until(condition: Any, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_refused_range_is_learned_then_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "RELEARN_AFTER", 0.3)
    session = Memory()
    session.refused = {5}
    scheduler, polls = _scheduler(session, _device())
    scheduler.start()
    try:
        await _until(lambda: len(polls) >= 2)
        assert polls[0] == ("d", {"p5": None, "p0": 7, "p1": 7}, None)
        assert scheduler.stats["d"].skipped_ranges == ["holding 5..5"]
        session.reads.clear()
        await _until(lambda: len(session.reads) >= 2)
        assert session.reads[:2] == [(0, 2), (0, 2)]  # only the good range is read now
        session.refused = set()  # the device has booted: the range comes back
        session.registers[5] = 9
        await _until(lambda: any(values.get("p5") == 9 for _, values, _ in polls))
        assert scheduler.stats["d"].skipped_ranges == []
    finally:
        await scheduler.stop()


async def test_a_silent_device_backs_off_and_is_forgotten_when_removed() -> None:
    session = Memory()
    session.silent = True
    scheduler, polls = _scheduler(session, _device())
    scheduler.start()
    try:
        await _until(lambda: len(polls) >= 1)
        assert isinstance(polls[0][2], RequestTimeout)
        loop = asyncio.get_running_loop()
        assert scheduler.backoff_left("d", loop.time()) > 0
        await scheduler.remove(["d"])
        assert scheduler.groups == [] and "d" not in scheduler.stats
        assert scheduler.backoff_left("d", loop.time()) == 0.0
        # Polled again under the same name: a fresh start, no backoff, no old data.
        session.silent = False
        polls.clear()
        scheduler.add(group_blocks([_device()], {"d": plan_device(_device())}))
        await _until(lambda: len(polls) >= 1)
        assert polls[0] == ("d", {"p0": 7, "p1": 7, "p5": 7}, None)
        assert scheduler.backoff_left("d", loop.time()) == 0.0
    finally:
        await scheduler.stop()


async def test_unchanged_registers_are_not_decoded_again_until_forgotten() -> None:
    session = Memory()
    scheduler, polls = _scheduler(session, _device())
    scheduler.start()
    try:
        await _until(lambda: len(polls) >= 2)
        assert polls[1] == ("d", {}, None)  # the same registers: nothing to publish
        scheduler.forget("d")  # a write's read-back set the state meanwhile
        count = len(polls)
        await _until(lambda: len(polls) > count)
        assert polls[count][1] == {"p0": 7, "p1": 7, "p5": 7}
    finally:
        await scheduler.stop()


async def test_a_device_is_online_only_when_none_of_its_groups_fails() -> None:
    fast = Point("fast", Table.HOLDING, 0, DataType.UINT16, interval=0.05)
    slow = Point("slow", Table.HOLDING, 10, DataType.UINT16, interval=0.2)
    device = Device(name="d", host="gw", unit=1, interval=0.05, points=(fast, slow))
    session = Memory()
    scheduler, polls = _scheduler(session, device)
    assert len(scheduler.groups) == 2
    original = session.read

    async def slow_fails(unit: int, table: Table, start: int, count: int, **kw: Any) -> list[int]:
        if start == 10:
            raise RequestTimeout("gw", unit, "no answer")
        return await original(unit, table, start, count, **kw)

    session.read = slow_fails  # type: ignore[method-assign]
    scheduler.start()
    try:
        await _until(lambda: len(polls) >= 5)
    finally:
        await scheduler.stop()
    first_failure = next(i for i, (_, _, e) in enumerate(polls) if e is not None)
    assert first_failure <= 1  # both groups poll first at the same phase
    # From then on every poll, the fast group's included, reports the device offline.
    assert all(isinstance(e, RequestTimeout) for _, _, e in polls[first_failure:])


async def test_a_pass_wakes_its_devices_together_in_the_same_order_without_drift() -> None:
    interval = 0.2
    devices = [dataclasses.replace(_device(f"d{u}", interval), unit=u) for u in range(1, 31)]
    session = Memory()
    loop = asyncio.get_running_loop()
    starts: list[tuple[float, int]] = []  # (time, unit) of each poll's first read
    original = session.read

    async def read(unit: int, table: Table, start: int, count: int, **kw: Any) -> list[int]:
        if start == 0:
            starts.append((loop.time(), unit))
        return await original(unit, table, start, count, **kw)

    session.read = read  # type: ignore[method-assign]
    scheduler, _ = _scheduler(session, *devices)
    assert len({g.phase for g in scheduler.groups}) == 2  # 30 devices: 2 passes of 15
    timers: list[int] = []
    scheduler.start()
    try:
        for _ in range(240):  # 2.4 s: about 12 cycles
            timers.append(len(scheduler._passes._due))
            await asyncio.sleep(0.01)
    finally:
        await scheduler.stop()
    # One timer per pass, never one per device.
    assert max(timers) <= 2
    assert all(s.skipped == 0 for s in scheduler.stats.values())
    by_unit: dict[int, list[float]] = {}
    for t, unit in starts:
        by_unit.setdefault(unit, []).append(t)
    assert all(len(ts) >= 10 for ts in by_unit.values()), {u: len(t) for u, t in by_unit.items()}
    for ts in by_unit.values():
        # The k-th poll at (grid start + k intervals), give or take the event loop's
        # delays: no drift, and no skipped cycle (that would shift the rest by one
        # interval, more than the tolerance).
        offsets = [t - k * interval for k, t in enumerate(ts)]
        assert max(offsets) - min(offsets) < 0.15, offsets
    # Each pass reads its devices in the same order every cycle.
    group = {g.device.unit: g.phase for g in scheduler.groups}
    first_pass = [u for _, u in starts if group[u] == 0.0]
    cycles = [first_pass[i : i + 15] for i in range(0, len(first_pass) - 14, 15)]
    assert len(cycles) >= 10 and all(c == cycles[0] for c in cycles), cycles


async def test_first_round_is_set_once_every_group_ran_a_cycle() -> None:
    # The bridge freezes what the first polls built once every group ran a cycle: a
    # device that fails counts as run, a device added later clears it until it polled.
    session = Memory()
    slow = dataclasses.replace(_device("slow", 0.3), unit=2)
    scheduler, polls = _scheduler(session, _device("fast"), slow)
    assert not scheduler.first_round.is_set()
    scheduler.start()
    try:
        await _until(scheduler.first_round.is_set)
        assert {name for name, *_ in polls} == {"fast", "slow"}
        session.silent = True  # a device that never answers still runs its cycle
        late = dataclasses.replace(_device("late", 0.3), unit=3)
        scheduler.add(group_blocks([late], {late.name: plan_device(late)}))
        assert not scheduler.first_round.is_set()
        await _until(scheduler.first_round.is_set)
        assert any(name == "late" and error is not None for name, _, error in polls)
        # One that is removed before its first cycle does not hold it back.
        never = dataclasses.replace(_device("never", 5.0), unit=4)
        groups = group_blocks([never], {never.name: plan_device(never)})
        scheduler.add([dataclasses.replace(g, phase=4.0) for g in groups])
        assert not scheduler.first_round.is_set()
        await scheduler.remove(["never"])
        assert scheduler.first_round.is_set()
    finally:
        await scheduler.stop()


async def test_a_pass_polls_a_hosts_devices_one_after_another() -> None:
    # 4 devices of 3 blocks in one pass on one host: each device's reads run back to
    # back (its change is published after its own 3 reads, not its neighbours'), the
    # devices in their rank order, every cycle. A device the unit answers "busy" hands
    # the link on while it waits to try again.
    interval = 0.2
    points = tuple(
        Point(f"p{a}", Table.HOLDING, a, DataType.UINT16, interval=interval) for a in (0, 50, 100)
    )
    devices = [
        Device(name=f"d{u}", host="gw", unit=u, interval=interval, points=points)
        for u in range(1, 5)
    ]
    session = Memory()
    session.registers = dict.fromkeys(range(101), 7)
    busy = {"left": 0}
    log: list[tuple[int, int]] = []  # (unit, start) of every read
    original = session.read

    async def read(unit: int, table: Table, start: int, count: int, **kw: Any) -> list[int]:
        log.append((unit, start))
        if unit == 2 and start == 50 and busy["left"]:
            busy["left"] -= 1
            await asyncio.sleep(0)
            raise ExceptionReply("gw", unit, 6, "busy")
        return await original(unit, table, start, count, **kw)

    session.read = read  # type: ignore[method-assign]
    scheduler, polls = _scheduler(session, *devices)
    assert len({g.phase for g in scheduler.groups}) == 1
    assert all(len(g.blocks) == 3 for g in scheduler.groups)
    scheduler.start()
    try:
        await _until(lambda: len(polls) >= 8)
        cycles = [log[i : i + 12] for i in (0, 12)]
        busy["left"] = 1
        await _until(lambda: len(polls) >= 16)
    finally:
        await scheduler.stop()
    order = [u for u, _ in cycles[0]]
    assert order == [u for u in dict.fromkeys(order) for _ in range(3)], order
    assert sorted(set(order)) == [1, 2, 3, 4] and cycles[1] == cycles[0]
    # The busy answer: unit 2's second block waits BUSY_DELAY, the devices after it read
    # meanwhile, then unit 2 finishes its poll.
    third = log[24:]
    where = third.index((2, 50))
    assert [u for u, _ in third[where + 1 : where + 1 + 3]] != [2, 2, 2]
    after = [u for u, _ in third[where + 1 :]]
    assert after.index(2) > 0 and after.count(2) >= 2, third
