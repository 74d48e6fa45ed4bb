"""Tests for bridge.planner: block merging, caps, decode_block and bus load."""

from __future__ import annotations

import itertools
import struct
from collections import Counter
from typing import Any

import pytest
from fuzz import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.codec import CodecError, encode_registers
from bridge.model import (
    BridgeConfig,
    DataType,
    Device,
    Framer,
    Host,
    Mqtt,
    Order,
    Parity,
    Point,
    SerialLink,
    Table,
    TcpLink,
)
from bridge.planner import (
    HostLoad,
    PlanError,
    ReadBlock,
    decode_block,
    host_load,
    plan_device,
    plan_summary,
    request_bus_seconds,
)


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


def device(*points: Point, max_gap: int = 10, unit: int = 1, name: str = "dev") -> Device:
    return Device(name=name, host="h", unit=unit, interval=1.0, points=points, max_gap=max_gap)


def spans(blocks: tuple[ReadBlock, ...]) -> list[tuple[str, int, int]]:
    return [(b.table.value, b.start, b.count) for b in blocks]


def meter() -> Device:
    return device(
        pt("power", 0, DataType.FLOAT32, table=Table.INPUT),
        pt("energy", 10, DataType.UINT32),
        pt("mode", 20),
        pt("alarm", 21, bit=3),
        pt("serial", 30, DataType.STRING, length=8),
        pt("relay", 0, DataType.BOOL, table=Table.COIL),
        max_gap=10,
    )


# ----------------------------------------------------------------------------- golden


def test_meter_golden() -> None:
    blocks = plan_device(meter())
    assert spans(blocks) == [("coil", 0, 1), ("holding", 10, 28), ("input", 0, 2)]
    holding = blocks[1]
    assert [p.name for p in holding.points] == ["energy", "mode", "alarm", "serial"]
    assert all(b.unit == 1 and b.interval == 1.0 for b in blocks)
    assert host_load(Host("h", TcpLink("x")), [meter()]).requests_per_second == 3.0


def test_meter_decode() -> None:
    blocks = plan_device(meter())
    holding = [0] * 28
    holding[0:2] = encode_registers(DataType.UINT32, 123456)
    holding[10] = 2
    holding[11] = 0b1000
    holding[20:28] = encode_registers(DataType.STRING, "SN-42", length=8)
    assert decode_block(blocks[1], holding) == {
        "energy": 123456,
        "mode": 2,
        "alarm": True,
        "serial": "SN-42",
    }
    assert decode_block(blocks[2], encode_registers(DataType.FLOAT32, 1.5)) == {"power": 1.5}
    # bit reads come back padded to whole bytes
    assert decode_block(blocks[0], [True, False, False, False, False, False, False, False]) == {
        "relay": True
    }


# ----------------------------------------------------------------------------- merging


def test_adjacent_points_merge() -> None:
    blocks = plan_device(device(pt("a", 0), pt("b", 1), pt("c", 2, DataType.INT32), max_gap=0))
    assert spans(blocks) == [("holding", 0, 4)]


def test_overlapping_points_merge() -> None:
    blocks = plan_device(
        device(pt("wide", 0, DataType.FLOAT64), pt("low", 2, DataType.UINT32), max_gap=0)
    )
    assert spans(blocks) == [("holding", 0, 4)]


def test_contained_point_does_not_shrink_block() -> None:
    blocks = plan_device(
        device(pt("wide", 0, DataType.STRING, length=10), pt("in", 2), pt("next", 12), max_gap=2)
    )
    assert spans(blocks) == [("holding", 0, 13)]


def test_bits_of_one_register_share_a_block() -> None:
    points = [pt(f"b{i}", 5, bit=i) for i in range(16)]
    blocks = plan_device(device(*points))
    assert spans(blocks) == [("holding", 5, 1)]
    assert len(blocks[0].points) == 16
    result = decode_block(blocks[0], [0b1010_0000_0000_0101])
    assert [result[f"b{i}"] for i in range(16)] == [
        bool(0b1010_0000_0000_0101 >> i & 1) for i in range(16)
    ]


@pytest.mark.parametrize("max_gap", [0, 1, 10, 50])
def test_gap_rule_at_the_limit(max_gap: int) -> None:
    # a covers 0, b starts at 1 + max_gap: the hole 1..max_gap is exactly max_gap long
    at_limit = plan_device(device(pt("a", 0), pt("b", 1 + max_gap), max_gap=max_gap))
    assert spans(at_limit) == [("holding", 0, 2 + max_gap)]
    over = plan_device(device(pt("a", 0), pt("b", 2 + max_gap), max_gap=max_gap))
    assert spans(over) == [("holding", 0, 1), ("holding", 2 + max_gap, 1)]


def test_bit_table_gap_counts_sixteen_bits_per_register() -> None:
    coil: dict[str, Any] = {"table": Table.COIL, "dtype": DataType.BOOL}
    at_limit = plan_device(device(pt("a", 0, **coil), pt("b", 1 + 160, **coil), max_gap=10))
    assert spans(at_limit) == [("coil", 0, 162)]
    over = plan_device(device(pt("a", 0, **coil), pt("b", 2 + 160, **coil), max_gap=10))
    assert spans(over) == [("coil", 0, 1), ("coil", 162, 1)]
    none = plan_device(device(pt("a", 0, **coil), pt("b", 2, **coil), max_gap=0))
    assert spans(none) == [("coil", 0, 1), ("coil", 2, 1)]


def test_negative_max_gap_still_merges_adjacent() -> None:
    assert spans(plan_device(device(pt("a", 0), pt("b", 1), max_gap=-5))) == [("holding", 0, 2)]


def test_register_cap_never_splits_a_point() -> None:
    # 0..120 are single registers, then a 4-register value at 121..124 fits exactly,
    # and one at 122..125 would cross the 125 cap and starts a new block.
    fits = [pt(f"r{i}", i) for i in range(121)] + [pt("big", 121, DataType.INT64)]
    assert spans(plan_device(device(*fits))) == [("holding", 0, 125)]
    crosses = [pt(f"r{i}", i) for i in range(122)] + [pt("big", 122, DataType.INT64)]
    blocks = plan_device(device(*crosses))
    assert spans(blocks) == [("holding", 0, 122), ("holding", 122, 4)]
    assert blocks[1].points[0].name == "big"


def test_register_cap_with_gaps() -> None:
    blocks = plan_device(device(pt("a", 0), pt("b", 124), pt("c", 125), max_gap=200))
    assert spans(blocks) == [("holding", 0, 125), ("holding", 125, 1)]


def test_bit_cap() -> None:
    coils = [pt(f"c{i}", i * 2, DataType.BOOL, table=Table.DISCRETE) for i in range(1500)]
    blocks = plan_device(device(*coils, max_gap=1))
    assert spans(blocks) == [("discrete", 0, 1999), ("discrete", 2000, 999)]


def test_intervals_and_tables_give_separate_blocks_in_order() -> None:
    blocks = plan_device(
        device(
            pt("slow", 1, interval=10.0),
            pt("fast", 0, interval=0.5),
            pt("fast2", 3, interval=0.5),
            pt("in", 0, table=Table.INPUT),
            pt("coil", 0, DataType.BOOL, table=Table.COIL, interval=5.0),
            pt("di", 0, DataType.BOOL, table=Table.DISCRETE),
            unit=7,
        )
    )
    assert [(b.table, b.interval, b.start, b.count) for b in blocks] == [
        (Table.COIL, 5.0, 0, 1),
        (Table.DISCRETE, 1.0, 0, 1),
        (Table.HOLDING, 0.5, 0, 4),
        (Table.HOLDING, 10.0, 1, 1),
        (Table.INPUT, 1.0, 0, 1),
    ]
    assert {b.unit for b in blocks} == {7}


def test_plan_is_deterministic_regardless_of_point_order() -> None:
    points = list(meter().points)
    assert plan_device(device(*points)) == plan_device(device(*reversed(points)))


def test_empty_device() -> None:
    assert plan_device(device()) == ()


def test_oversized_point_is_refused() -> None:
    with pytest.raises(PlanError, match="needs 126 registers"):
        plan_device(device(pt("s", 0, DataType.STRING, length=126)))
    with pytest.raises(PlanError):
        plan_device(device(pt("s", 0, DataType.STRING, length=0)))


def test_bad_bit_point_fails_at_plan_time() -> None:
    with pytest.raises(CodecError):
        plan_device(device(pt("f", 0, DataType.FLOAT32, bit=2)))


def test_block_refuses_points_outside() -> None:
    with pytest.raises(PlanError, match="outside"):
        ReadBlock(1, Table.HOLDING, 0, 1, 1.0, (pt("x", 0, DataType.INT32),))
    with pytest.raises(PlanError, match="outside"):
        ReadBlock(1, Table.INPUT, 0, 1, 1.0, (pt("x", 0),))


def test_blocks_compare_without_decoders() -> None:
    a = ReadBlock(1, Table.HOLDING, 0, 2, 1.0, (pt("x", 0),))
    b = ReadBlock(1, Table.HOLDING, 0, 2, 1.0, (pt("x", 0),))
    assert a == b
    assert hash(a) == hash(b)
    assert "slices" not in repr(a)


def test_decode_block_short_data() -> None:
    block = plan_device(device(pt("a", 0), pt("b", 1)))[0]
    with pytest.raises(CodecError, match="returned 1 of 2"):
        decode_block(block, [1])
    assert decode_block(block, [1, 2]) == {"a": 1, "b": 2}


# ----------------------------------------------------------------------------- properties

TYPES = [t for t in DataType if t is not DataType.BOOL]


@st.composite
def register_point(draw: st.DrawFn, name: str) -> Point:
    table = draw(st.sampled_from([Table.HOLDING, Table.INPUT]))
    dtype = draw(st.sampled_from(TYPES))
    length = draw(st.integers(1, 20)) if dtype is DataType.STRING else 0
    return pt(
        name,
        draw(st.integers(0, 600)),
        dtype,
        table=table,
        length=length,
        interval=draw(st.sampled_from([1.0, 5.0])),
        byte_order=draw(st.sampled_from(list(Order))),
        word_order=draw(st.sampled_from(list(Order))),
    )


@st.composite
def bit_point(draw: st.DrawFn, name: str) -> Point:
    table = draw(st.sampled_from([Table.COIL, Table.DISCRETE]))
    return pt(name, draw(st.integers(0, 6000)), DataType.BOOL, table=table, interval=1.0)


@st.composite
def random_device(draw: st.DrawFn) -> Device:
    n = draw(st.integers(0, 60))
    points = [draw(st.one_of(register_point(f"p{i}"), bit_point(f"p{i}"))) for i in range(n)]
    return device(*points, max_gap=draw(st.integers(0, 40)))


def holes(block: ReadBlock) -> list[int]:
    covered = sorted((p.address, p.end) for p in block.points)
    result = []
    reach = block.start
    for start, end in covered:
        if start > reach:
            result.append(start - reach)
        reach = max(reach, end)
    assert reach == block.end  # the block ends with a point
    return result


@settings(max_examples=examples(200))
@given(dev=random_device())
def test_plan_invariants(dev: Device) -> None:
    blocks = plan_device(dev)
    # every point is served by exactly one block, of its own table and interval
    served = Counter(p.name for b in blocks for p in b.points)
    assert served == Counter(p.name for p in dev.points)
    for b in blocks:
        assert 1 <= b.count <= b.table.max_count
        assert b.unit == dev.unit
        assert b.start == min(p.address for p in b.points)
        limit = dev.max_gap * (16 if b.table.is_bits else 1)
        assert all(hole <= limit for hole in holes(b))
        for p in b.points:
            assert p.table is b.table
            assert p.interval == b.interval
            assert b.start <= p.address and p.end <= b.end
    keys = [(list(Table).index(b.table), b.interval, b.start) for b in blocks]
    assert keys == sorted(keys)
    # blocks of one group never share a point range: they could have been merged otherwise
    groups = Counter((b.table, b.interval) for b in blocks)
    for (table, interval), n in groups.items():
        mine = [b for b in blocks if b.table is table and b.interval == interval]
        assert len(mine) == n
        for left, right in itertools.pairwise(mine):
            first = right.points[0]  # the point that opened the right block
            assert first.address == right.start
            cap_hit = max(left.end, first.end) - left.start > table.max_count
            gap_too_big = right.start - left.end > max(0, dev.max_gap) * (
                16 if table.is_bits else 1
            )
            assert cap_hit or gap_too_big


@settings(max_examples=examples(100))
@given(dev=random_device(), data=st.data())
def test_decode_block_round_trip(dev: Device, data: st.DataObject) -> None:
    """Values written into a block's registers with encode_registers decode back."""
    for block in plan_device(dev):
        expected: dict[str, Any] = {}
        if block.table.is_bits:
            offsets = sorted({p.address - block.start for p in block.points})
            on = data.draw(st.sets(st.sampled_from(offsets)))
            bits = [i in on for i in range(block.count)]
            for p in block.points:  # points at one address see the same bit
                expected[p.name] = bits[p.address - block.start]
            assert decode_block(block, bits) == expected
            continue
        regs = [0] * block.count
        # each register belongs to one point here so the values cannot clash
        taken: set[int] = set()
        for p in block.points:
            cells = set(range(p.address, p.end))
            if cells & taken:
                continue
            taken |= cells
            value = draw_value(data, p)
            expected[p.name] = value
            offset = p.address - block.start
            regs[offset : offset + p.count] = encode_registers(
                p.type, value, byte_order=p.byte_order, word_order=p.word_order, length=p.length
            )
        float32_names = {p.name for p in block.points if p.type is DataType.FLOAT32}
        decoded = decode_block(block, regs)
        assert set(decoded) == {p.name for p in block.points}
        for name, value in expected.items():
            if name in float32_names:
                # published as the shortest decimal of the same float32
                got = decoded[name]
                assert isinstance(got, float)
                assert struct.pack(">f", got) == struct.pack(">f", value)
            else:
                assert decoded[name] == value


def draw_value(data: st.DataObject, p: Point) -> Any:
    ranges = {
        DataType.INT16: (-(2**15), 2**15 - 1),
        DataType.UINT16: (0, 2**16 - 1),
        DataType.INT32: (-(2**31), 2**31 - 1),
        DataType.UINT32: (0, 2**32 - 1),
        DataType.INT64: (-(2**63), 2**63 - 1),
        DataType.UINT64: (0, 2**64 - 1),
    }
    if p.type is DataType.STRING:
        alphabet = st.characters(min_codepoint=0x21, max_codepoint=0xFF)
        return data.draw(st.text(alphabet, max_size=2 * p.length))
    if p.type is DataType.FLOAT32:
        return data.draw(st.floats(width=32, allow_nan=False, allow_infinity=False))
    if p.type is DataType.FLOAT64:
        return data.draw(st.floats(allow_nan=False, allow_infinity=False))
    low, high = ranges[p.type]
    return data.draw(st.integers(low, high))


# ----------------------------------------------------------------------------- bus load


def test_request_bus_seconds() -> None:
    # 10 registers at 9600 baud: 8 + 5 + 20 + 7 characters of 11 bits
    assert request_bus_seconds(Table.HOLDING, 10, 9600) == pytest.approx(40 * 11 / 9600)
    # 10 coils: 2 data bytes
    assert request_bus_seconds(Table.COIL, 10, 9600) == pytest.approx(22 * 11 / 9600)
    assert request_bus_seconds(Table.COIL, 16, 9600, pause=0.05) == pytest.approx(
        22 * 11 / 9600 + 0.05
    )
    assert request_bus_seconds(Table.INPUT, 125, 115200) == pytest.approx(270 * 11 / 115200)
    with pytest.raises(PlanError):
        request_bus_seconds(Table.INPUT, 1, 0)


def test_host_load_meter() -> None:
    host = Host("h", TcpLink("10.0.0.1", baudrate=9600), pause=0.01)
    dev = meter()
    load = host_load(host, [dev], {dev.name: plan_device(dev)})
    assert isinstance(load, HostLoad)
    assert load.host is host
    assert load.devices == (dev,)
    assert load.blocks == plan_device(dev)
    assert load.requests_per_second == 3.0
    # coil 1 bit: 8+6+7; holding 28: 8+61+7; input 2: 8+9+7 characters; plus 3 pauses
    expected = (21 + 76 + 24) * 11 / 9600 + 3 * 0.01
    assert load.bus_seconds_per_second == pytest.approx(expected)
    assert not load.overloaded


def test_host_load_overloaded() -> None:
    fast = [
        Device(
            name=f"d{u}",
            host="h",
            unit=u,
            interval=0.1,
            points=(pt("big", 0, DataType.STRING, length=125, interval=0.1),),
        )
        for u in range(1, 4)
    ]
    load = host_load(Host("h", TcpLink("x", baudrate=9600)), fast)
    # one 125-register read is (8 + 255 + 7) * 11 / 9600 = 0.309 s; 3 devices x 10/s
    assert load.requests_per_second == pytest.approx(30.0)
    assert load.bus_seconds_per_second == pytest.approx(30 * 270 * 11 / 9600)
    assert load.overloaded
    relaxed = host_load(Host("h", TcpLink("x", baudrate=115200)), fast)
    assert not relaxed.overloaded


def test_plan_summary() -> None:
    dev = meter()
    other = Device(name="other", host="h2", unit=2, interval=1.0, points=())
    config = BridgeConfig(
        mqtt=Mqtt(),
        hosts=(Host("h", TcpLink("x")), Host("h2", TcpLink("y")), Host("h3", TcpLink("z"))),
        devices=(dev, other),
    )
    loads = plan_summary(config)
    assert [load.host.name for load in loads] == ["h", "h2", "h3"]
    assert loads[0].requests_per_second == 3.0
    assert loads[1].devices == (other,)
    assert loads[1].requests_per_second == 0.0
    assert loads[2].devices == ()


def test_bus_time_only_where_there_is_a_serial_bus() -> None:
    dev = meter()
    blocks = {dev.name: plan_device(dev)}
    native = host_load(Host("h", TcpLink("10.0.0.1")), [dev], blocks)
    assert native.requests_per_second == 3.0
    assert native.bus_seconds_per_second == 0.0  # Modbus TCP device: no 9600-baud claim
    assert not native.overloaded
    gateway = host_load(Host("h", TcpLink("10.0.0.1"), framer=Framer.RTU), [dev], blocks)
    assert gateway.bus_seconds_per_second == pytest.approx((21 + 76 + 24) * 11 / 9600)
    # A serial port at 19200 baud 8N1: 10 bits per character.
    port = Host("bus", SerialLink("/dev/ttyUSB0", baudrate=19200))
    serial = host_load(port, [dev], blocks)
    assert serial.bus_seconds_per_second == pytest.approx((21 + 76 + 24) * 10 / 19200)
    even = Host("bus", SerialLink("/dev/ttyUSB0", baudrate=19200, parity=Parity.EVEN))
    assert host_load(even, [dev], blocks).bus_seconds_per_second == pytest.approx(
        (21 + 76 + 24) * 11 / 19200
    )
