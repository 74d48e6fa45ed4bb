"""A scale taken from another register (`Point.scale_factor`): codec, planner, scheduler,
writes and the simulator."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from bridge.codec import CodecError, ScaledDecoder, encode_point, known_sf, scaled_by
from bridge.commands import plan_write
from bridge.errors import CommandError, ModbusRequestError
from bridge.model import BridgeConfig, DataType, Device, Host, Mqtt, Point, Table, TcpLink
from bridge.payloads import Value
from bridge.planner import decode_block, plan_device, with_scale_points
from bridge.scheduler import Scheduler, group_blocks
from bridge.simulate import SimFleet, scale_factors


def pt(name: str, address: int, dtype: DataType = DataType.UINT16, **kw: Any) -> Point:
    base: dict[str, Any] = {
        "name": name,
        "table": Table.HOLDING,
        "address": address,
        "type": dtype,
        "interval": 1.0,
    }
    base.update(kw)
    return Point(**base)


def dev(*points: Point, max_gap: int = 10) -> Device:
    return Device(name="d", host="gw", unit=1, interval=1.0, points=points, max_gap=max_gap)


def s16(value: int) -> int:
    return value & 0xFFFF


# --------------------------------------------------------------------------- codec


def test_the_value_is_raw_times_ten_to_the_sf() -> None:
    decode = ScaledDecoder(pt("w", 0, scale_factor="w_sf"))
    assert decode([2301], -1) == 230.1
    assert decode([2301], -2) == 23.01
    assert decode([2301], 0) == 2301 and isinstance(decode([2301], 0), int)
    assert decode([23], 3) == 23000
    signed = ScaledDecoder(pt("w", 0, DataType.INT16, scale_factor="w_sf"))
    assert signed([s16(-1234)], -2) == -12.34


def test_scale_and_offset_apply_after_the_sf() -> None:
    decode = ScaledDecoder(pt("t", 0, scale=2.0, offset=-1.0, scale_factor="sf"))
    assert decode([105], -1) == 105 * 0.1 * 2 - 1


@pytest.mark.parametrize("sf", [None, -32768, 11, -11, True, 1.5, "x"])
def test_an_unknown_or_unimplemented_sf_gives_null(sf: Value) -> None:
    assert known_sf(sf) is None
    assert ScaledDecoder(pt("w", 0, scale_factor="sf"))([2301], sf) is None


def test_a_write_divides_by_ten_to_the_sf() -> None:
    p = pt("limit", 0, DataType.INT16, writable=True, scale_factor="sf", maximum=100)
    assert encode_point(p, 12.34, -2) == [1234]
    assert encode_point(p, -50, 1) == [s16(-5)]
    assert encode_point(p, 100, -2) == [10000]
    with pytest.raises(CodecError, match="above the maximum"):
        encode_point(p, 100.5, -2)
    with pytest.raises(CodecError, match="sf is not known yet"):
        encode_point(p, 1, None)
    with pytest.raises(CodecError, match="-32768, not a scale factor"):
        encode_point(p, 1, -32768)
    with pytest.raises(CodecError, match="out of range"):
        encode_point(replace(p, maximum=None), 400, -2)  # 40000 does not fit an int16


def test_scaled_by_folds_the_sf_into_the_scale() -> None:
    p = scaled_by(pt("w", 0, scale=0.5, scale_factor="sf"), -2)
    assert p.scale == 0.005 and p.scale_factor is None


# --------------------------------------------------------------------------- planner

SF = pt("a_sf", 40, DataType.INT16)


def test_a_point_and_its_sf_share_one_block_across_any_gap() -> None:
    a = pt("a", 0, scale_factor="a_sf")
    blocks = plan_device(dev(a, SF, max_gap=0))
    assert [(b.start, b.count) for b in blocks] == [(0, 41)]
    assert decode_block(blocks[0], [2301] + [0] * 39 + [s16(-1)]) == {"a": 230.1, "a_sf": -1}


def test_other_points_still_merge_by_max_gap() -> None:
    a, b = pt("a", 0, scale_factor="a_sf"), pt("b", 60)
    sf = pt("a_sf", 2, DataType.INT16)
    blocks = plan_device(dev(a, sf, b, max_gap=0))
    assert [(bl.start, bl.count) for bl in blocks] == [(0, 3), (60, 1)]


def test_an_interval_of_its_own_reads_the_sf_too() -> None:
    fast = pt("a", 0, scale_factor="a_sf", interval=0.5)
    blocks = plan_device(dev(fast, SF))
    by_interval = {b.interval: [p.name for p in b.points] for b in blocks}
    assert by_interval == {0.5: ["a", "a_sf"], 1.0: ["a_sf"]}


def test_a_piece_longer_than_one_read_is_planned_point_by_point() -> None:
    a = pt("a", 0, scale_factor="a_sf")
    sf = pt("a_sf", 200, DataType.INT16)
    blocks = plan_device(dev(a, sf))
    assert [(b.start, b.count) for b in blocks] == [(0, 1), (200, 1)]
    # The sf read by another block of the same poll, kept in `scales`:
    scales: dict[str, Value] = {}
    assert decode_block(blocks[0], [2301], scales) == {"a": None}
    assert decode_block(blocks[1], [s16(-1)], scales) == {"a_sf": -1}
    assert decode_block(blocks[0], [2301], scales) == {"a": 230.1}


def test_the_sf_point_publishes_its_own_value_but_scales_with_its_raw_int16() -> None:
    a = pt("a", 0, scale_factor="a_sf")
    sf = pt("a_sf", 1, DataType.INT16, scale=10.0)
    [block] = plan_device(dev(a, sf))
    assert decode_block(block, [5, s16(-1)]) == {"a": 0.5, "a_sf": -10.0}


def test_a_read_of_some_points_takes_their_sf_along() -> None:
    a, b = pt("a", 0, scale_factor="a_sf"), pt("b", 5)
    device = dev(a, b, SF)
    assert [p.name for p in with_scale_points(device, [a])] == ["a", "a_sf"]
    assert [p.name for p in with_scale_points(device, [b])] == ["b"]


# --------------------------------------------------------------------------- writes


def test_a_command_uses_the_newest_sf_read() -> None:
    p = pt("limit", 0, DataType.UINT16, writable=True, scale_factor="a_sf")
    device = dev(p, SF)
    command = plan_write(device, [("limit", 50.5)], read_only=False, scales={"a_sf": -1})
    assert command.ops[0].registers == (505,)
    with pytest.raises(CommandError, match="limit: its scale factor a_sf is not known yet"):
        plan_write(device, [("limit", 50.5)], read_only=False, scales={})


# --------------------------------------------------------------------------- scheduler


class Memory:
    def __init__(self, registers: dict[int, int]) -> None:
        self.registers = registers
        self.generation = 1
        self.connected = True

    async def read(
        self, unit: int, table: Table, start: int, count: int, *, priority: int = 0
    ) -> list[int]:
        await asyncio.sleep(0)
        return [self.registers.get(a, 0) for a in range(start, start + count)]


async def test_a_changed_sf_rescales_points_of_blocks_that_did_not_change() -> None:
    a = pt("a", 0, scale_factor="a_sf", interval=0.05)
    sf = pt("a_sf", 300, DataType.INT16, interval=0.05)  # too far: blocks of their own
    device = Device(name="d", host="gw", unit=1, interval=0.05, points=(a, sf))
    session = Memory({0: 2301, 300: s16(-1)})
    polls: list[tuple[dict[str, Value], ModbusRequestError | None]] = []
    sessions: Any = {"gw": session}
    scheduler = Scheduler(
        group_blocks([device], {"d": plan_device(device)}),
        sessions,
        on_poll=lambda _d, values, error: polls.append((values, error)),
    )
    scheduler.start()
    try:
        async with asyncio.timeout(2):
            while not polls:
                await asyncio.sleep(0.01)
            assert polls[0] == ({"a": 230.1, "a_sf": -1}, None)
            session.registers[300] = s16(-2)  # only the sf changes
            while not any("a" in values for values, _ in polls[1:]):
                await asyncio.sleep(0.01)
        assert next(v for v, _ in polls[1:] if v) == {"a": 23.01, "a_sf": -2}
    finally:
        await scheduler.stop()


# --------------------------------------------------------------------------- simulator


def test_the_simulator_serves_raw_values_under_a_fitting_sf() -> None:
    energy = pt("energy", 0, DataType.UINT16, unit="Wh", scale_factor="e_sf")
    volts = pt("volts", 1, DataType.UINT16, unit="V", scale_factor="v_sf")
    e_sf, v_sf = pt("e_sf", 2, DataType.INT16), pt("v_sf", 3, DataType.INT16)
    device = dev(energy, volts, e_sf, v_sf)
    # 2 * 1234567 Wh fits a uint16 from 10^2 up; 2 * 230 V already at 10^-2
    assert scale_factors(device) == {"e_sf": 2, "v_sf": -2}
    config = BridgeConfig(
        mqtt=Mqtt(), hosts=(Host("gw", TcpLink("127.0.0.1", 502)),), devices=(device,)
    )
    fleet = SimFleet(config, seed=3)
    [unit] = [u.unit for u in fleet._units.values()]
    [block] = plan_device(device)
    values = decode_block(block, unit.get_registers("holding", 0, 4))
    assert values["e_sf"] == 2 and values["v_sf"] == -2
    assert isinstance(values["volts"], float) and 220 < values["volts"] < 240
    assert isinstance(values["energy"], float) and 1_200_000 < values["energy"] < 1_300_000
    fleet.tick(30)
    moved = decode_block(block, unit.get_registers("holding", 0, 4))
    assert moved["e_sf"] == 2 and moved["v_sf"] == -2  # a scale factor holds still
    assert moved["energy"] > values["energy"]
