"""Home Assistant's `modbus:` configuration, turned into this bridge's configuration.

`modbus-bridge import homeassistant FILE` reads a Home Assistant YAML file (the whole
`configuration.yaml`, a package, or a file `!include`d as the `modbus:` list), follows
`!include` and `!secret` from the file's folder, and writes a configuration for this
bridge: each hub a host, each slave id a device, each entity one or more points. Every
generated item carries a comment naming its source line; whatever cannot be carried
over is listed at the end with the reason (`Conversion.left_out`), and so are the
things that behave differently here (`Conversion.notes`).

Home Assistant's own rules are followed where they decide a value: `precision`
defaults to 2 decimals for floats and `custom` and 0 for integers (an integer with a
fractional `scale` is still rounded to 0 decimals there), `swap` reverses bytes and
registers before decoding, a `custom` structure is unpacked as written (no byte order:
the machine's own, little-endian), a binary sensor on a register is its lowest bit,
`slave` wins over `device_address` and both default to 1, `scan_interval` defaults to
15 s.

Pure: text and files in, text out. The correspondences it shares with `check`
(input and write types, `swap`, renamed keys, the clamps) are `bridge.hakeys`'s
tables; the whole key table, for users, is in `docs/migrating.md`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bridge.hakeys import AS_READ, CLAMPS, INPUT_TYPES, RENAMED, SWAPS, WRITE_TYPES
from bridge.hass import slugify
from bridge.model import DataType

DEFAULT_HUB = "modbus_hub"  # Home Assistant's name of a hub without one
DEFAULT_SCAN_INTERVAL = 15  # seconds, Home Assistant's default
DEFAULT_TIMEOUT = 3  # seconds, Home Assistant's default per request
FLOAT_TYPES = ("float16", "float32", "float64")
# Home Assistant's numeric data types that are ours by the same name
NUMBER_TYPES = tuple(t.value for t in DataType if t.is_numeric)
# struct format characters of a `custom` structure that are one of our types
STRUCT_TYPES = {
    "h": "int16",
    "H": "uint16",
    "i": "int32",
    "I": "uint32",
    "l": "int32",
    "L": "uint32",
    "q": "int64",
    "Q": "uint64",
    "f": "float32",
    "d": "float64",
}
TEMPERATURE_UNITS = {"C": "°C", "F": "°F", "K": "K"}
PLATFORMS = ("sensors", "binary_sensors", "switches", "lights", "fans", "covers", "climates")


class ImportError_(Exception):
    """The file cannot be read as a Home Assistant modbus configuration at all."""


# ---------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Tagged:
    """A value behind a Home Assistant tag (`!secret`, `!include`, ...), resolved only
    when the modbus part of the file reaches it: an unrelated `!secret` elsewhere in
    `configuration.yaml` never has to resolve."""

    tag: str
    value: str
    file: Path
    line: int


class Map(dict[str, Any]):
    """A YAML mapping that remembers where it was written."""

    file: Path
    line: int


class Seq(list[Any]):
    """A YAML sequence that remembers where it was written."""

    file: Path
    line: int


class _Loader(yaml.SafeLoader):
    """Home Assistant's YAML: YAML 1.1 with its tags kept as `Tagged` values."""

    path: Path


def _mapping(loader: _Loader, node: yaml.MappingNode) -> Map:
    loader.flatten_mapping(node)
    out = Map()
    for key_node, value_node in node.value:
        out[str(loader.construct_object(key_node, deep=True))] = loader.construct_object(
            value_node, deep=True
        )
    out.file, out.line = loader.path, node.start_mark.line + 1
    return out


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> Seq:
    out = Seq(loader.construct_object(n, deep=True) for n in node.value)
    out.file, out.line = loader.path, node.start_mark.line + 1
    return out


def _tagged(loader: _Loader, suffix: str, node: yaml.Node) -> Tagged:
    value = node.value if isinstance(node, yaml.ScalarNode) else ""
    return Tagged("!" + suffix, str(value), loader.path, node.start_mark.line + 1)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)
_Loader.add_multi_constructor("!", _tagged)


def read_yaml(path: Path) -> Any:
    """One YAML file, its Home Assistant tags kept for later."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportError_(f"{path}: cannot read: {exc}") from None
    loader = _Loader(text)
    loader.path = path
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ImportError_(f"{path}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def _secrets(folder: Path) -> dict[str, Any]:
    path = folder / "secrets.yaml"
    if not path.is_file():
        return {}
    data = read_yaml(path)
    return dict(data) if isinstance(data, dict) else {}


def resolve(value: Any, depth: int = 0) -> Any:
    """`!secret NAME` from `secrets.yaml` in the folder of the file that says it,
    `!include FILE` relative to it; any other tag is refused (`ImportError_`)."""
    if depth > 20:
        raise ImportError_("!include nested more than 20 deep (a file including itself?)")
    if isinstance(value, Tagged):
        where = f"{value.file.name}:{value.line}"
        if value.tag == "!secret":
            secrets = _secrets(value.file.parent)
            if value.value not in secrets:
                raise ImportError_(
                    f"{where}: !secret {value.value}: not in {value.file.parent / 'secrets.yaml'}"
                    " (copy secrets.yaml beside the file, or write the value in)"
                )
            return resolve(secrets[value.value], depth + 1)
        if value.tag == "!include":
            return resolve(read_yaml(value.file.parent / value.value), depth + 1)
        raise ImportError_(
            f"{where}: {value.tag} {value.value}: not supported by the importer (only "
            "!include and !secret): write the part it stands for into the file"
        )
    if isinstance(value, Map):
        out = Map((k, resolve(v, depth)) for k, v in value.items())
        out.file, out.line = value.file, value.line
        return out
    if isinstance(value, Seq):
        seq = Seq(resolve(v, depth) for v in value)
        seq.file, seq.line = value.file, value.line
        return seq
    return value


def hubs_of(data: Any, path: Path) -> list[Map]:
    """The hubs of a file: `configuration.yaml` (its `modbus:` key), the included list of
    hubs itself, or one hub."""
    data = resolve(data["modbus"] if isinstance(data, Map) and "modbus" in data else data)
    if isinstance(data, Map) and "type" in data:
        data = [data]
    if not isinstance(data, list) or not all(isinstance(h, Map) for h in data) or not data:
        raise ImportError_(
            f"{path}: no Home Assistant modbus configuration found (a `modbus:` key, or a "
            "list of hubs with `type:`)"
        )
    return list(data)


# ------------------------------------------------------------------------- converting


@dataclass(frozen=True)
class Problem:
    """Something left out of the import, or carried over with a difference."""

    where: str  # file:line
    what: str  # e.g. "sensors 'Power'"
    reason: str

    def describe(self) -> str:
        return f"{self.where}: {self.what}: {self.reason}"


@dataclass
class _Point:
    """One point of the output: YAML keys in order, and its source line."""

    source: str
    keys: dict[str, Any]
    interval: int = DEFAULT_SCAN_INTERVAL


@dataclass
class _Device:
    hub: str
    unit: int
    source: str
    points: list[_Point] = field(default_factory=list)
    write_multiple: bool = False


@dataclass(frozen=True)
class Conversion:
    """The configuration text, with what was left out and what behaves differently."""

    text: str
    left_out: tuple[Problem, ...]
    notes: tuple[Problem, ...]
    hosts: int
    devices: int
    points: int


def _where(item: Map) -> str:
    return f"{item.file.name}:{item.line}"


class _Converter:
    def __init__(self) -> None:
        self.left_out: list[Problem] = []
        self.notes: list[Problem] = []
        self.hosts: list[tuple[str, dict[str, Any]]] = []
        self.devices: dict[tuple[str, int], _Device] = {}

    # -- hubs

    def hub(self, hub: Map) -> None:
        try:
            self._hub(hub)
        except _LeftOut as exc:
            self._drop(hub, f"hub '{hub.get('name', DEFAULT_HUB)}'", str(exc))

    def _hub(self, hub: Map) -> None:
        name = _name(str(hub.get("name", DEFAULT_HUB)))
        what = f"hub '{hub.get('name', DEFAULT_HUB)}'"
        kind = str(hub.get("type", ""))
        keys: dict[str, Any] = {"name": name}
        if kind in ("tcp", "rtuovertcp"):
            if not hub.get("host"):
                raise _LeftOut("no host")
            keys["address"] = hub.get("host")
            keys["port"] = hub.get("port", 502)
            if kind == "rtuovertcp":
                keys["framer"] = "rtu"
        elif kind == "serial":
            if str(hub.get("method", "rtu")) != "rtu":
                raise _LeftOut("method: ascii: the bridge speaks Modbus RTU only")
            if hub.get("bytesize", 8) not in (7, 8):
                raise _LeftOut("bytesize 5 or 6: the bridge takes 7 or 8")
            keys["serial"] = hub.get("port")
            keys["baudrate"] = hub.get("baudrate", 9600)
            keys["parity"] = str(hub.get("parity", "N"))
            keys["stopbits"] = hub.get("stopbits", 1)
            keys["bytesize"] = hub.get("bytesize", 8)
        elif kind == "udp":
            raise _LeftOut("type: udp: the bridge speaks Modbus over TCP and serial lines only")
        else:
            raise _LeftOut(f"type: {kind or '(none)'}: not a Modbus hub type")
        keys["timeout"] = f"{hub.get('timeout', DEFAULT_TIMEOUT)}s"
        if hub.get("message_wait_milliseconds") is not None:
            keys["pause"] = f"{hub['message_wait_milliseconds']}ms"
        if hub.get("delay"):
            self._note(hub, what, "delay: the bridge does not wait after connecting")
        if any(h[0] == name for h in self.hosts):
            raise _LeftOut(f"a second hub named '{name}'")
        self.hosts.append((name, {"_source": _where(hub), **keys}))
        for platform in PLATFORMS:
            for entity in _items(hub.get(platform)):
                self.entity(name, platform, entity)

    def entity(self, hub: str, platform: str, item: Any) -> None:
        if not isinstance(item, Map):
            return
        what = f"{platform} '{item.get('name', '?')}'"
        unit = item.get("slave")
        if unit is None:
            unit = item.get("device_address", 1)
        if not isinstance(unit, int):
            self._drop(item, what, f"slave {unit!r} is not a number")
            return
        device = self.devices.get((hub, unit))
        if device is None:
            device = self.devices[hub, unit] = _Device(hub, unit, _where(item))
        convert = {
            "sensors": self.sensor,
            "binary_sensors": self.binary_sensor,
            "switches": self.switch,
            "lights": self.switch,
            "fans": self.switch,
            "covers": self.cover,
            "climates": self.climate,
        }[platform]
        try:
            points = convert(item, what, device)
        except _LeftOut as exc:
            self._drop(item, what, str(exc))
            return
        interval = int(item.get("scan_interval", DEFAULT_SCAN_INTERVAL))
        if interval <= 0:
            self._note(
                item, what, "scan_interval: 0 (never polled there): polled with its device here"
            )
            interval = 0
        for point in points:
            point.interval = interval
            device.points.append(point)
        for key, reason in _IGNORED.items():
            if item.get(key) is not None:
                self._drop(item, f"{what} {key}", reason)
        for key in ("unique_id", "lazy_error_count"):
            if item.get(key) is not None:
                self._note(item, what, f"{key}: not needed here; the entity ids are the bridge's")

    # -- platforms

    def sensor(self, item: Map, what: str, device: _Device) -> list[_Point]:
        keys = self._struct(item)
        keys.update(_ha_keys(item, ("unit_of_measurement", "device_class", "state_class")))
        return _repeat(item, keys)

    def binary_sensor(self, item: Map, what: str, device: _Device) -> list[_Point]:
        table = INPUT_TYPES.get(str(item.get("input_type", "coil")))
        if table is None:
            raise _LeftOut(f"input_type {item.get('input_type')!r} is not a Modbus table")
        keys: dict[str, Any] = {"table": table, "address": int(item["address"])}
        if table in ("holding", "input"):
            keys["type"] = "uint16"
            keys["bit"] = 0  # Home Assistant: the register's lowest bit
        keys.update(_ha_keys(item, ("device_class",)))
        return _repeat(item, keys)

    def switch(self, item: Map, what: str, device: _Device) -> list[_Point]:
        write_type = str(item.get("write_type", "holding"))
        on, off = int(item.get("command_on", 1)), int(item.get("command_off", 0))
        address = int(item["address"])
        verify = item.get("verify", _ABSENT)
        if verify is None:  # `verify:` with nothing: read back where it writes
            verify = Map()
            verify.file, verify.line = item.file, item.line
        if write_type not in WRITE_TYPES:
            raise _LeftOut(f"write_type {write_type!r} is not a table one can write")
        write_table, multiple = WRITE_TYPES[write_type]
        keys: dict[str, Any] = {"table": write_table, "address": address}
        if write_table == "holding":
            keys["type"] = "uint16"
        if multiple:  # Home Assistant writes this one with function 15 or 16
            device.write_multiple = True
            function = 15 if write_table == "coil" else 16
            self._note(
                item, what, f"write_type: {write_type}: the device writes with function {function}"
            )
        if isinstance(verify, Map):
            read_table = INPUT_TYPES.get(str(verify.get("input_type", write_type.rstrip("s"))))
            read_address = int(verify.get("address", address))
            if read_table is None:
                raise _LeftOut(f"verify.input_type {verify.get('input_type')!r}")
            if (read_table, read_address) != (keys["table"], address):
                keys = {"table": read_table, "address": read_address}
                keys["write_table"] = write_table
                keys["write_address"] = address
                if read_table in ("holding", "input"):
                    keys["type"] = "uint16"
            states_on = [int(v) for v in _items(verify.get("state_on", [on]))]
            states_off = [int(v) for v in _items(verify.get("state_off", [off]))]
            if verify.get("delay"):
                self._note(item, what, "verify.delay: the bridge reads back at once")
        else:
            states_on, states_off = [on], [off]
            self._note(
                item,
                what,
                "no verify: Home Assistant assumes the state it sent; the bridge reads it",
            )
        if keys.get("type") != "uint16":
            keys.update(_ha_keys(item, ("device_class",)))  # a bit: a switch entity
        elif states_on == [on] == [1] and states_off == [off] == [0]:
            keys["type"] = "bool"  # 1 and 0: a plain switch (non-zero reads as on)
            keys.update(_ha_keys(item, ("device_class",)))
        else:
            if len(states_on) > 1 or len(states_off) > 1:
                self._note(item, what, "several verify states: writes send command_on/off")
            keys["values"] = dict.fromkeys(states_on, "on") | dict.fromkeys(states_off, "off")
        keys["writable"] = True
        return [_Point(_where(item), {"name": _name(str(item["name"])), **_display(item), **keys})]

    def cover(self, item: Map, what: str, device: _Device) -> list[_Point]:
        address = int(item["address"])
        if str(item.get("input_type", "holding")) == "coil":
            return [
                _Point(
                    _where(item),
                    {
                        "name": _name(str(item["name"])),
                        **_display(item),
                        "table": "coil",
                        "address": address,
                        "writable": True,
                        "values": {0: "closed", 1: "open"},
                    },
                )
            ]
        labels = {
            int(item.get("state_closed", 0)): "closed",
            int(item.get("state_open", 1)): "open",
            int(item.get("state_opening", 2)): "opening",
            int(item.get("state_closing", 3)): "closing",
        }
        keys: dict[str, Any] = {"table": "holding", "address": address, "type": "uint16"}
        if item.get("status_register") is not None:
            keys["table"] = str(item.get("status_register_type", "holding"))
            keys["address"] = int(item["status_register"])
            keys["write_table"] = "holding"
            keys["write_address"] = address
        keys.update(writable=True, values=labels)
        self._note(item, what, "a cover: a point with open/closed labels, not a cover entity")
        return [_Point(_where(item), {"name": _name(str(item["name"])), **_display(item), **keys})]

    def climate(self, item: Map, what: str, device: _Device) -> list[_Point]:
        name = _name(str(item["name"]))
        unit = TEMPERATURE_UNITS.get(str(item.get("temperature_unit", "C")), "°C")
        temperature = {"unit": unit, "device_class": "temperature"}
        current = self._struct(item)
        current.update(temperature, state_class="measurement")
        points = [_Point(_where(item), {"name": name, **_display(item), **current})]
        target = item.get("target_temp_register")
        registers = [target] if isinstance(target, int) else list(_items(target))
        if len(set(registers)) != 1:
            raise _LeftOut(
                "target_temp_register with one register per HVAC mode: name each as a point"
            )
        setpoint = self._struct(item, table="holding", address=int(registers[0]))
        setpoint.update(temperature)
        setpoint.update(writable=True, min=item.get("min_temp", 5), max=item.get("max_temp", 35))
        points.append(_Point(_where(item), {"name": f"{name}_target", **setpoint}))
        if item.get("target_temp_write_registers") or item.get("write_registers"):
            device.write_multiple = True
        for key, suffix, table, prefix in (
            ("hvac_mode_register", "mode", "holding", "state_"),
            ("hvac_action_register", "action", None, "action_"),
            ("fan_mode_register", "fan_mode", "holding", "state_fan_"),
            ("swing_mode_register", "swing_mode", "holding", "swing_mode_state_"),
        ):
            register = item.get(key)
            if isinstance(register, Map):
                points.append(self._mode(register, f"{name}_{suffix}", key, table, prefix))
        if item.get("hvac_onoff_register") is not None:
            on, off = int(item.get("hvac_on_value", 1)), int(item.get("hvac_off_value", 0))
            onoff = {"table": "holding", "address": int(item["hvac_onoff_register"])}
            onoff.update(type="uint16", writable=True, values={on: "on", off: "off"})
            points.append(_Point(_where(item), {"name": f"{name}_onoff", **onoff}))
        if item.get("hvac_onoff_coil") is not None:
            coil = {"table": "coil", "address": int(item["hvac_onoff_coil"]), "writable": True}
            points.append(_Point(_where(item), {"name": f"{name}_onoff", **coil}))
        self._note(item, what, "a climate: points for its registers, not a climate entity")
        return points

    def _mode(self, register: Map, name: str, key: str, table: str | None, prefix: str) -> _Point:
        address = register.get("address")
        if not isinstance(address, int):
            raise _LeftOut(f"{key}.address: one register per mode is not supported")
        labels: dict[int, str] = {}
        for state, raw in dict(register.get("values") or {}).items():
            label = state.removeprefix(prefix)
            for value in _items(raw):
                labels.setdefault(int(value), label)
        keys: dict[str, Any] = {"table": table or str(register.get("input_type", "holding"))}
        keys.update(address=address, type="uint16", values=labels)
        if table is not None:
            keys["writable"] = True
        return _Point(_where(register), {"name": name, **keys})

    # -- shared

    def _struct(
        self, item: Map, table: str | None = None, address: int | None = None
    ) -> dict[str, Any]:
        """table, address, type, orders, scale, offset and precision of a struct entity."""
        data_type = str(item.get("data_type", "int16"))
        if data_type == "int":
            data_type = "int16"
        swap = item.get("swap")
        keys: dict[str, Any] = {
            "table": table or INPUT_TYPES.get(str(item.get("input_type", "holding")), "holding"),
            "address": int(item["address"]) if address is None else address,
        }
        little_bytes, little_words = SWAPS.get(str(swap), (False, False))
        custom = data_type == "custom"
        if custom:
            structure = str(item.get("structure", ""))
            data_type, little = _custom(structure, int(item.get("count", 0)))
            if little:  # the whole byte string reversed
                little_bytes, little_words = not little_bytes, not little_words
        if data_type == "float16":
            raise _LeftOut("data_type: float16: the bridge has no 16-bit float type")
        if data_type == "string":
            keys.update(type="string", length=int(item.get("count", 1)))
        elif data_type in NUMBER_TYPES:
            keys["type"] = data_type
        else:
            raise _LeftOut(f"data_type {data_type!r} is not a Home Assistant data type")
        if little_bytes:
            keys["byte_order"] = "little"
        if little_words and _width(data_type) > 1:
            keys["word_order"] = "little"
        if data_type == "string":
            return keys
        scale, offset = float(item.get("scale", 1)), float(item.get("offset", 0))
        if scale != 1:
            keys["scale"] = _number(scale)
        if offset != 0:
            keys["offset"] = _number(offset)
        precision = item.get("precision")
        if data_type in FLOAT_TYPES or custom:  # Home Assistant: 2 unless an integer type
            keys["precision"] = 2 if precision is None else int(precision)
        elif precision is not None or scale != int(scale) or offset != int(offset):
            keys["precision"] = 0 if precision is None else int(precision)
        return keys

    def _drop(self, item: Map, what: str, reason: str) -> None:
        self.left_out.append(Problem(_where(item), what, reason))

    def _note(self, item: Map, what: str, reason: str) -> None:
        self.notes.append(Problem(_where(item), what, reason))


class _LeftOut(Exception):
    """An entity that cannot be carried over (the reason)."""


_ABSENT = object()  # no `verify` key at all (not `verify:` with nothing)
_IGNORED = {
    **{key: f"Home Assistant clamps the value to {key}; {AS_READ}" for key in CLAMPS},
    "nan_value": "the bridge publishes the raw number where Home Assistant shows unknown",
    "zero_suppress": "the bridge publishes small values as they are (a `deadband` limits "
    "how often they are sent)",
}


def _items(value: Any) -> Iterator[Any]:
    if value is None:
        return iter(())
    return iter(value) if isinstance(value, list) else iter((value,))


def _custom(structure: str, count: int) -> tuple[str, bool]:
    """(our type, little-endian) of a `custom` structure that is one value of our types.

    Home Assistant unpacks the registers' bytes with the structure as written. Without
    a byte order, or with `@` or `=`, that is the order of the machine it runs on:
    little-endian on every machine it supports (x86-64, ARM). A native `l`/`L` is that
    machine's long, 4 or 8 bytes: Home Assistant checked it against `count` there, so
    `count` says which."""
    match = re.fullmatch(r"([@=<>!]?)(\d*)([a-zA-Z?])", structure.strip())
    if match is None or (match.group(3) != "s" and match.group(2) not in ("", "1")):
        raise _LeftOut(
            f"data_type: custom with structure {structure!r}: the bridge reads one value per "
            "point; write one point per value"
        )
    order, repeat, char = match.groups()
    if char == "s":
        if int(repeat or 1) != count * 2:
            raise _LeftOut(f"structure {structure!r} does not fill count: {count} registers")
        return "string", False
    if char == "e":
        raise _LeftOut(f"structure {structure!r}: the bridge has no 16-bit float type")
    ours = STRUCT_TYPES.get(char)
    if ours is None:
        raise _LeftOut(f"structure {structure!r}: {char!r} is not a type of the bridge")
    native = order in ("", "@")
    if char in "lL" and native and count == 4:
        ours = ours.replace("32", "64")  # a 64-bit machine's long
    if DataType(ours).width != count:
        raise _LeftOut(f"structure {structure!r} does not fill count: {count} registers")
    return ours, order in ("", "@", "=", "<")


def _repeat(item: Map, keys: dict[str, Any]) -> list[_Point]:
    """The entity's point, and one more per `slave_count` / `virtual_count` (Home
    Assistant's extra entities at the following addresses)."""
    extra = int(item.get("slave_count") or item.get("virtual_count") or 0)
    width = int(keys["length"]) if keys.get("type") == "string" else _width(str(keys.get("type")))
    name = _name(str(item["name"]))
    points = [_Point(_where(item), {"name": name, **_display(item), **keys})]
    for i in range(1, extra + 1):
        more = dict(keys, address=keys["address"] + i * width)
        points.append(
            _Point(
                _where(item),
                {"name": f"{name}_{i}", "display_name": f"{item['name']} {i}", **more},
            )
        )
    return points


def _display(item: Map) -> dict[str, str]:
    text = str(item["name"])
    return {} if _name(text) == text else {"display_name": text}


def _ha_keys(item: Map, names: tuple[str, ...]) -> dict[str, Any]:
    return {RENAMED.get(k, k): item[k] for k in names if item.get(k) is not None}


def _width(data_type: str) -> int:
    """Registers of one of our types by name; 1 for one that is not (a bit)."""
    try:
        return DataType(data_type).width
    except ValueError:
        return 1


def _name(text: str) -> str:
    """A point, device or host name: Home Assistant's slug of the entity's name."""
    return slugify(text) or "unnamed"


def _number(value: float) -> int | float:
    return int(value) if value == int(value) else value


# -------------------------------------------------------------------------- writing


def convert(hubs: list[Map], source: Path) -> Conversion:
    """The bridge's configuration for these hubs."""
    conv = _Converter()
    for item in hubs:
        conv.hub(item)
    lines = [
        f"# Imported from Home Assistant's modbus configuration in {source.name}",
        "# by `modbus-bridge import homeassistant`. Check it: `modbus-bridge check -c FILE`.",
        "version: 1",
        "",
        "mqtt:",
        "  host: 127.0.0.1          # your broker",
        "",
        "homeassistant:",
        "  enabled: true            # the entities appear in Home Assistant by discovery",
        "",
        "hosts:",
    ]
    used = {name for name, _ in conv.hosts}
    for _, host in conv.hosts:
        lines += _item(host, indent=4)
    lines += ["", "devices:"]
    per_hub = Counter(hub for hub, _ in conv.devices)
    names: set[str] = set()
    points = 0
    for (hub, unit), device in conv.devices.items():
        if hub not in used or not device.points:
            continue
        name = hub if per_hub[hub] == 1 else f"{hub}-{unit}"
        while name in names:
            name += "_"
        names.add(name)
        intervals = Counter(p.interval for p in device.points if p.interval)
        interval = intervals.most_common(1)[0][0] if intervals else DEFAULT_SCAN_INTERVAL
        keys: dict[str, Any] = {
            "_source": device.source,
            "name": name,
            "host": hub,
            "unit": unit,
            "interval": f"{interval}s",
        }
        if device.write_multiple:
            keys["write_multiple"] = True
        lines += _item(keys, indent=4)
        lines.append("    points:")
        seen: Counter[str] = Counter()
        for point in device.points:
            out = dict(point.keys)
            seen[out["name"]] += 1
            if seen[out["name"]] > 1:
                out["name"] = f"{out['name']}_{seen[out['name']]}"
            if point.interval and point.interval != interval:
                out["interval"] = f"{point.interval}s"
            lines += _item({"_source": point.source, **out}, indent=8)
            points += 1
    left_out = tuple(conv.left_out)
    if left_out:
        lines += ["", f"# Left out ({len(left_out)}): carry these over by hand"]
        lines += [f"#   {p.describe()}" for p in left_out]
    if conv.notes:
        lines += ["", f"# Imported with a difference ({len(conv.notes)})"]
        lines += [f"#   {p.describe()}" for p in conv.notes]
    return Conversion(
        "\n".join(lines) + "\n",
        left_out,
        tuple(conv.notes),
        len(conv.hosts),
        len(names),
        points,
    )


def _item(keys: dict[str, Any], indent: int) -> list[str]:
    """One list item: `- key: value` lines, the source line as a comment on the first."""
    source = keys.get("_source")
    out: list[str] = []
    for key, value in keys.items():
        if key == "_source":
            continue
        lead = " " * (indent - 2) + "- " if not out else " " * indent
        line = f"{lead}{key}: {_scalar(value)}"
        if not out and source:
            line = f"{line:<40} # {source}"
        out.append(line)
    return out


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):  # YAML 1.1 reads `1e-05` as text: always with a dot
        text = repr(value)
        return text if "e" not in text else f"{value:.15f}".rstrip("0")
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_scalar(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./-]*", text) and text.lower() not in _YAML_WORDS:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def import_file(path: Path) -> Conversion:
    """Read a Home Assistant YAML file and convert its modbus configuration."""
    return convert(hubs_of(read_yaml(path), path), path)
