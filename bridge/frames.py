"""The frame guard: which received bytes are a reply to believe. Pure: bytes in, verdicts out.

Every byte a Modbus link receives comes here before anything decodes it. The guard cuts
the stream into frames and says, for each, what it is:

- `Answer`: a frame that answers the request on the wire; its PDU may be decoded;
- `Stray`: a frame no request waits for (a late reply to a request that timed out,
  another unit's reply on an RTU line, transaction id 0): dropped and counted;
- `Refused`: a frame that arrived for the request on the wire but cannot be its reply
  (a byte count that does not fit the frame, an exception reply without its code, a
  bad CRC, a function the bridge never sends): the request fails, nothing is believed;
- `OutOfStep`: a Modbus TCP header that cannot be trusted (protocol id not 0, a length
  out of range): no later frame boundary can be found, the session must be reopened.

The same header rules cut a Modbus TCP client's requests (`frame_requests`: the
bridge's proxy, where a header out of step closes that client's connection).

Modbus TCP (MBAP) frames carry their length and a transaction id, so a bad frame fails
only its request and the stream stays in step. RTU frames (serial lines, transparent
gateways) carry neither: the size comes from the function code and byte count, a CRC
protects each frame, and anything undecodable means the line must settle (the
session drains it) before the next request.

`reply_mismatch` is the second check, on the decoded reply: does it answer the request
that was sent (unit, function, the address, count or value a write echoes)?
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from bridge.codec import crc16

MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit
MBAP_MAX_LENGTH = 254  # unit id + a PDU of at most 253 bytes


class Answer(NamedTuple):
    """A frame that fits the request on the wire: `pdu` (function code first) is its reply."""

    pdu: bytes
    unit: int
    tid: int


class Stray(NamedTuple):
    """A frame no request waits for. `tid`: its transaction id (Modbus TCP), `expected`:
    the one on the wire (None: no request sent on this session yet); `zero`: it carried
    transaction id 0, which some devices always send (`allow_zero_tid`)."""

    tid: int | None = None
    expected: int | None = None
    zero: bool = False


class Refused(NamedTuple):
    """A frame that fails the request on the wire with `reason`; `crc`: its CRC was wrong."""

    reason: str
    crc: bool = False


class OutOfStep(NamedTuple):
    """The stream cannot be framed any more: `reason` fails the request, and the session
    is closed and reopened (through the backoff: such a session counts as failed)."""

    reason: str


Verdict = Answer | Stray | Refused | OutOfStep


def mbap_request(data: bytes) -> tuple[int, int] | None:
    """(transaction id, unit) of an outgoing Modbus TCP request frame."""
    if len(data) < MBAP.size:
        return None
    tid, _pid, _length, unit = MBAP.unpack_from(data)
    return tid, unit


def rtu_frame_size(data: bytes) -> int | None:
    """Length of the RTU reply frame starting at data[0] (at least 3 bytes), from its
    function code and byte count; None for a function the bridge never sends."""
    function = data[1]
    if function & 0x80:
        return 5  # unit, function | 0x80, exception code, CRC
    if function in (1, 2, 3, 4):
        return 5 + data[2]
    if function in (5, 6, 15, 16):
        return 8
    if function == 22:
        return 10
    return None


def mbap_problem(frame: bytes, unit: int, sent_unit: int) -> str | None:
    """Why a Modbus TCP frame (header included) with the right transaction id cannot be
    the reply to a request for `sent_unit` (0: any unit), or None."""
    function = frame[7]
    if sent_unit and unit != sent_unit:
        return f"reply from unit {unit} to a request for unit {sent_unit}"
    if function & 0x80:
        if len(frame) != 9:
            return f"exception reply of {len(frame) - 7} bytes (a code byte expected)"
    elif function in (1, 2, 3, 4):
        if len(frame) < 9 or frame[8] != len(frame) - 9:
            counted = frame[8] if len(frame) > 8 else "no"
            return f"byte count {counted} for {len(frame) - 9} data bytes"
    elif function in (5, 6, 15, 16) and len(frame) != 12:
        return f"function {function} reply of {len(frame) - 7} bytes (5 expected)"
    elif function == 22 and len(frame) != 14:
        return f"function 22 reply of {len(frame) - 7} bytes (7 expected)"
    return None


def _next_mbap(data: bytes, at: int) -> tuple[int, int, int] | OutOfStep | None:
    """The Modbus TCP frame starting at `at`: (transaction id, unit, end), None while it
    is not all there yet, `OutOfStep` when its header cannot be trusted. The one reader
    of an MBAP header, for replies (`frame_mbap`) and requests (`frame_requests`)."""
    if len(data) - at <= MBAP.size:
        return None
    tid, pid, length, unit = MBAP.unpack_from(data, at)
    if pid != 0 or not 2 <= length <= MBAP_MAX_LENGTH:
        # No frame boundary to trust: the stream cannot be resynchronised.
        return OutOfStep(f"invalid Modbus TCP header (protocol id {pid}, length {length})")
    end = at + 6 + length
    if len(data) < end:
        return None  # wait for the rest of the frame
    return tid, unit, end


def frame_mbap(
    data: bytes, sent: tuple[int, int] | None, *, allow_zero_tid: bool = False
) -> tuple[int, list[Verdict]]:
    """Modbus TCP: the frames at the start of `data` and what each is; returns the bytes
    used (a frame not complete yet is left for the next call) and the verdicts in order.

    `sent`: (transaction id, unit) of the last request sent on this session (None: none
    yet). A reply with transaction id 0 answers it only with `allow_zero_tid`; its
    `Answer` then carries the request's transaction id.
    """
    verdicts: list[Verdict] = []
    used = 0
    while True:
        found = _next_mbap(data, used)
        if found is None:
            break
        if isinstance(found, OutOfStep):
            verdicts.append(found)
            return len(data), verdicts
        tid, unit, end = found
        frame = data[used:end]
        used = end
        if sent is None:
            verdicts.append(Stray(tid))  # nothing was asked on this session yet
            continue
        if tid != sent[0] and not (tid == 0 and allow_zero_tid):
            # A late reply to a request that timed out, or a reply that names no
            # request (transaction id 0 without allow_zero_tid): never believed.
            verdicts.append(Stray(tid, sent[0], zero=tid == 0))
            continue
        problem = mbap_problem(frame, unit, sent[1])
        if problem is not None:
            verdicts.append(Refused(problem))
            continue
        verdicts.append(Answer(frame[7:], unit, sent[0]))
    return used, verdicts


class Request(NamedTuple):
    """A request frame from a Modbus TCP client (the bridge as a server: its proxy):
    `pdu` (function code first) is the request, to be answered with `tid` and `unit`."""

    tid: int
    unit: int
    pdu: bytes


def frame_requests(data: bytes) -> tuple[int, list[Request | OutOfStep]]:
    """Modbus TCP requests a client sent: the frames at the start of `data`, each a
    `Request`, or an `OutOfStep` that ends them (a header that cannot be trusted: a
    protocol id other than 0, a length beyond 254, so an ADU beyond 260 bytes: the
    connection must be closed). Returns the bytes used; a frame not complete yet is
    left for the next call. The same header rules as `frame_mbap`'s replies."""
    frames: list[Request | OutOfStep] = []
    used = 0
    while True:
        found = _next_mbap(data, used)
        if found is None:
            break
        if isinstance(found, OutOfStep):
            frames.append(found)
            return len(data), frames
        tid, unit, end = found
        frames.append(Request(tid, unit, data[used + MBAP.size : end]))
        used = end
    return used, frames


def mbap_frame(tid: int, unit: int, pdu: bytes) -> bytes:
    """A Modbus TCP frame: the header for `tid` and `unit`, then `pdu`."""
    return MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu


def frame_rtu(data: bytes, unit: int) -> tuple[int, list[Verdict]]:
    """RTU: the frames at the start of `data` and what each is; returns the bytes used
    (a frame not complete yet is left for the next call) and the verdicts in order.

    `unit`: the unit of the request on the wire (0: any). A frame from another unit is
    stray (a late reply); a bad CRC or an unknown function code refuses the request and
    uses everything: nothing after it can be trusted, the line is drained.
    """
    verdicts: list[Verdict] = []
    used = 0
    while used < len(data):
        rest = data[used:]
        if len(rest) < 3:
            break  # a frame has begun: on a real line bytes trickle in
        size = rtu_frame_size(rest)
        if size is None:  # not a reply to anything the bridge sends: line noise
            verdicts.append(Refused(f"unexpected function code {rest[1]}"))
            return len(data), verdicts
        if len(rest) < size:
            break  # the rest is still on its way (the request's timeout bounds it)
        if crc16(rest[: size - 2]) != int.from_bytes(rest[size - 2 : size], "little"):
            verdicts.append(Refused(f"CRC error in a {size}-byte reply", crc=True))
            return len(data), verdicts
        # One frame at a time: a late reply and the awaited one can come in one read.
        if rest[0] == unit or not unit:
            verdicts.append(Answer(rest[1 : size - 2], rest[0], 0))
        else:
            verdicts.append(Stray())  # another unit's late reply: not ours
        used += size
    return used, verdicts


class Reply(Protocol):
    """The fields of a decoded reply `reply_mismatch` reads (a pymodbus PDU has them)."""

    @property
    def function_code(self) -> int: ...
    @property
    def dev_id(self) -> int: ...
    @property
    def address(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def registers(self) -> Sequence[int]: ...
    @property
    def bits(self) -> Sequence[bool]: ...
    def isError(self) -> bool: ...  # pymodbus's name


Echo = tuple[int, int | list[int] | list[bool] | None]


def reply_mismatch(
    reply: Reply, unit: int, what: str, function: int, echo: Echo | None = None
) -> str | None:
    """Why a decoded reply does not answer the request `what` (function `function` to
    `unit`, 0: any), or None. An exception reply from the right unit to the right
    function answers it (the caller raises it as such).

    `echo` is what a write reply repeats: (address, count) for FC 15/16,
    (address, [value]) for FC 5/6, (address, None) for FC 22.
    """
    got_fc = int(reply.function_code) & 0x7F
    if (unit and reply.dev_id != unit) or got_fc != function:
        return f"{what}: reply from unit {reply.dev_id}, function {got_fc}"
    if echo is None or reply.isError():
        return None
    address, detail = echo
    if reply.address != address:
        return f"{what}: the reply echoes address {reply.address}"
    if isinstance(detail, int) and reply.count != detail:
        return f"{what}: the reply echoes count {reply.count}"
    if isinstance(detail, list):
        got = list(reply.bits[:1]) if function == 5 else list(reply.registers)
        if got != detail:
            return f"{what}: the reply echoes value {got}"
    return None
