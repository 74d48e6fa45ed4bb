"""YAML configuration file -> validated `BridgeConfig`: the section readers.

Three layers, each in its own module: `config_nodes` reads the YAML node tree
without a schema (mappings, scalars, merge keys, positions); `config_points` reads
points and applies the rules of one point; this module reads the sections (`mqtt`,
`hosts`, `templates`, `devices`, ...) and the rules between them.

Every problem found is collected, and `ConfigError` lists them all at once, each with
the file, line and column it comes from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial

from bridge import hakeys
from bridge.config_features import FeatureReader, state_file_for
from bridge.config_nodes import (
    Fields,
    Node,
    ScalarNode,
    SequenceNode,
    address_key,
    child,
    compose,
    first_duplicate,
    is_null,
    level_message,
    node_kind,
    or_default,
    parse_duration,
    parse_endpoint,
    parse_rate,
    parse_units,
    retarget,
    show,
    suggest,
    topic_message,
    unit_item,
    unit_node,
)
from bridge.config_points import DEFAULT_INTERVAL, PointSpec, resolve
from bridge.config_profiles import Profile, ProfileReader
from bridge.config_rules import id_findings
from bridge.errors import ConfigError, Problem
from bridge.logs import redact
from bridge.model import (
    MAX_READ,
    BridgeConfig,
    Device,
    Framer,
    HomeAssistant,
    Host,
    Metrics,
    Mqtt,
    Order,
    Output,
    Parity,
    Proxy,
    SerialLink,
    TcpLink,
    Tls,
)
from bridge.tls import TlsSetupError, tls_context
from bridge.topics import (
    RESERVED_DEVICE_NAMES,
    base_topic_problem,
    name_problem,
    text_problem,
)

__all__ = [
    "DEFAULT_INTERVAL",
    "config_from_bytes",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_endpoint",
    "parse_rate",
    "parse_units",
    "retarget",
]

CONFIG_VERSION = 1

# Allowed keys per section (did-you-mean suggestions come from these).
# fmt: off
_ROOT_KEYS = (
    "version", "read_only", "write_timeout", "health_interval", "mqtt", "homeassistant", "metrics",
    "sparkplug", "buffer", "hosts", "profiles", "templates", "devices",
)
_METRICS_KEYS = (
    "listen", "shard_ports",
)
_HOMEASSISTANT_KEYS = (
    "enabled", "discovery_prefix", "status_topic",
)
_MQTT_KEYS = (
    "host", "port", "client_id", "username", "password", "base_topic", "qos", "retain",
    "output", "keepalive", "protocol", "tls", "max_packet_size",
)
_TLS_KEYS = (
    "ca_file", "cert_file", "key_file", "insecure",
)
_HOST_KEYS = (
    "name", "address", "port", "serial", "framer", "timeout", "pause", "max_gap",
    "write_multiple", "baudrate", "parity", "stopbits", "bytesize", "keepalive",
    "allow_zero_tid", "spread", "proxy",
)
_PROXY_KEYS = (
    "listen", "writes", "units", "clients",
)
_KEEPALIVE_KEYS = (
    "idle", "interval", "count",
)
_DEVICE_INFO_KEYS = (  # devices and templates
    "manufacturer", "model", "area", "heartbeat",
)
_TEMPLATE_KEYS = (
    "profile", "byte_order", "word_order", "max_read", *_DEVICE_INFO_KEYS, "points", "drop",
)
_DEVICE_KEYS = (
    "name", "host", "unit", "units", "template", "profile", "interval", "max_gap",
    "max_read", "write_multiple", "write_rate", "byte_order", "word_order",
    *_DEVICE_INFO_KEYS, "points", "drop", "sunspec",
)
# fmt: on
_PROTOCOLS = {"5": 5, "3.1.1": 4}

_MIN_PACKET = 32  # bytes: below this not even `online` on bridge/state would fit
_MIN_BAUDRATE, _MAX_BAUDRATE = 50, 4_000_000
_MAX_PACKET = 268_435_460  # MQTT's largest packet
_MAX_PROXY_CLIENTS = 1000


# --------------------------------------------------------------------------
# Public entry points


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> BridgeConfig:
    """Read and validate a configuration file; raise `ConfigError` listing every problem."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            [Problem(source, None, None, "", f"cannot read file: {reason}")]
        ) from None
    return config_from_bytes(data, source=source, env=env)


def config_from_bytes(
    data: bytes, *, source: str, env: Mapping[str, str] | None = None
) -> BridgeConfig:
    """Validate the bytes of a configuration file read by the caller (`source` names
    it in problems); raise `ConfigError` listing every problem."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        msg = f"not valid UTF-8 (byte {exc.start})"
        raise ConfigError([Problem(source, line, None, "", msg)]) from None
    return parse_config(text, source=source, env=env)


def parse_config(
    text: str, *, source: str = "<string>", env: Mapping[str, str] | None = None
) -> BridgeConfig:
    """Validate configuration text; raise `ConfigError` listing every problem."""
    environ: Mapping[str, str] = os.environ if env is None else env
    reader = _Reader(source, environ)
    root = compose(text, source)
    try:
        config = reader.root(root)
    except RecursionError:
        reader.report(None, "", "nested too deeply")
        config = None
    except Exception as exc:  # the contract: nothing but ConfigError leaves the loader
        reader.report(None, "", f"internal error while checking the config: {exc!r}")
        config = None
    if config is None and not reader.problems:
        reader.report(None, "", "internal error: no configuration and no problem found")
    if reader.problems or config is None:
        # A problem elsewhere may quote a secret's value (a password reused as a port).
        raise ConfigError(
            [
                replace(p, message=redact(p.message, reader.secrets))
                for p in reader.sorted_problems()
            ]
        )
    return config


@dataclass(frozen=True)
class _DeviceInfo:
    """The device keys a template can give too (None: not given)."""

    manufacturer: str | None = None
    model: str | None = None
    area: str | None = None
    heartbeat: float | None = None

    def over(self, t: _DeviceInfo) -> _DeviceInfo:
        """These values, the template's `t` where these give none."""
        return _DeviceInfo(
            manufacturer=t.manufacturer if self.manufacturer is None else self.manufacturer,
            model=t.model if self.model is None else self.model,
            area=t.area if self.area is None else self.area,
            heartbeat=t.heartbeat if self.heartbeat is None else self.heartbeat,
        )


@dataclass
class _Template:
    byte_order: Order | None
    word_order: Order | None
    points: list[PointSpec] = field(default_factory=list)
    written_points: int = 0  # entries in the YAML list, valid or not
    info: _DeviceInfo = _DeviceInfo()
    profile: str | None = None  # the profile it starts from
    max_read: int | None = None  # registers per read request
    # the points its `drop` took away: name -> (node, path) of the drop entry
    dropped: dict[str, tuple[Node, str]] = field(default_factory=dict)


def _same_address(a: str, b: str) -> bool:
    """Whether two listeners on one port would clash (a wildcard takes every address)."""
    wildcard = ("0.0.0.0", "::", "")
    return a == b or a in wildcard or b in wildcard


def _profile_base(profile: Profile | None) -> _Template | None:
    """A profile as the template a device or template starts from."""
    if profile is None:
        return None
    return _Template(
        profile.byte_order,
        profile.word_order,
        list(profile.points),
        written_points=len(profile.points),
        info=_DeviceInfo(manufacturer=profile.manufacturer, model=profile.model),
        profile=profile.name,
        max_read=profile.max_read,
    )


class _HostReader(ProfileReader):
    """The `hosts` section: each host and its link (TCP or serial)."""

    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        super().__init__(source, env)
        self._declared_hosts: set[str] = set()  # valid or not: no "unknown host" noise
        self.proxy_nodes: dict[str, Node] = {}  # host -> its `proxy:` (for the rules between)

    def hosts(self, root: Fields) -> dict[str, Host]:
        nodes = self.req(root, "hosts", self.sequence)
        if nodes is None:
            return {}
        if not nodes:
            self.report(root.value("hosts"), "hosts", "at least one host is required")
        hosts: dict[str, Host] = {}
        first_seen: dict[str, int] = {}
        ports: dict[str, int] = {}  # serial port -> hosts[i]: a port opens once
        endpoints: dict[tuple[str, int], tuple[int, str]] = {}  # -> hosts[i] and its name
        for i, node in enumerate(nodes):
            path = f"hosts[{i}]"
            host = self.host(node, path)
            if host is None:
                continue
            if isinstance(host.link, SerialLink):
                other = ports.setdefault(host.link.port, i)
                if other != i:
                    self.report(
                        child(node, "serial"),
                        f"{path}.serial",
                        f"serial port {show(host.link.port)} is already hosts[{other}] "
                        "(one host per port: put all its devices on that host)",
                    )
                    continue
            else:
                where = (address_key(host.link.address), host.link.port)
                other_i, other_name = endpoints.setdefault(where, (i, host.name))
                if other_i != i:
                    self.report(
                        child(node, "address"),
                        f"{path}.address",
                        f"host '{host.name}' has the address and port of host '{other_name}'"
                        f" (hosts[{other_i}]), {host.link.describe()}: two connections to one"
                        " gateway, and a gateway that takes one connection locks the other"
                        " out; put all its devices on one host",
                    )
                    continue
            if host.name in hosts:
                self.report(
                    child(node, "name"),
                    f"{path}.name",
                    f"duplicate host name '{host.name}' (also hosts[{first_seen[host.name]}])",
                )
                continue
            hosts[host.name] = host
            first_seen[host.name] = i
        return hosts

    def host(self, node: Node, path: str) -> Host | None:
        f = self.mapping(node, path, _HOST_KEYS, known_as=partial(hakeys.key_hint, hakeys.HOST))
        if f is None:
            return None
        before = len(self.problems)
        name = self.req(f, "name", self.text)
        if name is not None:
            self._declared_hosts.add(name)
            why = level_message(name, ())
            if why is not None:
                self.report(f.value("name"), f.sub("name"), why)
        framer = self.get(f, "framer", self.choice(Framer, "framer"))
        timeout = self.get(f, "timeout", self.duration)
        pause = self.get(f, "pause", self.pause)
        max_gap = self.get(f, "max_gap", self.int_in(0))
        write_multiple = self.get(f, "write_multiple", self.boolean)
        spread = self.get(f, "spread", self.boolean)
        baudrate = self.get(f, "baudrate", self.int_in(_MIN_BAUDRATE, _MAX_BAUDRATE))
        proxy = self.get(f, "proxy", self.proxy)
        link: TcpLink | SerialLink | None
        if f.has("serial"):
            link = self.serial_link(f, baudrate)
            if framer is Framer.TCP:
                self.report(
                    f.value("framer"),
                    f.sub("framer"),
                    "a serial port carries Modbus RTU: leave framer out (or write rtu)",
                )
        else:
            if "serial" in f.items:  # `serial:` with no value
                self.report(f.key_node("serial"), f.sub("serial"), "a value is required")
            elif "address" not in f.items:
                self.report(f.node, f.path, "missing required key 'address' (or 'serial')")
            address = self.get(f, "address", self.address)
            port = self.get(f, "port", self.int_in(1, 65535))
            link = self.tcp_link(f, address, port, baudrate)
        if name is None or link is None or len(self.problems) > before:
            return None
        if proxy is not None:
            self.proxy_nodes[name] = f.key_node("proxy")
        d = Host(name="", link=link)
        return Host(
            name=name,
            link=link,
            timeout=or_default(timeout, d.timeout),
            pause=or_default(pause, d.pause),
            max_gap=or_default(max_gap, d.max_gap),
            write_multiple=or_default(write_multiple, d.write_multiple),
            framer=or_default(framer, d.framer),
            spread=or_default(spread, d.spread),
            proxy=proxy,
        )

    def device_units(self, f: Fields) -> list[int] | None:
        """A device's `unit` or `units` (a proxy's `units` too)."""
        if f.has("unit") and f.has("units"):
            self.report(
                f.key_node("units"), f.sub("units"), "give either 'unit' or 'units', not both"
            )
            return None
        if "unit" in f.items and not f.has("units"):
            unit = self.req(f, "unit", self.int_in(0, 255))
            return None if unit is None else [unit]
        node = f.value("units")
        if node is None:
            if "units" in f.items:
                self.report(f.key_node("units"), f.sub("units"), "a value is required")
            else:
                self.report(f.node, f.path, "missing required key 'unit' (or 'units')")
            return None
        items = node.value if isinstance(node, SequenceNode) else [node]
        units: list[int] = []
        ok = True
        for i, item in enumerate(items):
            ipath = f"{f.sub('units')}[{i}]" if isinstance(node, SequenceNode) else f.sub("units")
            if not isinstance(item, ScalarNode):
                self.report(item, ipath, f"expected a unit id or range, got {node_kind(item)}")
                ok = False
                continue
            text = self.subst(item, ipath)
            if text is None:
                ok = False
                continue
            try:
                units.extend(unit_item(text))
            except ValueError as exc:
                self.report(item, ipath, str(exc))
                ok = False
        if not ok:
            return None
        if not units:
            self.report(node, f.sub("units"), "no unit ids given")
            return None
        dup = first_duplicate(units)
        if dup is not None:
            self.report(node, f.sub("units"), f"unit {dup} is listed more than once")
            return None
        return units

    def proxy(self, node: Node, path: str) -> Proxy | None:
        """A host's `proxy:` (a Modbus TCP server on its session, `bridge.proxy`)."""
        f = self.mapping(node, path, _PROXY_KEYS)
        if f is None:
            return None
        before = len(self.problems)
        d = Proxy()
        address, port = d.address, d.port
        listen = self.get(f, "listen", self.nonempty_text)
        if listen is not None:
            try:
                address, port = parse_endpoint(listen, default_address=d.address)
            except ValueError as exc:
                self.report(f.value("listen"), f.sub("listen"), str(exc))
        writes = self.get(f, "writes", self.boolean)
        clients = self.get(f, "clients", self.int_in(1, _MAX_PROXY_CLIENTS))
        units = None
        if "units" in f.items:
            units = self.device_units(f)
        if len(self.problems) > before:
            return None
        return Proxy(
            address=address,
            port=port,
            writes=or_default(writes, d.writes),
            units=None if units is None else tuple(sorted(units)),
            clients=or_default(clients, d.clients),
        )

    def serial_link(self, f: Fields, baudrate: int | None) -> SerialLink | None:
        """The serial keys of a host (`f`); the TCP ones are errors there."""
        before = len(self.problems)
        for key in ("address", "port", "keepalive", "allow_zero_tid"):
            if key in f.items:
                self.report(
                    f.key_node(key),
                    f.sub(key),
                    f"'{key}' is for TCP hosts: give either 'serial' or 'address'/'port'",
                )
        port = self.get(f, "serial", self.serial_port)
        parity = self.get(f, "parity", self.choice(Parity, "parity"))
        stopbits = self.get(f, "stopbits", self.int_in(1, 2))
        bytesize = self.get(f, "bytesize", self.int_in(7, 8))
        if port is None or len(self.problems) > before:
            return None
        d = SerialLink(port="")
        return SerialLink(
            port=port,
            baudrate=or_default(baudrate, d.baudrate),
            parity=or_default(parity, d.parity),
            stopbits=or_default(stopbits, d.stopbits),
            bytesize=or_default(bytesize, d.bytesize),
        )

    def tcp_link(
        self, f: Fields, address: str | None, port: int | None, baudrate: int | None
    ) -> TcpLink | None:
        """The TCP keys of a host (`f`), with its already read address, port and baudrate;
        None when anything is wrong (reported)."""
        before = len(self.problems)
        for key in ("parity", "stopbits", "bytesize"):
            if key in f.items:
                self.report(
                    f.key_node(key), f.sub(key), f"'{key}' is for serial hosts (with 'serial')"
                )
        allow_zero_tid = self.get(f, "allow_zero_tid", self.boolean)
        d = TcpLink(address="")
        idle, interval, count = d.keepalive_idle, d.keepalive_interval, d.keepalive_count
        ka_node = f.value("keepalive")
        if ka_node is not None:
            ka = self.mapping(ka_node, f.sub("keepalive"), _KEEPALIVE_KEYS)
            if ka is not None:
                idle = or_default(self.get(ka, "idle", self.int_in(1)), idle)
                interval = or_default(self.get(ka, "interval", self.int_in(1)), interval)
                count = or_default(self.get(ka, "count", self.int_in(1)), count)
        if address is None or len(self.problems) > before:
            return None
        return TcpLink(
            address=address,
            port=or_default(port, d.port),
            keepalive_idle=idle,
            keepalive_interval=interval,
            keepalive_count=count,
            allow_zero_tid=or_default(allow_zero_tid, d.allow_zero_tid),
            baudrate=or_default(baudrate, d.baudrate),
        )


class _Reader(_HostReader, FeatureReader):
    """Turns the node tree into a `BridgeConfig`, collecting problems on the way."""

    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        super().__init__(source, env)
        self.secrets: set[str] = set()  # values never shown (BridgeConfig.secrets)
        # Device name -> (its index in `devices`, its entry): where an id clash is shown.
        self.device_entries: dict[str, tuple[int, Node]] = {}

    # -- sections

    def root(self, node: Node | None) -> BridgeConfig | None:
        if node is None or is_null(node):
            self.report(node, "", "the configuration is empty")
            return None
        f = self.mapping(node, "", _ROOT_KEYS, extra=lambda k: k.startswith("x-"))
        if f is None:
            return None
        version = self.req(f, "version", self.integer)
        if version is not None and version != CONFIG_VERSION:
            self.report(
                f.value("version"),
                "version",
                f"unsupported version {version} (this bridge reads version {CONFIG_VERSION})",
            )
        read_only = self.get(f, "read_only", self.boolean)
        write_timeout = self.get(f, "write_timeout", self.duration)
        health_interval = self.get(f, "health_interval", self.duration)
        mqtt_node = f.value("mqtt")
        mqtt = Mqtt() if mqtt_node is None else self.mqtt(mqtt_node, "mqtt")
        ha_node = f.value("homeassistant")
        ha = HomeAssistant() if ha_node is None else self.homeassistant(ha_node, "homeassistant")
        metrics_node = f.value("metrics")
        metrics = None if metrics_node is None else self.metrics(metrics_node, "metrics")
        sparkplug_node = f.value("sparkplug")
        sparkplug = None if sparkplug_node is None else self.sparkplug(sparkplug_node, "sparkplug")
        buffer_node = f.value("buffer")
        buffer = None if buffer_node is None else self.buffer(buffer_node, "buffer")
        if sparkplug is not None:
            where = state_file_for(sparkplug, buffer, os.environ)
            sparkplug = replace(sparkplug, state_file=where)
        hosts = self.hosts(f)
        self.profile_folders = self.folders(f)
        templates_node = f.value("templates")
        templates = {} if templates_node is None else self.templates(templates_node)
        devices = self.devices(f, hosts, templates)
        if self.problems or mqtt is None or ha is None:
            return None
        config = BridgeConfig(
            mqtt=mqtt,
            hosts=tuple(hosts.values()),
            devices=tuple(devices),
            version=CONFIG_VERSION,
            read_only=bool(read_only),
            write_timeout=2.0 if write_timeout is None else write_timeout,
            health_interval=30.0 if health_interval is None else health_interval,
            homeassistant=ha,
            metrics=metrics,
            sparkplug=sparkplug,
            profiles=tuple(self.profile_folders),
            buffer=buffer,
            source=self.source,
            secrets=tuple(sorted(self.secrets, key=len, reverse=True)),
            warnings=tuple(
                str(w) for w in sorted(self.warnings, key=lambda w: (w.line or 0, w.column or 0))
            ),
        )
        self.check_ids(config)
        self.check_proxies(config)
        return None if self.problems else config

    def check_proxies(self, config: BridgeConfig) -> None:
        """A proxy serves some unit, writes only where the bridge may, and listens where
        nothing else of the bridge does."""
        taken: list[tuple[int, str, str]] = []  # (port, address, what listens there)
        if config.metrics is not None:
            taken.append((config.metrics.port, config.metrics.address, "metrics.listen"))
        for i, host in enumerate(config.hosts):
            proxy, node = host.proxy, self.proxy_nodes.get(host.name)
            if proxy is None:
                continue
            path = f"hosts[{i}].proxy"
            if proxy.units is None and not config.devices_on(host.name):
                self.report(
                    node,
                    path,
                    f"no device is on host '{host.name}': give proxy.units, the unit ids "
                    "the proxy serves",
                )
            if proxy.writes and config.read_only:
                self.report(
                    node,
                    f"{path}.writes",
                    "read_only: true forbids writes through the bridge, the proxy's too: "
                    "drop one of them",
                )
            clash = next(
                (what for port, address, what in taken
                 if port == proxy.port and _same_address(address, proxy.address)),
                None,
            )  # fmt: skip
            if clash is not None:
                self.report(
                    node, f"{path}.listen", f"{proxy.describe()} is also where {clash} listens"
                )
            taken.append((proxy.port, proxy.address, f"the proxy of host '{host.name}'"))

    def check_ids(self, config: BridgeConfig) -> None:
        """Names that Home Assistant discovery would map to one id, or to an entity id
        it refuses (`config_rules.id_findings`), reported at the entry of the device
        whose name (or point) comes second."""
        entries = {name: index for name, (index, _) in self.device_entries.items()}
        for device, message in id_findings(config, entries):
            index, node = self.device_entries.get(device or "", (None, None))
            if node is None or index is None:
                self.report(None, "devices", message)
            else:
                self.report(child(node, "name"), f"devices[{index}].name", message)

    def homeassistant(self, node: Node, path: str) -> HomeAssistant | None:
        f = self.mapping(node, path, _HOMEASSISTANT_KEYS)
        if f is None:
            return None
        d = HomeAssistant()
        enabled = self.get(f, "enabled", self.boolean)
        prefix = self.get(f, "discovery_prefix", self.topic)
        status = self.get(f, "status_topic", self.topic)
        return HomeAssistant(
            enabled=d.enabled if enabled is None else enabled,
            discovery_prefix=d.discovery_prefix if prefix is None else prefix,
            status_topic=d.status_topic if status is None else status,
        )

    def metrics(self, node: Node, path: str) -> Metrics | None:
        f = self.mapping(node, path, _METRICS_KEYS)
        if f is None:
            return None
        metrics = self.req(f, "listen", self.listen)
        shard_ports = self.get(f, "shard_ports", self.boolean)
        if metrics is not None and shard_ports is not None:
            metrics = replace(metrics, shard_ports=shard_ports)
        return metrics

    def listen(self, node: Node, path: str) -> Metrics | None:
        """`ADDRESS:PORT` (an IPv6 address in brackets), or a bare port on loopback."""
        text = self.nonempty_text(node, path)
        if text is None:
            return None
        try:
            address, port = parse_endpoint(text, default_address=Metrics.address)
        except ValueError as exc:
            self.report(node, path, str(exc))
            return None
        return Metrics(address=address, port=port)

    def topic(self, node: Node, path: str) -> str | None:
        """A topic without wildcards or empty levels (rules in bridge.topics)."""
        text = self.text(node, path)
        if text is None:
            return None
        why = topic_message(text, base_topic_problem(text))
        if why is not None:
            self.report(node, path, why)
            return None
        return text

    def device_info(self, f: Fields) -> _DeviceInfo:
        return _DeviceInfo(
            manufacturer=self.get(f, "manufacturer", self.nonempty_text),
            model=self.get(f, "model", self.nonempty_text),
            area=self.get(f, "area", self.nonempty_text),
            heartbeat=self.get(f, "heartbeat", self.duration),
        )

    def mqtt(self, node: Node, path: str) -> Mqtt | None:
        f = self.mapping(node, path, _MQTT_KEYS)
        if f is None:
            return None
        d = Mqtt()
        host = self.get(f, "host", self.address)
        port = self.get(f, "port", self.int_in(1, 65535))
        client_id = self.get(f, "client_id", lambda n, p: self.checked_text(n, p, name_problem))
        username = self.get(f, "username", self.text)
        username_node = f.value("username")
        if username and isinstance(username_node, ScalarNode) and "${" in str(username_node.value):
            self.secrets.add(username)  # from the environment: a secret like the password
        if username:
            why = text_problem(username)
            if why is not None:
                self.report(f.value("username"), f.sub("username"), f"the user name {why}")
        password = self.get(f, "password", self.text)
        if password:
            self.secrets.add(password)
        base_topic = self.get(f, "base_topic", self.text)
        if base_topic is not None:
            why = topic_message(base_topic, base_topic_problem(base_topic))
            if why is not None:
                self.report(f.value("base_topic"), f.sub("base_topic"), why)
        qos = self.get(f, "qos", self.int_in(0, 2))
        retain = self.get(f, "retain", self.boolean)
        output = self.get(f, "output", self.choice(Output, "output"))
        keepalive = self.get(f, "keepalive", self.int_in(0, 65535))
        protocol = self.get(f, "protocol", self.protocol)
        max_packet_size = self.get(f, "max_packet_size", self.int_in(_MIN_PACKET, _MAX_PACKET))
        tls_node = f.value("tls")
        tls = None if tls_node is None else self.tls(tls_node, f.sub("tls"))
        return Mqtt(
            host=d.host if host is None else host,
            port=d.port if port is None else port,
            client_id=d.client_id if client_id is None else client_id,
            username=username or None,  # empty (e.g. an unset ${VAR:-}) means none
            password=password or None,
            base_topic=d.base_topic if base_topic is None else base_topic,
            qos=d.qos if qos is None else qos,
            retain=d.retain if retain is None else retain,
            output=output or d.output,
            keepalive=d.keepalive if keepalive is None else keepalive,
            protocol=d.protocol if protocol is None else protocol,
            tls=tls,
            max_packet_size=max_packet_size,
        )

    def protocol(self, node: Node, path: str) -> int | None:
        text = self.text(node, path)
        if text is None:
            return None
        value = _PROTOCOLS.get(text.strip())
        if value is None:
            self.report(node, path, f"unknown protocol {show(text)} (expected 5 or 3.1.1)")
        return value

    def tls(self, node: Node, path: str) -> Tls | None:
        if isinstance(node, ScalarNode):  # `tls: true` = TLS with the system CAs
            on = self.boolean(node, path)
            return Tls() if on else None
        f = self.mapping(node, path, _TLS_KEYS)
        if f is None:
            return None
        ca_file = self.get(f, "ca_file", self.readable_file)
        cert_file = self.get(f, "cert_file", self.readable_file)
        key_file = self.get(f, "key_file", self.readable_file)
        insecure = self.get(f, "insecure", self.boolean)
        if f.has("key_file") and not f.has("cert_file"):
            self.report(f.key_node("key_file"), f.sub("key_file"), "key_file needs cert_file")
        # What the bridge will load at run time, loaded now: a wrong file fails here.
        checks = []
        if ca_file is not None:
            checks.append(Tls(ca_file=ca_file))
        if cert_file is not None and (key_file is not None or not f.has("key_file")):
            checks.append(Tls(cert_file=cert_file, key_file=key_file))
        for check in checks:
            try:
                tls_context(check)
            except TlsSetupError as exc:
                self.report(f.value(exc.key), f.sub(exc.key), exc.reason)
        return Tls(ca_file=ca_file, cert_file=cert_file, key_file=key_file, insecure=bool(insecure))

    def templates(self, node: Node) -> dict[str, _Template]:
        f = self.mapping(node, "templates", None)
        if f is None:
            return {}
        templates: dict[str, _Template] = {}
        for name, (_key, value) in f.items.items():
            path = f.sub(name)
            t = self.mapping(value, path, _TEMPLATE_KEYS)
            if t is None:
                templates[name] = _Template(None, None, [], written_points=1)
                continue
            base = _profile_base(self.named_profile(t))
            points_node = t.value("points")
            points, written = ([], 0) if points_node is None else self.points(points_node, t)
            specs = self.merged(t, base, points)
            byte_order = self.get(t, "byte_order", self.choice(Order, "byte order"))
            word_order = self.get(t, "word_order", self.choice(Order, "word order"))
            max_read = self.get(t, "max_read", self.int_in(1, MAX_READ))
            info = self.device_info(t)
            if base is not None:
                max_read = max_read or base.max_read
                written += base.written_points
                info = info.over(base.info)
                byte_order = byte_order or base.byte_order
                word_order = word_order or base.word_order
            templates[name] = _Template(
                byte_order=byte_order,
                word_order=word_order,
                max_read=max_read,
                points=list(specs.values()),
                written_points=written or int(t.has("profile")),
                info=info,
                profile=None if base is None else base.profile,
                dropped=self.dropped,
            )
        return templates

    def devices(
        self, root: Fields, hosts: Mapping[str, Host], templates: Mapping[str, _Template]
    ) -> list[Device]:
        nodes = self.req(root, "devices", self.sequence)
        if nodes is None:
            return []
        if not nodes:
            self.report(root.value("devices"), "devices", "at least one device is required")
        devices: list[Device] = []
        owner: dict[str, int] = {}
        polled: dict[tuple[str, int], tuple[str, int]] = {}  # (host, unit) -> device, entry
        for i, node in enumerate(nodes):
            path = f"devices[{i}]"
            expanded, names = self.device(node, path, hosts, templates)
            clashes = [name for name in names if name in owner]
            if clashes:
                first = clashes[0]
                more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
                self.report(
                    child(node, "name"),
                    f"{path}.name",
                    f"device name '{first}' is already used by devices[{owner[first]}]{more}",
                )
                continue
            for name in names:
                owner[name] = i
            for d in expanded:
                self.device_entries[d.name] = (i, node)
                earlier = polled.setdefault((d.host, d.unit), (d.name, i))
                if earlier[1] != i:
                    self.warn(
                        unit_node(node),
                        f"{path}.unit",
                        f"device '{d.name}' polls unit {d.unit} on host '{d.host}', as device"
                        f" '{earlier[0]}' (devices[{earlier[1]}]) does: one device split in two is"
                        " fine; otherwise one of them has the wrong unit",
                    )
            devices.extend(expanded)
        return devices

    def device(
        self,
        node: Node,
        path: str,
        hosts: Mapping[str, Host],
        templates: Mapping[str, _Template],
    ) -> tuple[list[Device], list[str]]:
        """The devices of one entry (one per unit), and the names it gives even when it
        is not valid (so a name used twice is reported with every other problem)."""
        f = self.mapping(node, path, _DEVICE_KEYS, known_as=partial(hakeys.key_hint, hakeys.DEVICE))
        if f is None:
            return [], []
        before = len(self.problems)
        name = self.req(f, "name", self.text)
        host_name = self.req(f, "host", self.text)
        host = None
        if host_name is not None:
            host = hosts.get(host_name)
            if host is None and host_name not in self._declared_hosts:
                hint = suggest(host_name, hosts) or (
                    f" (defined hosts: {', '.join(list(hosts)[:8])})" if hosts else ""
                )
                self.report(f.value("host"), f.sub("host"), f"unknown host {show(host_name)}{hint}")
        units = self.device_units(f)
        template = None
        template_name = self.get(f, "template", self.text)
        if template_name is not None:
            template = templates.get(template_name)
            if template is None:
                hint = suggest(template_name, templates) or (
                    f" (defined templates: {', '.join(list(templates)[:8])})" if templates else ""
                )
                self.report(
                    f.value("template"),
                    f.sub("template"),
                    f"unknown template {show(template_name)}{hint}",
                )
        base = template
        if f.has("profile") and f.has("template"):
            self.report(
                f.key_node("profile"),
                f.sub("profile"),
                "give either 'template' or 'profile', not both (a template can name a profile)",
            )
        elif f.has("profile"):
            base = _profile_base(self.named_profile(f))
        interval = or_default(self.get(f, "interval", self.duration), DEFAULT_INTERVAL)
        max_gap = self.get(f, "max_gap", self.int_in(0))
        max_read = self.get(f, "max_read", self.int_in(1, MAX_READ))
        write_multiple = self.get(f, "write_multiple", self.boolean)
        write_rate = self.get(f, "write_rate", self.rate)
        byte_order = self.get(f, "byte_order", self.choice(Order, "byte order"))
        word_order = self.get(f, "word_order", self.choice(Order, "word order"))
        info = self.device_info(f)
        # the points of a SunSpec device come from the device itself (bridge.sunspec)
        sunspec = bool(self.get(f, "sunspec", self.boolean))
        points_node = f.value("points")
        own, written = ([], 0) if points_node is None else self.points(points_node, f)
        if base is not None:
            written += base.written_points
        if written == 0 and not sunspec and not (f.has("template") or f.has("profile")):
            self.report(
                node,
                path,
                "device has no points (give a profile, a template, points or sunspec: true)",
            )

        if name is not None:
            self.device_name(f, name, units)
        names = (
            []
            if name is None or (units is None and "{unit}" in name)
            else [name.replace("{unit}", str(u)) for u in units or [0]]
        )

        # The rules between points run whatever else is wrong: every problem in one run.
        no_base = (f.has("template") or f.has("profile")) and base is None
        specs = {s.name: s for s in own} if no_base else self.merged(f, base, own)
        dev_byte = byte_order or (base.byte_order if base else None) or Order.BIG
        dev_word = word_order or (base.word_order if base else None) or Order.BIG
        inherited = {"interval": interval, "byte_order": dev_byte, "word_order": dev_word}
        points = tuple(resolve(s, inherited) for s in specs.values())
        max_read = max_read or (base.max_read if base else None) or MAX_READ
        for p in points:
            if not p.table.is_bits and p.count > max_read:
                spec = specs[p.name]
                self.report(
                    spec.nodes.get("length") or spec.nodes.get("type"),
                    f"{spec.path}.{'length' if 'length' in spec.nodes else 'type'}",
                    f"{p.name} needs {p.count} registers, more than the device's max_read"
                    f" ({max_read})",
                    source=spec.source,
                )
        dropped = {} if no_base else {**(base.dropped if base else {}), **self.dropped}
        self.device_points(specs, points, dropped)
        if name is None or host is None or units is None or no_base or len(self.problems) > before:
            return [], names
        if base is not None:
            info = info.over(base.info)
        return [
            Device(
                name=name.replace("{unit}", str(unit)),
                host=host.name,
                unit=unit,
                interval=interval,
                points=points,
                max_gap=or_default(max_gap, host.max_gap),
                write_multiple=or_default(write_multiple, host.write_multiple),
                write_rate=write_rate,
                manufacturer=info.manufacturer,
                model=info.model,
                area=info.area,
                heartbeat=info.heartbeat,
                profile=None if base is None else base.profile,
                max_read=max_read,
                sunspec=sunspec,
            )
            for unit in units
        ], names

    def device_name(self, f: Fields, name: str, units: list[int] | None) -> None:
        node, path = f.value("name"), f.sub("name")
        rest = name.replace("{unit}", "")
        if "{" in rest or "}" in rest:
            self.report(node, path, f"{show(name)}: the only placeholder is {{unit}}")
            return
        if units is not None and len(units) > 1 and "{unit}" not in name:
            self.report(
                node, path, f"{show(name)} needs '{{unit}}' to name each of its {len(units)} units"
            )
            return
        sample = name.replace("{unit}", str(units[0] if units else 1))
        why = level_message(sample, RESERVED_DEVICE_NAMES)
        if why is not None:
            self.report(node, path, why)
