"""SunSpec: the model chain of a device, and the points it maps to. Pure.

A SunSpec device describes its own register map: at 40000 (or 50000, or 0; one later
on a device that counts registers from 1) two registers hold ``SunS`` (0x53756e53);
after them comes a chain of models, each an ID register, a length register L and L
registers of body, up to an ID of 0xFFFF. What a model's registers mean is in the
SunSpec Alliance's own model definitions, the JSON files `pysunspec2` ships (package
`sunspec2`, `models/json/model_<id>.json`): this module reads them, it transcribes
nothing.

- `find_chain()` is the discovery as a program of reads: a generator that yields
  (address, count) and is sent the registers read, or None when the device refused
  the read (a Modbus exception); it returns the `Chain` (models with their bodies) or
  None when no marker was found. `bridge.sunspec_io` runs it on a host's session;
  unit tests run it on a register image (`read_image`).
- `map_chain(chain, ...)` turns a chain into the device's `Point`s: every point of
  every model instance (repeating groups expanded, counts from the model's length or
  its count point), scale factors (`*_SF`) as the point's `scale_factor`, each type's
  "not implemented" value as `missing` (published as null), enums as labels,
  bitfields as their integer, strings as text, read-write points writable; plus the
  main values again under the standard vocabulary (`ALIASES`). A model without a
  definition is published raw, one uint16 per register.
- `device_info(chain)` is model 1's manufacturer, model, serial number and version.

Names (docs/sunspec.md): ``<model>_<Point>`` with the definition's model name and the
specification's point name, e.g. ``inverter_three_phase_PhVphA``; a point of a group
``<model>_<group>_<Point>``, numbered when the group repeats (``mppt_module_2_DCV``);
a model present more than once is numbered itself (``ac_meter_abcn_1_W``,
``ac_meter_abcn_2_W``). A model without a definition: ``model_<id>_r<offset>``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any, Final

from bridge import vocabulary
from bridge.codec import decode_registers
from bridge.model import BridgeConfig, DataType, Device, Point, StateClass, Table

MARKER: Final = (0x5375, 0x6E53)  # "SunS"
BASES: Final = (40000, 50000, 0)
END_ID: Final = 0xFFFF
MAX_READ: Final = 125  # registers in one read
MAX_MODELS: Final = 200  # a chain longer than this is taken as garbage and cut there

# SunSpec types -> (our type, the raw value that means "not implemented").
_TYPES: Final[dict[str, tuple[DataType, int | None]]] = {
    "int16": (DataType.INT16, -0x8000),
    "uint16": (DataType.UINT16, 0xFFFF),
    "count": (DataType.UINT16, 0xFFFF),
    "acc16": (DataType.UINT16, 0),
    "enum16": (DataType.UINT16, 0xFFFF),
    "bitfield16": (DataType.UINT16, 0xFFFF),
    "sunssf": (DataType.INT16, -0x8000),
    "int32": (DataType.INT32, -0x80000000),
    "uint32": (DataType.UINT32, 0xFFFFFFFF),
    "acc32": (DataType.UINT32, 0),
    "enum32": (DataType.UINT32, 0xFFFFFFFF),
    "bitfield32": (DataType.UINT32, 0xFFFFFFFF),
    "ipaddr": (DataType.UINT32, 0),
    "int64": (DataType.INT64, -0x8000000000000000),
    "uint64": (DataType.UINT64, 0xFFFFFFFFFFFFFFFF),
    "acc64": (DataType.UINT64, 0),
    "eui48": (DataType.UINT64, 0xFFFFFFFFFFFF),  # the MAC as one number; FF:FF:FF:FF:FF:FF
    "float32": (DataType.FLOAT32, None),  # NaN, "not implemented", decodes to null anyway
    "float64": (DataType.FLOAT64, None),
    "string": (DataType.STRING, 0),  # a first byte of NUL
}
# ipv6addr has no type of ours to publish it as; pad is no value.
_SKIPPED: Final = frozenset({"pad", "ipv6addr"})
_ACCUMULATORS: Final = frozenset({"acc16", "acc32", "acc64"})

# SunSpec unit -> the unit published (Home Assistant's spelling)
_UNITS: Final = {
    "Pct": "%",
    "%WHRtg": "%",
    "C": "°C",
    "Secs": "s",
    "Var": "var",
    "Varh": "varh",
    "VArh": "varh",
    "VAr": "var",
    "mSecs": "ms",
}
# unit -> Home Assistant device class, for measured values (not enums, not bitfields)
_DEVICE_CLASSES: Final = {
    "W": "power",
    "V": "voltage",
    "A": "current",
    "Hz": "frequency",
    "VA": "apparent_power",
    "var": "reactive_power",
    "Wh": "energy",
    "°C": "temperature",
}


# --------------------------------------------------------------------------- definitions


@dataclass(frozen=True, slots=True)
class PointDef:
    """One point of a model definition."""

    name: str
    type: str
    size: int
    sf: str | int | None = None
    units: str | None = None
    writable: bool = False
    symbols: tuple[tuple[int, str], ...] = ()
    label: str | None = None


@dataclass(frozen=True, slots=True)
class GroupDef:
    """A group of points; `count`: None for one instance, an int (0: as many as the
    model's length holds), or the name of the model's point that holds the count."""

    name: str
    points: tuple[PointDef, ...]
    groups: tuple[GroupDef, ...] = ()
    count: int | str | None = None


@dataclass(frozen=True, slots=True)
class ModelDef:
    id: int
    name: str
    label: str
    group: GroupDef


def _point_def(raw: Mapping[str, Any]) -> PointDef:
    sf = raw.get("sf")
    if isinstance(sf, str) and sf.lstrip("-").isdigit():
        sf = int(sf)
    return PointDef(
        name=str(raw["name"]),
        type=str(raw["type"]),
        size=int(raw.get("size", 1)),
        sf=sf,
        units=raw.get("units"),
        writable=raw.get("access") == "RW",
        symbols=tuple((int(s["value"]), str(s["name"])) for s in raw.get("symbols", ())),
        label=raw.get("label"),
    )


def _group_def(raw: Mapping[str, Any]) -> GroupDef:
    count = raw.get("count")
    if isinstance(count, str) and count.isdigit():
        count = int(count)
    return GroupDef(
        name=str(raw["name"]),
        points=tuple(_point_def(p) for p in raw.get("points", ())),
        groups=tuple(_group_def(g) for g in raw.get("groups", ())),
        count=count,
    )


def definition_from(raw: Mapping[str, Any]) -> ModelDef:
    """A model definition from its JSON document (pysunspec2's format)."""
    group = raw["group"]
    return ModelDef(
        id=int(raw["id"]),
        name=str(group["name"]),
        label=str(group.get("label") or group["name"]),
        group=_group_def(group),
    )


@functools.cache
def definition(model_id: int) -> ModelDef | None:
    """The SunSpec Alliance's definition of a model, as pysunspec2 ships it; None when
    it has none."""
    path = resources.files("sunspec2") / "models" / "json" / f"model_{model_id}.json"
    if not path.is_file():
        return None
    return definition_from(json.loads(path.read_text(encoding="utf-8")))


# --------------------------------------------------------------------------- the chain


@dataclass(frozen=True, slots=True)
class Model:
    """One model of a device's chain: `address` is its ID register's, `length` its L,
    `body` the L registers after L (as read at discovery)."""

    id: int
    address: int
    length: int
    body: tuple[int, ...] = ()

    @property
    def end(self) -> int:
        return self.address + 2 + self.length


@dataclass(frozen=True, slots=True)
class Chain:
    """A device's model chain: `base` is where the marker is."""

    base: int
    models: tuple[Model, ...]

    @property
    def end(self) -> int:
        """The end marker's address."""
        return self.models[-1].end if self.models else self.base + 2


Read = tuple[int, int]
Program = Generator[Read, "Sequence[int] | None", "Chain | None"]


def candidates() -> tuple[int, ...]:
    """Where the marker may be, in the order probed."""
    return tuple(a for base in BASES for a in (base, base + 1))


def find_chain(max_read: int = MAX_READ) -> Program:
    """The discovery as a program of reads (see the module's docstring), each of at
    most `max_read` registers (the device's `max_read`). A chain cut short (a read
    refused, a length past the register space) ends where it was cut."""
    base = None
    for address in candidates():
        regs = yield (address, 2)
        if regs is not None and tuple(regs[:2]) == MARKER:
            base = address
            break
    if base is None:
        return None
    models: list[Model] = []
    address = base + 2
    while len(models) < MAX_MODELS and address + 2 <= 0x10000:
        regs = yield (address, 2)
        if regs is None or len(regs) < 2 or regs[0] == END_ID:
            break
        model_id, length = int(regs[0]), int(regs[1])
        if address + 2 + length > 0x10000:
            break
        body: list[int] = []
        at = address + 2
        while len(body) < length:
            count = min(max(1, max_read), length - len(body))
            part = yield (at, count)
            if part is None:
                break
            body.extend(int(r) for r in part[:count])
            at += count
        if len(body) < length:
            break
        models.append(Model(model_id, address, length, tuple(body)))
        address += 2 + length
    return Chain(base, tuple(models))


def read_image(program: Program, image: Mapping[int, int]) -> Chain | None:
    """Run a discovery program on a register image ({address: register}); a read of an
    address the image lacks is refused, as a device does (tests, `scan` on a file)."""
    try:
        request = next(program)
        while True:
            address, count = request
            span = range(address, address + count)
            regs = [image[a] for a in span] if all(a in image for a in span) else None
            request = program.send(regs)
    except StopIteration as done:
        result: Chain | None = done.value
        return result


# --------------------------------------------------------------------------- mapping


@dataclass(frozen=True, slots=True)
class Alias:
    """A point published again under a standard name (`bridge.vocabulary`, whose term
    gives its unit, device class and state class): `path` is the point's name in the
    model (``W``; in a repeating group ``module.DCV``), `name` the standard name
    (``{i}``: the group's index), `factor` what turns the model's unit into the term's
    (Wh -> kWh: 0.001)."""

    model: int
    path: str
    name: str
    factor: float = 1.0

    def term(self, index: int) -> vocabulary.Term:
        found = vocabulary.term(self.name.format(i=index))
        if found is None:  # pragma: no cover - test_sunspec checks every alias
            raise KeyError(self.name)
        return found


def _inverter(model: int) -> list[Alias]:
    out = [
        Alias(model, "W", "ac_power"),
        Alias(model, "DCW", "dc_power"),
        Alias(model, "WH", "energy_total", 0.001),
        Alias(model, "Hz", "frequency"),
        Alias(model, "VA", "apparent_power"),
        Alias(model, "VAr", "reactive_power"),
        Alias(model, "PF", "power_factor", 0.01),
        Alias(model, "TmpCab", "temperature"),
    ]
    for n, phase in enumerate("ABC", 1):
        out += [
            Alias(model, f"PhVph{phase}", f"voltage_l{n}"),
            Alias(model, f"Aph{phase}", f"current_l{n}"),
        ]
    return out


def _meter(model: int) -> list[Alias]:
    out = [
        Alias(model, "W", "power"),
        Alias(model, "Hz", "frequency"),
        Alias(model, "VA", "apparent_power"),
        Alias(model, "VAR", "reactive_power"),
        Alias(model, "PF", "power_factor", 0.01),
        Alias(model, "TotWhImp", "import_energy", 0.001),
        Alias(model, "TotWhExp", "export_energy", 0.001),
        Alias(model, "PhVphAB", "voltage_l1_l2"),
        Alias(model, "PhVphBC", "voltage_l2_l3"),
        Alias(model, "PhVphCA", "voltage_l3_l1"),
    ]
    for n, phase in enumerate("ABC", 1):
        out += [
            Alias(model, f"PhVph{phase}", f"voltage_l{n}"),
            Alias(model, f"Aph{phase}", f"current_l{n}"),
            Alias(model, f"Wph{phase}", f"power_l{n}"),
            Alias(model, f"TotWhImpPh{phase}", f"import_energy_l{n}", 0.001),
            Alias(model, f"TotWhExpPh{phase}", f"export_energy_l{n}", 0.001),
        ]
    return out


ALIASES: Final[tuple[Alias, ...]] = (
    *(a for m in (101, 102, 103, 111, 112, 113) for a in _inverter(m)),
    *(a for m in (201, 202, 203, 204, 211, 212, 213, 214) for a in _meter(m)),
    Alias(160, "module.DCV", "pv{i}_voltage"),
    Alias(160, "module.DCA", "pv{i}_current"),
    Alias(160, "module.DCW", "pv{i}_power"),
    # 802: the sign of W and A is not in the definition: no battery_power, battery_current.
    Alias(802, "SoC", "soc"),
    Alias(802, "V", "battery_voltage"),
)
"""The main values under the standard vocabulary (docs/sunspec.md lists them)."""

PV_STRINGS: Final = 4  # pv1_ .. pv4_: the vocabulary's strings


@dataclass(frozen=True, slots=True)
class Mapped:
    """What a model instance maps to (for `scan --sunspec` and the docs)."""

    model: Model
    name: str  # the names' prefix, e.g. "ac_meter_abcn_2"
    label: str  # the definition's label, or "unknown model"
    points: tuple[Point, ...] = field(default=())
    known: bool = True
    standard: tuple[str, ...] = ()  # the names of `points` that are standard names


def _published_unit(units: str | None) -> str | None:
    if units is None:
        return None
    return _UNITS.get(units, units)


class _Builder:
    """Walks one model instance's definition over its registers."""

    def __init__(self, model: Model, mdef: ModelDef, prefix: str, interval: float) -> None:
        self.model = model
        self.mdef = mdef
        self.prefix = prefix
        self.interval = interval
        self.points: list[Point] = []
        # the standard names of some of `points`: (the point so named, the original's name)
        self.standard: list[tuple[Point, str]] = []
        self.aliases: dict[str, Alias] = {a.path: a for a in ALIASES if a.model == mdef.id}
        # the top-level points' offsets (from the ID register), for count points
        self.top: dict[str, tuple[int, PointDef]] = {}
        offset = 0
        for p in mdef.group.points:
            self.top[p.name] = (offset, p)
            offset += p.size

    def _register(self, offset: int) -> int | None:
        """The register at `offset` from the model's ID register, as read at discovery."""
        if offset == 0:
            return self.model.id
        if offset == 1:
            return self.model.length
        i = offset - 2
        return self.model.body[i] if 0 <= i < len(self.model.body) else None

    def _count_point(self, name: str) -> int:
        found = self.top.get(name)
        if found is None:
            return 0
        value = self._register(found[0])
        return 0 if value is None or value == 0xFFFF else value

    def _length(self, group: GroupDef) -> int:
        """Registers of one instance of `group` (its nested groups' counts resolved)."""
        own = sum(p.size for p in group.points)
        return own + sum(self._count(g) * self._length(g) for g in group.groups)

    def _count(self, group: GroupDef) -> int:
        if group.count is None:
            return 1
        if isinstance(group.count, str):
            return self._count_point(group.count)
        if group.count > 0:
            return group.count
        # 0: as many as the model's length holds after the top-level points
        fixed = sum(p.size for p in self.mdef.group.points) - 2
        one = self._length(group)
        return max(0, (self.model.length - fixed) // one) if one else 0

    def build(self) -> list[Point]:
        self._group(
            self.mdef.group,
            address=self.model.address,
            prefix=self.prefix,
            path="",
            outer=None,
            index=0,
        )
        return self.points

    def _group(
        self,
        group: GroupDef,
        *,
        address: int,
        prefix: str,
        path: str,
        outer: dict[str, str] | None,
        index: int,
    ) -> int:
        # scale factors are looked up in the group itself, then in the model's top level
        names = {p.name: f"{prefix}_{p.name}" for p in group.points}
        sfs = dict(outer or {})
        sfs.update(names)
        for p in group.points:
            self._point(p, address=address, name=names[p.name], sfs=sfs, path=path, index=index)
            address += p.size
        for sub in group.groups:
            count = self._count(sub)
            for i in range(1, count + 1):
                name = f"{prefix}_{sub.name}" + (f"_{i}" if sub.count is not None else "")
                sub_path = f"{path}{sub.name}."
                address = self._group(
                    sub, address=address, prefix=name, path=sub_path, outer=sfs, index=i
                )
        return address

    def _point(
        self,
        p: PointDef,
        *,
        address: int,
        name: str,
        sfs: Mapping[str, str],
        path: str,
        index: int,
    ) -> None:
        if address + p.size > self.model.end:
            return  # a shorter (older) version of the model: its registers end here
        if p.type in _SKIPPED or (not path and p.name in ("ID", "L")) or p.size > MAX_READ:
            return  # no value, the header, or longer than one read can take
        known = _TYPES.get(p.type)
        if known is None:
            dtype, missing = DataType.UINT16, None
            if p.size != 1:
                return
        else:
            dtype, missing = known
        unit = _published_unit(p.units)
        measured = dtype.is_numeric and not p.symbols and not p.type.startswith("bitfield")
        device_class = _DEVICE_CLASSES.get(unit or "") if measured else None
        state_class = None
        if measured and p.type != "sunssf" and not p.writable:  # a sensor's, not a number's
            state_class = (
                StateClass.TOTAL_INCREASING if p.type in _ACCUMULATORS else StateClass.MEASUREMENT
            )
        if device_class == "energy" and state_class is not StateClass.TOTAL_INCREASING:
            device_class = None  # Home Assistant's energy is a total
        scale = 1.0
        scale_factor = None
        if isinstance(p.sf, int):
            scale = 10.0**p.sf
        elif isinstance(p.sf, str):
            scale_factor = sfs.get(p.sf)
        values = p.symbols if p.type.startswith("enum") else ()
        point = Point(
            name=name,
            table=Table.HOLDING,
            address=address,
            type=dtype,
            interval=self.interval,
            length=p.size if dtype is DataType.STRING else 0,
            scale=scale,
            values=values,
            unit=unit,
            writable=p.writable,
            device_class=device_class,
            state_class=state_class,
            display_name=p.label,
            scale_factor=scale_factor,
            missing=missing,
        )
        alias = self.aliases.get(path + p.name)
        if alias is not None and ("{i}" not in alias.name or index <= PV_STRINGS):
            self.standard.append((_aliased(point, alias, index), name))
        self.points.append(point)


def _aliased(point: Point, alias: Alias, index: int) -> Point:
    term = alias.term(index)
    return replace(
        point,
        name=term.name,
        scale=point.scale * alias.factor,
        unit=term.unit,
        device_class=term.device_class,
        state_class=None if term.state_class is None else StateClass(term.state_class),
        writable=False,
        display_name=None,
    )


def _raw_points(model: Model, prefix: str, interval: float) -> list[Point]:
    return [
        Point(
            name=f"{prefix}_r{i}",
            table=Table.HOLDING,
            address=model.address + 2 + i,
            type=DataType.UINT16,
            interval=interval,
        )
        for i in range(model.length)
    ]


def _prefixes(chain: Chain) -> list[tuple[Model, str, ModelDef | None]]:
    counts: dict[int, int] = {}
    for m in chain.models:
        counts[m.id] = counts.get(m.id, 0) + 1
    seen: dict[int, int] = {}
    out = []
    for m in chain.models:
        mdef = definition(m.id)
        stem = mdef.name if mdef is not None else f"model_{m.id}"
        seen[m.id] = seen.get(m.id, 0) + 1
        prefix = f"{stem}_{seen[m.id]}" if counts[m.id] > 1 else stem
        out.append((m, prefix, mdef))
    return out


def map_models(chain: Chain, *, interval: float) -> tuple[Mapped, ...]:
    """Each model of `chain` and the points it maps to.

    A standard name goes to the first model in the chain that has it (an inverter's
    `frequency`, not the meter's after it); a model's second (third…) instance has its
    standard names numbered ``_2`` (``_3``…). The point behind a standard name is left
    out of Home Assistant (one entity per quantity); it stays published."""
    out: list[Mapped] = []
    instance: dict[int, int] = {}
    owner: dict[str, int] = {}  # standard name -> model id that has it
    for model, prefix, mdef in _prefixes(chain):
        instance[model.id] = instance.get(model.id, 0) + 1
        if mdef is None:
            points = _raw_points(model, prefix, interval)
            out.append(Mapped(model, prefix, "unknown model", tuple(points), known=False))
            continue
        builder = _Builder(model, mdef, prefix, interval)
        points = builder.build()
        n = instance[model.id]
        shown_elsewhere: set[str] = set()  # points Home Assistant shows by standard name
        standard: list[str] = []
        for std, original in builder.standard:
            if owner.setdefault(std.name, model.id) != model.id:
                continue
            standard.append(std.name if n == 1 else f"{std.name}_{n}")
            points.append(replace(std, name=standard[-1]))
            shown_elsewhere.add(original)
        points = [
            replace(p, homeassistant=False) if p.name in shown_elsewhere else p for p in points
        ]
        out.append(Mapped(model, prefix, mdef.label, tuple(points), standard=tuple(standard)))
    return tuple(out)


def map_chain(chain: Chain, *, interval: float) -> tuple[Point, ...]:
    """Every point of `chain` (see the module's docstring)."""
    return tuple(p for m in map_models(chain, interval=interval) for p in m.points)


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """Model 1 (common): what Home Assistant's device card shows."""

    manufacturer: str | None = None
    model: str | None = None
    serial: str | None = None
    version: str | None = None


def _text(regs: Sequence[int]) -> str | None:
    if not regs or regs[0] >> 8 == 0:
        return None
    text = decode_registers(DataType.STRING, list(regs), length=len(regs))
    return str(text) or None


def device_info(chain: Chain) -> DeviceInfo:
    """Manufacturer (Mn), model (Md), serial (SN) and version (Vr) of the chain's first
    model 1; empty when it has none."""
    common = next((m for m in chain.models if m.id == 1), None)
    mdef = definition(1)
    if common is None or mdef is None:
        return DeviceInfo()
    found: dict[str, str | None] = {}
    offset = 0
    for p in mdef.group.points:
        if p.type == "string":
            found[p.name] = _text(common.body[offset - 2 : offset - 2 + p.size])
        offset += p.size
    return DeviceInfo(found.get("Mn"), found.get("Md"), found.get("SN"), found.get("Vr"))


def describe(chain: Chain, *, interval: float = 1.0) -> list[dict[str, Any]]:
    """The chain as `scan --sunspec` prints it: per model its id, name, address, length
    and the points it maps to."""
    return [
        {
            "id": m.model.id,
            "name": m.name,
            "label": m.label,
            "address": m.model.address,
            "length": m.model.length,
            "known": m.known,
            "points": [p.name for p in m.points],
            "standard": list(m.standard),
        }
        for m in map_models(chain, interval=interval)
    ]


def image_of(chain: Chain) -> dict[int, int]:
    """The registers a chain was read from (marker, headers, bodies, end marker)."""
    image = {chain.base: MARKER[0], chain.base + 1: MARKER[1]}
    for m in chain.models:
        image[m.address] = m.id
        image[m.address + 1] = m.length
        image.update((m.address + 2 + i, r) for i, r in enumerate(m.body))
    image[chain.end] = END_ID
    image[chain.end + 1] = 0
    return image


def discovered(device: Device, chain: Chain) -> Device:
    """`device` (as configured) with the points of `chain` added (a configured point of
    the same name wins) and model 1's manufacturer, model, serial and version (where
    the configuration gives none)."""
    own = {p.name for p in device.points}
    found = tuple(p for p in map_chain(chain, interval=device.interval) if p.name not in own)
    info = device_info(chain)
    return replace(
        device,
        points=device.points + found,
        manufacturer=device.manufacturer or info.manufacturer,
        model=device.model or info.model,
        serial=device.serial or info.serial,
        sw_version=device.sw_version or info.version,
        sunspec_models=tuple(m.id for m in chain.models),
    )


def with_chains(config: BridgeConfig, chains: Mapping[str, Chain]) -> BridgeConfig:
    """`config` (as configured) with each SunSpec device's points from its chain, where
    one was read."""
    if not chains:
        return config
    devices = tuple(
        discovered(d, chains[d.name]) if d.sunspec and d.name in chains else d
        for d in config.devices
    )
    return replace(config, devices=devices)
