"""MQTT commands, pure half: parsing, validation, write plans, results, rate limit.

Expected registers are built with `struct` here, not with `bridge.codec`.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
from typing import Any

import pytest
from fuzz import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.commands import (
    MAX_DEPTH,
    MAX_PAYLOAD,
    RateLimiter,
    WriteKind,
    WriteOp,
    parse_get,
    parse_set,
    transaction_of,
)
from bridge.config import parse_config
from bridge.errors import CommandError, Transaction
from bridge.model import Device
from bridge.payloads import result_payload

CONFIG = """
version: 1
hosts:
  - {name: gw, address: 127.0.0.1}
  - {name: gw-multi, address: 127.0.0.1, port: 503, write_multiple: true}
devices:
  - name: dev
    host: gw
    unit: 1
    points:
      - {name: setpoint, table: holding, address: 0, type: int16, scale: 0.1, offset: -40,
         writable: true, min: -20, max: 80}
      - {name: level, table: holding, address: 1, type: uint16, writable: true}
      - {name: f32, table: holding, address: 2, type: float32, writable: true}
      - {name: f32_swapped, table: holding, address: 4, type: float32, word_order: little,
         byte_order: little, writable: true}
      - {name: f64, table: holding, address: 6, type: float64, writable: true}
      - {name: i64, table: holding, address: 10, type: int64, writable: true}
      - {name: mode, table: holding, address: 14, type: uint16,
         values: {0: off, 1: on, 2: auto}, writable: true}
      - {name: relay, table: coil, address: 3, writable: true}
      - {name: heater, table: holding, address: 15, type: uint16, bit: 2, writable: true}
      - {name: pump, table: holding, address: 15, type: uint16, bit: 9, writable: true,
         mask_write: true}
      - {name: swapped_bit, table: holding, address: 16, type: uint16, bit: 1,
         byte_order: little, writable: true}
      - {name: run, table: discrete, address: 3, writable: true, write_table: coil,
         write_address: 8}
      - {name: target, table: input, address: 0, type: uint16, writable: true,
         write_table: holding, write_address: 100}
      - {name: flag, table: holding, address: 17, type: bool, writable: true}
      - {name: label, table: holding, address: 20, type: string, length: 3, writable: true}
      - {name: valve, table: coil, address: 4, values: {0: closed, 1: open}, writable: true}
      - {name: measured, table: input, address: 5, type: uint16}
      - {name: transaction, table: holding, address: 30, type: uint16, writable: true}
  - name: multi
    host: gw-multi
    unit: 2
    points:
      - {name: level, table: holding, address: 1, type: uint16, writable: true}
      - {name: relay, table: coil, address: 3, writable: true}
      - {name: heater, table: holding, address: 15, type: uint16, bit: 2, writable: true}
"""

CFG = parse_config(CONFIG)
DEV: Device = CFG.devices[0]
MULTI: Device = CFG.devices[1]


def words(fmt: str, value: Any, *, little_words: bool = False, little_bytes: bool = False) -> tuple:
    raw = struct.pack(">" + fmt, value)
    regs = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if little_words:
        regs.reverse()
    if little_bytes:
        regs = [r[::-1] for r in regs]
    return tuple(int.from_bytes(r, "big") for r in regs)


def one(payload: Any, point: str | None = None, device: Device = DEV) -> WriteOp:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    command = parse_set(device, point, data, read_only=False)
    assert len(command.ops) == 1
    return command.ops[0]


def refused(payload: bytes, point: str | None = None, **kw: Any) -> CommandError:
    device = kw.pop("device", DEV)
    with pytest.raises(CommandError) as info:
        parse_set(device, point, payload, read_only=kw.pop("read_only", False))
    return info.value


# --------------------------------------------------------------------------- values -> plans


class TestPlans:
    def test_scale_offset_inverse_and_rounding(self) -> None:
        # eng = raw * 0.1 - 40  ->  raw = (eng + 40) / 0.1
        op = one({"setpoint": 21.5})
        assert (op.kind, op.function, op.address, op.registers) == (
            WriteKind.REGISTERS,
            6,
            0,
            words("h", 615),
        )
        assert one({"setpoint": 21.54}).registers == words("h", 615)  # to the resolution
        assert one({"setpoint": -20}).registers == words("h", 200)
        assert one(b"21.56", "setpoint").registers == words("h", 616)

    def test_float_and_64_bit_are_one_fc16(self) -> None:
        op = one({"f32": 21.5})
        assert (op.function, op.registers) == (16, words("f", 21.5))
        op = one({"f32_swapped": -1.25})
        assert op.registers == words("f", -1.25, little_words=True, little_bytes=True)
        op = one({"f64": 1234.5678})
        assert (op.function, op.registers) == (16, words("d", 1234.5678))
        op = one({"i64": -(2**62) - 5})
        assert (op.function, op.registers) == (16, words("q", -(2**62) - 5))

    def test_string_is_padded_and_one_fc16(self) -> None:
        op = one({"label": "abc"})
        assert (op.function, op.address, op.registers) == (16, 20, (0x6162, 0x6300, 0x0000))
        assert one(b"  x ", "label").registers == (0x2020, 0x7820, 0x0000)  # as is

    def test_plain_numbers_are_decimal_or_hex(self) -> None:
        """One grammar for a point's `set` payload and `modbus-bridge write`."""
        assert one(b"0x1F", "level").registers == (31,)
        assert one(b"0XfFfF", "level").registers == (0xFFFF,)
        assert one(b"007", "level").registers == (7,)  # decimal, not octal
        assert one(b"-0x10", "i64").registers == words("q", -16)
        for bad in (b"0x", b"0x1G", b"0b101", b"1_000", b"0x1.8"):
            assert "expected a number" in refused(bad, "level").reason
        # a JSON command's value is a JSON number: "0x1F" there is text
        assert "expected a number" in refused(b'{"level": "0x1F"}').reason

    def test_enum_label(self) -> None:
        assert one({"mode": "auto"}).registers == (2,)
        assert one(b"on", "mode").registers == (1,)
        assert one(b" off\n", "mode").registers == (0,)

    @pytest.mark.parametrize(
        ("payload", "state"),
        [
            (True, True),
            (False, False),
            (1, True),
            (0, False),
            ("ON", True),
            ("off", False),
            ("On", True),
            ("TRUE", True),
            ("false", False),
            ("1", True),
            ("0", False),
        ],
    )
    def test_bool_json_values(self, payload: Any, state: bool) -> None:
        op = one({"relay": payload})
        assert (op.kind, op.function, op.address, op.state) == (WriteKind.COIL, 5, 3, state)

    @pytest.mark.parametrize(
        ("payload", "state"),
        [(b"ON", True), (b"OFF", False), (b"true", True), (b"False", False), (b"1", True),
         (b"0\n", False), (b"on", True)],
    )  # fmt: skip
    def test_bool_plain_values(self, payload: bytes, state: bool) -> None:
        assert one(payload, "relay").state is state

    def test_bit_read_modify_write_and_mask_write(self) -> None:
        op = one({"heater": True})
        assert (op.kind, op.function, op.address, op.bit, op.state) == (
            WriteKind.BIT,
            6,
            15,
            2,
            True,
        )
        op = one({"pump": False})
        assert (op.kind, op.function, op.address, op.bit, op.state) == (
            WriteKind.MASK,
            22,
            15,
            9,
            False,
        )
        # little byte order: bit 1 of the value is bit 9 of the wire register
        assert one({"swapped_bit": True}).bit == 9

    def test_write_table_and_address(self) -> None:
        op = one({"run": "ON"})
        assert (op.kind, op.function, op.address, op.state) == (WriteKind.COIL, 5, 8, True)
        op = one({"target": 7})
        assert (op.kind, op.function, op.address, op.registers) == (
            WriteKind.REGISTERS,
            6,
            100,
            (7,),
        )

    def test_bool_register_and_bool_enum(self) -> None:
        assert one({"flag": True}).registers == (1,)
        assert one(b"off", "flag").registers == (0,)
        op = one({"valve": "open"})
        assert (op.kind, op.state) == (WriteKind.COIL, True)

    def test_write_multiple_forces_fc16_and_fc15(self) -> None:
        assert one({"level": 3}, device=MULTI).function == 16
        assert one({"relay": True}, device=MULTI).function == 15
        op = one({"heater": True}, device=MULTI)
        assert (op.kind, op.function, op.multiple) == (WriteKind.BIT, 16, True)

    def test_several_points_in_order_with_transaction(self) -> None:
        payload = b'{"relay": true, "transaction": {"id": [1, 2]}, "level": 9, "mode": "off"}'
        command = parse_set(DEV, None, payload, read_only=False)
        assert [op.point.name for op in command.ops] == ["relay", "level", "mode"]
        assert command.transaction == Transaction({"id": [1, 2]})
        null = parse_set(DEV, None, b'{"level": 1, "transaction": null}', read_only=False)
        assert null.transaction == Transaction(None)
        assert parse_set(DEV, None, b'{"level": 1}', read_only=False).transaction is None

    def test_point_named_transaction_via_its_own_topic(self) -> None:
        assert one(b"5", "transaction").registers == (5,)

    def test_type_limits(self) -> None:
        assert one({"level": 65535}).registers == (0xFFFF,)
        assert one({"i64": 2**63 - 1}).registers == words("q", 2**63 - 1)

    def test_describe(self) -> None:
        assert one({"f32": 1.0}).describe() == "FC16 holding 2..3 [0x3F80, 0x0000]"
        assert one({"relay": 1}).describe() == "FC5 coil 3 ON"
        assert one({"pump": 1}).describe() == "FC22 holding 15 bit 9 set"
        assert one({"heater": 0}).describe() == "FC3+FC6 holding 15 bit 2 clear"


# --------------------------------------------------------------------------- bad input

BAD_SET: list[tuple[bytes, str | None, str]] = [
    (b'{"level": 1}', None, "unknown device"),  # with device="ghost"
    (b'{"nope": 1}', None, "unknown point"),
    (b"1", "nope", "unknown point"),
    (b'{"measured": 1}', None, "read-only"),
    (b"{not json", None, "not valid JSON"),
    (b"", None, "not valid JSON"),
    (b"\xff\xfe{}", None, "UTF-8"),
    (b"\xc3", "level", "UTF-8"),
    (b'{"level": "12"}', None, "expected a number"),
    (b"twelve", "level", "expected a number"),
    (b"", "level", "empty payload"),
    (b'{"level": true}', None, "expected a number"),
    (b'{"level": null}', None, "expected a number"),
    (b'{"level": [1]}', None, "expected a number"),
    (b'{"mode": 1}', None, "expected one of"),
    (b"1", "mode", "not a number"),
    (b'{"mode": "manual"}', None, "is not one of"),
    (b"manual", "mode", "is not one of"),
    (b'{"setpoint": 81}', None, "above the maximum"),
    (b'{"setpoint": -20.1}', None, "below the minimum"),
    (b'{"level": 65536}', None, "out of range"),
    (b'{"level": -1}', None, "out of range"),
    (b'{"i64": 9223372036854775808}', None, "out of range"),
    (b'{"f32": 1e39}', None, "out of range"),
    (b'{"level": NaN}', None, "NaN"),
    (b'{"level": Infinity}', None, "NaN and infinities"),
    (b'{"f64": -Infinity}', None, "NaN and infinities"),
    (b'{"f64": 1e400}', None, "not a finite number"),
    (b"nan", "f64", "expected a number"),
    (b"inf", "f64", "expected a number"),
    (b"Infinity", "f64", "expected a number"),
    (b"1e400", "f64", "not a finite number"),
    (b'{"relay": 2}', None, "expected true/false"),
    (b'{"relay": "yes"}', None, "expected true/false"),
    (b'{"relay": 1.0}', None, "expected true/false"),
    (b"maybe", "relay", "expected true/false"),
    (b'{"label": "abcdefg"}', None, "longer than the 6"),
    (b"abcdefg", "label", "longer than the 6"),
    (b'{"label": "\xe2\x82\xac"}', None, "outside latin-1"),
    (b'{"label": 5}', None, "expected text"),
    (b'{"valve": true}', None, "expected one of"),
    (b"[1, 2]", None, "expected a JSON object"),
    (b'"level"', None, "expected a JSON object"),
    (b"{}", None, "no point"),
    (b'{"transaction": 1}', None, "no point"),
    (b'{"level": 1, "level": 2}', None, "more than once"),
    (b"[" * 60_000, None, "levels deep"),
]


@pytest.mark.parametrize(("payload", "point", "reason"), BAD_SET)
def test_bad_input_is_refused(payload: bytes, point: str | None, reason: str) -> None:
    device: Device | str = "ghost" if reason == "unknown device" else DEV
    error = refused(payload, point, device=device)
    assert reason in error.reason, error.reason
    assert len(error.reason) <= CommandError.MAX_REASON


def test_oversized_payload() -> None:
    payload = b'{"label": "' + b"x" * MAX_PAYLOAD + b'"}'
    assert "larger than the 65536" in refused(payload).reason
    assert "larger" in refused(b"1" * (MAX_PAYLOAD + 1), "level").reason
    parse_set(DEV, "level", b" " * (MAX_PAYLOAD - 1) + b"1", read_only=False)  # at the limit


def test_long_values_are_cut_in_reasons() -> None:
    error = refused(json.dumps({"mode": "z" * 5000}).encode())
    assert len(error.reason) < 200


def test_read_only_bridge_refuses_everything_but_echoes_transaction() -> None:
    error = refused(b'{"level": 1, "transaction": "t-1"}', read_only=True)
    assert "read-only" in error.reason
    assert error.transaction == Transaction("t-1")
    assert "read-only" in refused(b"1", "level", read_only=True).reason


def test_errors_echo_the_transaction_when_readable() -> None:
    assert refused(b'{"nope": 1, "transaction": 7}').transaction == Transaction(7)
    assert refused(b'{"level": 1, "transaction": 7}', device="ghost").transaction == Transaction(7)
    assert refused(b'{"level": "x", "transaction": [1]}').transaction == Transaction([1])
    assert refused(b"{bad").transaction is None


def test_a_bad_second_point_refuses_the_whole_command() -> None:
    error = refused(b'{"level": 5, "setpoint": 1000}')
    assert error.point == "setpoint"
    assert "setpoint" in error.reason


# --------------------------------------------------------------------------- get


class TestGet:
    def test_all_points(self) -> None:
        assert parse_get(DEV, b"") == DEV.points
        assert parse_get(DEV, b"  \n") == DEV.points

    def test_named_points(self) -> None:
        points = parse_get(DEV, b'["relay", "measured", "relay"]')
        assert [p.name for p in points] == ["relay", "measured"]

    @pytest.mark.parametrize(
        ("payload", "reason"),
        [
            (b'["nope"]', "unknown point"),
            (b"[]", "names no point"),
            (b'{"relay": 1}', "JSON list"),
            (b"[1]", "point names"),
            (b"relay", "not valid JSON"),
            (b"\xff", "UTF-8"),
        ],
    )
    def test_bad(self, payload: bytes, reason: str) -> None:
        with pytest.raises(CommandError, match=reason):
            parse_get(DEV, payload)

    def test_unknown_device(self) -> None:
        with pytest.raises(CommandError, match="unknown device"):
            parse_get("ghost", b"")


# --------------------------------------------------------------------------- results


class TestResults:
    def test_ok(self) -> None:
        payload = result_payload("ok", {"level": 5, "temp": 21.5, "mode": "on", "relay": True})
        assert json.loads(payload) == {
            "status": "ok",
            "data": {"level": 5, "temp": 21.5, "mode": "on", "relay": True},
        }

    def test_error_with_transaction(self) -> None:
        payload = result_payload(
            "error", {}, error="level: too big", transaction=Transaction({"id": 3})
        )
        assert json.loads(payload) == {
            "status": "error",
            "data": {},
            "error": "level: too big",
            "transaction": {"id": 3},
        }

    def test_null_transaction_is_echoed(self) -> None:
        doc = json.loads(result_payload("ok", {}, transaction=Transaction(None)))
        assert "transaction" in doc
        assert doc["transaction"] is None

    def test_warning_and_non_finite(self) -> None:
        doc = json.loads(result_payload("ok", {"x": math.nan}, warning="read-back failed"))
        assert doc == {"status": "ok", "data": {"x": None}, "warning": "read-back failed"}

    def test_status_checked(self) -> None:
        with pytest.raises(ValueError, match="status"):
            result_payload("maybe", {})

    def test_unicode_kept(self) -> None:
        assert "°C".encode() in result_payload("error", {}, error="°C")


# --------------------------------------------------------------------------- rate limiter


class TestRateLimiter:
    def test_burst_then_rate(self) -> None:
        limiter = RateLimiter(2.0)  # burst 2
        assert [limiter.allow(10.0) for _ in range(3)] == [True, True, False]
        assert not limiter.allow(10.4)  # 0.8 of a token
        assert limiter.allow(10.5)
        assert not limiter.allow(10.5)
        assert limiter.allow(11.5)
        assert limiter.allow(11.5)  # full again (2 tokens after 1 s)
        assert not limiter.allow(11.5)

    def test_slow_rate_has_burst_one(self) -> None:
        limiter = RateLimiter(0.5)
        assert limiter.allow(0.0)
        assert not limiter.allow(1.9)
        assert limiter.wait_time(1.9) == pytest.approx(0.1)
        assert limiter.allow(2.0)

    def test_tokens_do_not_pile_up(self) -> None:
        limiter = RateLimiter(1.0)
        assert limiter.allow(0.0)
        assert limiter.allow(1000.0)
        assert not limiter.allow(1000.0)

    def test_clock_going_back_is_harmless(self) -> None:
        limiter = RateLimiter(1.0)
        assert limiter.allow(5.0)
        assert not limiter.allow(4.0)
        assert limiter.allow(6.0)

    @pytest.mark.parametrize("rate", [0.0, -1.0, math.inf, math.nan])
    def test_bad_rate(self, rate: float) -> None:
        with pytest.raises(ValueError, match="rate"):
            RateLimiter(rate)


# --------------------------------------------------------------------------- fuzz

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
POINTS = [p.name for p in DEV.points]


@settings(max_examples=examples(150))
@given(st.binary(max_size=200), st.sampled_from([None, *POINTS, "nope"]), st.booleans())
def test_fuzz_arbitrary_bytes(payload: bytes, point: str | None, read_only: bool) -> None:
    with contextlib.suppress(CommandError):
        parse_set(DEV, point, payload, read_only=read_only)
    with contextlib.suppress(CommandError):
        parse_get(DEV, payload)


@settings(max_examples=examples(150))
@given(st.dictionaries(st.sampled_from([*POINTS, "nope", "transaction"]), json_values))
def test_fuzz_json_objects(doc: dict[str, Any]) -> None:
    payload = json.dumps(doc).encode()
    try:
        command = parse_set(DEV, None, payload, read_only=False)
    except CommandError as exc:
        assert exc.reason
        return
    for op in command.ops:  # whatever passed is a complete, well-formed write
        assert all(0 <= r <= 0xFFFF for r in op.registers)
        assert op.point.writable


@settings(max_examples=examples(150))
@given(st.sampled_from(POINTS), st.text(max_size=40) | st.from_regex(r"[+-]?[0-9.eE+-]{1,12}"))
def test_fuzz_plain_payloads(point: str, text: str) -> None:
    with contextlib.suppress(CommandError):
        parse_set(DEV, point, text.encode("utf-8", "surrogatepass"), read_only=False)


# --------------------------------------------------------------------------- hostile input


def test_min_max_apply_to_the_value_written() -> None:
    # setpoint: int16, scale 0.1, offset -40, max 80. 80.04 lands as raw 1200 = 80.0.
    assert one({"setpoint": 80.04}).registers == words("h", 1200)
    reason = refused(b'{"setpoint": 80.06}').reason
    assert "80.06 is above the maximum 80 (it would be written as 80.1)" in reason
    assert one(b"-20.04", "setpoint").registers == words("h", 200)


def test_over_deep_json_is_refused_before_anything_is_planned() -> None:
    # 979 nested lists in the transaction: json.loads copes, the answer's json.dumps
    # would not. Refused whole, like any bad value: nothing is written.
    deep = "[" * 979 + "]" * 979
    error = refused(f'{{"transaction": {deep}, "setpoint": 29}}'.encode())
    assert f"nested more than {MAX_DEPTH} levels" in error.reason
    ok = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    command = parse_set(DEV, None, f'{{"transaction": {ok}, "level": 1}}'.encode(), read_only=False)
    assert result_payload("ok", {}, transaction=command.transaction)  # serialisable


def test_transaction_of_reads_what_it_can() -> None:
    assert transaction_of(b'{"transaction": 7, "x": 1}') == Transaction(7)
    assert transaction_of(b'{"transaction": null}') == Transaction(None)
    assert transaction_of(b"21.5") is None
    assert transaction_of(b"\xff") is None
    assert transaction_of(b'{"transaction": ' + b"[" * 100 + b"]" * 100 + b"}") is None
