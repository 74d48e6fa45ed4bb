"""The proxy's pure parts: framing a client's requests (the frame guard), which of them
go out on the session, the bytes that answer them, and the points a write touches."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import BadReply, ExceptionReply, HostUnavailable, RequestTimeout
from bridge.frames import OutOfStep, Request, frame_requests, mbap_frame
from bridge.model import DataType, Device, Point, Table
from bridge.proxy_rules import (
    ILLEGAL_ADDRESS,
    ILLEGAL_FUNCTION,
    ILLEGAL_VALUE,
    PATH_UNAVAILABLE,
    TARGET_FAILED,
    ProxyRequest,
    Refusal,
    answer,
    exception_pdu,
    failure_code,
    parse_request,
    touched,
)

UNITS = frozenset({1, 2})


def _mbap(tid: int, unit: int, pdu: bytes, *, pid: int = 0, length: int | None = None) -> bytes:
    n = len(pdu) + 1 if length is None else length
    return struct.pack(">HHHB", tid, pid, n, unit) + pdu


def _parse(pdu: bytes, unit: int = 1, *, writes: bool = True) -> ProxyRequest | Refusal:
    return parse_request(unit, pdu, units=UNITS, writes=writes)


def _code(pdu: bytes, unit: int = 1, *, writes: bool = True) -> int | None:
    got = _parse(pdu, unit, writes=writes)
    return got.code if isinstance(got, Refusal) else None


# -- framing a client's requests ------------------------------------------------------


def test_requests_are_cut_at_their_mbap_length_and_keep_their_transaction_id() -> None:
    one = _mbap(7, 1, struct.pack(">BHH", 3, 10, 2))
    two = _mbap(8, 2, struct.pack(">BHH", 4, 0, 1))
    used, frames = frame_requests(one + two + two[:5])
    assert used == len(one) + len(two)  # the third, not complete yet, is left
    assert frames == [
        Request(7, 1, struct.pack(">BHH", 3, 10, 2)),
        Request(8, 2, struct.pack(">BHH", 4, 0, 1)),
    ]


def test_a_slow_drip_frames_nothing_until_the_last_byte() -> None:
    frame = _mbap(1, 1, struct.pack(">BHH", 3, 0, 1))
    for n in range(len(frame)):
        assert frame_requests(frame[:n]) == (0, [])
    assert frame_requests(frame) == (len(frame), [Request(1, 1, frame[7:])])


def test_the_largest_adu_is_260_bytes_and_one_more_is_out_of_step() -> None:
    pdu = bytes([16]) + bytes(252)  # unit + 253 bytes of PDU: length 254, ADU 260
    assert len(_mbap(1, 1, pdu)) == 260
    assert frame_requests(_mbap(1, 1, pdu))[1] == [Request(1, 1, pdu)]
    used, frames = frame_requests(_mbap(1, 1, pdu + b"\0"))
    assert frames == [OutOfStep("invalid Modbus TCP header (protocol id 0, length 255)")]
    assert used == 261  # everything: no boundary after it can be trusted


@pytest.mark.parametrize(("pid", "length"), [(1, 6), (0, 0), (0, 1), (0xFFFF, 6), (0, 60000)])
def test_a_header_that_cannot_be_trusted_ends_the_stream(pid: int, length: int) -> None:
    good = _mbap(1, 1, struct.pack(">BHH", 3, 0, 1))
    bad = _mbap(2, 1, struct.pack(">BHH", 3, 0, 1), pid=pid, length=length)
    used, frames = frame_requests(good + bad + good)
    assert frames[0] == Request(1, 1, good[7:])
    assert isinstance(frames[1], OutOfStep)
    assert len(frames) == 2 and used == len(good + bad + good)


def test_an_answer_frame_is_framed_back_as_sent() -> None:
    frame = mbap_frame(0xBEEF, 9, b"\x03\x02\x00\x2a")
    assert frame == b"\xbe\xef\x00\x00\x00\x05\x09\x03\x02\x00\x2a"
    assert frame_requests(frame)[1] == [Request(0xBEEF, 9, b"\x03\x02\x00\x2a")]


@given(st.binary(max_size=600))
def test_garbage_never_raises(data: bytes) -> None:
    used, frames = frame_requests(data)
    assert 0 <= used <= len(data)
    assert all(isinstance(f, Request | OutOfStep) for f in frames)
    assert not any(isinstance(f, OutOfStep) for f in frames[:-1])


# -- what is forwarded ------------------------------------------------------------------


def test_reads_are_forwarded() -> None:
    assert _parse(struct.pack(">BHH", 3, 10, 125)) == ProxyRequest(3, 1, 10, 125)
    assert _parse(struct.pack(">BHH", 1, 0, 2000)) == ProxyRequest(1, 1, 0, 2000)
    assert _parse(struct.pack(">BHH", 4, 65535, 1)) == ProxyRequest(4, 1, 65535, 1)
    assert _parse(struct.pack(">BHH", 2, 7, 1), writes=False) == ProxyRequest(2, 1, 7, 1)


def test_a_unit_not_proxied_gets_0x0b_whatever_it_asks() -> None:
    assert _code(struct.pack(">BHH", 3, 0, 1), unit=3) == TARGET_FAILED
    assert _code(bytes([8, 0, 0, 0, 0]), unit=0) == TARGET_FAILED
    assert _parse(struct.pack(">BHH", 3, 0, 1), unit=3) == Refusal(
        TARGET_FAILED, "unit 3 is not proxied on this host"
    )


@pytest.mark.parametrize(
    "pdu",
    [
        bytes([8, 0, 0, 0x12, 0x34]),  # diagnostics
        bytes([43, 14, 1, 0]),  # read device identification
        bytes([23]) + bytes(9),  # read/write multiple registers
        bytes([0x83, 2]),  # an exception "request"
        bytes([0]),
        bytes([0xFF]),
    ],
)
def test_functions_outside_the_allowed_set_get_exception_1(pdu: bytes) -> None:
    assert _code(pdu) == ILLEGAL_FUNCTION


@pytest.mark.parametrize(
    "pdu",
    [
        struct.pack(">BHH", 5, 0, 0xFF00),
        struct.pack(">BHH", 6, 0, 1),
        struct.pack(">BHHB", 15, 0, 1, 1) + b"\1",
        struct.pack(">BHHB", 16, 0, 1, 2) + b"\0\1",
        struct.pack(">BHHH", 22, 0, 0xFFFF, 0),
    ],
)
def test_writes_get_exception_1_unless_allowed(pdu: bytes) -> None:
    assert _parse(pdu, writes=False) == Refusal(
        ILLEGAL_FUNCTION, f"function {pdu[0]}: writes are not allowed"
    )
    assert isinstance(_parse(pdu, writes=True), ProxyRequest)


@pytest.mark.parametrize(
    "pdu",
    [
        struct.pack(">BHH", 3, 0, 0),  # count 0 (a traceback in pymodbus's server)
        struct.pack(">BHH", 3, 0, 200),  # count 200 (the same)
        struct.pack(">BHH", 4, 0, 126),
        struct.pack(">BHH", 1, 0, 2001),
        struct.pack(">BHH", 2, 0, 0),
        struct.pack(">BH", 3, 0),  # too short
        struct.pack(">BHHB", 3, 0, 1, 0),  # too long
        bytes([3]),
        struct.pack(">BHH", 5, 0, 0x1234),  # a coil is 0xff00 or 0
        struct.pack(">BHHB", 16, 0, 0, 0),  # count 0
        struct.pack(">BHHB", 16, 0, 124, 248) + bytes(248 - 8),  # count 124 (> 123)
        struct.pack(">BHHB", 16, 0, 2, 4) + b"\0\1\0",  # one byte short
        struct.pack(">BHHB", 16, 0, 2, 3) + b"\0\1\0",  # byte count does not fit the count
        struct.pack(">BHHB", 15, 0, 9, 1) + b"\xff",  # 9 bits need 2 bytes
        struct.pack(">BHHB", 15, 0, 1969, 247) + bytes(240),
        struct.pack(">BHH", 22, 0, 0),  # mask write without its or mask
        bytes([16, 0, 0]),
    ],
)
def test_sizes_the_specification_does_not_allow_get_exception_3(pdu: bytes) -> None:
    assert _code(pdu) == ILLEGAL_VALUE


def test_a_range_past_address_65535_gets_exception_2() -> None:
    assert _code(struct.pack(">BHH", 3, 65535, 2)) == ILLEGAL_ADDRESS
    assert _code(struct.pack(">BHH", 1, 65000, 1000)) == ILLEGAL_ADDRESS
    assert _code(struct.pack(">BHHB", 16, 65535, 2, 4) + bytes(4)) == ILLEGAL_ADDRESS


def test_writes_carry_their_values() -> None:
    assert _parse(struct.pack(">BHH", 5, 3, 0xFF00)) == ProxyRequest(5, 1, 3, 1, (1,))
    assert _parse(struct.pack(">BHH", 5, 3, 0)) == ProxyRequest(5, 1, 3, 1, (0,))
    assert _parse(struct.pack(">BHH", 6, 3, 0xABCD)) == ProxyRequest(6, 1, 3, 1, (0xABCD,))
    bits = struct.pack(">BHHB", 15, 20, 10, 2) + bytes([0b10000101, 0b10])
    assert _parse(bits) == ProxyRequest(15, 1, 20, 10, (1, 0, 1, 0, 0, 0, 0, 1, 0, 1))
    regs = struct.pack(">BHHB", 16, 100, 2, 4) + struct.pack(">HH", 1, 0xFFFF)
    assert _parse(regs) == ProxyRequest(16, 1, 100, 2, (1, 0xFFFF))
    mask = struct.pack(">BHHH", 22, 4, 0xF2F2, 0x0025)
    assert _parse(mask) == ProxyRequest(22, 1, 4, 1, (0xF2F2, 0x0025))


@given(st.binary(min_size=1, max_size=253), st.integers(0, 255), st.booleans())
def test_no_pdu_raises(pdu: bytes, unit: int, writes: bool) -> None:
    got = parse_request(unit, pdu, units=range(256), writes=writes)
    if isinstance(got, ProxyRequest):
        assert got.count >= 1 and got.end <= 0x10000
        assert writes or not got.writes
    else:
        assert got.code in (ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE)


# -- the answers --------------------------------------------------------------------------


def test_a_register_read_is_answered_with_its_registers() -> None:
    assert answer(ProxyRequest(3, 1, 0, 2), [0x0102, 0xFFFF]) == b"\x03\x04\x01\x02\xff\xff"
    assert answer(ProxyRequest(4, 1, 0, 1), [7]) == b"\x04\x02\x00\x07"


def test_a_bit_read_is_packed_least_significant_bit_first() -> None:
    bits = [True, False, True, False, False, False, False, True, False, True]
    assert answer(ProxyRequest(1, 1, 0, 10), bits) == bytes([1, 2, 0b10000101, 0b10])
    assert answer(ProxyRequest(2, 1, 0, 1), [False]) == bytes([2, 1, 0])


@pytest.mark.parametrize(
    ("request_pdu", "echo"),
    [
        (struct.pack(">BHH", 5, 3, 0xFF00), struct.pack(">BHH", 5, 3, 0xFF00)),
        (struct.pack(">BHH", 5, 3, 0), struct.pack(">BHH", 5, 3, 0)),
        (struct.pack(">BHH", 6, 3, 0xABCD), struct.pack(">BHH", 6, 3, 0xABCD)),
        (struct.pack(">BHHB", 15, 20, 10, 2) + b"\0\0", struct.pack(">BHH", 15, 20, 10)),
        (struct.pack(">BHHB", 16, 100, 2, 4) + bytes(4), struct.pack(">BHH", 16, 100, 2)),
        (struct.pack(">BHHH", 22, 4, 0xF2F2, 0x25), struct.pack(">BHHH", 22, 4, 0xF2F2, 0x25)),
    ],
)
def test_a_write_is_answered_with_its_echo(request_pdu: bytes, echo: bytes) -> None:
    parsed = _parse(request_pdu)
    assert isinstance(parsed, ProxyRequest)
    assert answer(parsed, None) == echo


def test_exceptions_keep_the_function() -> None:
    assert exception_pdu(3, TARGET_FAILED) == b"\x83\x0b"
    assert exception_pdu(0x83, ILLEGAL_FUNCTION) == b"\x83\x01"
    assert exception_pdu(0, ILLEGAL_FUNCTION) == b"\x80\x01"


def test_failures_are_answered_with_the_gateway_codes() -> None:
    assert failure_code(ExceptionReply("h", 1, 2, "read")) == 2
    assert failure_code(ExceptionReply("h", 1, 0, "read")) == 4  # no code: device failure
    assert failure_code(HostUnavailable("h", 1, "not connected")) == PATH_UNAVAILABLE
    assert failure_code(RequestTimeout("h", 1, "no answer")) == TARGET_FAILED
    assert failure_code(BadReply("h", 1, "count")) == TARGET_FAILED


# -- what a write touches -------------------------------------------------------------------


def _point(name: str, table: Table, address: int, **kw: object) -> Point:
    kw.setdefault("type", DataType.BOOL if table.is_bits else DataType.UINT16)
    kw.setdefault("interval", 1.0)
    return Point(name=name, table=table, address=address, **kw)  # type: ignore[arg-type]


def _device(name: str, unit: int, *points: Point) -> Device:
    return Device(name=name, host="gw", unit=unit, interval=1.0, points=points)


def test_a_write_touches_the_points_it_overlaps_where_they_are_read_or_written() -> None:
    energy = _point("energy", Table.HOLDING, 10, type=DataType.UINT32)  # 10-11
    power = _point("power", Table.HOLDING, 12)
    setpoint = _point(  # read from an input register, written at holding 30
        "setpoint", Table.INPUT, 5, writable=True, write_address=30
    )
    status = _point("status", Table.INPUT, 30)  # input 30: not where holding 30 is
    relay = _point("relay", Table.COIL, 11)
    meter = _device("meter", 1, energy, power, setpoint, status, relay)
    other = _device("other", 2, _point("energy", Table.HOLDING, 10))
    devices = [meter, other]
    assert touched(devices, ProxyRequest(6, 1, 11, 1, (0,))) == [(meter, (energy,))]
    assert touched(devices, ProxyRequest(16, 1, 11, 2, (0, 0))) == [(meter, (energy, power))]
    assert touched(devices, ProxyRequest(6, 1, 30, 1, (9,))) == [(meter, (setpoint,))]
    assert touched(devices, ProxyRequest(15, 1, 10, 2, (1, 1))) == [(meter, (relay,))]
    assert touched(devices, ProxyRequest(6, 1, 13, 1, (0,))) == []
    assert touched(devices, ProxyRequest(6, 2, 10, 1, (0,))) == [(other, other.points)]
