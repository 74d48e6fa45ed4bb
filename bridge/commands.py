"""MQTT commands: parse and validate a command into a write plan; build results.

Pure: no I/O, no asyncio, no pymodbus. `bridge.command_handler` carries the plans out.

Commands
--------
``<base>/<device>/set`` takes a JSON object ``{"<point>": value, ...}``, applied
in order; an optional ``"transaction"`` key (any JSON value) is echoed in the
result and is not a point. ``<base>/<device>/<point>/set`` takes a plain payload.
``<base>/<device>/get`` takes nothing (all points) or a JSON list of point names.

Values are engineering values, mapped through the inverse of scale/offset and
rounded by `bridge.codec.encode_point`, which also checks min/max and the
type's range. Accepted per point:

=============  ==========================================  ===========================
point          JSON value                                  plain payload
=============  ==========================================  ===========================
enum           one of its labels (a string)                the label
bool           true/false, 1/0, "ON"/"OFF", "true"/"1"...  true/false/1/0/on/off
               (coils, ``bit`` points, ``bool`` type)      (any case)
string         a string (latin-1, fits ``length``)         the text as is
numeric        a number (not a bool, not a string)         a number literal
=============  ==========================================  ===========================

Everything is validated before a plan exists, so a bad value anywhere in a
command means nothing of it is written. Every refusal is a `CommandError` whose
`reason` can be shown to the user as is; nothing else escapes `parse_set` and
`parse_get` (a property the unit tests fuzz).
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from bridge.codec import CodecError, Value, encode_point, encode_registers
from bridge.errors import CommandError, Transaction
from bridge.model import DataType, Device, Order, Point, Table

__all__ = [
    "MAX_PAYLOAD",
    "TRANSACTION_KEY",
    "CommandError",
    "RateLimiter",
    "Transaction",
    "WriteCommand",
    "WriteKind",
    "WriteOp",
    "parse_get",
    "parse_set",
    "plain_value",
    "plan_write",
    "transaction_of",
]

MAX_PAYLOAD: Final = 64 * 1024  # bytes
MAX_DEPTH: Final = 32  # nesting levels of a JSON command (the transaction may nest a little)
TRANSACTION_KEY: Final = "transaction"

# A command's words for a bool (any case). Not the YAML configuration's: there `1` is
# an integer and `yes`/`no` are YAML 1.1 booleans (`config_nodes.TRUE_WORDS`).
_TRUE: Final = frozenset({"true", "1", "on"})
_FALSE: Final = frozenset({"false", "0", "off"})
_INT_RE: Final = re.compile(r"[+-]?[0-9]+")
_HEX_RE: Final = re.compile(r"[+-]?0[xX][0-9a-fA-F]+")
_FLOAT_RE: Final = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class WriteKind(enum.Enum):
    """How one point is written."""

    COIL = "coil"  # FC5, or FC15 with write_multiple
    REGISTERS = "registers"  # FC6 for one register, FC16 for more or with write_multiple
    BIT = "bit"  # read-modify-write of one holding register, as one queued job
    MASK = "mask"  # FC22 mask write


@dataclass(frozen=True)
class WriteOp:
    """One point's write, ready for the host session.

    `registers` are wire registers (REGISTERS); `state` is the coil or bit value
    (COIL, BIT, MASK); `bit` is the bit number *in the wire register* (a point's
    `bit` counts after `byte_order`, so with little byte order it is flipped to
    the other byte here).
    """

    point: Point
    value: Value  # the engineering value asked for (for logs)
    kind: WriteKind
    address: int
    registers: tuple[int, ...] = ()
    state: bool = False
    bit: int = 0
    multiple: bool = False

    @property
    def function(self) -> int:
        """The Modbus function code that writes (BIT: the write after its FC3 read)."""
        if self.kind is WriteKind.COIL:
            return 15 if self.multiple else 5
        if self.kind is WriteKind.MASK:
            return 22
        if self.kind is WriteKind.BIT:
            return 16 if self.multiple else 6
        return 16 if self.multiple or len(self.registers) > 1 else 6

    def describe(self) -> str:
        """E.g. ``FC16 holding 100..101 [0x41AC, 0x0000]``, for logs."""
        fc = f"FC{self.function}"
        if self.kind is WriteKind.COIL:
            return f"{fc} coil {self.address} {'ON' if self.state else 'OFF'}"
        if self.kind is WriteKind.MASK:
            return f"{fc} holding {self.address} bit {self.bit} {'set' if self.state else 'clear'}"
        if self.kind is WriteKind.BIT:
            action = "set" if self.state else "clear"
            return f"FC3+{fc} holding {self.address} bit {self.bit} {action}"
        regs = ", ".join(f"0x{r:04X}" for r in self.registers)
        last = self.address + len(self.registers) - 1
        span = f"{self.address}" if last == self.address else f"{self.address}..{last}"
        return f"{fc} holding {span} [{regs}]"


@dataclass(frozen=True)
class WriteCommand:
    """A validated `set` command: its writes in order, and its transaction."""

    device: Device
    ops: tuple[WriteOp, ...]
    transaction: Transaction | None = None

    @property
    def points(self) -> tuple[Point, ...]:
        return tuple(op.point for op in self.ops)


# --------------------------------------------------------------------------- parsing


def parse_set(
    device: Device | str,
    point: str | None,
    payload: bytes,
    *,
    read_only: bool,
    scales: Mapping[str, Value] | None = None,
) -> WriteCommand:
    """Validate a `set` command into a write plan, or raise `CommandError`.

    `device` is the configured device, or the name from the topic when no device
    has it (the command is refused, echoing its transaction when readable).
    `point` is the point of a ``<device>/<point>/set`` topic (plain payload), or
    None for ``<device>/set`` (a JSON object). `scales`: the newest values read of
    the device's points, for points with a `scale_factor` (`plan_write`).
    """
    text = _text(payload)
    transaction: Transaction | None = None
    items: list[tuple[str, Any]]
    if point is None:
        doc = _json(text)
        if not isinstance(doc, dict):
            raise CommandError(
                f'expected a JSON object such as {{"point": value}}, got {_json_kind(doc)}'
            )
        if TRANSACTION_KEY in doc:
            transaction = Transaction(doc.pop(TRANSACTION_KEY))
        items = list(doc.items())
    else:
        items = [(point, text)]

    if isinstance(device, str):
        raise CommandError(f"unknown device {_show(device)}", transaction=transaction)
    return plan_write(
        device,
        items,
        read_only=read_only,
        transaction=transaction,
        plain=point is not None,
        scales=scales,
    )


def plan_write(
    device: Device,
    items: Sequence[tuple[str, object]],
    *,
    read_only: bool,
    transaction: Transaction | None = None,
    plain: bool = False,
    scales: Mapping[str, Value] | None = None,
) -> WriteCommand:
    """Validate (point name, value) pairs into a write plan, or raise `CommandError`:
    the one set of rules for every way a write arrives (a `set` command, a Sparkplug
    DCMD). Values are JSON-like (bool, number, text), or text when `plain`.

    A point with a `scale_factor` is divided by 10^sf, sf the newest value of its
    scale factor point in `scales`; refused while none was read."""

    def refuse(reason: str, name: str | None = None) -> CommandError:
        return CommandError(reason, transaction=transaction, point=name)

    if read_only:
        raise refuse("the bridge is read-only (read_only: true): writes are disabled")
    if not items:
        raise refuse("no point to write: the object names no point")

    ops: list[WriteOp] = []
    for name, raw in items:
        p = device.point(name)
        if p is None:
            raise refuse(f"unknown point {_show(name)} of device {device.name}", name)
        if not p.writable:
            raise refuse(f"point {name} is read-only (not writable)", name)
        try:
            value = plain_value(p, str(raw)) if plain else _json_value(p, raw)
            sf = None if p.scale_factor is None or scales is None else scales.get(p.scale_factor)
            encoded = encode_point(p, value, sf)
        except CodecError as exc:
            raise refuse(f"{name}: {exc.reason}", name) from None
        ops.append(_plan_op(device, p, value, encoded))
    return WriteCommand(device, tuple(ops), transaction)


def parse_get(device: Device | str, payload: bytes) -> tuple[Point, ...]:
    """The points a `get` asks for: all for an empty payload, else a JSON list of names."""
    text = _text(payload)
    if isinstance(device, str):
        raise CommandError(f"unknown device {_show(device)}")
    if not text.strip():
        return device.points
    doc = _json(text)
    if not isinstance(doc, list):
        raise CommandError(
            f'expected nothing (all points) or a JSON list such as ["point"], got {_json_kind(doc)}'
        )
    if not doc:
        raise CommandError("the list names no point (send an empty payload for all points)")
    points: dict[str, Point] = {}
    for name in doc:
        if not isinstance(name, str):
            raise CommandError(f"expected point names (strings), got {_show(name)}")
        p = device.point(name)
        if p is None:
            raise CommandError(f"unknown point {_show(name)} of device {device.name}", point=name)
        points.setdefault(name, p)
    return tuple(points.values())


def _text(payload: bytes) -> str:
    if len(payload) > MAX_PAYLOAD:
        raise CommandError(
            f"payload of {len(payload)} bytes is larger than the {MAX_PAYLOAD} allowed"
        )
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(f"payload is not valid UTF-8 (byte {exc.start})") from None


def _no_constant(name: str) -> object:
    raise CommandError(f"{name} is not a number JSON allows (NaN and infinities are refused)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise CommandError(f"{text[:40]} is too large: not a finite number")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise CommandError(f"key {_show(key)} is given more than once")
        out[key] = value
    return out


def _json(text: str) -> Any:
    try:
        doc = json.loads(
            text,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise CommandError(f"not valid JSON: {exc.msg} ({where})") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise CommandError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise CommandError(f"JSON nested more than {MAX_DEPTH} levels deep") from None
    if _depth(doc) > MAX_DEPTH:
        # Refused before anything is written: the answer, which echoes the transaction,
        # could not be serialised (Python's JSON encoder recurses).
        raise CommandError(f"JSON nested more than {MAX_DEPTH} levels deep")
    return doc


def _depth(doc: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            level += 1
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                break
            stack.extend((v, level) for v in value)
    return deepest


def transaction_of(payload: bytes) -> Transaction | None:
    """The `transaction` of a JSON command, when it can be read (for answers to commands
    that are refused before they are parsed)."""
    try:
        doc = _json(_text(payload))
    except CommandError:
        return None
    if isinstance(doc, dict) and TRANSACTION_KEY in doc:
        return Transaction(doc[TRANSACTION_KEY])
    return None


def _json_kind(doc: object) -> str:
    if doc is None:
        return "null"
    if isinstance(doc, bool):
        return "a boolean"
    if isinstance(doc, int | float):
        return "a number"
    if isinstance(doc, str):
        return "a string"
    if isinstance(doc, list):
        return "a list"
    return "an object"


def _show(value: object, limit: int = 40) -> str:
    """A value as it looks in JSON (true, "text"), cut to `limit` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- values


def _is_enum(p: Point) -> bool:
    return bool(p.values) and not (p.type is DataType.STRING or p.type.is_float)


def _is_bool(p: Point) -> bool:
    return p.table.is_bits or p.bit is not None or p.type is DataType.BOOL


def _labels(p: Point) -> str:
    return ", ".join(json.dumps(label, ensure_ascii=False) for _, label in p.values)


def _bool_word(text: str) -> bool | None:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    return None


def _bool_expected(value: object) -> CodecError:
    return CodecError(f"expected true/false, 1/0 or ON/OFF, got {_show(value)}")


def _json_value(p: Point, value: object) -> Value:
    """A JSON value for point `p`, checked for kind; ranges are the codec's."""
    if _is_enum(p):
        if not isinstance(value, str):
            raise CodecError(f"expected one of {_labels(p)}, got {_show(value)}")
        return _label(p, value)
    if _is_bool(p):
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            state = _bool_word(value)
            if state is not None:
                return state
        raise _bool_expected(value)
    if p.type is DataType.STRING:
        if not isinstance(value, str):
            raise CodecError(f"expected text, got {_show(value)}")
        return _string(p, value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CodecError(f"expected a number, got {_show(value)}")
    return value


def plain_value(p: Point, text: str) -> Value:
    """A plain value (already UTF-8 text) for point `p`: a payload on a point's `set`
    topic, and the value of `modbus-bridge write`, one grammar for both. Numbers are
    decimal (`21.5`, `-3`, `1e3`) or a hexadecimal integer (`0x1F`)."""
    if _is_enum(p):
        label = text.strip()
        if any(label == known for _, known in p.values):
            return label
        if _FLOAT_RE.fullmatch(label):
            raise CodecError(f"expected one of {_labels(p)} (a label, not a number), got {label}")
        return _label(p, label)
    if _is_bool(p):
        state = _bool_word(text)
        if state is None:
            raise _bool_expected(text)
        return state
    if p.type is DataType.STRING:
        return _string(p, text)
    return _parse_number(text)


def _label(p: Point, label: str) -> str:
    if not any(label == known for _, known in p.values):
        raise CodecError(f"{_show(label)} is not one of {_labels(p)}")
    return label


def _string(p: Point, text: str) -> str:
    try:
        size = len(text.encode("latin-1"))
    except UnicodeEncodeError:
        raise CodecError(f"{_show(text)} has characters outside latin-1") from None
    if size > 2 * p.length:
        raise CodecError(
            f"text of {size} characters is longer than the {2 * p.length} that fit"
            f" in {p.length} register(s)"
        )
    return text


def _parse_number(text: str) -> int | float:
    literal = text.strip()
    if not literal:
        raise CodecError("expected a number, got an empty payload")
    if _INT_RE.fullmatch(literal) or _HEX_RE.fullmatch(literal):
        try:
            return int(literal, 0 if _HEX_RE.fullmatch(literal) else 10)
        except ValueError:  # more digits than Python converts
            raise CodecError(f"{_show(literal)} has too many digits") from None
    if not _FLOAT_RE.fullmatch(literal):
        raise CodecError(f"expected a number, got {_show(literal)}")
    value = float(literal)
    if not math.isfinite(value):
        raise CodecError(f"{_show(literal)} is too large: not a finite number")
    return value


# --------------------------------------------------------------------------- planning


def _plan_op(device: Device, p: Point, value: Value, encoded: list[int] | bool) -> WriteOp:
    table, address = p.written_at
    multiple = device.write_multiple
    if table is Table.COIL:
        state = encoded if isinstance(encoded, bool) else any(encoded)
        return WriteOp(p, value, WriteKind.COIL, address, state=state, multiple=multiple)
    if isinstance(encoded, bool):
        if p.bit is not None:
            wire_bit = p.bit ^ 8 if p.byte_order is Order.LITTLE else p.bit
            kind = WriteKind.MASK if p.mask_write else WriteKind.BIT
            return WriteOp(p, value, kind, address, state=encoded, bit=wire_bit, multiple=multiple)
        # A coil/discrete point commanded through a holding register: 1 or 0.
        encoded = encode_registers(DataType.BOOL, encoded, byte_order=p.byte_order)
    return WriteOp(
        p, value, WriteKind.REGISTERS, address, registers=tuple(encoded), multiple=multiple
    )


# --------------------------------------------------------------------------- rate limit


class RateLimiter:
    """Token bucket: `rate` commands per second, bursts of up to `burst` (default max(1, rate)).

    Pure: the caller passes the (monotonic) time. The bucket starts full.
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number, got {rate!r}")
        self.rate = rate
        self.burst = max(1.0, rate) if burst is None else burst
        if not self.burst >= 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        self._tokens = self.burst
        self._last: float | None = None

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now

    def allow(self, now: float) -> bool:
        """Take one token if there is one."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_time(self, now: float) -> float:
        """Seconds until the next command would be allowed."""
        self._refill(now)
        return max(0.0, (1.0 - self._tokens) / self.rate)
