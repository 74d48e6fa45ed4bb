"""Sparkplug B 3.0 edge node: the model and its state machine. Pure: no I/O.

One edge node per bridge (`sparkplug.group_id`/`edge_node_id`), one Sparkplug
device per bridge device, one metric per point. `EdgeNode` turns what happens
(a connect, a poll's changes, a device going offline, a host's STATE, a command)
into the messages the specification asks for, with their `seq`, and commands
into write requests; `bridge.sparkplug_pb` puts the payloads on the wire and the
Sparkplug feature (`bridge.spnode`) carries them to and from the broker.

Rules kept here (Sparkplug 3.0):

* topics ``spBv1.0/<group>/<type>/<edge>[/<device>]``; a primary host's state on
  ``spBv1.0/STATE/<host>`` (JSON ``{"online": bool, "timestamp": ms}``);
* ``bdSeq`` 0..255 starts at zero and goes up by one for every MQTT CONNECT, a
  restart of the bridge included (the feature keeps the last one in a file,
  `bd_seq_text` / `next_bd_seq`): the NDEATH registered as the will carries it,
  and so does the NBIRTH of that connection;
* ``seq`` 0..255: 0 on NBIRTH, then one more for every NDATA, DBIRTH, DDATA and
  DDEATH, wrapping after 255; NDEATH has none;
* births carry every metric with name, alias, datatype, value and properties,
  except that ``Node Control/Rebirth`` has no alias (so that any host can ask for a
  rebirth by name); ``bdSeq`` is an Int64; DDATA only the changed metrics, by alias;
  commands may name a metric by alias;
* aliases are unique across the edge node (node metrics first, then devices in
  configuration order);
* with a primary host configured, nothing is published until it says online,
  a rebirth follows each time it comes back, and its offline stops publishing
  after an NDEATH.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bridge.model import DataType as PointType
from bridge.model import Device, Point, Table

__all__ = [
    "NAMESPACE",
    "REBIRTH",
    "DataType",
    "EdgeNode",
    "Metric",
    "MetricDef",
    "Payload",
    "PropertyValue",
    "Sent",
    "SparkplugTopics",
    "WriteRequest",
    "bd_seq_text",
    "metric_type",
    "next_bd_seq",
    "parse_bd_seq",
]

NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
BD_SEQ = "bdSeq"

Value = bool | int | float | str | bytes | None


class DataType(enum.IntEnum):
    """Sparkplug B metric datatypes (the specification's numbers)."""

    UNKNOWN = 0
    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13
    TEXT = 14
    UUID = 15
    DATASET = 16
    BYTES = 17
    FILE = 18
    TEMPLATE = 19
    PROPERTYSET = 20
    PROPERTYSETLIST = 21


@dataclass(frozen=True)
class PropertyValue:
    datatype: DataType
    value: Value


@dataclass(frozen=True)
class Metric:
    name: str | None = None
    alias: int | None = None
    timestamp: int | None = None  # ms since the epoch
    datatype: DataType | None = None
    value: Value = None
    is_historical: bool = False
    is_transient: bool = False
    properties: tuple[tuple[str, PropertyValue], ...] = ()


@dataclass(frozen=True)
class Payload:
    timestamp: int | None = None
    seq: int | None = None
    metrics: tuple[Metric, ...] = ()


# --------------------------------------------------------------------------- topics


class Kind(enum.Enum):
    NBIRTH = "NBIRTH"
    NDEATH = "NDEATH"
    NDATA = "NDATA"
    NCMD = "NCMD"
    DBIRTH = "DBIRTH"
    DDEATH = "DDEATH"
    DDATA = "DDATA"
    DCMD = "DCMD"


@dataclass(frozen=True)
class SparkplugTopics:
    group_id: str
    edge_node_id: str

    def node(self, kind: Kind) -> str:
        return f"{NAMESPACE}/{self.group_id}/{kind.value}/{self.edge_node_id}"

    def device(self, kind: Kind, device: str) -> str:
        return f"{self.node(kind)}/{device}"

    @staticmethod
    def state(host_id: str) -> str:
        return f"{NAMESPACE}/STATE/{host_id}"

    @property
    def command_filters(self) -> tuple[str, str]:
        """NCMD for this node, DCMD for any of its devices."""
        return self.node(Kind.NCMD), f"{self.node(Kind.DCMD)}/+"

    def parse_command(self, topic: str) -> tuple[Kind, str | None] | None:
        """(NCMD, None) or (DCMD, device) for a command topic of this node, else None."""
        if topic == self.node(Kind.NCMD):
            return Kind.NCMD, None
        prefix = self.node(Kind.DCMD) + "/"
        if topic.startswith(prefix) and "/" not in topic[len(prefix) :]:
            return Kind.DCMD, topic[len(prefix) :]
        return None


def id_problem(text: str) -> str | None:
    """Why `text` cannot be a Sparkplug id (group, edge node, device, host), or None:
    it is one topic level, so no '/', '+' or '#', and not empty."""
    if not text:
        return "must not be empty"
    for bad in ("/", "+", "#"):
        if bad in text:
            return f"must not contain {bad!r} (a Sparkplug id is one topic level)"
    return None


# --------------------------------------------------------------------------- metrics

_INT_TYPES = {
    PointType.INT16: DataType.INT16,
    PointType.UINT16: DataType.UINT16,
    PointType.INT32: DataType.INT32,
    PointType.UINT32: DataType.UINT32,
    PointType.INT64: DataType.INT64,
    PointType.UINT64: DataType.UINT64,
}


def _is_enum(p: Point) -> bool:
    return bool(p.values) and not (p.type is PointType.STRING or p.type.is_float)


def _is_bool(p: Point) -> bool:
    return p.table.is_bits or p.bit is not None or p.type is PointType.BOOL


def metric_type(p: Point) -> DataType:
    """The Sparkplug datatype of the values a point publishes (engineering values:
    a scaled integer is a Double, an enum is its label)."""
    if _is_enum(p):
        return DataType.STRING
    if _is_bool(p):
        return DataType.BOOLEAN
    if p.type is PointType.STRING:
        return DataType.STRING
    if p.type is PointType.FLOAT32:
        return DataType.FLOAT if p.scale == 1 and p.offset == 0 else DataType.DOUBLE
    if p.type is PointType.FLOAT64:
        return DataType.DOUBLE
    if p.scale == 1 and p.offset == 0:
        return _INT_TYPES[p.type]
    return DataType.DOUBLE


def point_properties(p: Point) -> tuple[tuple[str, PropertyValue], ...]:
    """Engineering unit, scale and offset (how the value came from the registers),
    limits and whether it can be written."""
    props: list[tuple[str, PropertyValue]] = []
    if p.unit:
        props.append(("engUnit", PropertyValue(DataType.STRING, p.unit)))
    if p.table is not Table.COIL and p.table is not Table.DISCRETE and p.type.is_numeric:
        if p.scale != 1:
            props.append(("scale", PropertyValue(DataType.DOUBLE, float(p.scale))))
        if p.offset != 0:
            props.append(("offset", PropertyValue(DataType.DOUBLE, float(p.offset))))
    if p.minimum is not None:
        props.append(("engLow", PropertyValue(DataType.DOUBLE, float(p.minimum))))
    if p.maximum is not None:
        props.append(("engHigh", PropertyValue(DataType.DOUBLE, float(p.maximum))))
    props.append(("readOnly", PropertyValue(DataType.BOOLEAN, not p.writable)))
    return tuple(props)


@dataclass(frozen=True)
class MetricDef:
    """One metric of the edge node: a point of a device, or a node metric."""

    name: str
    alias: int | None  # None: Node Control/Rebirth, named in every command
    datatype: DataType
    point: Point | None = None
    properties: tuple[tuple[str, PropertyValue], ...] = ()

    @property
    def writable(self) -> bool:
        return self.point is not None and self.point.writable


_INT_BOUNDS = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
    DataType.INT8: (-(2**7), 2**7 - 1),
    DataType.UINT8: (0, 2**8 - 1),
}


def wire_value(datatype: DataType, value: object) -> Value:
    """A published value as its metric's datatype carries it; None (a null metric)
    where it does not fit (a NaN, an enum's unknown raw value shown as text)."""
    if value is None:
        return None
    if datatype is DataType.BOOLEAN:
        return bool(value) if isinstance(value, bool | int) else None
    if datatype is DataType.STRING:
        return value if isinstance(value, str) else str(value)
    if datatype in (DataType.FLOAT, DataType.DOUBLE):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value) if math.isfinite(value) else None
    bounds = _INT_BOUNDS.get(datatype)
    if bounds is not None:
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        return value if bounds[0] <= value <= bounds[1] else None
    return None


# Node metrics: (name, datatype). Values come from the caller (`node_values`).
NODE_INFO = (
    ("Node Info/Version", DataType.STRING),
    ("Node Info/Devices", DataType.UINT32),
    ("Node Info/Devices Online", DataType.UINT32),
    ("Node Info/Buffered Records", DataType.UINT64),
)


def bd_seq_text(value: int) -> str:
    """The state file's content: the bdSeq of the node's latest MQTT CONNECT."""
    return f"{value}\n"


def parse_bd_seq(text: str) -> int | None:
    """The bdSeq a state file holds, or None when it holds no bdSeq (0..255)."""
    body = text.strip()
    if not body.isdigit() or not body.isascii():
        return None
    value = int(body)
    return value if value <= 255 else None


def next_bd_seq(last: int | None) -> int:
    """The bdSeq of the next MQTT CONNECT: 0 for the first one ever (nothing kept),
    else one more than the last one, 255 wrapping to 0."""
    return 0 if last is None else (last + 1) % 256


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Sent:
    """A message to publish: never retained; QoS 0 except where noted."""

    topic: str
    payload: Payload
    qos: int = 0
    device: str | None = None


@dataclass(frozen=True)
class WriteRequest:
    """A DCMD: these points of `device` written with these values, in order."""

    device: str
    values: tuple[tuple[str, Value], ...]


@dataclass(frozen=True)
class Refused:
    """A command that is not acted on, and why (for the log, health and metrics)."""

    topic: str
    reason: str


@dataclass
class _DeviceBirth:
    born: bool = False


@dataclass
class EdgeNode:
    """The edge node's state: sequence numbers, which devices are born, the primary
    host's state. Each method returns the messages to publish, in order."""

    topics: SparkplugTopics
    devices: Sequence[Device]
    primary_host_id: str | None = None
    bd_seq: int = 0  # the bdSeq of the current (or next) connection
    seq: int = 0
    connected: bool = False
    born: bool = False  # NBIRTH sent on this connection
    host_online: bool = False
    host_timestamp: int = -1
    _births: dict[str, _DeviceBirth] = field(default_factory=dict)
    node_metrics: tuple[MetricDef, ...] = field(init=False)
    device_metrics: dict[str, tuple[MetricDef, ...]] = field(init=False)
    _by_name: dict[str, dict[str, MetricDef]] = field(init=False)
    _by_alias: dict[str, dict[int, MetricDef]] = field(init=False)

    def __post_init__(self) -> None:
        alias = 0

        def next_alias() -> int:
            nonlocal alias
            alias += 1
            return alias

        self.node_metrics = (
            MetricDef(BD_SEQ, next_alias(), DataType.INT64),
            MetricDef(REBIRTH, None, DataType.BOOLEAN),
            *(MetricDef(name, next_alias(), dt) for name, dt in NODE_INFO),
        )
        self.device_metrics = {
            d.name: tuple(
                MetricDef(p.name, next_alias(), metric_type(p), p, point_properties(p))
                for p in d.points
            )
            for d in self.devices
        }
        self._by_name = {d: {m.name: m for m in defs} for d, defs in self.device_metrics.items()}
        self._by_alias = {
            d: {m.alias: m for m in defs if m.alias is not None}
            for d, defs in self.device_metrics.items()
        }
        self._births = {d.name: _DeviceBirth() for d in self.devices}

    # -- sequence numbers ------------------------------------------------

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) % 256
        return self.seq

    @property
    def publishing(self) -> bool:
        """Whether Sparkplug messages may go out now (connected, and the primary host
        online when one is configured)."""
        return self.connected and (self.primary_host_id is None or self.host_online)

    # -- connection ------------------------------------------------------

    def will(self) -> Sent:
        """The NDEATH to register as the will of the next connection (QoS 1)."""
        return Sent(self.topics.node(Kind.NDEATH), self._death_payload(), qos=1)

    def _death_payload(self) -> Payload:
        return Payload(metrics=(Metric(BD_SEQ, None, None, DataType.INT64, self.bd_seq),))

    def on_connect(
        self, now_ms: int, node_values: Mapping[str, Value], states: Iterable[DeviceView]
    ) -> list[Sent]:
        """The connection whose will carries `bd_seq` is up: births, unless a primary
        host must say online first."""
        self.connected = True
        self.born = False
        self.host_online = False if self.primary_host_id is not None else self.host_online
        for b in self._births.values():
            b.born = False
        if not self.publishing:
            return []
        return self._birth(now_ms, node_values, states)

    def on_disconnect(self) -> None:
        """The connection ended: the next one registers the next bdSeq."""
        self.connected = False
        self.born = False
        for b in self._births.values():
            b.born = False
        self.bd_seq = (self.bd_seq + 1) % 256

    def rebirth(
        self, now_ms: int, node_values: Mapping[str, Value], states: Iterable[DeviceView]
    ) -> list[Sent]:
        """NBIRTH (seq 0, the same bdSeq) and a DBIRTH for every device that is up."""
        if not self.publishing:
            return []
        return self._birth(now_ms, node_values, states)

    def _birth(
        self, now_ms: int, node_values: Mapping[str, Value], states: Iterable[DeviceView]
    ) -> list[Sent]:
        self.seq = 0
        self.born = True
        metrics: list[Metric] = []
        for m in self.node_metrics:
            if m.name == BD_SEQ:
                value: Value = self.bd_seq
            elif m.name == REBIRTH:
                value = False
            else:
                value = wire_value(m.datatype, node_values.get(m.name))
            metrics.append(Metric(m.name, m.alias, now_ms, m.datatype, value))
        out = [Sent(self.topics.node(Kind.NBIRTH), Payload(now_ms, 0, tuple(metrics)))]
        for view in states:
            if view.available:
                out.append(self._device_birth(view, now_ms))
        return out

    def _device_birth(self, view: DeviceView, now_ms: int) -> Sent:
        self._births[view.name].born = True
        metrics = tuple(
            Metric(
                m.name,
                m.alias,
                now_ms,
                m.datatype,
                wire_value(m.datatype, view.values.get(m.name)),
                properties=m.properties,
            )
            for m in self.device_metrics[view.name]
        )
        return Sent(
            self.topics.device(Kind.DBIRTH, view.name),
            Payload(now_ms, self._next_seq(), metrics),
            device=view.name,
        )

    # -- data ------------------------------------------------------------

    def node_data(self, now_ms: int, changed: Mapping[str, Value]) -> list[Sent]:
        """NDATA with the node metrics that changed."""
        if not (self.publishing and self.born) or not changed:
            return []
        metrics = tuple(
            Metric(None, m.alias, now_ms, m.datatype, wire_value(m.datatype, changed[m.name]))
            for m in self.node_metrics
            if m.name in changed
        )
        if not metrics:
            return []
        return [Sent(self.topics.node(Kind.NDATA), Payload(now_ms, self._next_seq(), metrics))]

    def device_changed(
        self, view: DeviceView, changed: Mapping[str, object], now_ms: int
    ) -> list[Sent]:
        """A poll's result: DBIRTH for a device that is up and not born yet, DDATA with
        only the changed metrics of one that is, DDEATH for one that went down."""
        if not (self.publishing and self.born):
            return []
        birth = self._births[view.name]
        if not view.available:
            if not birth.born:
                return []
            birth.born = False
            return [
                Sent(
                    self.topics.device(Kind.DDEATH, view.name),
                    Payload(now_ms, self._next_seq()),
                    device=view.name,
                )
            ]
        if not birth.born:
            return [self._device_birth(view, now_ms)]
        metrics = self._changes(view.name, changed, now_ms, historical=False)
        if not metrics:
            return []
        return [
            Sent(
                self.topics.device(Kind.DDATA, view.name),
                Payload(now_ms, self._next_seq(), metrics),
                device=view.name,
            )
        ]

    def history(
        self, device: str, records: Iterable[tuple[int, Mapping[str, object]]]
    ) -> Sent | None:
        """One DDATA carrying buffered changes of a born device: each metric flagged
        historical with its original time (ms). None when it cannot go out now."""
        if not (self.publishing and self.born) or device not in self._births:
            return None
        if not self._births[device].born:
            return None
        metrics: list[Metric] = []
        for at, values in records:
            metrics.extend(self._changes(device, values, at, historical=True))
        if not metrics:
            return None
        return Sent(
            self.topics.device(Kind.DDATA, device),
            Payload(metrics[-1].timestamp, self._next_seq(), tuple(metrics)),
            device=device,
        )

    def _changes(
        self, device: str, changed: Mapping[str, object], at: int, *, historical: bool
    ) -> tuple[Metric, ...]:
        defs = self._by_name.get(device, {})
        return tuple(
            Metric(
                None,
                m.alias,
                at,
                m.datatype,
                wire_value(m.datatype, changed[m.name]),
                is_historical=historical,
            )
            for m in (defs.get(name) for name in changed)
            if m is not None
        )

    def is_born(self, device: str) -> bool:
        b = self._births.get(device)
        return b is not None and b.born

    # -- primary host ----------------------------------------------------

    def on_host_state(
        self,
        host_id: str,
        payload: bytes,
        now_ms: int,
        node_values: Mapping[str, Value],
        states: Iterable[DeviceView],
    ) -> list[Sent] | None:
        """The primary host's STATE. Online (newer than the last one seen): births.
        Offline: an NDEATH (the same bdSeq as the will), then silence. None when the
        message is not for us or not readable, or older than one already seen."""
        if self.primary_host_id is None or host_id != self.primary_host_id:
            return None
        parsed = parse_state(payload)
        if parsed is None:
            return None
        online, stamp = parsed
        if stamp < self.host_timestamp:
            return None  # an older state than one already seen
        self.host_timestamp = stamp
        was = self.publishing
        self.host_online = online
        if online and not was and self.connected:
            return self._birth(now_ms, node_values, states)
        if not online and was:
            self.born = False
            for b in self._births.values():
                b.born = False
            return [Sent(self.topics.node(Kind.NDEATH), self._death_payload(), qos=1)]
        return []

    # -- commands --------------------------------------------------------

    def command(self, topic: str, payload: Payload) -> WriteRequest | Refused | bool | None:
        """An NCMD or DCMD: True for a rebirth request, a `WriteRequest` for a DCMD that
        names known metrics, `Refused` for one that does not (nothing is written), None
        for a topic that is not a command of this node."""
        parsed = self.topics.parse_command(topic)
        if parsed is None:
            return None
        kind, device = parsed
        if kind is Kind.NCMD:
            for m in payload.metrics:
                if m.name == REBIRTH and (m.value is True or m.value == 1):
                    return True
            return Refused(topic, "NCMD without a Node Control/Rebirth true metric: ignored")
        assert device is not None
        if device not in self.device_metrics:
            return Refused(topic, f"DCMD for unknown device {device!r}")
        values: list[tuple[str, Value]] = []
        for m in payload.metrics:
            d = self._resolve(device, m)
            if d is None:
                which = m.name if m.name is not None else f"alias {m.alias}"
                return Refused(topic, f"DCMD names an unknown metric ({which}) of {device}")
            if d.datatype is DataType.BOOLEAN and isinstance(m.value, int):
                values.append((d.name, bool(m.value)))
            else:
                values.append((d.name, m.value))
        if not values:
            return Refused(topic, f"DCMD for {device} without metrics")
        return WriteRequest(device, tuple(values))

    def _resolve(self, device: str, m: Metric) -> MetricDef | None:
        if m.name is not None:
            return self._by_name[device].get(m.name)
        if m.alias is not None:
            return self._by_alias[device].get(m.alias)
        return None


@dataclass(frozen=True)
class DeviceView:
    """What the node needs to know of a device: its name, whether it is up, the values."""

    name: str
    available: bool
    values: Mapping[str, object]


def parse_state(payload: bytes) -> tuple[bool, int] | None:
    """A 3.0 STATE payload ``{"online": bool, "timestamp": ms}`` -> (online, timestamp).
    The 2.2 form (plain ``ONLINE``/``OFFLINE``) is read too, with timestamp 0."""
    text = payload.decode("utf-8", "replace").strip()
    if text in ("ONLINE", "OFFLINE"):
        return text == "ONLINE", 0
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("online"), bool):
        return None
    stamp = doc.get("timestamp", 0)
    if isinstance(stamp, bool) or not isinstance(stamp, int):
        stamp = 0
    return doc["online"], stamp
