"""The validated configuration: frozen dataclasses, no I/O.

`bridge.config` builds these from YAML; everything else only reads them. Every
value here is already checked and resolved (templates expanded, unit ranges
expanded, overrides applied), so consumers never look at raw YAML.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field, fields, replace
from typing import Any


class Table(enum.Enum):
    """The four Modbus data tables."""

    COIL = "coil"
    DISCRETE = "discrete"
    HOLDING = "holding"
    INPUT = "input"

    @property
    def is_bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE)

    @property
    def max_count(self) -> int:
        """Largest read a single request may ask for (Modbus spec caps)."""
        return 2000 if self.is_bits else 125


class DataType(enum.Enum):
    """Point data types. `width` is the register count (0 = set by `length`)."""

    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"

    @property
    def width(self) -> int:
        return _WIDTHS[self]

    @property
    def is_numeric(self) -> bool:
        return self not in (DataType.BOOL, DataType.STRING)

    @property
    def is_float(self) -> bool:
        return self in (DataType.FLOAT32, DataType.FLOAT64)


MAX_STRING_LENGTH = 125  # registers: one read request
MAX_READ = 125  # registers one read request may ask for (the Modbus limit)

_WIDTHS = {
    DataType.BOOL: 1,
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT32: 2,
    DataType.FLOAT64: 4,
    DataType.STRING: 0,
}


class Order(enum.Enum):
    """Byte order inside a register, or register order inside a multi-register value."""

    BIG = "big"
    LITTLE = "little"


class Framer(enum.Enum):
    """How Modbus frames travel over a host's TCP connection."""

    TCP = "tcp"  # Modbus TCP: MBAP header with a transaction id
    RTU = "rtu"  # RTU frames (unit, PDU, CRC) through a transparent serial gateway


class Output(enum.Enum):
    """How device state is published."""

    JSON = "json"
    ATTRIBUTE = "attribute"
    BOTH = "both"


class StateClass(enum.Enum):
    """Home Assistant sensor state classes (long-term statistics)."""

    MEASUREMENT = "measurement"
    TOTAL = "total"
    TOTAL_INCREASING = "total_increasing"


class EntityCategory(enum.Enum):
    """Where Home Assistant lists an entity on its device page."""

    CONFIG = "config"
    DIAGNOSTIC = "diagnostic"


class Read(enum.Enum):
    """How `bridge.config` reads a point key's YAML value."""

    TEXT = "text"
    NUMBER = "number"
    INTEGER = "integer"  # within PointKey.lo..hi
    BOOLEAN = "boolean"
    DURATION = "duration"
    CHOICE = "choice"  # one of PointKey.choices
    VALUES = "values"  # the enum map (raw -> label)


class Only(enum.Enum):
    """The points a key applies to; the key is a config error on any other point."""

    ANY = "any"
    NUMERIC = "numeric"  # numeric types, and not a bit (a bit reads as true/false)


@dataclass(frozen=True)
class PointKey:
    """How a point key is written and checked. Each `Point` field carries one, so a
    point key is declared in one place: the field (its type and default) and this
    (YAML name, how it is read, where it applies). Rules between keys live in
    `bridge.config`."""

    read: Read
    yaml: str = ""  # the YAML key; given where it differs from the field name
    required: bool = False
    lo: int | None = None
    hi: int | None = None
    choices: tuple[enum.Enum, ...] = ()
    only: Only = Only.ANY
    needs_writable: bool = False


def _key(read: Read, **rules: Any) -> dict[str, PointKey]:
    return {"key": PointKey(read, **rules)}


@dataclass(frozen=True)
class Point:
    """One named value of a device, fully resolved.

    `count` is how many registers (or bits, for coil/discrete tables) the point
    occupies. For `bool` in a register table without `bit`, the point is true
    when the register is non-zero. `bit` selects one bit (0 = least significant)
    of a 16-bit register and yields a bool.

    Each field's metadata (`PointKey`) is its YAML key: `bridge.config` reads the
    points from these declarations alone.
    """

    name: str = field(metadata=_key(Read.TEXT, required=True))
    table: Table = field(metadata=_key(Read.CHOICE, required=True, choices=tuple(Table)))
    address: int = field(metadata=_key(Read.INTEGER, required=True, lo=0, hi=65535))
    # required for holding/input; coil and discrete points are bool (a rule in config)
    type: DataType = field(metadata=_key(Read.CHOICE, choices=tuple(DataType)))
    # seconds; the device interval unless the point overrides it
    interval: float = field(metadata=_key(Read.DURATION))
    length: int = field(default=0, metadata=_key(Read.INTEGER, lo=1, hi=MAX_STRING_LENGTH))
    byte_order: Order = field(default=Order.BIG, metadata=_key(Read.CHOICE, choices=tuple(Order)))
    word_order: Order = field(default=Order.BIG, metadata=_key(Read.CHOICE, choices=tuple(Order)))
    scale: float = field(default=1.0, metadata=_key(Read.NUMBER, only=Only.NUMERIC))
    offset: float = field(default=0.0, metadata=_key(Read.NUMBER, only=Only.NUMERIC))
    precision: int | None = field(
        default=None, metadata=_key(Read.INTEGER, lo=0, hi=15, only=Only.NUMERIC)
    )
    values: tuple[tuple[int, str], ...] = field(default=(), metadata=_key(Read.VALUES))
    bit: int | None = field(default=None, metadata=_key(Read.INTEGER, lo=0, hi=15))
    unit: str | None = field(default=None, metadata=_key(Read.TEXT))
    # writes (issue 3)
    writable: bool = field(default=False, metadata=_key(Read.BOOLEAN))
    minimum: float | None = field(
        default=None,
        metadata=_key(Read.NUMBER, yaml="min", only=Only.NUMERIC, needs_writable=True),
    )
    maximum: float | None = field(
        default=None,
        metadata=_key(Read.NUMBER, yaml="max", only=Only.NUMERIC, needs_writable=True),
    )
    write_table: Table | None = field(
        default=None,
        metadata=_key(Read.CHOICE, choices=(Table.COIL, Table.HOLDING), needs_writable=True),
    )
    write_address: int | None = field(
        default=None, metadata=_key(Read.INTEGER, lo=0, hi=65535, needs_writable=True)
    )
    mask_write: bool = field(default=False, metadata=_key(Read.BOOLEAN, needs_writable=True))
    # Home Assistant discovery (issue 8); the rules are in config, the vocabulary in hass
    device_class: str | None = field(default=None, metadata=_key(Read.TEXT))
    state_class: StateClass | None = field(
        default=None, metadata=_key(Read.CHOICE, choices=tuple(StateClass))
    )
    entity_category: EntityCategory | None = field(
        default=None, metadata=_key(Read.CHOICE, choices=tuple(EntityCategory))
    )
    icon: str | None = field(default=None, metadata=_key(Read.TEXT))
    display_name: str | None = field(default=None, metadata=_key(Read.TEXT))
    homeassistant: bool = field(default=True, metadata=_key(Read.BOOLEAN))
    # publishing: a change smaller than this (engineering units) is not published
    deadband: float | None = field(default=None, metadata=_key(Read.NUMBER, only=Only.NUMERIC))
    # A scale taken from another register (SunSpec's `*_SF`, several meters): the name of
    # another point of the device, an int16 `sf`; the value is raw * 10^sf, then `scale`
    # and `offset` as usual (`bridge.codec.scaled_by`). Read in one block with its
    # point, or earlier in the same poll (`bridge.planner`).
    scale_factor: str | None = field(default=None, metadata=_key(Read.TEXT, only=Only.NUMERIC))
    # The raw value a device sends when it has no value (SunSpec's "not implemented":
    # 0x8000 for int16, 0xFFFF for uint16...; for a string, a first byte of NUL, given
    # as 0): published as null. Set by SunSpec discovery (`bridge.sunspec`).
    missing: int | None = field(default=None)
    # Registers this point shares with another point of the device on purpose (the same
    # registers read two ways): without it, `check` refuses points that overlap.
    overlaps: bool = field(default=False, metadata=_key(Read.BOOLEAN))

    @functools.cached_property
    def count(self) -> int:
        if self.table.is_bits:
            return 1
        if self.type is DataType.STRING:
            return self.length
        return self.type.width

    @functools.cached_property
    def end(self) -> int:
        """One past the last address used."""
        return self.address + self.count

    @property
    def value_map(self) -> dict[int, str]:
        return dict(self.values)

    @property
    def written_at(self) -> tuple[Table, int]:
        """Where a write of this point goes: `write_table` and `write_address`, else a
        coil's own address, else the holding register at its address."""
        table = self.write_table or (Table.COIL if self.table is Table.COIL else Table.HOLDING)
        return table, self.address if self.write_address is None else self.write_address


def _point_keys() -> tuple[tuple[str, PointKey], ...]:
    return tuple(
        (f.name, replace(f.metadata["key"], yaml=f.metadata["key"].yaml or f.name))
        for f in fields(Point)
        if "key" in f.metadata  # a field set by the bridge, not written (`missing`)
    )


POINT_KEYS = _point_keys()
"""(field name, `PointKey` with its `yaml` name set) of every `Point` field, in order.
`interval`, `byte_order` and `word_order` default to the device's (`bridge.config`)."""


@dataclass(frozen=True)
class TcpLink:
    """A host reached over TCP: a Modbus TCP device, or a gateway to a serial bus."""

    address: str
    port: int = 502
    keepalive_idle: int = 30
    keepalive_interval: int = 10
    keepalive_count: int = 3
    allow_zero_tid: bool = False  # MBAP: take a reply with transaction id 0 as the answer
    # The serial bus behind a gateway, when there is one: only for `check`'s bus-time
    # estimate (None: not known, e.g. a native Modbus TCP device).
    baudrate: int | None = None

    def describe(self) -> str:
        return f"{self.address}:{self.port}"


class Parity(enum.Enum):
    NONE = "N"
    EVEN = "E"
    ODD = "O"


@dataclass(frozen=True)
class SerialLink:
    """A host that is a serial port: an RS485 bus with the devices on it (Modbus RTU)."""

    port: str  # e.g. /dev/serial/by-id/usb-FTDI_...-if00-port0
    baudrate: int = 9600
    parity: Parity = Parity.NONE
    stopbits: int = 1
    bytesize: int = 8

    @property
    def char_bits(self) -> int:
        """Bits on the wire per character: start, data, parity, stop."""
        return 1 + self.bytesize + (self.parity is not Parity.NONE) + self.stopbits

    def describe(self) -> str:
        return f"{self.port} {self.baudrate} {self.bytesize}{self.parity.value}{self.stopbits}"


Link = TcpLink | SerialLink

RTU_CHAR_BITS = 11  # a character on an RS485 bus when its framing is not known (8E1/8N2)
RTU_GATEWAY_BAUDRATE = 9600  # assumed behind a `framer: rtu` gateway that names none


@dataclass(frozen=True)
class Host:
    """One Modbus endpoint, one persistent session: a TCP host or a serial port."""

    name: str
    link: Link
    timeout: float = 1.0
    pause: float = 0.0
    max_gap: int = 10
    write_multiple: bool = False
    framer: Framer = Framer.TCP  # a serial link always carries RTU
    spread: bool = True  # False: the host's devices poll together, one burst per interval
    proxy: Proxy | None = None  # a Modbus TCP server on this host's session

    @property
    def rtu(self) -> bool:
        """RTU frames (no transaction id): a serial port, or a gateway in transparent mode."""
        return isinstance(self.link, SerialLink) or self.framer is Framer.RTU

    @property
    def bus_baudrate(self) -> int | None:
        """The speed of the serial bus this host's requests travel, when there is one."""
        link = self.link
        if isinstance(link, SerialLink):
            return link.baudrate
        if link.baudrate is None and self.framer is Framer.RTU:
            return RTU_GATEWAY_BAUDRATE  # RTU frames: there is a serial bus behind it
        return link.baudrate

    @property
    def char_bits(self) -> int:
        return self.link.char_bits if isinstance(self.link, SerialLink) else RTU_CHAR_BITS

    def describe(self) -> str:
        return self.link.describe()


@dataclass(frozen=True)
class Device:
    """One unit id behind a host, with its resolved points."""

    name: str
    host: str
    unit: int
    interval: float
    points: tuple[Point, ...]
    max_gap: int = 10
    write_multiple: bool = False
    write_rate: float | None = None  # commands per second, None = unlimited
    # device information for Home Assistant (issue 8)
    manufacturer: str | None = None
    model: str | None = None
    area: str | None = None
    # seconds: republish the full state at least this often, changed or not
    heartbeat: float | None = None
    profile: str | None = None  # the device profile its points come from (maker/model)
    # registers one read may ask for (a meter that takes fewer than Modbus's 125)
    max_read: int = MAX_READ
    # `sunspec: true`: the points come from the device's SunSpec model chain, read at
    # start and after each reconnect (`bridge.sunspec`, `bridge.sunspec_io`); `points`
    # are then the configured ones until the chain is read, those and the chain's after.
    sunspec: bool = False
    sunspec_models: tuple[int, ...] | None = None  # the chain's model ids, once read
    serial: str | None = None  # Home Assistant's device card (SunSpec model 1)
    sw_version: str | None = None

    def point(self, name: str) -> Point | None:
        for p in self.points:
            if p.name == name:
                return p
        return None


@dataclass(frozen=True)
class Tls:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False


@dataclass(frozen=True)
class Mqtt:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "modbus-bridge"
    # Kept out of repr: a config printed by mistake must not show them (BridgeConfig.secrets)
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    base_topic: str = "modbus"
    qos: int = 1
    retain: bool = True
    output: Output = Output.JSON
    keepalive: int = 30
    protocol: int = 5  # 5 or 4 (3.1.1)
    tls: Tls | None = None
    max_packet_size: int | None = None  # bytes the broker accepts (MQTT 5 brokers announce it)


@dataclass(frozen=True)
class HomeAssistant:
    """MQTT discovery for Home Assistant (off unless enabled)."""

    enabled: bool = False
    discovery_prefix: str = "homeassistant"
    status_topic: str = "homeassistant/status"  # Home Assistant's birth and last will


class Listening:
    """Where a server of the bridge listens (the metrics endpoint, a host's proxy)."""

    address: str
    port: int

    @property
    def loopback(self) -> bool:
        return self.address in ("localhost", "::1") or self.address.startswith("127.")

    def describe(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Metrics(Listening):
    """The Prometheus endpoint (`/metrics`); off unless configured."""

    address: str = "127.0.0.1"  # where to listen: loopback unless the user says otherwise
    port: int = 9108
    # shard K of N serves on port + K - 1 (shards on one machine); False: on `port` itself
    # (one shard per machine or pod, e.g. a Kubernetes StatefulSet)
    shard_ports: bool = True


@dataclass(frozen=True)
class Sparkplug:
    """The Sparkplug B edge node (`sparkplug:`; off unless configured): one edge node per
    bridge, one Sparkplug device per bridge device, on a connection of its own."""

    group_id: str
    edge_node_id: str
    # With a primary host application: publish only while it says online (3.0 STATE).
    primary_host_id: str | None = None
    # The file keeping the bdSeq of the node's latest MQTT CONNECT across restarts
    # (Sparkplug 3.0: each CONNECT's bdSeq is the previous one's plus one). None only
    # before the configuration is read: `config_features.state_file_for` fills it in.
    state_file: str | None = None


@dataclass(frozen=True)
class Buffer:
    """Store and forward (`buffer:`; off unless configured): state changes kept on disk
    while the broker is away, replayed after it returns."""

    path: str
    max_bytes: int = 64 * 1024 * 1024
    max_age: float = 7 * 24 * 3600.0  # seconds
    replay_rate: float = 500.0  # buffered changes replayed per second at most
    flush_interval: float = 1.0  # seconds between writes to the disk while buffering


@dataclass(frozen=True)
class Proxy(Listening):
    """A Modbus TCP server on a host's session (`proxy:` on a host): other Modbus
    clients reach the host's units through the bridge's one connection (`bridge.proxy`)."""

    address: str = "127.0.0.1"  # loopback unless the user says otherwise
    port: int = 5020
    writes: bool = False  # reads only unless true
    units: tuple[int, ...] | None = None  # None: the units of the host's devices
    clients: int = 8  # clients connected at once; one more is closed at once


@dataclass(frozen=True)
class Shard:
    """This process's share of a fleet (`run --shard 2/4`): the hosts whose stable hash
    falls in shard `index` of `count` (`bridge.shard`)."""

    index: int  # 1-based
    count: int
    fleet_client_id: str  # mqtt.client_id as configured: the devices' identity in discovery

    @property
    def label(self) -> str:
        """A topic level and client id suffix, e.g. ``2of4``."""
        return f"{self.index}of{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class BridgeConfig:
    mqtt: Mqtt
    hosts: tuple[Host, ...]
    devices: tuple[Device, ...]
    version: int = 1
    read_only: bool = False
    write_timeout: float = 2.0
    health_interval: float = 30.0
    homeassistant: HomeAssistant = field(default_factory=HomeAssistant)
    metrics: Metrics | None = None  # None: no metrics endpoint
    sparkplug: Sparkplug | None = None  # None: no Sparkplug B edge node
    buffer: Buffer | None = None  # None: no store and forward
    # Set by `bridge.shard.select` for one shard of a fleet: which one, and the devices
    # the other shards run (their commands are theirs to answer).
    shard: Shard | None = None
    elsewhere: frozenset[str] = frozenset()
    # The folders of the user's profiles (`profiles:`), searched before the built-in ones.
    profiles: tuple[str, ...] = ()
    source: str = field(default="", compare=False)
    # What `check` warns of: possible mistakes that do not stop the bridge, each
    # `file:line:col: path: message` (`config` finds them; a device split in two...).
    warnings: tuple[str, ...] = field(default=(), compare=False, repr=False)
    # Values that never appear in logs, `check` output, the health report or metrics:
    # the MQTT password, and the MQTT user name when it comes from ${VAR}.
    secrets: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def devices_on(self, host: str) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.host == host)
