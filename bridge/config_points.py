"""Reading the points of a device or a template: each point key as `model.Point`
declares it, then the rules between the keys of one point and those of the Home
Assistant entity it becomes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge import hass
from bridge.codec import int_range
from bridge.config_nodes import (
    Fields,
    Node,
    NodeReader,
    is_null,
    level_message,
    parse_int,
    show,
    suggest,
)
from bridge.model import (
    POINT_KEYS,
    DataType,
    EntityCategory,
    Only,
    Point,
    PointKey,
    Read,
    Table,
)
from bridge.topics import RESERVED_POINT_NAMES

DEFAULT_INTERVAL = 1.0  # seconds, when a device gives no `interval`
POINT_YAML_KEYS = tuple(key.yaml for _, key in POINT_KEYS)  # declared on `model.Point`
_BIT_TYPES = (DataType.INT16, DataType.UINT16, DataType.BOOL)
_ADDRESS_SPACE = 65536


@dataclass(frozen=True)
class PointSpec:
    """One point as written (template or device), checked on its own: the `Point`
    fields it gives. The device fills in the rest (`resolve`)."""

    given: Mapping[str, Any]

    @property
    def name(self) -> str:
        name: str = self.given["name"]
        return name


class PointReader(NodeReader):
    """The point lists of devices and templates."""

    def points(self, node: Node, owner: Fields) -> tuple[list[PointSpec], int]:
        """The valid points of a `points:` list, and how many entries it has."""
        path = owner.sub("points")
        nodes = self.sequence(node, path)
        if nodes is None:
            return [], 0
        specs: list[PointSpec] = []
        first: dict[str, int] = {}
        for i, pnode in enumerate(nodes):
            ppath = f"{path}[{i}]"
            spec = self.point(pnode, ppath)
            if spec is None:
                continue
            if spec.name in first:
                self.report(
                    pnode,
                    f"{ppath}.name",
                    f"duplicate point name '{spec.name}' (also {path}[{first[spec.name]}])",
                )
                continue
            first[spec.name] = i
            specs.append(spec)
        return specs, len(nodes)

    def point(self, node: Node, path: str) -> PointSpec | None:
        f = self.mapping(node, path, POINT_YAML_KEYS)
        if f is None:
            return None
        before = len(self.problems)
        given: dict[str, Any] = {}
        value_nodes: list[tuple[int, str, Node]] = []
        for field_name, key in POINT_KEYS:
            conv = self.point_reader(key)
            value = self.req(f, key.yaml, conv) if key.required else self.get(f, key.yaml, conv)
            if value is None:
                continue
            if key.read is Read.VALUES:
                value_nodes = value
                value = tuple((raw, label) for raw, label, _ in value_nodes)
            given[field_name] = value
        # rules of one key
        name = given.get("name")
        if name is not None:
            why = level_message(name, RESERVED_POINT_NAMES)
            if why is not None:
                self.report(f.value("name"), f.sub("name"), why)
        if given.get("scale") == 0:
            self.report(f.value("scale"), f.sub("scale"), "must not be zero")
        if given.get("deadband", 0) < 0:
            self.report(f.value("deadband"), f.sub("deadband"), "must not be negative")
        for text_key in ("display_name", "device_class", "icon"):
            if text_key in given and not given[text_key].strip():
                self.report(f.value(text_key), f.sub(text_key), "must not be empty")
        table = given.get("table")
        if not f.has("type") and table is not None:
            if table.is_bits:
                given["type"] = DataType.BOOL
            else:
                self.report(
                    f.node, path, f"missing required key 'type' (for the {table.value} table)"
                )

        if not {"table", "address", "type"} <= given.keys():
            return None
        # the device's interval does not matter to the rules below
        point = Point(**{"name": "", "interval": DEFAULT_INTERVAL, **given})
        self.check_point(f, point, value_nodes)
        if len(self.problems) == before:  # the entity follows from a valid point
            self.check_homeassistant(f, point)
        if name is None or len(self.problems) > before:
            return None
        if point.writable:
            given.setdefault("write_table", default_write_table(point))
            given.setdefault("write_address", point.address)
        return PointSpec(given)

    def point_reader(self, key: PointKey) -> Callable[[Node, str], Any]:
        """The converter that reads a point key declared on `model.Point`."""
        match key.read:
            case Read.TEXT:
                return self.text
            case Read.NUMBER:
                return self.number
            case Read.INTEGER:
                return self.int_in(key.lo if key.lo is not None else 0, key.hi)
            case Read.BOOLEAN:
                return self.boolean
            case Read.DURATION:
                return self.duration
            case Read.CHOICE:
                what = key.yaml.replace("_", " ")
                return self.choice(type(key.choices[0]), what, key.choices)
            case Read.VALUES:
                return self.values

    def check_homeassistant(self, f: Fields, p: Point) -> None:
        """Rules of the Home Assistant keys: the entity the point becomes must take them.

        A bridge-wide `read_only` is not considered: switching it on must not make a
        config invalid (discovery then leaves out what a sensor cannot have)."""

        def bad(key: str, message: str) -> None:
            self.report(f.value(key), f.sub(key), message)

        kind = hass.platform(p)
        what = hass.describe(p)
        number = hass.is_number(p)
        dc = p.device_class
        if dc is not None and dc.strip():
            allowed = hass.device_classes(p)
            if dc not in hass.all_device_classes():
                hint = suggest(dc, allowed) or f" (for {what})"
                bad("device_class", f"unknown device class {show(dc)}{hint}")
                dc = None
            elif dc not in allowed:
                takes = f"; it takes: {', '.join(allowed)}" if 0 < len(allowed) <= 8 else ""
                bad("device_class", f"device class {show(dc)} does not apply to {what}{takes}")
                dc = None
        if dc is not None and p.unit is not None and number and dc in hass.UNITS:
            units = hass.UNITS[dc]
            if p.unit not in units:
                named = sorted(u for u in units if u is not None)
                takes = f"one of: {', '.join(named)}" if named else "no unit"
                bad(
                    "unit",
                    f"unit {show(p.unit)} does not fit device class '{dc}' (it takes {takes})",
                )
        sc = p.state_class
        if sc is not None:
            if kind is not hass.Platform.SENSOR or not number:
                bad("state_class", f"state_class applies to sensors of numbers, not to {what}")
            elif (
                dc is not None
                and dc in hass.STATE_CLASSES
                and sc.value not in hass.STATE_CLASSES[dc]
            ):
                fits = ", ".join(sorted(hass.STATE_CLASSES[dc])) or "none"
                bad(
                    "state_class",
                    f"state class '{sc.value}' does not fit device class '{dc}' (it takes: {fits})",
                )
        if p.entity_category is EntityCategory.CONFIG and kind in hass.READ_ONLY_PLATFORMS:
            bad(
                "entity_category",
                f"entity_category config is for controls; {what} can be diagnostic only",
            )
        if p.icon is not None and p.icon.strip() and ":" not in p.icon:
            bad("icon", f"expected an icon such as mdi:flash (prefix:name), got {show(p.icon)}")
        if p.deadband is not None and p.values:
            bad(
                "deadband", "'deadband' does not apply to a point with values (it publishes labels)"
            )

    def values(self, node: Node, path: str) -> list[tuple[int, str, Node]] | None:
        f = self.mapping(node, path, None)
        if f is None:
            return None
        out: list[tuple[int, str, Node]] = []
        raws: dict[int, str] = {}
        labels: dict[str, int] = {}
        for key, (key_node, value_node) in f.items.items():
            sub = f.sub(key)
            raw = parse_int(key)
            if raw is None:
                self.report(key_node, sub, f"a raw value must be an integer, got {show(key)}")
                continue
            label = None if is_null(value_node) else self.text(value_node, sub)
            if not label:
                if label is not None or is_null(value_node):
                    self.report(value_node, sub, "the label must not be empty")
                continue
            if raw in raws:
                self.report(key_node, sub, f"raw value {raw} is listed more than once")
                continue
            if label in labels:
                self.report(
                    value_node,
                    sub,
                    f"label {show(label)} is also used for raw value {labels[label]}",
                )
                continue
            raws[raw] = label
            labels[label] = raw
            out.append((raw, label, key_node))
        return out  # the valid entries; the others are reported

    def check_point(self, f: Fields, p: Point, values: list[tuple[int, str, Node]]) -> None:
        """Rules between the keys of one point."""

        def bad(key: str, message: str) -> None:
            self.report(f.key_node(key), f.sub(key), message)

        t, table = p.type, p.table
        if table.is_bits and t is not DataType.BOOL:
            bad("type", f"points in the {table.value} table must be type bool, not {t.value}")
            return
        if table.is_bits and f.has("bit"):
            bad("bit", f"bit applies to holding/input registers, not the {table.value} table")
        if t is DataType.STRING and not f.has("length"):
            self.report(f.node, f.path, "missing required key 'length' (registers of the string)")
        if t is not DataType.STRING and f.has("length"):
            bad("length", f"length applies only to type string, not {t.value}")
        if p.bit is not None and t not in _BIT_TYPES:
            bad("bit", f"bit needs a 16-bit register type (int16, uint16 or bool), not {t.value}")
        for _, spec in POINT_KEYS:
            key = spec.yaml
            if spec.only is not Only.NUMERIC or not f.has(key):
                continue
            if not t.is_numeric:
                bad(key, f"'{key}' applies only to numeric types, not {t.value}")
            elif p.bit is not None:
                bad(key, f"'{key}' does not apply to a bit (it reads as true/false)")
        if f.has("values"):
            # raw -> label for integers, and for bools (0/1: coils, bits, bool registers)
            yields_bool = t is DataType.BOOL or p.bit is not None
            lo, hi = (0, 1) if yields_bool else (int_range(t) or (0, -1))
            if lo > hi:
                bad("values", f"values applies to integer and bool points, not {t.value}")
            elif f.has("scale") or f.has("offset"):
                bad("values", "values cannot be combined with scale or offset")
            else:
                what = "a bool (0 or 1)" if yields_bool else f"{t.value} ({lo}..{hi})"
                for raw, _label, key_node in values:
                    if not lo <= raw <= hi:
                        self.report(
                            key_node,
                            f"{f.sub('values')}.{key_node.value}",
                            f"raw value {raw} does not fit {what}",
                        )
        if p.minimum is not None and p.maximum is not None and p.minimum > p.maximum:
            bad("min", f"min ({p.minimum:g}) is greater than max ({p.maximum:g})")

        count = p.count
        if p.address + count > _ADDRESS_SPACE:
            bad("address", f"the point ends at {p.address + count - 1}, past 65535")

        for field_name, spec in POINT_KEYS:
            if not spec.needs_writable or not f.has(spec.yaml) or p.writable:
                continue
            if spec.read is not Read.BOOLEAN or getattr(p, field_name):  # `false` is harmless
                bad(spec.yaml, f"'{spec.yaml}' needs writable: true")
        if not p.writable:
            return
        if table in (Table.DISCRETE, Table.INPUT) and p.write_table is None:
            bad(
                "writable",
                f"the {table.value} table is read-only;"
                " set write_table (coil or holding) to write elsewhere",
            )
            return
        write_table = p.write_table or default_write_table(p)
        yields_bool = t is DataType.BOOL or p.bit is not None
        if write_table is Table.COIL and not yields_bool:
            bad("write_table", f"only a bool point can be written to a coil, not {t.value}")
        if p.mask_write:
            if p.bit is None:
                bad("mask_write", "mask_write needs bit")
            elif write_table is not Table.HOLDING:
                bad("mask_write", "mask_write writes a holding register")
        write_count = 1 if write_table is Table.COIL or yields_bool else count
        write_address = p.address if p.write_address is None else p.write_address
        if write_address + write_count > _ADDRESS_SPACE:
            where = "write_address" if f.has("write_address") else "address"
            bad(where, f"the write ends at {write_address + write_count - 1}, past 65535")


def default_write_table(p: Point) -> Table:
    return Table.COIL if p.table is Table.COIL else Table.HOLDING


def resolve(spec: PointSpec, device: Mapping[str, Any]) -> Point:
    """The point with the device's `interval`, `byte_order` and `word_order` where it
    gives none of its own."""
    return Point(**{**device, **spec.given})
