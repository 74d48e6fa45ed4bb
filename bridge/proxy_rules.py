"""The proxy's rules: which requests of a Modbus TCP client go out on a host's session,
and the bytes that answer them. Pure: values in, values out.

The proxy (`bridge.proxy`) cuts a client's byte stream into frames with the frame
guard (`frames.frame_requests`), then asks here:

- `parse_request`: is this PDU a request the proxy forwards? A unit the host's proxy
  does not serve is answered with exception 0x0B (gateway target device failed to
  respond), a function outside the allowed set (reads 1-4; writes 5, 6, 15, 16, 22
  only with `writes: true`) with exception 1, a count beyond the specification's limits
  (0 registers, 200 registers, a byte count that does not fit) with exception 3, a
  range past address 65535 with exception 2. Nothing refused here reaches the device,
  nor pymodbus.
- `answer`: the reply PDU built from the request and what the session returned (the
  registers or bits read; a write's echo follows from the request, which the session
  checked against the device's reply).
- `failure_code`: the exception a failed request is answered with. An exception the
  device sent is passed on as it came; no usable answer in time (a timeout, a reply
  that did not fit the request) is 0x0B, "gateway target device failed to respond";
  a host whose session is down (connecting, backing off, a reload reopening it) is
  0x0A, "gateway path unavailable": the bridge cannot reach the gateway at all, which
  a client may want to tell from one unit that does not answer.
- `touched`: the bridge's own points a proxied write may have changed (they are read
  again, so MQTT does not keep a value the write replaced).
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from bridge.errors import ExceptionReply, HostUnavailable, ModbusRequestError
from bridge.model import Device, Point, Table

ILLEGAL_FUNCTION = 0x01
ILLEGAL_ADDRESS = 0x02
ILLEGAL_VALUE = 0x03
DEVICE_FAILURE = 0x04
PATH_UNAVAILABLE = 0x0A  # gateway path unavailable: the host's session is down
TARGET_FAILED = 0x0B  # gateway target device failed to respond; also: a unit not proxied

READS: dict[int, Table] = {1: Table.COIL, 2: Table.DISCRETE, 3: Table.HOLDING, 4: Table.INPUT}
WRITES: dict[int, Table] = {5: Table.COIL, 6: Table.HOLDING, 15: Table.COIL, 16: Table.HOLDING}
WRITES[22] = Table.HOLDING  # mask write register
MAX_READ = {1: 2000, 2: 2000, 3: 125, 4: 125}  # the specification's limits per request
MAX_WRITE = {15: 1968, 16: 123}
COIL_ON, COIL_OFF = 0xFF00, 0x0000  # FC5's two values

_ADDR_COUNT = struct.Struct(">HH")
_MULTIPLE = struct.Struct(">HHB")  # address, count, byte count
_MASK = struct.Struct(">HHH")  # address, and mask, or mask


@dataclass(frozen=True)
class ProxyRequest:
    """A client's request, validated: what goes out on the session.

    `values`: FC5 and FC15 the bits written (0 or 1), FC6 and FC16 the registers,
    FC22 (and mask, or mask); empty for a read. `count` is the registers or bits
    touched (1 for FC5, 6 and 22).
    """

    function: int
    unit: int
    address: int
    count: int
    values: tuple[int, ...] = ()

    @property
    def table(self) -> Table:
        return READS.get(self.function) or WRITES[self.function]

    @property
    def writes(self) -> bool:
        return self.function in WRITES

    @property
    def end(self) -> int:
        """One past the last address touched."""
        return self.address + self.count

    def describe(self) -> str:
        verb = "write" if self.writes else "read"
        return f"{verb} {self.table.value} {self.address}+{self.count} of unit {self.unit}"


class Refusal(NamedTuple):
    """A request the proxy answers itself, with exception `code`; `reason` for the log."""

    code: int
    reason: str


def parse_request(
    unit: int, pdu: bytes, *, units: Collection[int], writes: bool
) -> ProxyRequest | Refusal:
    """The request in `pdu` (function code first) for `unit`, or why it is refused.

    `units`: the unit ids the proxy serves; `writes`: whether writes are allowed.
    Checked in this order: the unit (0x0B), the function (1), the sizes (3), the
    address range (2), as the specification orders a server's checks.
    """
    if unit not in units:
        return Refusal(TARGET_FAILED, f"unit {unit} is not proxied on this host")
    function = pdu[0]
    if function in READS:
        if len(pdu) != 5:
            return Refusal(ILLEGAL_VALUE, f"function {function}: {len(pdu)} bytes, 5 expected")
        address, count = _ADDR_COUNT.unpack_from(pdu, 1)
        limit = MAX_READ[function]
        if not 1 <= count <= limit:
            return Refusal(ILLEGAL_VALUE, f"function {function}: count {count} (1..{limit})")
        return _within(ProxyRequest(function, unit, address, count))
    if function not in WRITES:
        return Refusal(ILLEGAL_FUNCTION, f"function {function} is not proxied")
    if not writes:
        return Refusal(ILLEGAL_FUNCTION, f"function {function}: writes are not allowed")
    if function in (5, 6):
        if len(pdu) != 5:
            return Refusal(ILLEGAL_VALUE, f"function {function}: {len(pdu)} bytes, 5 expected")
        address, value = _ADDR_COUNT.unpack_from(pdu, 1)
        if function == 6:
            return ProxyRequest(6, unit, address, 1, (value,))
        if value not in (COIL_ON, COIL_OFF):
            return Refusal(ILLEGAL_VALUE, f"function 5: value {value:#06x} (0xff00 or 0)")
        return ProxyRequest(5, unit, address, 1, (1 if value == COIL_ON else 0,))
    if function == 22:
        if len(pdu) != 7:
            return Refusal(ILLEGAL_VALUE, f"function 22: {len(pdu)} bytes, 7 expected")
        address, and_mask, or_mask = _MASK.unpack_from(pdu, 1)
        return ProxyRequest(22, unit, address, 1, (and_mask, or_mask))
    # 15 and 16: address, count, byte count, then the values
    if len(pdu) < 6:
        return Refusal(ILLEGAL_VALUE, f"function {function}: {len(pdu)} bytes, 6 or more expected")
    address, count, byte_count = _MULTIPLE.unpack_from(pdu, 1)
    limit = MAX_WRITE[function]
    if not 1 <= count <= limit:
        return Refusal(ILLEGAL_VALUE, f"function {function}: count {count} (1..{limit})")
    wanted = (count + 7) // 8 if function == 15 else 2 * count
    if byte_count != wanted or len(pdu) != 6 + byte_count:
        return Refusal(
            ILLEGAL_VALUE,
            f"function {function}: byte count {byte_count} and {len(pdu) - 6} data bytes "
            f"for {count} values ({wanted} expected)",
        )
    data = pdu[6:]
    if function == 15:
        bits = tuple((data[i // 8] >> (i % 8)) & 1 for i in range(count))
        return _within(ProxyRequest(15, unit, address, count, bits))
    registers = struct.unpack(f">{count}H", data)
    return _within(ProxyRequest(16, unit, address, count, registers))


def _within(request: ProxyRequest) -> ProxyRequest | Refusal:
    if request.end > 0x10000:
        return Refusal(
            ILLEGAL_ADDRESS,
            f"function {request.function}: {request.address}+{request.count} ends past 65535",
        )
    return request


def answer(request: ProxyRequest, result: Sequence[int] | Sequence[bool] | None) -> bytes:
    """The reply PDU to `request`, given what the session returned: the registers or
    bits read (exactly `count`), None for a write (its echo is the request's own)."""
    function = request.function
    if function in (1, 2):
        assert result is not None
        data = bytearray((request.count + 7) // 8)
        for i, bit in enumerate(result):
            if bit:
                data[i // 8] |= 1 << (i % 8)
        return bytes((function, len(data))) + data
    if function in (3, 4):
        assert result is not None
        return bytes((function, 2 * request.count)) + struct.pack(f">{request.count}H", *result)
    if function == 5:
        value = COIL_ON if request.values[0] else COIL_OFF
        return bytes((5,)) + _ADDR_COUNT.pack(request.address, value)
    if function == 6:
        return bytes((6,)) + _ADDR_COUNT.pack(request.address, request.values[0])
    if function in (15, 16):
        return bytes((function,)) + _ADDR_COUNT.pack(request.address, request.count)
    return bytes((22,)) + _MASK.pack(request.address, *request.values)


def exception_pdu(function: int, code: int) -> bytes:
    """An exception reply to `function` (a function with its top bit set stays so)."""
    return bytes(((function | 0x80) & 0xFF, code))


def failure_code(error: ModbusRequestError) -> int:
    """The exception code a client gets for a request that failed on the session."""
    if isinstance(error, ExceptionReply):
        return error.code if 1 <= error.code <= 0xFF else DEVICE_FAILURE
    if isinstance(error, HostUnavailable):
        return PATH_UNAVAILABLE
    return TARGET_FAILED


def touched(
    devices: Iterable[Device], request: ProxyRequest
) -> list[tuple[Device, tuple[Point, ...]]]:
    """The points of `devices` (those of the request's host) that a written `request`
    may have changed: those on its unit whose registers or bits overlap the range
    written, where they are read or, for a writable point, where it is written
    (`write_table`, `write_address`)."""
    table, start, end = request.table, request.address, request.end
    out = []
    for device in devices:
        if device.unit != request.unit:
            continue
        points = tuple(
            p
            for p in device.points
            if _overlaps((p.table, p.address), p.count, (table, start, end))
            or (p.writable and _overlaps(p.written_at, p.count, (table, start, end)))
        )
        if points:
            out.append((device, points))
    return out


def _overlaps(at: tuple[Table, int], count: int, span: tuple[Table, int, int]) -> bool:
    """Whether `count` addresses from `at` overlap `span` (table, start, end)."""
    (table, address), (other, start, end) = at, span
    return table is other and address < end and address + count > start
