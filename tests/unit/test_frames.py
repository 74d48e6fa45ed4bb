"""The frame guard, byte by byte: which received frames are believed, and why not.

The Modbus TCP cases are the hostile server's (tests/hostile.py): its own reply
builder makes the bytes, as it sends them in tests/integration/test_hostile_modbus.py.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pytest
from hostile import HostileServer, register

from bridge.codec import crc16
from bridge.frames import (
    Answer,
    OutOfStep,
    Refused,
    Stray,
    frame_mbap,
    frame_rtu,
    mbap_request,
    reply_mismatch,
    rtu_frame_size,
)

READ_2_AT_10 = struct.pack(">BHH", 3, 10, 2)  # read holding 10+2


def _hostile(mode: str, tid: int = 7, unit: int = 2, pdu: bytes = READ_2_AT_10) -> bytes:
    """What the hostile server sends for `mode` (not `garbage`: that one is random)."""
    return HostileServer({unit: mode})._reply(tid, unit, pdu)


def _mbap(tid: int, unit: int, body: bytes, pid: int = 0) -> bytes:
    return struct.pack(">HHHB", tid, pid, len(body) + 1, unit) + body


def _rtu(unit: int, body: bytes) -> bytes:
    frame = bytes([unit]) + body
    return frame + crc16(frame).to_bytes(2, "little")


def _registers(*values: int) -> bytes:
    data = b"".join(struct.pack(">H", v) for v in values)
    return bytes([3, len(data)]) + data


# -- Modbus TCP: the hostile server's replies -----------------------------------------


def test_a_normal_reply_is_the_answer() -> None:
    data = _hostile("normal")
    assert frame_mbap(data, (7, 2)) == (
        len(data),
        [Answer(_registers(register(2, 10), register(2, 11)), 2, 7)],
    )


def test_a_byte_count_larger_than_the_data_is_refused() -> None:
    data = _hostile("byte_count")
    used, verdicts = frame_mbap(data, (7, 2))
    assert used == len(data)  # the MBAP length is right: the stream stays in step
    assert verdicts == [Refused("byte count 24 for 4 data bytes")]


def test_an_exception_reply_without_its_code_is_refused() -> None:
    assert frame_mbap(_hostile("no_code"), (7, 2))[1] == [
        Refused("exception reply of 1 bytes (a code byte expected)")
    ]


def test_a_reply_from_another_unit_is_refused() -> None:
    assert frame_mbap(_hostile("wrong_unit"), (7, 2))[1] == [
        Refused("reply from unit 3 to a request for unit 2")
    ]


def test_a_request_to_unit_0_takes_a_reply_from_any_unit() -> None:
    verdicts = frame_mbap(_hostile("wrong_unit"), (7, 0))[1]
    assert [type(v) for v in verdicts] == [Answer]


def test_transaction_id_0_is_stray_unless_allowed() -> None:
    data = _hostile("tid_zero")
    assert frame_mbap(data, (7, 2))[1] == [Stray(0, 7, zero=True)]
    # allow_zero_tid: the reply answers the request on the wire, under its id.
    answer = frame_mbap(data, (7, 2), allow_zero_tid=True)[1]
    assert answer == [Answer(_registers(register(2, 10), register(2, 11)), 2, 7)]


def test_a_bad_header_puts_the_stream_out_of_step() -> None:
    data = _hostile("bad_header") + _hostile("normal")  # nothing after it is framed
    assert frame_mbap(data, (7, 2)) == (
        len(data),
        [OutOfStep("invalid Modbus TCP header (protocol id 4660, length 7)")],
    )


def test_garbage_puts_the_stream_out_of_step() -> None:
    garbage = bytes(range(200, 240))  # 40 bytes, as the hostile server's random ones
    used, verdicts = frame_mbap(garbage, (7, 2))
    assert used == len(garbage)
    assert verdicts == [OutOfStep("invalid Modbus TCP header (protocol id 51915, length 52429)")]


@pytest.mark.parametrize("length", [0, 1, 255, 65535])
def test_a_length_out_of_range_puts_the_stream_out_of_step(length: int) -> None:
    data = struct.pack(">HHHB", 7, 0, length, 2) + b"\x03\x00"
    assert type(frame_mbap(data, (7, 2))[1][0]) is OutOfStep


def test_the_wrong_function_and_extra_registers_pass_the_guard() -> None:
    """Well framed: the guard lets them through, the reply checks refuse them."""
    for mode in ("wrong_function", "extra"):
        verdicts = frame_mbap(_hostile(mode), (7, 2))[1]
        assert [type(v) for v in verdicts] == [Answer]


# -- Modbus TCP: framing --------------------------------------------------------------


def test_a_late_reply_is_stray_and_the_awaited_one_after_it_answers() -> None:
    late = _mbap(6, 2, _registers(1, 2))
    ours = _mbap(7, 2, _registers(3, 4))
    used, verdicts = frame_mbap(late + ours, (7, 2))
    assert used == len(late + ours)
    assert verdicts == [Stray(6, 7), Answer(_registers(3, 4), 2, 7)]


def test_before_any_request_every_frame_is_stray() -> None:
    assert frame_mbap(_mbap(1, 2, _registers(1)), None)[1] == [Stray(1)]


def test_a_frame_not_complete_yet_waits() -> None:
    frame = _mbap(7, 2, _registers(1, 2))
    for cut in (0, 3, 7, 8, len(frame) - 1):
        assert frame_mbap(frame[:cut], (7, 2)) == (0, [])
    head = _mbap(6, 2, _registers(9))
    assert frame_mbap(head + frame[:9], (7, 2)) == (len(head), [Stray(6, 7)])


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x06\x00\x01\x00", "function 6 reply of 4 bytes (5 expected)"),
        (b"\x10\x00\x01\x00\x02\x00", "function 16 reply of 6 bytes (5 expected)"),
        (b"\x16\x00\x01\xff\xff\x00", "function 22 reply of 6 bytes (7 expected)"),
        (b"\x03", "byte count no for -1 data bytes"),
        (b"\x83\x02\x00", "exception reply of 3 bytes (a code byte expected)"),
    ],
)
def test_a_write_or_exception_reply_of_the_wrong_size_is_refused(body: bytes, reason: str) -> None:
    assert frame_mbap(_mbap(7, 2, body), (7, 2))[1] == [Refused(reason)]


def test_the_request_on_the_wire_is_read_from_its_header() -> None:
    assert mbap_request(_mbap(513, 9, READ_2_AT_10)) == (513, 9)
    assert mbap_request(b"\x00\x01") is None


# -- RTU --------------------------------------------------------------------------------


def test_rtu_frame_sizes_come_from_function_and_byte_count() -> None:
    assert rtu_frame_size(_rtu(1, _registers(1, 2))) == 9
    assert rtu_frame_size(_rtu(1, b"\x83\x02")) == 5
    assert rtu_frame_size(_rtu(1, b"\x06\x00\x01\x00\x02")) == 8
    assert rtu_frame_size(_rtu(1, b"\x16\x00\x01\xff\xff\x00\x00")) == 10
    assert rtu_frame_size(_rtu(1, b"\x2b\x0e")) is None


def test_an_rtu_reply_is_the_answer() -> None:
    frame = _rtu(4, _registers(1, 2))
    assert frame_rtu(frame, 4) == (len(frame), [Answer(_registers(1, 2), 4, 0)])


def test_another_units_late_reply_and_ours_in_one_read() -> None:
    """A late reply read together with the awaited one must not hide it."""
    late, ours = _rtu(3, _registers(7)), _rtu(4, _registers(1, 2))
    assert frame_rtu(late + ours, 4) == (
        len(late + ours),
        [Stray(), Answer(_registers(1, 2), 4, 0)],
    )


def test_a_bad_crc_is_refused_and_the_rest_discarded() -> None:
    bad = bytearray(_rtu(4, _registers(1, 2)))
    bad[-1] ^= 0xFF
    data = bytes(bad) + _rtu(4, _registers(1, 2))
    assert frame_rtu(data, 4) == (len(data), [Refused("CRC error in a 9-byte reply", crc=True)])


def test_an_unknown_function_is_line_noise() -> None:
    data = _rtu(4, b"\x2b\x0e\x01")
    assert frame_rtu(data, 4) == (len(data), [Refused("unexpected function code 43")])


def test_an_rtu_frame_not_complete_yet_waits() -> None:
    frame = _rtu(4, _registers(1, 2))
    for cut in (0, 1, 2, 3, len(frame) - 1):
        assert frame_rtu(frame[:cut], 4) == (0, [])


# -- the decoded reply against its request --------------------------------------------


@dataclass
class _Reply:
    function_code: int
    dev_id: int = 2
    address: int = 10
    count: int = 2
    registers: list[int] = field(default_factory=list)
    bits: list[bool] = field(default_factory=list)
    error: bool = False

    def isError(self) -> bool:  # pymodbus's name
        return self.error


def test_a_reply_to_another_function_or_unit_does_not_match() -> None:
    what = "read holding 10+2"
    assert reply_mismatch(_Reply(4), 2, what, 3) == f"{what}: reply from unit 2, function 4"
    assert reply_mismatch(_Reply(3, dev_id=5), 2, what, 3) == (
        f"{what}: reply from unit 5, function 3"
    )
    assert reply_mismatch(_Reply(3, dev_id=5), 0, what, 3) is None  # unit 0: any unit
    assert reply_mismatch(_Reply(0x83, error=True), 2, what, 3) is None  # an exception reply


def test_a_write_reply_must_echo_the_request() -> None:
    what = "write holding 10+1"
    assert reply_mismatch(_Reply(6, registers=[5]), 2, what, 6, (10, [5])) is None
    assert reply_mismatch(_Reply(6, registers=[6]), 2, what, 6, (10, [5])) == (
        f"{what}: the reply echoes value [6]"
    )
    assert reply_mismatch(_Reply(16, address=11, count=1), 2, what, 16, (10, 1)) == (
        f"{what}: the reply echoes address 11"
    )
    assert reply_mismatch(_Reply(16, count=3), 2, what, 16, (10, 1)) == (
        f"{what}: the reply echoes count 3"
    )
    assert reply_mismatch(_Reply(5, bits=[True, False]), 2, what, 5, (10, [True])) is None
    assert reply_mismatch(_Reply(22), 2, what, 22, (10, None)) is None
    assert reply_mismatch(_Reply(0x86, error=True), 2, what, 6, (10, [5])) is None
