"""Sparkplug B, pure half: topics, datatypes, births, DDATA, seq/bdSeq, STATE, commands,
and the protobuf round trip (bridge.sparkplug, bridge.sparkplug_pb).

The independent decoder (Eclipse Tahu's JavaScript library) checks the wire form in
tests/integration/test_sparkplug_tahu.py; here the payloads go through our own decoder.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.commands import plan_write
from bridge.config import parse_config
from bridge.errors import CommandError
from bridge.sparkplug import (
    REBIRTH,
    DataType,
    DeviceView,
    EdgeNode,
    Kind,
    Metric,
    Payload,
    PropertyValue,
    Refused,
    SparkplugTopics,
    WriteRequest,
    id_problem,
    metric_type,
    parse_state,
    wire_value,
)
from bridge.sparkplug_pb import PayloadError, decode, encode

CONFIG = """
version: 1
hosts:
  - {name: gw, address: 127.0.0.1}
devices:
  - name: meter
    host: gw
    unit: 1
    points:
      - {name: voltage, table: holding, address: 0, type: uint16, scale: 0.1, unit: V}
      - {name: current, table: holding, address: 1, type: int16}
      - {name: energy, table: holding, address: 2, type: uint32, unit: kWh}
      - {name: power, table: holding, address: 4, type: float32, unit: W}
      - {name: total, table: holding, address: 6, type: float64}
      - {name: count, table: holding, address: 10, type: int64}
      - {name: ucount, table: holding, address: 14, type: uint64}
      - {name: big, table: holding, address: 18, type: int32}
      - {name: mode, table: holding, address: 20, type: uint16, values: {0: off, 1: on}}
      - {name: relay, table: coil, address: 0, writable: true}
      - {name: alarm, table: holding, address: 21, type: uint16, bit: 3}
      - {name: label, table: holding, address: 22, type: string, length: 4}
      - {name: setpoint, table: holding, address: 30, type: int16, writable: true,
         min: -20, max: 80, unit: degC}
  - name: pump
    host: gw
    unit: 2
    points:
      - {name: speed, table: holding, address: 0, type: uint16}
"""


@pytest.fixture(scope="module")
def config():  # type: ignore[no-untyped-def]
    return parse_config(CONFIG)


def node(config, primary: str | None = None, bd_seq: int = 0) -> EdgeNode:  # type: ignore[no-untyped-def]
    return EdgeNode(SparkplugTopics("plant", "edge1"), config.devices, primary, bd_seq=bd_seq)


def view(name: str, values: dict[str, object], available: bool = True) -> DeviceView:
    return DeviceView(name, available, values)


METER = {
    "voltage": 230.1,
    "current": -5,
    "energy": 4_000_000_000,
    "power": 1.5,
    "total": 2.25,
    "count": -(2**40),
    "ucount": 2**63 + 5,
    "big": -(2**31),
    "mode": "on",
    "relay": True,
    "alarm": False,
    "label": "ABCD",
    "setpoint": -12,
}


def test_topics() -> None:
    t = SparkplugTopics("plant", "edge1")
    assert t.node(Kind.NBIRTH) == "spBv1.0/plant/NBIRTH/edge1"
    assert t.device(Kind.DDATA, "meter") == "spBv1.0/plant/DDATA/edge1/meter"
    assert t.state("scada") == "spBv1.0/STATE/scada"
    assert t.command_filters == ("spBv1.0/plant/NCMD/edge1", "spBv1.0/plant/DCMD/edge1/+")
    assert t.parse_command("spBv1.0/plant/NCMD/edge1") == (Kind.NCMD, None)
    assert t.parse_command("spBv1.0/plant/DCMD/edge1/meter") == (Kind.DCMD, "meter")
    assert t.parse_command("spBv1.0/plant/DCMD/edge1/meter/x") is None
    assert t.parse_command("spBv1.0/plant/DCMD/other/meter") is None
    assert id_problem("a/b") is not None and id_problem("+") is not None
    assert id_problem("") is not None and id_problem("Plant 1") is None


def test_datatypes_follow_the_point_type(config) -> None:  # type: ignore[no-untyped-def]
    points = {p.name: p for p in config.devices[0].points}
    expected = {
        "voltage": DataType.DOUBLE,  # scaled integer: an engineering value
        "current": DataType.INT16,
        "energy": DataType.UINT32,
        "power": DataType.FLOAT,
        "total": DataType.DOUBLE,
        "count": DataType.INT64,
        "ucount": DataType.UINT64,
        "big": DataType.INT32,
        "mode": DataType.STRING,  # enum: its label
        "relay": DataType.BOOLEAN,
        "alarm": DataType.BOOLEAN,
        "label": DataType.STRING,
        "setpoint": DataType.INT16,
    }
    assert {name: metric_type(p) for name, p in points.items()} == expected


def test_wire_values_fit_their_datatype() -> None:
    assert wire_value(DataType.DOUBLE, math.nan) is None
    assert wire_value(DataType.INT16, 40_000) is None  # cannot be: a null, not a wrap
    assert wire_value(DataType.STRING, 7) == "7"  # an enum's raw value without a label
    assert wire_value(DataType.BOOLEAN, True) is True
    assert wire_value(DataType.FLOAT, 3) == 3.0


def test_nbirth_and_dbirth_carry_every_metric(config) -> None:  # type: ignore[no-untyped-def]
    n = node(config, bd_seq=7)
    assert n.will().payload.metrics[0].value == 7 and n.will().qos == 1
    assert n.will().payload.seq is None  # NDEATH has no seq
    out = n.on_connect(
        1000, {"Node Info/Devices": 2}, [view("meter", METER), view("pump", {}, False)]
    )
    assert [s.topic for s in out] == [
        "spBv1.0/plant/NBIRTH/edge1",
        "spBv1.0/plant/DBIRTH/edge1/meter",
    ]
    nbirth, dbirth = (decode(encode(s.payload)) for s in out)
    assert nbirth.seq == 0 and dbirth.seq == 1
    by_name = {m.name: m for m in nbirth.metrics}
    # Sparkplug 3.0 (tck-id-message-flow-edge-node-birth-publish-nbirth-payload-bdSeq):
    # bdSeq is an Int64, in the will as in the NBIRTH
    assert by_name["bdSeq"].value == 7 and by_name["bdSeq"].datatype is DataType.INT64
    assert decode(encode(n.will().payload)).metrics[0].datatype is DataType.INT64
    # (tck-id-operational-behavior-data-commands-rebirth-name-aliases): no alias on the
    # rebirth metric, so that a host that knows no alias can ask for a rebirth
    assert by_name[REBIRTH].value is False and by_name[REBIRTH].alias is None
    assert by_name[REBIRTH].datatype is DataType.BOOLEAN
    assert by_name["Node Info/Devices"].value == 2
    assert by_name["Node Info/Version"].value is None  # not given: a null metric
    metrics = {m.name: m for m in dbirth.metrics}
    assert set(metrics) == set(METER)
    for name, value in METER.items():
        got = metrics[name].value
        if isinstance(value, float):
            assert got == pytest.approx(value, rel=1e-6)
        else:
            assert got == value, name
    props = dict(metrics["voltage"].properties)
    assert props["engUnit"] == PropertyValue(DataType.STRING, "V")
    assert props["scale"] == PropertyValue(DataType.DOUBLE, 0.1)
    assert props["readOnly"] == PropertyValue(DataType.BOOLEAN, True)
    sp = dict(metrics["setpoint"].properties)
    assert sp["readOnly"].value is False
    assert (sp["engLow"].value, sp["engHigh"].value) == (-20.0, 80.0)
    aliases = [m.alias for m in nbirth.metrics + dbirth.metrics if m.name != REBIRTH]
    assert None not in aliases and len(set(aliases)) == len(aliases)  # unique on the node


def test_ddata_carries_only_changes_by_alias(config) -> None:  # type: ignore[no-untyped-def]
    n = node(config)
    n.on_connect(1000, {}, [view("meter", METER)])
    out = n.device_changed(view("meter", METER), {"current": 3}, 2000)
    assert len(out) == 1 and out[0].topic == "spBv1.0/plant/DDATA/edge1/meter"
    p = decode(encode(out[0].payload))
    assert p.seq == 2 and len(p.metrics) == 1
    (m,) = p.metrics
    alias = n.device_metrics["meter"][1].alias
    assert (m.name, m.alias, m.value, m.timestamp) == (None, alias, 3, 2000)
    assert n.device_changed(view("meter", METER), {}, 2001) == []


def test_seq_is_continuous_and_wraps(config) -> None:  # type: ignore[no-untyped-def]
    n = node(config)
    seqs = [s.payload.seq for s in n.on_connect(0, {}, [view("meter", METER)])]
    for i in range(300):
        seqs += [s.payload.seq for s in n.device_changed(view("meter", METER), {"current": i}, i)]
    assert seqs[:3] == [0, 1, 2]
    assert all(b == (a + 1) % 256 for a, b in itertools.pairwise(seqs))
    assert 255 in seqs and seqs.count(0) == 2


def test_ddeath_and_dbirth_again(config) -> None:  # type: ignore[no-untyped-def]
    n = node(config)
    n.on_connect(0, {}, [view("meter", METER), view("pump", {}, False)])
    down = n.device_changed(view("meter", METER, False), {}, 5)
    assert [s.topic for s in down] == ["spBv1.0/plant/DDEATH/edge1/meter"]
    assert down[0].payload.seq == 2 and not n.is_born("meter")
    assert n.device_changed(view("meter", METER, False), {}, 6) == []  # once
    back = n.device_changed(view("meter", METER), {"current": 1}, 7)
    assert [s.topic for s in back] == ["spBv1.0/plant/DBIRTH/edge1/meter"]
    pump = n.device_changed(view("pump", {"speed": 3}), {"speed": 3}, 8)
    assert [s.topic for s in pump] == ["spBv1.0/plant/DBIRTH/edge1/pump"]


def test_bdseq_moves_per_connection_and_wraps(config) -> None:  # type: ignore[no-untyped-def]
    n = node(config, bd_seq=255)
    births = n.on_connect(0, {}, [])
    assert births[0].payload.metrics[0].value == 255 == n.will().payload.metrics[0].value
    n.on_disconnect()
    assert n.will().payload.metrics[0].value == 0
    assert n.on_connect(1, {}, [])[0].payload.metrics[0].value == 0
    # nothing goes out while disconnected
    n.on_disconnect()
    assert n.device_changed(view("meter", METER), {"current": 1}, 2) == []


def test_rebirth_ncmd(config) -> None:  # type: ignore[no-untyped-def]
    n = node(config)
    n.on_connect(0, {}, [view("meter", METER)])
    n.device_changed(view("meter", METER), {"current": 9}, 1)
    cmd = Payload(5, None, (Metric(REBIRTH, None, None, DataType.BOOLEAN, True),))
    assert n.command("spBv1.0/plant/NCMD/edge1", decode(encode(cmd))) is True
    # the rebirth metric has no alias: a command by alias names another node metric
    bd_alias = n.node_metrics[0].alias
    by_alias = Payload(5, None, (Metric(None, bd_alias, None, None, True),))
    assert isinstance(n.command("spBv1.0/plant/NCMD/edge1", by_alias), Refused)
    again = n.rebirth(9, {}, [view("meter", METER)])
    assert [s.payload.seq for s in again] == [0, 1]
    other = Payload(5, None, (Metric("Something", None, None, DataType.BOOLEAN, True),))
    assert isinstance(n.command("spBv1.0/plant/NCMD/edge1", other), Refused)


def test_dcmd_becomes_a_validated_write(config) -> None:  # type: ignore[no-untyped-def]
    n = node(config)
    n.on_connect(0, {}, [view("meter", METER)])
    alias = {m.name: m.alias for m in n.device_metrics["meter"]}
    cmd = Payload(
        5,
        None,
        (
            Metric(None, alias["setpoint"], None, DataType.INT16, 25),
            Metric("relay", None, None, DataType.BOOLEAN, True),
        ),
    )
    req = n.command("spBv1.0/plant/DCMD/edge1/meter", decode(encode(cmd)))
    assert req == WriteRequest("meter", (("setpoint", 25), ("relay", True)))
    plan = plan_write(config.devices[0], req.values, read_only=False)
    assert [op.point.name for op in plan.ops] == ["setpoint", "relay"]
    # out of range: refused whole by the same rules as `set`
    bad = n.command(
        "spBv1.0/plant/DCMD/edge1/meter",
        Payload(5, None, (Metric(None, alias["setpoint"], None, DataType.INT16, 500),)),
    )
    assert isinstance(bad, WriteRequest)
    with pytest.raises(CommandError, match="setpoint"):
        plan_write(config.devices[0], bad.values, read_only=False)
    ro = n.command(
        "spBv1.0/plant/DCMD/edge1/meter",
        Payload(5, None, (Metric("current", None, None, None, 1),)),
    )
    assert isinstance(ro, WriteRequest)
    with pytest.raises(CommandError, match="read-only"):
        plan_write(config.devices[0], ro.values, read_only=False)
    unknown = n.command(
        "spBv1.0/plant/DCMD/edge1/meter", Payload(5, None, (Metric(None, 9999, None, None, 1),))
    )
    assert isinstance(unknown, Refused) and "alias 9999" in unknown.reason
    assert isinstance(n.command("spBv1.0/plant/DCMD/edge1/nope", cmd), Refused)
    assert n.command("spBv1.0/plant/DDATA/edge1/meter", cmd) is None


def test_primary_host_gates_publishing(config) -> None:  # type: ignore[no-untyped-def]
    n = node(config, primary="scada")
    assert n.on_connect(0, {}, [view("meter", METER)]) == []  # waits for the host
    assert n.device_changed(view("meter", METER), {"current": 1}, 1) == []
    online = json.dumps({"online": True, "timestamp": 100}).encode()
    births = n.on_host_state("scada", online, 2, {}, [view("meter", METER)])
    assert births is not None and [s.payload.seq for s in births] == [0, 1]
    assert n.on_host_state("other", online, 3, {}, []) is None
    # an older STATE (timestamp before the last one) is ignored
    stale = json.dumps({"online": False, "timestamp": 50}).encode()
    assert n.on_host_state("scada", stale, 3, {}, []) is None
    offline = json.dumps({"online": False, "timestamp": 200}).encode()
    death = n.on_host_state("scada", offline, 4, {}, [])
    assert death is not None and [s.topic for s in death] == ["spBv1.0/plant/NDEATH/edge1"]
    assert death[0].payload.seq is None and death[0].qos == 1
    assert n.device_changed(view("meter", METER), {"current": 2}, 5) == []
    back = json.dumps({"online": True, "timestamp": 300}).encode()
    again = n.on_host_state("scada", back, 6, {}, [view("meter", METER)])
    assert again is not None and again[0].topic.endswith("NBIRTH/edge1")
    assert parse_state(b"ONLINE") == (True, 0)
    assert parse_state(b"{bad") is None


def test_history_is_flagged_with_original_times(config) -> None:  # type: ignore[no-untyped-def]
    n = node(config)
    n.on_connect(0, {}, [view("meter", METER)])
    sent = n.history("meter", [(1000, {"current": 1}), (2000, {"current": 2, "power": 3.0})])
    assert sent is not None
    p = decode(encode(sent.payload))
    assert [(m.timestamp, m.value, m.is_historical) for m in p.metrics] == [
        (1000, 1, True),
        (2000, 2, True),
        (2000, 3.0, True),
    ]
    assert n.history("pump", [(1, {"speed": 1})]) is None  # not born: waits


def test_signed_integers_on_the_wire() -> None:
    """Spec 3.0: Int8..Int32 and UInt8..UInt32 in int_value (uint32), negative ones as two's
    complement; Int64/UInt64 in long_value. Checked against the raw protobuf fields."""
    p = Payload(
        1,
        0,
        (
            Metric("a", 1, 1, DataType.INT16, -2),
            Metric("b", 2, 1, DataType.UINT32, 2**32 - 1),
            Metric("c", 3, 1, DataType.INT64, -1),
        ),
    )
    data = encode(p)
    # int_value of "a": field 10, varint of 0xFFFFFFFE
    assert bytes([10 << 3]) + _varint(0xFFFFFFFE) in data
    assert bytes([10 << 3]) + _varint(2**32 - 1) in data
    assert bytes([11 << 3]) + _varint(2**64 - 1) in data
    assert [m.value for m in decode(data).metrics] == [-2, 2**32 - 1, -1]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_float_metric_is_a_fixed32() -> None:
    data = encode(Payload(1, 0, (Metric("f", 1, 1, DataType.FLOAT, 1.5),)))
    assert bytes([(12 << 3) | 5]) + struct.pack("<f", 1.5) in data


def test_not_a_payload() -> None:
    with pytest.raises(PayloadError):
        decode(b"\xff\xff\xff")


@given(st.binary(max_size=200))
def test_decode_never_raises_anything_else(data: bytes) -> None:
    with contextlib.suppress(PayloadError):
        decode(data)


def test_command_values_are_checked_by_plan_write(config) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CommandError, match="read-only"):
        plan_write(config.devices[0], [("relay", True)], read_only=True)
