"""Reading the points of a device or a template: each point key as `model.Point`
declares it; the rules (`config_rules`: of one key, between the keys of one point,
of the Home Assistant entity it becomes) are reported at the key they are about."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge import hakeys
from bridge.config_nodes import (
    Fields,
    Node,
    NodeReader,
    is_null,
    parse_int,
    show,
)
from bridge.config_rules import (
    check_homeassistant,
    check_keys,
    check_point,
    check_scale_factors,
    default_write_table,
    numbering_hint,
    overlap_message,
    overlapping,
)
from bridge.model import (
    POINT_KEYS,
    DataType,
    Point,
    PointKey,
    Read,
)

DEFAULT_INTERVAL = 1.0  # seconds, when a device gives no `interval`
POINT_YAML_KEYS = tuple(key.yaml for _, key in POINT_KEYS)  # declared on `model.Point`


@dataclass(frozen=True)
class PointSpec:
    """One point as written (template, profile or device), checked on its own: the
    `Point` fields it gives. The device fills in the rest (`resolve`). `source`,
    `path` and `nodes` (YAML key -> value node) say where it was written, for the
    rules between the points of a device (`config_rules.check_scale_factors`)."""

    given: Mapping[str, Any]
    source: str = field(default="", compare=False)
    path: str = field(default="", compare=False)
    nodes: Mapping[str, Node] = field(default_factory=dict, compare=False, repr=False)

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
            spec, name = self.point(pnode, ppath)
            if name is None:
                continue
            if name in first:  # said beside the point's other problems, if it has any
                self.report(
                    pnode,
                    f"{ppath}.name",
                    f"duplicate point name '{name}' (also {path}[{first[name]}])",
                )
                continue
            first[name] = i
            if spec is not None:
                specs.append(spec)
        return specs, len(nodes)

    def point(self, node: Node, path: str) -> tuple[PointSpec | None, str | None]:
        """The point if it is valid, and its name if it has one even when it is not (so
        a name used twice is reported with every other problem)."""
        f = self.mapping(
            node, path, POINT_YAML_KEYS, known_as=functools.partial(hakeys.key_hint, hakeys.POINT)
        )
        if f is None:
            return None, None
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
        name = given.get("name")
        for k, message in check_keys(given):
            self.report(f.value(k), f.sub(k), message)
        table = given.get("table")
        if not f.has("type") and table is not None:
            if table.is_bits:
                given["type"] = DataType.BOOL
            else:
                self.report(
                    f.node, path, f"missing required key 'type' (for the {table.value} table)"
                )

        if not {"table", "address", "type"} <= given.keys():
            return None, name
        # the device's interval does not matter to the rules below
        point = Point(**{"name": "", "interval": DEFAULT_INTERVAL, **given})
        written = frozenset(k for k in f.items if f.has(k))
        for k, message in check_point(point, written):
            if k.startswith("values."):  # one entry of `values`: at its raw value
                raw = int(k.removeprefix("values."))
                key_node = next(n for r, _, n in value_nodes if r == raw)
                self.report(key_node, f"{f.sub('values')}.{key_node.value}", message)
            elif k:
                self.report(f.key_node(k), f.sub(k), message)
            else:
                self.report(f.node, f.path, message)
        if len(self.problems) == before:  # the entity follows from a valid point
            for k, message in check_homeassistant(point):
                self.report(f.value(k), f.sub(k), message)
        if name is None or len(self.problems) > before:
            return None, name
        if point.writable:
            given.setdefault("write_table", default_write_table(point))
            given.setdefault("write_address", point.address)
        nodes = {key: value for key, (_, value) in f.items.items()}
        return PointSpec(given, self.source, path, nodes), name

    def device_points(
        self,
        specs: Mapping[str, PointSpec],
        points: tuple[Point, ...],
        dropped: Mapping[str, tuple[Node, str]],
    ) -> None:
        """The rules between the points of one device, each reported where its point is
        written (the device, its template or a profile); `dropped`: the points the user
        took away (`drop`), and where."""
        for point_name, message in check_scale_factors(points):
            spec = specs[point_name]
            sf = spec.given["scale_factor"]
            if sf in dropped:  # where the user took it away
                drop_node, drop_path = dropped[sf]
                why = f"{show(sf)} is the scale factor of {point_name}: drop that too"
                self.report(drop_node, drop_path, why)
                continue
            where = spec.nodes.get("scale_factor")
            self.report(where, f"{spec.path}.scale_factor", message, source=spec.source)
        written = list(specs.values())
        for i, j in overlapping(points):
            spec = written[j]
            self.report(
                spec.nodes.get("address"),
                f"{spec.path}.address",
                overlap_message(points[i], points[j]),
                source=spec.source,
            )
        here = [k for k, s in enumerate(written) if s.source == self.source]  # not a profile's
        hint = numbering_hint([points[k] for k in here])
        if hint is not None:
            spec = written[here[hint[0]]]
            self.warn(spec.nodes.get("address"), f"{spec.path}.address", hint[1])

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
                hint = functools.partial(hakeys.value_hint, key.yaml)
                return self.choice(type(key.choices[0]), what, key.choices, known_as=hint)
            case Read.VALUES:
                return self.values

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


def resolve(spec: PointSpec, device: Mapping[str, Any]) -> Point:
    """The point with the device's `interval`, `byte_order` and `word_order` where it
    gives none of its own."""
    return Point(**{**device, **spec.given})
