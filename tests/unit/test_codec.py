"""Tests for bridge.codec: register vectors, round trips, point decoding and encoding."""

from __future__ import annotations

import math
import struct
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.codec import (
    CodecError,
    apply_bit,
    compile_decoder,
    decode_point,
    decode_registers,
    encode_point,
    encode_registers,
)
from bridge.model import DataType, Order, Point, Table

B = Order.BIG
L = Order.LITTLE

# (byte_order, word_order) -> registers, written by hand from the byte layouts.
VECTORS: list[tuple[DataType, Any, dict[tuple[Order, Order], list[int]]]] = [
    (
        DataType.INT16,
        0x1234,
        {(B, B): [0x1234], (B, L): [0x1234], (L, B): [0x3412], (L, L): [0x3412]},
    ),
    (DataType.INT16, -2, {(B, B): [0xFFFE], (B, L): [0xFFFE], (L, B): [0xFEFF], (L, L): [0xFEFF]}),
    (
        DataType.INT16,
        -32768,
        {(B, B): [0x8000], (B, L): [0x8000], (L, B): [0x0080], (L, L): [0x0080]},
    ),
    (
        DataType.UINT16,
        0xABCD,
        {(B, B): [0xABCD], (B, L): [0xABCD], (L, B): [0xCDAB], (L, L): [0xCDAB]},
    ),
    (
        DataType.UINT16,
        65535,
        {(B, B): [0xFFFF], (B, L): [0xFFFF], (L, B): [0xFFFF], (L, L): [0xFFFF]},
    ),
    (
        DataType.INT32,
        0x12345678,
        {
            (B, B): [0x1234, 0x5678],
            (B, L): [0x5678, 0x1234],
            (L, B): [0x3412, 0x7856],
            (L, L): [0x7856, 0x3412],
        },
    ),
    (
        DataType.INT32,
        -2,
        {
            (B, B): [0xFFFF, 0xFFFE],
            (B, L): [0xFFFE, 0xFFFF],
            (L, B): [0xFFFF, 0xFEFF],
            (L, L): [0xFEFF, 0xFFFF],
        },
    ),
    (
        DataType.UINT32,
        0xDEADBEEF,
        {
            (B, B): [0xDEAD, 0xBEEF],
            (B, L): [0xBEEF, 0xDEAD],
            (L, B): [0xADDE, 0xEFBE],
            (L, L): [0xEFBE, 0xADDE],
        },
    ),
    (
        DataType.INT64,
        0x0102030405060708,
        {
            (B, B): [0x0102, 0x0304, 0x0506, 0x0708],
            (B, L): [0x0708, 0x0506, 0x0304, 0x0102],
            (L, B): [0x0201, 0x0403, 0x0605, 0x0807],
            (L, L): [0x0807, 0x0605, 0x0403, 0x0201],
        },
    ),
    (
        DataType.INT64,
        -2,
        {
            (B, B): [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE],
            (B, L): [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF],
            (L, B): [0xFFFF, 0xFFFF, 0xFFFF, 0xFEFF],
            (L, L): [0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF],
        },
    ),
    (
        DataType.UINT64,
        0xFEDCBA9876543210,
        {
            (B, B): [0xFEDC, 0xBA98, 0x7654, 0x3210],
            (B, L): [0x3210, 0x7654, 0xBA98, 0xFEDC],
            (L, B): [0xDCFE, 0x98BA, 0x5476, 0x1032],
            (L, L): [0x1032, 0x5476, 0x98BA, 0xDCFE],
        },
    ),
    (
        DataType.FLOAT32,
        1.0,  # 0x3F800000
        {
            (B, B): [0x3F80, 0x0000],
            (B, L): [0x0000, 0x3F80],
            (L, B): [0x803F, 0x0000],
            (L, L): [0x0000, 0x803F],
        },
    ),
    (
        DataType.FLOAT32,
        -2.5,  # 0xC0200000
        {
            (B, B): [0xC020, 0x0000],
            (B, L): [0x0000, 0xC020],
            (L, B): [0x20C0, 0x0000],
            (L, L): [0x0000, 0x20C0],
        },
    ),
    (
        DataType.FLOAT32,
        123.456,  # 0x42F6E979, published as the shortest decimal
        {
            (B, B): [0x42F6, 0xE979],
            (B, L): [0xE979, 0x42F6],
            (L, B): [0xF642, 0x79E9],
            (L, L): [0x79E9, 0xF642],
        },
    ),
    (
        DataType.FLOAT64,
        1.0,  # 0x3FF0000000000000
        {
            (B, B): [0x3FF0, 0, 0, 0],
            (B, L): [0, 0, 0, 0x3FF0],
            (L, B): [0xF03F, 0, 0, 0],
            (L, L): [0, 0, 0, 0xF03F],
        },
    ),
    (
        DataType.FLOAT64,
        0.1,  # 0x3FB999999999999A
        {
            (B, B): [0x3FB9, 0x9999, 0x9999, 0x999A],
            (B, L): [0x999A, 0x9999, 0x9999, 0x3FB9],
            (L, B): [0xB93F, 0x9999, 0x9999, 0x9A99],
            (L, L): [0x9A99, 0x9999, 0x9999, 0xB93F],
        },
    ),
    (DataType.BOOL, True, {(B, B): [1], (B, L): [1], (L, B): [0x0100], (L, L): [0x0100]}),
    (DataType.BOOL, False, {(B, B): [0], (B, L): [0], (L, B): [0], (L, L): [0]}),
]

CASES = [
    pytest.param(
        dtype, value, bo, wo, regs, id=f"{dtype.value}-{value!r}-byte_{bo.value}-word_{wo.value}"
    )
    for dtype, value, layouts in VECTORS
    for (bo, wo), regs in layouts.items()
]

ORDERS = [(bo, wo) for bo in Order for wo in Order]


@pytest.mark.parametrize(("dtype", "value", "bo", "wo", "regs"), CASES)
def test_decode_vectors(dtype: DataType, value: Any, bo: Order, wo: Order, regs: list[int]) -> None:
    got = decode_registers(dtype, regs, byte_order=bo, word_order=wo)
    assert got == value
    assert type(got) is type(value)


@pytest.mark.parametrize(("dtype", "value", "bo", "wo", "regs"), CASES)
def test_encode_vectors(dtype: DataType, value: Any, bo: Order, wo: Order, regs: list[int]) -> None:
    assert encode_registers(dtype, value, byte_order=bo, word_order=wo) == regs


def test_vectors_cover_every_type() -> None:
    covered = {dtype for dtype, _, _ in VECTORS}
    assert covered == set(DataType) - {DataType.STRING}


def test_widths_match_the_model() -> None:
    for dtype in DataType:
        if dtype is DataType.STRING:
            continue
        assert (
            len(encode_registers(dtype, 0 if dtype is not DataType.BOOL else True)) == dtype.width
        )


@pytest.mark.parametrize("wo", list(Order))
def test_string_vectors(wo: Order) -> None:
    # "ABC" in 2 registers: 41 42 43 00; word order never applies to strings
    assert encode_registers(DataType.STRING, "ABC", word_order=wo, length=2) == [0x4142, 0x4300]
    assert encode_registers(DataType.STRING, "ABC", byte_order=L, word_order=wo, length=2) == [
        0x4241,
        0x0043,
    ]
    assert decode_registers(DataType.STRING, [0x4142, 0x4300], word_order=wo) == "ABC"
    assert decode_registers(DataType.STRING, [0x4241, 0x0043], byte_order=L, word_order=wo) == "ABC"


def test_string_strips_trailing_nul_and_space() -> None:
    # "AB C  \0\0" -> "AB C"
    regs = [0x4142, 0x2043, 0x2020, 0x0000]
    assert decode_registers(DataType.STRING, regs) == "AB C"
    assert decode_registers(DataType.STRING, regs, length=4) == "AB C"
    assert decode_registers(DataType.STRING, [0x2020, 0x0020]) == ""
    assert decode_registers(DataType.STRING, [0, 0]) == ""


def test_string_is_latin1() -> None:
    assert decode_registers(DataType.STRING, [0xB043]) == "°C"
    assert encode_registers(DataType.STRING, "°C", length=1) == [0xB043]
    with pytest.raises(CodecError, match="latin-1"):
        encode_registers(DataType.STRING, "€", length=1)


def test_string_padding_and_length() -> None:
    assert encode_registers(DataType.STRING, "", length=2) == [0, 0]
    assert encode_registers(DataType.STRING, "ABCD", length=2) == [0x4142, 0x4344]
    with pytest.raises(CodecError, match="5 characters, more than the 4"):
        encode_registers(DataType.STRING, "ABCDE", length=2)
    with pytest.raises(CodecError, match="at least 1 register"):
        encode_registers(DataType.STRING, "A", length=0)
    with pytest.raises(CodecError):
        encode_registers(DataType.STRING, 5, length=2)


def test_decode_rejects_bad_registers() -> None:
    with pytest.raises(CodecError, match="needs 2 register"):
        decode_registers(DataType.INT32, [1])
    with pytest.raises(CodecError, match="needs 1 register"):
        decode_registers(DataType.UINT16, [70000])
    with pytest.raises(CodecError):
        decode_registers(DataType.UINT16, [-1])
    with pytest.raises(CodecError, match="needs 3 register"):
        decode_registers(DataType.STRING, [1, 2], length=3)


@pytest.mark.parametrize(
    ("dtype", "value", "message"),
    [
        (DataType.INT16, 300000, "300000 is out of range for int16 (-32768..32767)"),
        (DataType.INT16, -32769, "out of range for int16"),
        (DataType.UINT16, -1, "-1 is out of range for uint16 (0..65535)"),
        (DataType.UINT16, 65536, "out of range for uint16"),
        (DataType.INT32, 2**31, "out of range for int32"),
        (DataType.UINT32, 2**32, "out of range for uint32"),
        (DataType.INT64, -(2**63) - 1, "out of range for int64"),
        (DataType.UINT64, 2**64, "out of range for uint64"),
        (DataType.FLOAT32, 1e39, "out of range for float32"),
        (DataType.INT16, 1.5, "expected an integer"),
        (DataType.INT16, True, "expected a number"),
        (DataType.FLOAT32, "1", "expected a number"),
        (DataType.BOOL, 2, "expected a bool"),
    ],
)
def test_encode_registers_errors(dtype: DataType, value: Any, message: str) -> None:
    with pytest.raises(CodecError) as info:
        encode_registers(dtype, value)
    assert message in str(info.value)


def test_float32_decodes_to_shortest_decimal() -> None:
    regs = encode_registers(DataType.FLOAT32, 0.1)
    assert regs == [0x3DCC, 0xCCCD]
    assert decode_registers(DataType.FLOAT32, regs) == 0.1
    assert decode_registers(DataType.FLOAT32, [0x7F7F, 0xFFFF]) == 3.4028235e38
    assert decode_registers(DataType.FLOAT32, [0x0000, 0x0001]) == 1e-45  # smallest subnormal


# ----------------------------------------------------------------------------- round trips

INT_TYPES = [
    DataType.INT16,
    DataType.UINT16,
    DataType.INT32,
    DataType.UINT32,
    DataType.INT64,
    DataType.UINT64,
]
RANGES = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}
orders = st.sampled_from(ORDERS)


@pytest.mark.parametrize("dtype", INT_TYPES)
@given(data=st.data(), order=orders)
def test_int_round_trip(dtype: DataType, data: st.DataObject, order: tuple[Order, Order]) -> None:
    low, high = RANGES[dtype]
    value = data.draw(st.integers(low, high))
    bo, wo = order
    regs = encode_registers(dtype, value, byte_order=bo, word_order=wo)
    assert len(regs) == dtype.width
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert decode_registers(dtype, regs, byte_order=bo, word_order=wo) == value


@pytest.mark.parametrize("dtype", [*INT_TYPES, DataType.FLOAT32, DataType.FLOAT64])
@given(data=st.data(), order=orders)
def test_registers_round_trip(
    dtype: DataType, data: st.DataObject, order: tuple[Order, Order]
) -> None:
    regs = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=dtype.width, max_size=dtype.width))
    bo, wo = order
    value = decode_registers(dtype, regs, byte_order=bo, word_order=wo)
    if isinstance(value, float) and math.isnan(value):
        return  # NaN payloads are not a value
    assert encode_registers(dtype, value, byte_order=bo, word_order=wo) == regs


@given(value=st.floats(width=32), order=orders)
def test_float32_round_trip(value: float, order: tuple[Order, Order]) -> None:
    bo, wo = order
    regs = encode_registers(DataType.FLOAT32, value, byte_order=bo, word_order=wo)
    got = decode_registers(DataType.FLOAT32, regs, byte_order=bo, word_order=wo)
    assert isinstance(got, float)
    if math.isnan(value):
        assert math.isnan(got)
    else:
        assert struct.pack(">f", got) == struct.pack(">f", value)
        assert len(repr(got)) <= len(repr(value))


@given(value=st.floats(), order=orders)
def test_float64_round_trip(value: float, order: tuple[Order, Order]) -> None:
    bo, wo = order
    regs = encode_registers(DataType.FLOAT64, value, byte_order=bo, word_order=wo)
    got = decode_registers(DataType.FLOAT64, regs, byte_order=bo, word_order=wo)
    assert isinstance(got, float)
    if math.isnan(value):
        assert math.isnan(got)
    else:
        assert struct.pack(">d", got) == struct.pack(">d", value)


@given(value=st.booleans(), order=orders)
def test_bool_round_trip(value: bool, order: tuple[Order, Order]) -> None:
    bo, wo = order
    regs = encode_registers(DataType.BOOL, value, byte_order=bo, word_order=wo)
    assert decode_registers(DataType.BOOL, regs, byte_order=bo, word_order=wo) is value


@given(
    text=st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=20),
    extra=st.integers(0, 3),
    order=orders,
)
def test_string_round_trip(text: str, extra: int, order: tuple[Order, Order]) -> None:
    bo, wo = order
    length = max(1, (len(text) + 1) // 2 + extra)
    regs = encode_registers(DataType.STRING, text, byte_order=bo, word_order=wo, length=length)
    assert len(regs) == length
    got = decode_registers(DataType.STRING, regs, byte_order=bo, word_order=wo, length=length)
    assert got == text.rstrip("\x00 ")


# ----------------------------------------------------------------------------- points


def point(**kw: Any) -> Point:
    base: dict[str, Any] = {
        "name": "p",
        "table": Table.HOLDING,
        "address": 0,
        "type": DataType.UINT16,
        "interval": 1.0,
    }
    base.update(kw)
    return Point(**base)


def test_decode_point_plain_types() -> None:
    assert decode_point(point(type=DataType.INT16), [0xFFFE]) == -2
    assert decode_point(point(type=DataType.FLOAT32), [0x3F80, 0]) == 1.0
    assert (
        decode_point(point(type=DataType.INT32, word_order=L, byte_order=L), [0x7856, 0x3412])
        == 0x12345678
    )
    assert decode_point(point(type=DataType.STRING, length=2), [0x4142, 0x4300]) == "ABC"


def test_int_stays_int_without_scale() -> None:
    value = decode_point(point(type=DataType.UINT16), [42])
    assert value == 42
    assert type(value) is int


def test_scale_and_offset() -> None:
    value = decode_point(point(scale=0.1), [2305])
    assert value == 230.5
    assert type(value) is float
    assert decode_point(point(type=DataType.INT16, scale=0.1, offset=-40), [0xFFF6]) == -41.0
    value = decode_point(point(scale=10), [5])
    assert value == 50.0
    assert type(value) is float  # scaled values are floats
    assert decode_point(point(offset=1), [5]) == 6.0
    assert decode_point(point(type=DataType.FLOAT32, scale=2, offset=1), [0x3F80, 0]) == 3.0


def test_scale_noise_is_removed_but_big_values_keep_their_digits() -> None:
    assert decode_point(point(scale=0.1), [3]) == 0.3  # 3 * 0.1 = 0.30000000000000004
    big = 123456789012345678
    regs = encode_registers(DataType.UINT64, big)
    assert decode_point(point(type=DataType.UINT64, scale=0.001), regs) == big * 0.001


def test_precision() -> None:
    assert decode_point(point(scale=0.1, precision=0), [2306]) == 231.0
    assert decode_point(point(type=DataType.FLOAT32, precision=2), [0x42F6, 0xE979]) == 123.46
    assert decode_point(point(type=DataType.INT16, precision=-1), [1234]) == 1230
    assert decode_point(point(type=DataType.UINT16, precision=2), [1234]) == 1234
    value = decode_point(point(type=DataType.INT16, scale=0.001, precision=2), [0xFFFF])
    assert value == 0.0
    assert math.copysign(1, value) == 1  # no "-0.0"


@pytest.mark.parametrize(
    ("dtype", "regs"),
    [
        (DataType.FLOAT32, [0x7FC0, 0]),  # NaN
        (DataType.FLOAT32, [0x7F80, 0]),  # +inf
        (DataType.FLOAT32, [0xFF80, 0]),  # -inf
        (DataType.FLOAT64, [0x7FF8, 0, 0, 0]),
        (DataType.FLOAT64, [0x7FF0, 0, 0, 0]),
    ],
)
def test_nan_and_inf_decode_to_none(dtype: DataType, regs: list[int]) -> None:
    assert decode_point(point(type=dtype), regs) is None
    assert decode_point(point(type=dtype, scale=2.0), regs) is None
    assert decode_point(point(type=dtype, precision=1), regs) is None


def test_scaled_overflow_decodes_to_none() -> None:
    regs = encode_registers(DataType.FLOAT64, 1e308)
    assert decode_point(point(type=DataType.FLOAT64, scale=10.0), regs) is None


def test_enum_map() -> None:
    p = point(values=((0, "off"), (1, "on"), (2, "fault")), scale=10.0)
    assert decode_point(p, [1]) == "on"
    assert decode_point(p, [2]) == "fault"
    unknown = decode_point(p, [7])
    assert unknown == 7  # raw, unscaled
    assert type(unknown) is int


def test_enum_map_on_bits_and_bools() -> None:
    labels = ((0, "closed"), (1, "open"))
    assert (
        decode_point(point(table=Table.COIL, type=DataType.BOOL, values=labels), [True]) == "open"
    )
    assert decode_point(point(type=DataType.BOOL, values=labels), [0]) == "closed"
    assert decode_point(point(bit=3, values=labels), [0b1000]) == "open"
    assert decode_point(point(bit=3, values=((1, "alarm"),)), [0]) is False


def test_enum_map_ignored_for_floats_and_strings() -> None:
    labels = ((1, "one"),)
    assert decode_point(point(type=DataType.FLOAT32, values=labels), [0x3F80, 0]) == 1.0
    assert decode_point(point(type=DataType.STRING, length=1, values=labels), [0x3100]) == "1"


def test_bit_extraction() -> None:
    p = point(bit=3)
    assert decode_point(p, [0b1000]) is True
    assert decode_point(p, [0b0111]) is False
    assert decode_point(point(bit=15, type=DataType.INT16), [0x8000]) is True
    assert decode_point(point(bit=0, type=DataType.BOOL), [0x0001]) is True
    assert decode_point(point(bit=0, type=DataType.BOOL), [0x0002]) is False
    # the bit numbers the decoded value, after byte order
    assert decode_point(point(bit=0, byte_order=L), [0x0100]) is True
    assert decode_point(point(bit=8, byte_order=L), [0x0001]) is True
    # multi-register integers: bits of the whole value
    assert decode_point(point(bit=20, type=DataType.UINT32), [0x0010, 0]) is True
    assert decode_point(point(bit=20, type=DataType.UINT32, word_order=L), [0, 0x0010]) is True


def test_bit_compile_errors() -> None:
    with pytest.raises(CodecError, match="integer or bool"):
        compile_decoder(point(bit=1, type=DataType.FLOAT32))
    with pytest.raises(CodecError, match=r"outside 0\.\.15"):
        compile_decoder(point(bit=16))


def test_bools() -> None:
    assert decode_point(point(type=DataType.BOOL), [0]) is False
    assert decode_point(point(type=DataType.BOOL), [0x0200]) is True
    for table in (Table.COIL, Table.DISCRETE):
        assert decode_point(point(table=table, type=DataType.BOOL), [True]) is True
        assert decode_point(point(table=table, type=DataType.BOOL), [False]) is False
        assert decode_point(point(table=table, type=DataType.BOOL), [1]) is True


def test_decoder_checks_slice_length() -> None:
    with pytest.raises(CodecError, match="expected 2 value") as info:
        decode_point(point(name="power", type=DataType.FLOAT32), [0])
    assert info.value.point == "power"
    with pytest.raises(CodecError, match="expected 1 value"):
        decode_point(point(table=Table.COIL, type=DataType.BOOL), [True, False])
    with pytest.raises(CodecError) as info:
        decode_point(point(name="x"), [70000])
    assert info.value.point == "x"


def test_compiled_decoder_matches_decode_point() -> None:
    p = point(type=DataType.INT32, scale=0.5)
    decode = compile_decoder(p)
    assert decode([0, 5]) == decode_point(p, [0, 5]) == 2.5


# ----------------------------------------------------------------------------- encode_point


@pytest.mark.parametrize(
    ("p", "value", "regs"),
    [
        (point(type=DataType.INT16), -2, [0xFFFE]),
        (point(type=DataType.INT16), 21.4, [21]),
        (point(type=DataType.INT16), 2.5, [2]),  # halves to even
        (point(type=DataType.INT16), 3.5, [4]),
        (point(scale=0.1), 230.5, [2305]),
        (point(scale=0.1), 0.15, [2]),  # 1.5 raw, to even
        (point(type=DataType.INT16, scale=0.1, offset=-40), -41, [0xFFF6]),
        (point(type=DataType.FLOAT32, scale=2, offset=1), 3, [0x3F80, 0]),
        (point(type=DataType.FLOAT32, word_order=L), 1.0, [0, 0x3F80]),
        (point(type=DataType.UINT64), 2**64 - 1, [0xFFFF] * 4),
        (point(type=DataType.STRING, length=3), "AB", [0x4142, 0, 0]),
        (point(type=DataType.BOOL), True, [1]),
        (point(type=DataType.BOOL, byte_order=L), True, [0x0100]),
        (point(values=((0, "off"), (5, "auto"))), "auto", [5]),
    ],
)
def test_encode_point(p: Point, value: Any, regs: list[int]) -> None:
    assert encode_point(p, value) == regs


def test_encode_point_bits_return_bool() -> None:
    assert encode_point(point(table=Table.COIL, type=DataType.BOOL), True) is True
    assert encode_point(point(bit=3), False) is False
    labels = ((0, "closed"), (1, "open"))
    assert encode_point(point(table=Table.COIL, type=DataType.BOOL, values=labels), "open") is True
    assert encode_point(point(bit=2, values=labels), "closed") is False


@pytest.mark.parametrize(
    ("p", "value", "message"),
    [
        (point(type=DataType.INT16), 300000, "300000 is out of range for int16 (-32768..32767)"),
        (point(type=DataType.INT16, scale=0.1), 5000, "5000 (raw 50000) is out of range for int16"),
        (point(), -0.6, "out of range for uint16"),
        (point(type=DataType.UINT64), 1e30, "out of range for uint64"),
        (point(type=DataType.FLOAT32), 1e39, "out of range for float32"),
        (point(type=DataType.FLOAT32, scale=1e-10), 1e30, "out of range for float32"),
        (point(type=DataType.FLOAT64, scale=0.5), 1e308, "out of range for float64"),
        (point(type=DataType.INT16), math.nan, "not a finite number"),
        (point(type=DataType.FLOAT32), math.inf, "not a finite number"),
        (point(type=DataType.INT16), "12", "expected a number"),
        (point(type=DataType.INT16), True, "expected a number"),
        (point(type=DataType.INT16), None, "no value"),
        (point(values=((0, "off"), (1, "on"))), 1, "expected one of 'off', 'on'"),
        (point(values=((0, "off"), (1, "on"))), "dim", "'dim' is not one of 'off', 'on'"),
        (point(bit=3), 1, "expected true or false"),
        (point(table=Table.COIL, type=DataType.BOOL), "on", "expected true or false"),
        (point(type=DataType.STRING, length=1), "ABC", "more than the 2"),
        (point(type=DataType.STRING, length=1), 12, "expected text"),
        (point(minimum=0, maximum=100), 101, "101 is above the maximum 100"),
        (point(minimum=10, maximum=100), 9.4, "9.4 is below the minimum 10"),
        (point(minimum=10, maximum=100), 100.6, "above the maximum 100 (it would be written as"),
        (point(scale=0), 1, "scale 0"),
    ],
)
def test_encode_point_errors(p: Point, value: Any, message: str) -> None:
    named = replace(p, name="setpoint")
    with pytest.raises(CodecError) as info:
        encode_point(named, value)
    assert message in str(info.value)
    assert info.value.point == "setpoint"
    assert str(info.value).startswith("setpoint: ")
    assert isinstance(info.value, ValueError)


SCALED_INT_POINTS = [
    point(type=DataType.INT16, scale=0.1, offset=-40, byte_order=L),
    point(type=DataType.UINT16, scale=0.5, offset=7),
    point(type=DataType.UINT32, scale=0.01, word_order=L),
    point(type=DataType.INT32, scale=3, offset=0.25, byte_order=L, word_order=L),
    point(type=DataType.INT64, scale=0.001, byte_order=L, word_order=L),
    point(type=DataType.UINT64, scale=0.1, offset=-1),
]


@pytest.mark.parametrize("p", SCALED_INT_POINTS, ids=lambda p: p.type.value)
@given(data=st.data())
def test_scaled_int_point_round_trip(p: Point, data: st.DataObject) -> None:
    # exact while raw * scale stays well inside a float's 53-bit mantissa
    low, high = RANGES[p.type]
    raw = data.draw(st.integers(max(low, -(2**48)), min(high, 2**48)))
    regs = encode_registers(p.type, raw, byte_order=p.byte_order, word_order=p.word_order)
    value = decode_point(p, regs)
    assert isinstance(value, float)
    assert encode_point(p, value) == regs


@pytest.mark.parametrize(
    "p",
    [
        point(type=t, byte_order=bo, word_order=wo)
        for t in (*INT_TYPES, DataType.FLOAT32, DataType.FLOAT64)
        for bo, wo in ORDERS
    ],
    ids=lambda p: f"{p.type.value}-{p.byte_order.value}-{p.word_order.value}",
)
@given(data=st.data())
def test_unscaled_point_round_trip_from_registers(p: Point, data: st.DataObject) -> None:
    regs = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=p.count, max_size=p.count))
    value = decode_point(p, regs)
    if value is None:
        return  # NaN/inf
    assert encode_point(p, value) == regs


@pytest.mark.parametrize("dtype", [DataType.FLOAT32, DataType.FLOAT64])
@given(value=st.floats(-1e6, 1e6), order=orders)
def test_scaled_float_point_round_trip(
    dtype: DataType, value: float, order: tuple[Order, Order]
) -> None:
    p = point(type=dtype, scale=0.5, offset=3, byte_order=order[0], word_order=order[1])
    got = decode_point(p, encode_point(p, value))  # type: ignore[arg-type]
    assert isinstance(got, float)
    tolerance = 1e-6 if dtype is DataType.FLOAT32 else 1e-12
    assert got == pytest.approx(value, rel=tolerance, abs=tolerance)


# ----------------------------------------------------------------------------- apply_bit


def test_apply_bit() -> None:
    assert apply_bit(0x0000, 3, True) == 0x0008
    assert apply_bit(0xFFFF, 3, False) == 0xFFF7
    assert apply_bit(0x0008, 3, True) == 0x0008
    assert apply_bit(0x1234, 15, True) == 0x9234
    assert apply_bit(0x0000, 0, True, byte_order=L) == 0x0100
    assert apply_bit(0xFFFF, 8, False, byte_order=L) == 0xFFFE
    with pytest.raises(CodecError):
        apply_bit(0, 16, True)
    with pytest.raises(CodecError):
        apply_bit(0x10000, 0, True)


@given(
    register=st.integers(0, 0xFFFF),
    bit=st.integers(0, 15),
    value=st.booleans(),
    bo=st.sampled_from(list(Order)),
)
def test_apply_bit_agrees_with_decode(register: int, bit: int, value: bool, bo: Order) -> None:
    p = point(bit=bit, byte_order=bo)
    new = apply_bit(register, bit, value, byte_order=bo)
    assert decode_point(p, [new]) is value
    other = [b for b in range(16) if b != bit]
    for b in other:
        assert decode_point(replace(p, bit=b), [new]) is decode_point(replace(p, bit=b), [register])


@pytest.mark.parametrize(
    ("dtype", "missing", "regs"),
    [
        (DataType.INT16, -0x8000, [0x8000]),
        (DataType.UINT16, 0xFFFF, [0xFFFF]),
        (DataType.UINT32, 0xFFFFFFFF, [0xFFFF, 0xFFFF]),
        (DataType.INT32, -0x80000000, [0x8000, 0x0000]),
        (DataType.UINT32, 0, [0, 0]),  # SunSpec's accumulators: 0 is "not implemented"
    ],
)
def test_a_missing_raw_value_decodes_to_none(
    dtype: DataType, missing: int, regs: list[int]
) -> None:
    point = Point("p", Table.HOLDING, 0, dtype, 1.0, missing=missing, scale=0.1)
    assert decode_point(point, regs) is None
    assert decode_point(point, [0, 7] if len(regs) == 2 else [7]) == pytest.approx(0.7)


def test_a_missing_string_is_one_whose_first_byte_is_nul() -> None:
    point = Point("s", Table.HOLDING, 0, DataType.STRING, 1.0, length=2, missing=0)
    assert decode_point(point, [0x0041, 0x4200]) is None
    assert decode_point(point, [0x4142, 0x0000]) == "AB"
    little = Point("s", Table.HOLDING, 0, DataType.STRING, 1.0, length=1, missing=0,
                   byte_order=Order.LITTLE)  # fmt: skip
    assert decode_point(little, [0x4100]) is None
    assert decode_point(little, [0x0041]) == "A"


def test_every_format_packs_the_width_the_model_declares() -> None:
    """One table of widths (`DataType.width`): the codec's formats agree with it."""
    from bridge.codec import _SPECS

    assert set(_SPECS) == set(DataType) - {DataType.STRING}
    for dtype, spec in _SPECS.items():
        assert struct.calcsize(spec.code) == 2 * dtype.width, dtype
