"""The Sparkplug B payload schema for Google's `protobuf` runtime; the only module that
imports it.

The message layout (field numbers and types) is the one the Sparkplug 3.0
specification defines (`org.eclipse.tahu.protobuf.Payload`, proto2). It is declared
here as a descriptor and handed to the protobuf runtime, which does all of the wire
encoding and decoding: no generated code to keep in step, no protoc at build time,
and nothing hand-encoded. Only what an edge node sends or receives is declared
(`Metric` with its scalar values, `PropertySet`/`PropertyValue`, `MetaData`); a
`DataSet` or `Template` value that a host might send is kept as an unknown field
and reads as no value.

`encode`/`decode` convert between bytes and the plain dataclasses of
`bridge.sparkplug` (`Payload`, `Metric`, `PropertyValue`), so nothing outside this
module sees a protobuf type.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from bridge.sparkplug import DataType, Metric, Payload, PropertyValue, Value

__all__ = ["DecodeError", "PayloadError", "decode", "encode"]

_PACKAGE = "org.eclipse.tahu.protobuf"

_F = descriptor_pb2.FieldDescriptorProto
_OPT = _F.LABEL_OPTIONAL
_REP = _F.LABEL_REPEATED

# (name, number, type, label, message type, oneof index)
_FieldSpec = tuple[str, int, int, int, str | None, int | None]


class PayloadError(ValueError):
    """A payload that is not a Sparkplug B payload (or not one we can read)."""


def _message(name: str, fields: list[_FieldSpec], oneofs: tuple[str, ...] = ()) -> Any:
    msg = descriptor_pb2.DescriptorProto(name=name)
    for oneof in oneofs:
        msg.oneof_decl.add(name=oneof)
    for fname, number, ftype, label, type_name, oneof_index in fields:
        field = msg.field.add(name=fname, number=number, type=ftype, label=label)
        if type_name is not None:
            field.type_name = f".{_PACKAGE}.Payload.{type_name}"
        if oneof_index is not None:
            field.oneof_index = oneof_index
    return msg


def _schema() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="bridge/sparkplug_b.proto", package=_PACKAGE, syntax="proto2"
    )
    u32, u64, b, s, by = _F.TYPE_UINT32, _F.TYPE_UINT64, _F.TYPE_BOOL, _F.TYPE_STRING, _F.TYPE_BYTES
    f32, f64, msg = _F.TYPE_FLOAT, _F.TYPE_DOUBLE, _F.TYPE_MESSAGE
    payload = descriptor_pb2.DescriptorProto(name="Payload")
    payload.nested_type.append(
        _message(
            "PropertyValue",
            [
                ("type", 1, u32, _OPT, None, None),
                ("is_null", 2, b, _OPT, None, None),
                ("int_value", 3, u32, _OPT, None, 0),
                ("long_value", 4, u64, _OPT, None, 0),
                ("float_value", 5, f32, _OPT, None, 0),
                ("double_value", 6, f64, _OPT, None, 0),
                ("boolean_value", 7, b, _OPT, None, 0),
                ("string_value", 8, s, _OPT, None, 0),
                ("propertyset_value", 9, msg, _OPT, "PropertySet", 0),
                ("propertysets_value", 10, msg, _OPT, "PropertySetList", 0),
            ],
            ("value",),
        )
    )
    payload.nested_type.append(
        _message(
            "PropertySet",
            [
                ("keys", 1, s, _REP, None, None),
                ("values", 2, msg, _REP, "PropertyValue", None),
            ],
        )
    )
    payload.nested_type.append(
        _message("PropertySetList", [("propertyset", 1, msg, _REP, "PropertySet", None)])
    )
    payload.nested_type.append(
        _message(
            "MetaData",
            [
                ("is_multi_part", 1, b, _OPT, None, None),
                ("content_type", 2, s, _OPT, None, None),
                ("size", 3, u64, _OPT, None, None),
                ("seq", 4, u64, _OPT, None, None),
                ("file_name", 5, s, _OPT, None, None),
                ("file_type", 6, s, _OPT, None, None),
                ("md5", 7, s, _OPT, None, None),
                ("description", 8, s, _OPT, None, None),
            ],
        )
    )
    payload.nested_type.append(
        _message(
            "Metric",
            [
                ("name", 1, s, _OPT, None, None),
                ("alias", 2, u64, _OPT, None, None),
                ("timestamp", 3, u64, _OPT, None, None),
                ("datatype", 4, u32, _OPT, None, None),
                ("is_historical", 5, b, _OPT, None, None),
                ("is_transient", 6, b, _OPT, None, None),
                ("is_null", 7, b, _OPT, None, None),
                ("metadata", 8, msg, _OPT, "MetaData", None),
                ("properties", 9, msg, _OPT, "PropertySet", None),
                ("int_value", 10, u32, _OPT, None, 0),
                ("long_value", 11, u64, _OPT, None, 0),
                ("float_value", 12, f32, _OPT, None, 0),
                ("double_value", 13, f64, _OPT, None, 0),
                ("boolean_value", 14, b, _OPT, None, 0),
                ("string_value", 15, s, _OPT, None, 0),
                ("bytes_value", 16, by, _OPT, None, 0),
            ],
            ("value",),
        )
    )
    payload.field.add(name="timestamp", number=1, type=u64, label=_OPT)
    payload.field.add(
        name="metrics", number=2, type=msg, label=_REP, type_name=f".{_PACKAGE}.Payload.Metric"
    )
    payload.field.add(name="seq", number=3, type=u64, label=_OPT)
    payload.field.add(name="uuid", number=4, type=s, label=_OPT)
    payload.field.add(name="body", number=5, type=by, label=_OPT)
    payload.extension_range.add(start=6, end=536870912)
    fdp.message_type.append(payload)
    return fdp


def _build() -> Any:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_schema())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.Payload"))


_Payload: Any = _build()

_MASK32 = (1 << 32) - 1
_MASK64 = (1 << 64) - 1
# Spec 3.0: these go in int_value (uint32), the signed ones as two's complement.
_INT_FIELD = {
    DataType.INT8,
    DataType.INT16,
    DataType.INT32,
    DataType.UINT8,
    DataType.UINT16,
    DataType.UINT32,
}
_LONG_FIELD = {DataType.INT64, DataType.UINT64, DataType.DATETIME}
_SIGNED_BITS = {DataType.INT8: 8, DataType.INT16: 16, DataType.INT32: 32, DataType.INT64: 64}
_STRING_FIELD = {DataType.STRING, DataType.TEXT, DataType.UUID}


def _set_value(target: Any, datatype: DataType, value: Value) -> None:
    """Put `value` in the value field the specification assigns to `datatype`."""
    if value is None:
        target.is_null = True
        return
    if datatype in _INT_FIELD:
        target.int_value = int(value) & _MASK32
    elif datatype in _LONG_FIELD:
        target.long_value = int(value) & _MASK64
    elif datatype is DataType.FLOAT:
        target.float_value = float(value)
    elif datatype is DataType.DOUBLE:
        target.double_value = float(value)
    elif datatype is DataType.BOOLEAN:
        target.boolean_value = bool(value)
    elif datatype in _STRING_FIELD:
        target.string_value = str(value)
    elif datatype is DataType.BYTES and isinstance(value, bytes):
        target.bytes_value = value
    else:
        raise PayloadError(f"cannot encode a {datatype.name} value")


def _signed(raw: int, bits: int) -> int:
    raw &= (1 << bits) - 1
    return raw - (1 << bits) if raw >> (bits - 1) else raw


def _get_value(source: Any, datatype: DataType | None) -> Value:
    """The value of a metric or property: sized and signed by its datatype."""
    if source.HasField("is_null") and source.is_null:
        return None
    which = source.WhichOneof("value")
    if which is None:
        return None
    raw = getattr(source, which)
    if which in ("int_value", "long_value"):
        bits = _SIGNED_BITS.get(datatype) if datatype is not None else None
        return _signed(int(raw), bits) if bits is not None else int(raw)
    if which in ("propertyset_value", "propertysets_value"):
        return None
    if isinstance(raw, bool | int | float | str | bytes):
        return raw
    return None


def _datatype(code: int) -> DataType | None:
    try:
        return DataType(code)
    except ValueError:
        return None


def encode(payload: Payload) -> bytes:
    """The wire form of `payload`."""
    out = _Payload()
    if payload.timestamp is not None:
        out.timestamp = payload.timestamp
    if payload.seq is not None:
        out.seq = payload.seq
    for m in payload.metrics:
        pm = out.metrics.add()
        if m.name is not None:
            pm.name = m.name
        if m.alias is not None:
            pm.alias = m.alias
        if m.timestamp is not None:
            pm.timestamp = m.timestamp
        if m.datatype is not None:
            pm.datatype = m.datatype.value
        if m.is_historical:
            pm.is_historical = True
        if m.is_transient:
            pm.is_transient = True
        if m.properties:
            props = pm.properties
            for key, prop in m.properties:
                props.keys.append(key)
                pv = props.values.add()
                pv.type = prop.datatype.value
                _set_value(pv, prop.datatype, prop.value)
        if m.datatype is not None or m.value is not None:
            _set_value(pm, m.datatype or DataType.UNKNOWN, m.value)
    data: bytes = out.SerializeToString()
    return data


def decode(data: bytes) -> Payload:
    """Read a payload (commands from a host application; tests). Raises `PayloadError`."""
    msg = _Payload()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise PayloadError(f"not a Sparkplug B payload: {exc}") from None
    metrics: list[Metric] = []
    for pm in msg.metrics:
        datatype = _datatype(pm.datatype) if pm.HasField("datatype") else None
        props: list[tuple[str, PropertyValue]] = []
        if pm.HasField("properties"):
            for key, pv in zip(pm.properties.keys, pm.properties.values, strict=False):
                ptype = _datatype(pv.type) or DataType.UNKNOWN
                props.append((key, PropertyValue(ptype, _get_value(pv, ptype))))
        metrics.append(
            Metric(
                name=pm.name if pm.HasField("name") else None,
                alias=pm.alias if pm.HasField("alias") else None,
                timestamp=pm.timestamp if pm.HasField("timestamp") else None,
                datatype=datatype,
                value=_get_value(pm, datatype),
                is_historical=pm.is_historical,
                is_transient=pm.is_transient,
                properties=tuple(props),
            )
        )
    return Payload(
        timestamp=msg.timestamp if msg.HasField("timestamp") else None,
        seq=msg.seq if msg.HasField("seq") else None,
        metrics=tuple(metrics),
    )
