"""The rules of a point's keys, as pure functions: a point in, findings out.

A finding is a pair (key, message): the YAML key it is about (`min`, not the field
name `minimum`), ``""`` for the point as a whole, or ``"values.<raw>"`` for one entry
of `values`. The reader (`config_points.PointReader`) puts each finding at the
position of its key. Each rule is one small function in a table, so a new rule is a
new row, and each can be tested on a `Point` built in a test, with no YAML.

`given` is the set of YAML keys the point writes with a value: a rule about a key
the user wrote (`scale` with `values`) must not fire on its default.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, Final

from bridge import hass
from bridge.codec import int_range
from bridge.config_nodes import level_message, show, suggest
from bridge.discovery import Owner, TooLong, id_problems
from bridge.model import (
    POINT_KEYS,
    BridgeConfig,
    DataType,
    EntityCategory,
    Only,
    Point,
    Read,
    Table,
)
from bridge.topics import RESERVED_POINT_NAMES

Finding = tuple[str, str]  # (YAML key, or "" for the point, or "values.<raw>"; message)
Rule = Callable[[Point, Collection[str]], Iterator[Finding]]

BIT_TYPES = (DataType.INT16, DataType.UINT16, DataType.BOOL)
ADDRESS_SPACE = 65536


def default_write_table(p: Point) -> Table:
    return Table.COIL if p.table is Table.COIL else Table.HOLDING


# -- rules of one key (before the point is whole: `given` maps field names to values)


def check_keys(given: Mapping[str, Any]) -> list[Finding]:
    """Rules of single keys, on the values read so far (field name -> value)."""
    found: list[Finding] = []
    name = given.get("name")
    if name is not None:
        why = level_message(name, RESERVED_POINT_NAMES)
        if why is not None:
            found.append(("name", why))
    if given.get("scale") == 0:
        found.append(("scale", "must not be zero"))
    if given.get("deadband", 0) < 0:
        found.append(("deadband", "must not be negative"))
    for text_key in ("display_name", "device_class", "icon"):
        if text_key in given and not given[text_key].strip():
            found.append((text_key, "must not be empty"))
    return found


# -- rules between the keys of one point


def _bits_are_bool(p: Point, given: Collection[str]) -> Iterator[Finding]:
    if p.table.is_bits and p.type is not DataType.BOOL:
        yield "type", f"points in the {p.table.value} table must be type bool, not {p.type.value}"


def _bit(p: Point, given: Collection[str]) -> Iterator[Finding]:
    if p.table.is_bits and "bit" in given:
        yield "bit", f"bit applies to holding/input registers, not the {p.table.value} table"
    if p.bit is not None and p.type not in BIT_TYPES:
        yield (
            "bit",
            f"bit needs a 16-bit register type (int16, uint16 or bool), not {p.type.value}",
        )


def _length(p: Point, given: Collection[str]) -> Iterator[Finding]:
    if p.type is DataType.STRING and "length" not in given:
        yield "", "missing required key 'length' (registers of the string)"
    if p.type is not DataType.STRING and "length" in given:
        yield "length", f"length applies only to type string, not {p.type.value}"


def _numeric_only(p: Point, given: Collection[str]) -> Iterator[Finding]:
    for _, spec in POINT_KEYS:
        key = spec.yaml
        if spec.only is not Only.NUMERIC or key not in given:
            continue
        if not p.type.is_numeric:
            yield key, f"'{key}' applies only to numeric types, not {p.type.value}"
        elif p.bit is not None:
            yield key, f"'{key}' does not apply to a bit (it reads as true/false)"


def _values(p: Point, given: Collection[str]) -> Iterator[Finding]:
    if "values" not in given:
        return
    # raw -> label for integers, and for bools (0/1: coils, bits, bool registers)
    yields_bool = p.type is DataType.BOOL or p.bit is not None
    lo, hi = (0, 1) if yields_bool else (int_range(p.type) or (0, -1))
    if lo > hi:
        yield "values", f"values applies to integer and bool points, not {p.type.value}"
    elif "scale" in given or "offset" in given:
        yield "values", "values cannot be combined with scale or offset"
    else:
        what = "a bool (0 or 1)" if yields_bool else f"{p.type.value} ({lo}..{hi})"
        for raw, _label in p.values:
            if not lo <= raw <= hi:
                yield f"values.{raw}", f"raw value {raw} does not fit {what}"


def _scale_factor(p: Point, given: Collection[str]) -> Iterator[Finding]:
    if p.scale_factor is not None and p.values:
        yield "scale_factor", "scale_factor cannot be combined with values (labels are not scaled)"
    if p.scale_factor == p.name:
        yield "scale_factor", f"{show(p.name)} cannot be its own scale factor"


def _min_max(p: Point, given: Collection[str]) -> Iterator[Finding]:
    if p.minimum is not None and p.maximum is not None and p.minimum > p.maximum:
        yield "min", f"min ({p.minimum:g}) is greater than max ({p.maximum:g})"


def _address_end(p: Point, given: Collection[str]) -> Iterator[Finding]:
    if p.address + p.count > ADDRESS_SPACE:
        yield "address", f"the point ends at {p.address + p.count - 1}, past 65535"


def _needs_writable(p: Point, given: Collection[str]) -> Iterator[Finding]:
    for field_name, spec in POINT_KEYS:
        if not spec.needs_writable or spec.yaml not in given or p.writable:
            continue
        if spec.read is not Read.BOOLEAN or getattr(p, field_name):  # `false` is harmless
            yield spec.yaml, f"'{spec.yaml}' needs writable: true"


def _write(p: Point, given: Collection[str]) -> Iterator[Finding]:
    if not p.writable:
        return
    t, table = p.type, p.table
    if table in (Table.DISCRETE, Table.INPUT) and p.write_table is None:
        yield (
            "writable",
            f"the {table.value} table is read-only;"
            " set write_table (coil or holding) to write elsewhere",
        )
        return
    write_table = p.write_table or default_write_table(p)
    yields_bool = t is DataType.BOOL or p.bit is not None
    if write_table is Table.COIL and not yields_bool:
        yield "write_table", f"only a bool point can be written to a coil, not {t.value}"
    if p.mask_write:
        if p.bit is None:
            yield "mask_write", "mask_write needs bit"
        elif write_table is not Table.HOLDING:
            yield "mask_write", "mask_write writes a holding register"
    write_count = 1 if write_table is Table.COIL or yields_bool else p.count
    write_address = p.address if p.write_address is None else p.write_address
    if write_address + write_count > ADDRESS_SPACE:
        where = "write_address" if "write_address" in given else "address"
        yield where, f"the write ends at {write_address + write_count - 1}, past 65535"


# The first rule alone decides when it finds something: the others assume its answer.
POINT_RULES: tuple[Rule, ...] = (
    _bits_are_bool,
    _bit,
    _length,
    _numeric_only,
    _values,
    _scale_factor,
    _min_max,
    _address_end,
    _needs_writable,
    _write,
)


def check_point(p: Point, given: Collection[str]) -> list[Finding]:
    """The rules between the keys of one point (`POINT_RULES`, in order)."""
    first, *rest = POINT_RULES
    found = list(first(p, given))
    if found:
        return found
    return [finding for rule in rest for finding in rule(p, given)]


# -- rules between the points of one device


def check_scale_factors(points: Sequence[Point]) -> list[tuple[str, str]]:
    """(point name, message) for each `scale_factor` that names no point of the device,
    or a point that is not a plain int16 register (the sf as read is the sf published,
    and a write scales with the value published), or one that has a scale factor
    itself (a chain, or a cycle)."""
    by_name = {p.name: p for p in points}
    found: list[tuple[str, str]] = []
    for p in points:
        name = p.scale_factor
        if name is None or name == p.name:  # its own: a rule of the point
            continue
        sf = by_name.get(name)
        if sf is None:
            hint = suggest(name, by_name) or ""
            found.append((p.name, f"unknown point {show(name)} of the device{hint}"))
            continue
        if sf.type is not DataType.INT16 or sf.table.is_bits or sf.bit is not None:
            what = f"a bit of {sf.type.value}" if sf.bit is not None else sf.type.value
            found.append(
                (p.name, f"the scale factor {show(name)} must be an int16 register, not {what}")
            )
        elif sf.scale_factor is not None:
            chain = [p.name, name]
            while chain[-1] in by_name and by_name[chain[-1]].scale_factor is not None:
                nxt = by_name[chain[-1]].scale_factor
                assert nxt is not None
                if nxt in chain:
                    chain.append(nxt)
                    break
                chain.append(nxt)
            if chain[-1] in chain[:-1]:
                loop = " -> ".join(chain[chain.index(chain[-1]) :])
                found.append((p.name, f"scale factors form a cycle: {loop}"))
            else:
                found.append(
                    (p.name, f"the scale factor {show(name)} has a scale factor of its own")
                )
        elif sf.scale != 1 or sf.offset != 0 or sf.values:
            found.append(
                (
                    p.name,
                    f"the scale factor {show(name)} must publish its raw value "
                    "(no scale, offset or values)",
                )
            )
    return found


# -- the Home Assistant entity the point becomes


def check_homeassistant(p: Point) -> list[Finding]:
    """Rules of the Home Assistant keys: the entity the point becomes must take them.

    A bridge-wide `read_only` is not considered: switching it on must not make a
    config invalid (discovery then leaves out what a sensor cannot have)."""
    found: list[Finding] = []
    kind = hass.platform(p)
    what = hass.describe(p)
    number = hass.is_number(p)
    dc = p.device_class
    if dc is not None and dc.strip():
        allowed = hass.device_classes(p)
        if dc not in hass.all_device_classes():
            hint = suggest(dc, allowed) or f" (for {what})"
            found.append(("device_class", f"unknown device class {show(dc)}{hint}"))
            dc = None
        elif dc not in allowed:
            takes = f"; it takes: {', '.join(allowed)}" if 0 < len(allowed) <= 8 else ""
            found.append(
                ("device_class", f"device class {show(dc)} does not apply to {what}{takes}")
            )
            dc = None
    if dc is not None and p.unit is not None and number and dc in hass.UNITS:
        units = hass.UNITS[dc]
        if p.unit not in units:
            named = sorted(u for u in units if u is not None)
            takes = f"one of: {', '.join(named)}" if named else "no unit"
            found.append(
                ("unit", f"unit {show(p.unit)} does not fit device class '{dc}' (it takes {takes})")
            )
    sc = p.state_class
    if sc is not None:
        if kind is not hass.Platform.SENSOR or not number:
            found.append(
                ("state_class", f"state_class applies to sensors of numbers, not to {what}")
            )
        elif dc is not None and dc in hass.STATE_CLASSES and sc.value not in hass.STATE_CLASSES[dc]:
            fits = ", ".join(sorted(hass.STATE_CLASSES[dc])) or "none"
            found.append(
                (
                    "state_class",
                    f"state class '{sc.value}' does not fit device class '{dc}' (it takes: {fits})",
                )
            )
    if p.entity_category is EntityCategory.CONFIG and kind in hass.READ_ONLY_PLATFORMS:
        found.append(
            (
                "entity_category",
                f"entity_category config is for controls; {what} can be diagnostic only",
            )
        )
    if p.icon is not None and p.icon.strip() and ":" not in p.icon:
        found.append(
            ("icon", f"expected an icon such as mdi:flash (prefix:name), got {show(p.icon)}")
        )
    if p.deadband is not None and p.values:
        found.append(
            ("deadband", "'deadband' does not apply to a point with values (it publishes labels)")
        )
    return found


# -- rules between the points of a device, and between devices


def _span(p: Point) -> str:
    last = p.end - 1
    where = f"{p.address}" if last == p.address else f"{p.address}..{last}"
    what = "" if p.table.is_bits else f", {p.type.value}"
    return f"{p.table.value} {where}{what}"


def overlapping(points: Sequence[Point]) -> list[tuple[int, int]]:
    """(i, j) with i < j for each point j whose registers (or bits) overlap those of an
    earlier point i of the same table, the first such i only. A point with
    `overlaps: true` overlaps on purpose; two bits of one register, or a bit and the
    register it is a bit of, do not overlap (one bit twice does)."""
    found: dict[int, int] = {}
    by_table: dict[Table, list[int]] = {}
    for i, p in enumerate(points):
        if not p.overlaps:
            by_table.setdefault(p.table, []).append(i)
    for indices in by_table.values():
        indices.sort(key=lambda i: (points[i].address, i))
        open_: list[int] = []  # earlier in address order, still covering the address
        for j in indices:
            q = points[j]
            open_ = [i for i in open_ if points[i].end > q.address]
            for i in open_:
                p = points[i]
                if (p.bit is None) != (q.bit is None) or (p.bit is not None and p.bit != q.bit):
                    continue
                first, second = min(i, j), max(i, j)
                if second not in found or found[second] > first:
                    found[second] = first
            open_.append(j)
    return sorted((i, j) for j, i in found.items())


def overlap_message(first: Point, second: Point) -> str:
    return (
        f"point {show(second.name)} ({_span(second)}) overlaps point {show(first.name)}"
        f" ({_span(first)}): a value takes the registers from its address on (its type's"
        " width); if both are meant, write overlaps: true on one of them"
    )


# 1-based register numbers of a manual ("4xxxx": holding 40001 is address 0), by table
_NUMBERED_FROM: Final = {Table.HOLDING: 40001, Table.INPUT: 30001}


def numbering_hint(points: Sequence[Point]) -> tuple[int, str] | None:
    """(index of the first such point, message) when points of a device sit at 40001 and
    above on the holding table (30001 on input): a manual's 1-based "4xxxx" register
    numbers rather than addresses. A hint only: some devices (SunSpec) really use them."""
    high = [
        (i, p)
        for i, p in enumerate(points)
        if p.table in _NUMBERED_FROM
        and _NUMBERED_FROM[p.table] <= p.address < _NUMBERED_FROM[p.table] + 9999
    ]
    if not high:
        return None
    i, p = high[0]
    base = _NUMBERED_FROM[p.table]
    digit = str(base)[0]
    others = len(high) - 1
    more = f", and subtract {base} from the {others} other point{'s' * (others > 1)}" * (others > 0)
    return i, (
        f'{p.table.value} {p.address} looks like a manual\'s 1-based "{digit}xxxx" register'
        f" number ({base} is address 0): if so, write address: {p.address - base}{more};"
        " a device whose registers really sit there (SunSpec) is right as written"
    )


def id_findings(config: BridgeConfig, entries: Mapping[str, int]) -> list[tuple[str | None, str]]:
    """(device, message) for names that Home Assistant discovery would map to one id, or
    to an entity id it refuses (`discovery.id_problems`); the device is the one whose
    name (or point) comes second. `entries`: each device's index in `devices`."""

    def entry(owner: Owner) -> str:
        index = entries.get(owner.device or "")
        return "" if index is None else f" (devices[{index}])"

    found_all: list[tuple[str | None, str]] = []
    for found in id_problems(config):
        owner = found.owner if isinstance(found, TooLong) else found.second
        if isinstance(found, TooLong):
            message = (
                f"{owner} gets an entity id of {len(found.ident)} characters "
                f"({found.ident[:48]}...); Home Assistant takes at most "
                f"{hass.MAX_ENTITY_ID} and would not create it: shorten the names"
            )
        elif found.what == "entity id":
            message = (
                f"{owner} gets the entity id {found.ident}, as {found.first}"
                f"{entry(found.first)} does: Home Assistant would call one of them "
                f"{found.ident}_2; rename one"
            )
        else:
            loss = "replace the other" if found.what == "discovery topic" else "be dropped"
            message = (
                f"{owner} and {found.first}{entry(found.first)} get the same Home "
                f"Assistant {found.what} ({found.ident}): one would {loss}; rename one"
            )
        found_all.append((owner.device, message))
    return found_all
