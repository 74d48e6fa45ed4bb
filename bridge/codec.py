"""Register codec: Modbus registers <-> Python values, points <-> published values.

Pure: no I/O and no pymodbus, only `struct`. One table (`_SPECS`) drives both
directions, decoding for polls and encoding for writes.

Register layout
---------------
Registers are 16-bit ints as they come off the wire (Modbus is big-endian
inside a register). `byte_order=LITTLE` swaps the two bytes inside every
register; `word_order=LITTLE` reverses the register order of a multi-register
value (32/64 bit). Example, float32 1.0 (0x3F800000)::

    byte big,    word big     0x3F80 0x0000
    byte big,    word little  0x0000 0x3F80
    byte little, word big     0x803F 0x0000
    byte little, word little  0x0000 0x803F

Strings
-------
Two characters per register, the high byte first (low byte first with
`byte_order=LITTLE`); `word_order` does not apply. Bytes are decoded as
**latin-1**: every byte maps to exactly one character, so decoding never fails
and `encode(decode(x))` is lossless. Trailing NULs and spaces are stripped on
decode. On encode, text shorter than the field is padded with NULs; text that
does not fit, or has characters outside latin-1, raises `CodecError`.

Float32 values are returned as the shortest decimal that maps back to the same
float32 (0.1, not 0.10000000149011612), so they publish cleanly and still
encode to the same registers.

Points
------
`decode_point` (or a decoder from `compile_decoder`, which polls should use)
applies, in order:

1. raw decode of the point's slice;
2. `bit` extraction, giving a bool. The bit numbers the bits of the decoded
   integer (0 = least significant), i.e. after `byte_order` is applied;
3. `values` enum map: raw -> label, for integer and bool values (ignored on
   float and string types). A raw value missing from the map is published as
   the raw value itself (int, or bool for bit points) with no scaling. Enum
   points never apply scale/offset/precision;
4. `scale`/`offset`: eng = raw * scale + offset. Integer types stay `int` when
   scale is 1 and offset is 0; otherwise the result is a float. Pure
   floating-point noise is snapped away (2305 * 0.1 gives 230.5, not
   230.50000000000003): a result within a few ulps of its 15-significant-digit
   decimal becomes that decimal;
5. `precision`: `round(value, precision)` (-0.0 published as 0.0).

A point with a `scale_factor` (a scale taken from another register, SunSpec's
``*_SF``) is decoded by a `ScaledDecoder`, given the scale factor register's
value `sf` (read by `scale_factor_reader`: the raw int16, whatever the scale
factor point publishes): the point decodes as if its `scale` were
``scale * 10^sf`` (`scaled_by`), so step 4 gives ``raw * 10^sf * scale +
offset``. An unknown sf, or one outside `SCALE_FACTOR_RANGE` (SunSpec's
"not implemented" 0x8000 among them), gives None. Writes take the sf too.

Coil/discrete points and `bool` points in register tables without `bit` give a
bool (register != 0). NaN and infinities decode to None: JSON cannot carry them.
A point's `missing` raw value (SunSpec's "not implemented") decodes to None before
any of the steps above; for a string, `missing` is its first byte.

`encode_point` is the inverse for writes; see its docstring.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Final, TypeVar

from bridge.model import DataType, Order, Point

Value = bool | int | float | str | None
"""A published point value."""

Data = Sequence[int] | Sequence[bool]
"""A point's slice of a read: registers (ints) or bits (bools)."""

Decoder = Callable[[Data], Value]
"""A compiled per-point decoder; see `compile_decoder`."""


class CodecError(ValueError):
    """A value that cannot be decoded or encoded. `point` is None below point level."""

    def __init__(self, reason: str, point: str | None = None) -> None:
        self.reason = reason
        self.point = point
        super().__init__(f"{point}: {reason}" if point else reason)


@dataclass(frozen=True, slots=True)
class _Spec:
    """How a type packs; its width in registers is `DataType.width` (model.py), the one
    table of widths (`tests/unit/test_codec.py` checks the formats against it)."""

    code: str  # struct format of the whole value, big-endian
    low: int | float
    high: int | float


_F32_MAX: Final = struct.unpack(">f", b"\x7f\x7f\xff\xff")[0]

_SPECS: Final[dict[DataType, _Spec]] = {
    DataType.BOOL: _Spec(">H", 0, 1),
    DataType.INT16: _Spec(">h", -(2**15), 2**15 - 1),
    DataType.UINT16: _Spec(">H", 0, 2**16 - 1),
    DataType.INT32: _Spec(">i", -(2**31), 2**31 - 1),
    DataType.UINT32: _Spec(">I", 0, 2**32 - 1),
    DataType.INT64: _Spec(">q", -(2**63), 2**63 - 1),
    DataType.UINT64: _Spec(">Q", 0, 2**64 - 1),
    DataType.FLOAT32: _Spec(">f", -_F32_MAX, _F32_MAX),
    DataType.FLOAT64: _Spec(">d", -math.inf, math.inf),
}


def int_range(dtype: DataType) -> tuple[int, int] | None:
    """Raw value range of an integer type (bool: 0..1); None for floats and strings."""
    spec = _SPECS.get(dtype)
    if spec is None or dtype.is_float:
        return None
    return int(spec.low), int(spec.high)


_F32: Final = struct.Struct(">f")
_F32_MIN_NORMAL: Final = 2.0**-126
_F32_DIGITS: Final = (6, 7, 8)
_ENCODING: Final = "latin-1"


# --------------------------------------------------------------------------- raw values

T = TypeVar("T")
RawDecoder = Callable[[Sequence[int]], T]


def _registers_struct(count: int, byte_order: Order) -> struct.Struct:
    """Packs `count` registers to bytes with each register's bytes in the given order."""
    return struct.Struct(("<" if byte_order is Order.LITTLE else ">") + f"{count}H")


def _to_bytes(count: int, byte_order: Order, word_order: Order) -> RawDecoder[bytes]:
    pack = _registers_struct(count, byte_order).pack
    if word_order is Order.LITTLE and count > 1:
        return lambda data: pack(*reversed(data))
    return lambda data: pack(*data)


def _shortest_f32(x: float) -> float:
    """The shortest decimal that packs to the same float32 as `x`."""
    if not math.isfinite(x):
        return x
    packed = _F32.pack(x)
    # A normal float32 always survives 6 significant digits, and %g drops the
    # trailing zeros, so start there; subnormals have fewer significant bits.
    for digits in _F32_DIGITS if abs(x) >= _F32_MIN_NORMAL else range(1, 9):
        y = float(f"{x:.{digits}g}")
        try:
            if _F32.pack(y) == packed:
                return y
        except OverflowError:  # pragma: no cover - a rounded value past float32 max
            pass
    return float(f"{x:.9g}")


def _denoise(x: float) -> float:
    """Snap `x` to its 15-significant-digit decimal when they differ only by float noise."""
    y = float(f"{x:.15g}")
    if abs(y - x) <= 4 * math.ulp(x):
        return y
    return x


# The raw decoders below raise struct.error on a wrong count or a register outside
# 0..65535; callers turn that into CodecError.


@lru_cache(maxsize=128)
def _int_raw(dtype: DataType, byte_order: Order, word_order: Order) -> RawDecoder[int]:
    spec = _SPECS[dtype]
    to_bytes = _to_bytes(dtype.width, byte_order, word_order)
    unpack = struct.Struct(spec.code).unpack

    def decode_int(data: Sequence[int]) -> int:
        value: int = unpack(to_bytes(data))[0]
        return value

    return decode_int


@lru_cache(maxsize=32)
def _float_raw(dtype: DataType, byte_order: Order, word_order: Order) -> RawDecoder[float]:
    spec = _SPECS[dtype]
    to_bytes = _to_bytes(dtype.width, byte_order, word_order)
    unpack = struct.Struct(spec.code).unpack
    if dtype is DataType.FLOAT32:

        def decode_float32(data: Sequence[int]) -> float:
            return _shortest_f32(unpack(to_bytes(data))[0])

        return decode_float32

    def decode_float64(data: Sequence[int]) -> float:
        value: float = unpack(to_bytes(data))[0]
        return value

    return decode_float64


@lru_cache(maxsize=8)
def _bool_raw(byte_order: Order) -> RawDecoder[bool]:
    to_bytes = _to_bytes(1, byte_order, Order.BIG)
    return lambda data: to_bytes(data) != b"\x00\x00"


@lru_cache(maxsize=128)
def _str_raw(byte_order: Order, count: int) -> RawDecoder[str]:
    to_bytes = _to_bytes(count, byte_order, Order.BIG)
    return lambda data: to_bytes(data).rstrip(b"\x00 ").decode(_ENCODING)


def _bad_registers(dtype: DataType, count: int, data: Sequence[int]) -> CodecError:
    return CodecError(f"{dtype.value} needs {count} register(s) of 0..65535, got {list(data)!r}")


def _check_string_length(length: int) -> None:
    if length <= 0:
        raise CodecError(f"string length must be at least 1 register, got {length}")


def decode_registers(
    dtype: DataType,
    regs: Sequence[int],
    *,
    byte_order: Order = Order.BIG,
    word_order: Order = Order.BIG,
    length: int = 0,
) -> int | float | str:
    """Decode registers to the type's raw value (a bool for BOOL: register != 0).

    `length` is the register count of a string; 0 takes all of `regs`.
    `word_order` is ignored for strings and single-register types. Raises
    `CodecError` on a wrong register count or a register outside 0..65535.
    """
    decode: RawDecoder[int] | RawDecoder[float] | RawDecoder[str]
    if dtype is DataType.STRING:
        count = length or len(regs)
        decode = _str_raw(byte_order, count)
    else:
        count = dtype.width
        if dtype is DataType.BOOL:
            decode = _bool_raw(byte_order)
        elif dtype.is_float:
            decode = _float_raw(dtype, byte_order, word_order)
        else:
            decode = _int_raw(dtype, byte_order, word_order)
    if len(regs) != count:
        raise _bad_registers(dtype, count, regs)
    try:
        return decode(regs)
    except struct.error:
        raise _bad_registers(dtype, count, regs) from None


def _range_text(dtype: DataType) -> str:
    spec = _SPECS[dtype]
    if dtype is DataType.FLOAT32:
        return f"±{_F32_MAX!r}"
    return f"{spec.low}..{spec.high}"


def encode_registers(
    dtype: DataType,
    value: int | float | str,
    *,
    byte_order: Order = Order.BIG,
    word_order: Order = Order.BIG,
    length: int = 0,
) -> list[int]:
    """Encode a raw value to registers: the inverse of `decode_registers`.

    Integer types take an int (not bool) inside the type's range; float types
    take an int or float (NaN/inf pass here, `encode_point` refuses them); BOOL
    takes a bool (or 0/1) and gives [1] or [0] (byte-swapped: [0x0100]); STRING
    takes a str of at most 2 * `length` latin-1 characters and pads it with
    NULs. Anything else raises `CodecError`.
    """
    if dtype is DataType.STRING:
        _check_string_length(length)
        if not isinstance(value, str):
            raise CodecError(f"expected text for string, got {value!r}")
        try:
            raw = value.encode(_ENCODING)
        except UnicodeEncodeError:
            raise CodecError(f"{value!r} has characters outside latin-1") from None
        if len(raw) > 2 * length:
            raise CodecError(
                f"{value!r} has {len(raw)} characters, more than the {2 * length} "
                f"that fit in {length} register(s)"
            )
        return list(_registers_struct(length, byte_order).unpack(raw.ljust(2 * length, b"\x00")))

    spec = _SPECS[dtype]
    if dtype is DataType.BOOL:
        if not (isinstance(value, int) and value in (0, 1)):
            raise CodecError(f"expected a bool for bool, got {value!r}")
        value = int(value)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CodecError(f"expected a number for {dtype.value}, got {value!r}")
    elif not dtype.is_float:
        if not isinstance(value, int):
            raise CodecError(f"expected an integer for {dtype.value}, got {value!r}")
        if not spec.low <= value <= spec.high:
            raise CodecError(f"{value} is out of range for {dtype.value} ({_range_text(dtype)})")
    try:
        data = struct.pack(spec.code, value)
    except OverflowError:
        raise CodecError(
            f"{value!r} is out of range for {dtype.value} ({_range_text(dtype)})"
        ) from None
    regs = list(_registers_struct(dtype.width, byte_order).unpack(data))
    if word_order is Order.LITTLE:
        regs.reverse()
    return regs


# --------------------------------------------------------------------------- points


def _is_identity(point: Point) -> bool:
    return point.scale == 1 and point.offset == 0


def _has_enum(point: Point) -> bool:
    """Enum maps apply to integer and bool values; ignored for float and string types."""
    return bool(point.values) and not (point.type is DataType.STRING or point.type.is_float)


def _guard(raw: RawDecoder[T], dtype: DataType, count: int, name: str) -> Callable[[Data], T]:
    """Wrap a raw decoder with the slice-length check and point-level errors."""

    def fetch(data: Data) -> T:
        if len(data) != count:
            raise CodecError(f"expected {count} value(s), got {len(data)}", name)
        try:
            return raw(data)
        except struct.error:
            raise CodecError(_bad_registers(dtype, count, data).reason, name) from None

    return fetch


def compile_decoder(point: Point) -> Decoder:
    """Build the decoder for one point once; call it on every poll with the point's slice.

    The decoder raises `CodecError` when the slice is not exactly `point.count`
    items or holds a register outside 0..65535. Compiling raises `CodecError`
    for a `bit` on a float or string point or outside the value's bits.
    """
    decode = _compile_decoder(point)
    if point.missing is None or point.table.is_bits or point.type.is_float:
        return decode
    missing = point.missing
    if point.type is DataType.STRING:
        high = 8 if point.byte_order is Order.BIG else 0

        def decode_string_or_none(data: Data) -> Value:
            value = decode(data)
            return None if (int(data[0]) >> high) & 0xFF == missing else value

        return decode_string_or_none
    int_type = DataType.UINT16 if point.type is DataType.BOOL else point.type
    raw = _guard(
        _int_raw(int_type, point.byte_order, point.word_order), int_type, point.count, point.name
    )

    def decode_or_none(data: Data) -> Value:
        return None if raw(data) == missing else decode(data)

    return decode_or_none


def _compile_decoder(point: Point) -> Decoder:
    name = point.name
    count = point.count
    vmap: dict[int, str] = point.value_map if _has_enum(point) else {}

    if point.table.is_bits:

        def decode_coil(data: Data) -> Value:
            if len(data) != 1:
                raise CodecError(f"expected 1 value, got {len(data)}", name)
            value = bool(data[0])
            return vmap.get(value, value) if vmap else value

        return decode_coil

    dtype = point.type
    byte_order = point.byte_order
    word_order = point.word_order

    if point.bit is not None:
        if dtype is DataType.STRING or dtype.is_float:
            raise CodecError(f"bit needs an integer or bool type, not {dtype.value}", name)
        if not 0 <= point.bit < 16 * count:
            raise CodecError(f"bit {point.bit} is outside 0..{16 * count - 1}", name)
        int_type = DataType.UINT16 if dtype is DataType.BOOL else dtype
        ints = _guard(_int_raw(int_type, byte_order, word_order), dtype, count, name)
        shift = point.bit

        def decode_bit(data: Data) -> Value:
            value = bool((ints(data) >> shift) & 1)
            return vmap.get(value, value) if vmap else value

        return decode_bit

    if dtype is DataType.STRING:
        if count <= 0:
            raise CodecError(f"string length must be at least 1 register, got {count}", name)
        return _guard(_str_raw(byte_order, count), dtype, count, name)

    if dtype is DataType.BOOL:
        bools = _guard(_bool_raw(byte_order), dtype, 1, name)
        if not vmap:
            return bools

        def decode_bool_enum(data: Data) -> Value:
            value = bools(data)
            return vmap.get(value, value)

        return decode_bool_enum

    precision = point.precision
    number: Callable[[Data], float]
    if dtype.is_float:
        floats = _guard(_float_raw(dtype, byte_order, word_order), dtype, count, name)
        number = floats
        if _is_identity(point):

            def decode_float(data: Data) -> Value:
                value = floats(data)
                if not math.isfinite(value):
                    return None
                if precision is not None:
                    return round(value, precision) + 0.0
                return value

            return decode_float
    else:
        ints = _guard(_int_raw(dtype, byte_order, word_order), dtype, count, name)
        number = ints
        if vmap:

            def decode_enum(data: Data) -> Value:
                value = ints(data)
                label = vmap.get(value)
                return value if label is None else label

            return decode_enum
        if _is_identity(point):
            if precision is None or precision >= 0:
                return ints

            def decode_int_rounded(data: Data) -> Value:
                return round(ints(data), precision)

            return decode_int_rounded

    scale = point.scale
    offset = point.offset

    def decode_scaled(data: Data) -> Value:
        value = number(data) * scale + offset
        if not math.isfinite(value):
            return None
        value = _denoise(value)
        if precision is not None:
            return round(value, precision) + 0.0
        return value

    return decode_scaled


_cached_decoder = lru_cache(maxsize=1024)(compile_decoder)

SCALE_FACTOR_RANGE: Final = (-10, 10)
"""The scale factors believed (SunSpec defines -10..10); any other sf gives None."""


def scaled_by(point: Point, sf: int) -> Point:
    """`point` as it decodes and encodes with its scale factor register at `sf`: its
    scale multiplied by 10^sf, no scale factor left."""
    factor = 10.0**sf if sf < 0 else 10**sf
    return replace(point, scale=_denoise(point.scale * factor), scale_factor=None)


def known_sf(sf: Value) -> int | None:
    """`sf` as a scale factor, or None when it is unknown or outside `SCALE_FACTOR_RANGE`."""
    lo, hi = SCALE_FACTOR_RANGE
    if isinstance(sf, bool) or not isinstance(sf, int) or not lo <= sf <= hi:
        return None
    return sf


class ScaledDecoder:
    """The decoder of a point with a `scale_factor`: ``decode(data, sf)``. One compiled
    decoder per sf seen (a device has one or two), so a poll only slices and decodes."""

    __slots__ = ("_by_sf", "point")

    def __init__(self, point: Point) -> None:
        self.point = point
        self._by_sf: dict[int, Decoder] = {}
        compile_decoder(scaled_by(point, 0))  # a point that cannot decode fails now

    def __call__(self, data: Data, sf: Value) -> Value:
        known = known_sf(sf)
        if known is None:
            if len(data) != self.point.count:
                raise CodecError(
                    f"expected {self.point.count} value(s), got {len(data)}", self.point.name
                )
            return None
        decode = self._by_sf.get(known)
        if decode is None:
            decode = self._by_sf[known] = compile_decoder(scaled_by(self.point, known))
        return decode(data)


def scale_factor_reader(point: Point) -> Callable[[Data], int]:
    """The raw int16 of a scale factor point (its byte order applied; its own scale,
    offset or labels, if any, are for publishing only)."""
    return _guard(
        _int_raw(DataType.INT16, point.byte_order, Order.BIG), DataType.INT16, 1, point.name
    )


def decode_point(point: Point, data: Data) -> Value:
    """Decode a point's slice (exactly `point.count` registers or bits) to its published value."""
    return _cached_decoder(point)(data)


def _expects_bool(point: Point) -> bool:
    return point.table.is_bits or point.bit is not None or point.type is DataType.BOOL


def _bool_result(point: Point, value: bool) -> list[int] | bool:
    if point.table.is_bits or point.bit is not None:
        return value
    return encode_registers(DataType.BOOL, value, byte_order=point.byte_order)


def _encode_enum(point: Point, value: Value) -> list[int] | bool:
    labels = {label: raw for raw, label in point.values}
    choices = ", ".join(repr(label) for label in labels)
    if not isinstance(value, str):
        raise CodecError(f"expected one of {choices}, got {value!r}")
    if value not in labels:
        raise CodecError(f"{value!r} is not one of {choices}")
    raw = labels[value]
    if _expects_bool(point):
        return _bool_result(point, bool(raw))
    return encode_registers(
        point.type, raw, byte_order=point.byte_order, word_order=point.word_order
    )


def _encode_number(point: Point, value: int | float) -> list[int]:
    dtype = point.type
    if isinstance(value, float) and not math.isfinite(value):
        raise CodecError(f"{value!r} is not a finite number")
    out_of_range = f"{value} is out of range for {dtype.value} ({_range_text(dtype)})"

    raw: int | float = value
    try:
        if not _is_identity(point):
            if point.scale == 0:
                raise CodecError("cannot write a point with scale 0")
            raw = _denoise((value - point.offset) / point.scale)
        if dtype.is_float:
            raw = float(raw)
            if not math.isfinite(raw) or (dtype is DataType.FLOAT32 and abs(raw) > _F32_MAX):
                raise OverflowError
        else:
            raw = round(raw)  # nearest integer, halves to even
    except OverflowError:
        raise CodecError(out_of_range) from None
    # min/max apply to what the device will hold: the value after rounding to the
    # register (with scale 0.1, 80.04 is written as 80.0 and fits `max: 80`).
    written: int | float = value
    if not dtype.is_float:
        written = raw if _is_identity(point) else _denoise(raw * point.scale + point.offset)
    shown = "" if written == value else f" (it would be written as {written:g})"
    if point.minimum is not None and written < point.minimum:
        raise CodecError(f"{value} is below the minimum {point.minimum:g}{shown}")
    if point.maximum is not None and written > point.maximum:
        raise CodecError(f"{value} is above the maximum {point.maximum:g}{shown}")
    spec = _SPECS[dtype]
    if not spec.low <= raw <= spec.high:
        if raw != value:
            out_of_range = out_of_range.replace(" is out", f" (raw {raw}) is out", 1)
        raise CodecError(out_of_range)
    return encode_registers(dtype, raw, byte_order=point.byte_order, word_order=point.word_order)


def encode_point(point: Point, value: Value, sf: Value = None) -> list[int] | bool:
    """Encode an engineering value for a write: registers, or a bool for bits.

    - enum points take a label (str) and write its raw value; numbers are refused;
    - coil/discrete points and `bit` points take a bool and return it: the caller
      writes the coil, or does the read-modify-write of the register with
      `apply_bit`; `bool` points in a register table return [1] or [0];
    - string points take a str (see the module doc for padding/limits);
    - numeric points take an int or float (not bool, not str, not NaN/inf),
      checked against `minimum`/`maximum` when set, then mapped through the
      inverse of scale/offset; integer types round to the nearest raw integer,
      halves to even, and the raw value is range-checked against the type.

    A point with a `scale_factor` needs `sf`, the newest value of its scale factor
    register: the value is divided by 10^sf. Without a known sf it is refused.

    Raises `CodecError` (with the point's name) on anything it cannot write.
    """
    try:
        if value is None:
            raise CodecError("no value given")
        if point.scale_factor is not None:
            known = known_sf(sf)
            if known is None:
                why = "not known yet (not read)" if sf is None else f"{sf!r}, not a scale factor"
                raise CodecError(f"its scale factor {point.scale_factor} is {why}: nothing written")
            point = scaled_by(point, known)
        if _has_enum(point):
            return _encode_enum(point, value)
        if _expects_bool(point):
            if not isinstance(value, bool):
                raise CodecError(f"expected true or false, got {value!r}")
            return _bool_result(point, value)
        if point.type is DataType.STRING:
            if not isinstance(value, str):
                raise CodecError(f"expected text, got {value!r}")
            return encode_registers(
                DataType.STRING, value, byte_order=point.byte_order, length=point.length
            )
        if isinstance(value, (bool, str)):
            raise CodecError(f"expected a number, got {value!r}")
        return _encode_number(point, value)
    except CodecError as exc:
        if exc.point is not None:
            raise
        raise CodecError(exc.reason, point.name) from None


def apply_bit(register: int, bit: int, value: bool, *, byte_order: Order = Order.BIG) -> int:
    """Return `register` (as read from the wire) with one bit set or cleared.

    `bit` numbers the bits of the decoded register (0 = least significant), as
    a point's `bit` does, so with `byte_order=LITTLE` it lands in the other byte
    of the wire register.
    """
    if not 0 <= register <= 0xFFFF:
        raise CodecError(f"register {register} is outside 0..65535")
    if not 0 <= bit <= 15:
        raise CodecError(f"bit {bit} is outside 0..15")
    if byte_order is Order.LITTLE:
        bit ^= 8
    mask = 1 << bit
    return register | mask if value else register & ~mask


# --------------------------------------------------------------------------- RTU frames


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE: Final = _crc_table()


def crc16(data: bytes | bytearray) -> int:
    """CRC-16/Modbus of an RTU frame's body (on the wire as ``crc.to_bytes(2, "little")``)."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc
