"""Pure parts of polling: phase spread and re-planning after a refused range."""

from __future__ import annotations

import dataclasses

import pytest

from bridge.model import DataType, Device, Point, Table
from bridge.planner import holes, plan_device, replan_block
from bridge.scheduler import group_blocks


def _p(name: str, address: int, dtype: DataType = DataType.UINT16, interval: float = 1.0) -> Point:
    return Point(name, Table.HOLDING, address, dtype, interval=interval)


def _device(*points: Point, name: str = "d", max_gap: int = 10) -> Device:
    return Device(name=name, host="gw", unit=1, interval=1.0, points=points, max_gap=max_gap)


def test_holes_lists_unused_addresses_inside_a_block() -> None:
    (block,) = plan_device(_device(_p("a", 0), _p("b", 5, DataType.UINT32), _p("c", 9)))
    assert (block.start, block.count) == (0, 10)
    assert holes(block) == [(1, 5), (7, 9)]


def test_replan_drops_bad_points_and_never_bridges_an_avoided_range() -> None:
    device = _device(_p("a", 0), _p("b", 5), _p("c", 10), _p("d", 14))
    (block,) = plan_device(device)
    new = replan_block(device, block, drop=["c"], avoid=[(10, 11)])
    assert [(b.start, b.count, [p.name for p in b.points]) for b in new] == [
        (0, 6, ["a", "b"]),
        (14, 1, ["d"]),
    ]


def test_replan_avoiding_holes_keeps_adjacent_points_merged() -> None:
    device = _device(_p("a", 0), _p("b", 1), _p("c", 8))
    (block,) = plan_device(device)
    new = replan_block(device, block, avoid=holes(block))
    assert [(b.start, b.count) for b in new] == [(0, 2), (8, 1)]


def test_first_polls_are_spread_over_the_interval_in_passes() -> None:
    # 60 devices on one host: 3 passes of at most 25, one wake-up each (bridge.pacing).
    devices = [_device(_p("a", 0), name=f"d{i}") for i in range(60)]
    plan = {d.name: plan_device(d) for d in devices}
    phases = [g.phase for g in group_blocks(devices, plan)]
    assert sorted(set(phases)) == [0.0, pytest.approx(1 / 3), pytest.approx(2 / 3)]
    assert max(phases.count(p) for p in phases) <= 25


def test_point_intervals_make_separate_groups() -> None:
    device = _device(_p("fast", 0), _p("slow", 1, interval=10.0))
    groups = group_blocks([device], {device.name: plan_device(device)})
    assert sorted((g.interval, len(g.blocks)) for g in groups) == [(1.0, 1), (10.0, 1)]


def test_a_host_that_polls_together_shares_one_phase() -> None:
    # Hosts spread among themselves; the devices of a `spread: false` host share one
    # pass (one wake-up per interval for all of them).
    devices = [
        dataclasses.replace(_device(_p("a", 0), name=f"{host}{i}"), host=host)
        for host, n in (("burst", 30), ("calm", 40))
        for i in range(n)
    ]
    plan = {d.name: plan_device(d) for d in devices}
    phases = {g.device.name: g.phase for g in group_blocks(devices, plan, together={"burst"})}
    assert {phases[f"burst{i}"] for i in range(30)} == {0.0}
    assert {phases[f"calm{i}"] for i in range(40)} == {0.0, 0.5}
