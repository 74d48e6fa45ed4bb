"""A SunSpec device's register image, built from pysunspec2's own model definitions and
encoded with pysunspec2's own encoders (`sunspec2.mb`), never by our codec: what the
bridge decodes from it is checked against an independent writer (and, in the
integration test, against pysunspec2's own Modbus client).

`build_image(models)` lays out the marker, each model (ID, L, body) and the end marker
from `base`. Every point gets a distinct, non-zero value of its type (`value_for`);
scale factors are negative where `SF` says so; the points named in `UNIMPLEMENTED`
hold their type's "not implemented" value.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from sunspec2 import mb

# (model id, dotted path) -> scale factor value
SF: dict[tuple[int, str], int] = {
    (103, "A_SF"): -2,
    (103, "V_SF"): -1,
    (103, "W_SF"): 0,
    (103, "Hz_SF"): -2,
    (103, "WH_SF"): 1,
    (103, "PF_SF"): -2,
    (103, "Tmp_SF"): -1,
    (160, "DCA_SF"): -2,
    (160, "DCV_SF"): -1,
    (160, "DCW_SF"): 1,
    (160, "DCWH_SF"): -3,
    (203, "A_SF"): -3,
    (203, "V_SF"): -1,
    (203, "W_SF"): -1,
    (203, "TotWh_SF"): 2,
    (203, "PF_SF"): -3,
    (802, "SoC_SF"): -1,
    (802, "V_SF"): -2,
}

# points that hold "not implemented" (model id, dotted path)
UNIMPLEMENTED: frozenset[tuple[int, str]] = frozenset(
    {
        (1, "Opt"),  # string: NUL
        (103, "PPVphAB"),  # uint16: 0xFFFF
        (103, "TmpSnk"),  # int16: 0x8000
        (103, "VA"),  # int16 with a scale factor
        (160, "module.Tmp"),  # in every module
        (203, "TotVAhExp"),  # acc32: 0
        (203, "WphC"),
        (802, "NCyc"),  # uint32: 0xFFFFFFFF
        (802, "StateVnd"),  # enum16: 0xFFFF
        (802, "WarrDt"),
    }
)

STRINGS: dict[tuple[int, str], str] = {
    (1, "Mn"): "SunSpecTest",
    (1, "Md"): "Hybrid-10K",
    (1, "Vr"): "4.2.1",
    (1, "SN"): "SN0042-7",
}


def definition(model_id: int) -> dict[str, Any]:
    path = resources.files("sunspec2") / "models" / "json" / f"model_{model_id}.json"
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


@dataclass
class Layout:
    """What `build_image` wrote: the image, and each point's address and value."""

    image: dict[int, int] = field(default_factory=dict)
    # (model id, instance, dotted path with group indexes, e.g. "module.2.DCV") -> address
    addresses: dict[tuple[int, int, str], int] = field(default_factory=dict)
    values: dict[tuple[int, int, str], Any] = field(default_factory=dict)


def _regs(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def value_for(model: int, path: str, ptype: str, size: int, k: int, symbols: list[Any]) -> Any:  # noqa: PLR0917
    """A distinct, non-zero value of the type (k: the point's running number)."""
    plain = path.rsplit(".", maxsplit=1)[-1] if "." in path else path
    key = (model, _undotted(path))
    if ptype == "sunssf":
        return SF.get(key, -1)
    if ptype == "string":
        return STRINGS.get(key, f"{plain}{k}")[: 2 * size]
    if ptype.startswith("enum"):
        values = [s["value"] for s in symbols] or [k]
        return values[k % len(values)] or values[-1]
    if ptype.startswith("bitfield"):
        return (1 << (k % 13)) | 0x1
    if ptype in ("int16",):
        return -(100 + k) if k % 3 == 0 else 100 + k
    if ptype in ("uint16", "acc16"):
        return 1000 + k
    if ptype in ("int32", "int64"):
        return -(100000 + k)
    if ptype in ("uint32", "acc32", "uint64", "acc64"):
        return 5_000_000 + 17 * k
    if ptype in ("float32", "float64"):
        return 12.5 + k
    if ptype == "ipaddr":
        return 0x0A000001 + k
    if ptype == "eui48":
        return f"02:00:00:00:00:{k % 256:02X}"
    if ptype == "ipv6addr":
        return f"FE80000000000000000000000000{k % 65536:04X}"
    return 1 + k


def _undotted(path: str) -> str:
    """module.2.DCV -> module.DCV"""
    return ".".join(p for p in path.split(".") if not p.isdigit())


def _encode(ptype: str, value: Any, size: int) -> list[int]:
    info = mb.point_type_info[ptype]
    if ptype == "string":
        return _regs(info.to_data(value, size * 2))
    return _regs(info.to_data(value))


def _unimplemented(ptype: str, size: int) -> list[int]:
    return _regs(mb.create_unimpl_value(ptype, size * 2 if ptype == "string" else None))


@dataclass
class _Writer:
    """Lays out one model instance's registers."""

    layout: Layout
    model_id: int
    n: int
    address: int
    counts: Mapping[str, int]
    unimplemented: frozenset[tuple[int, str]]
    count_points: dict[str, int]
    regs: list[int] = field(default_factory=list)
    k: int = 0

    def group(self, g: dict[str, Any], prefix: str, *, top: bool) -> None:
        for p in g["points"]:
            self.point(p, prefix, top=top)
        for sub in g.get("groups", []):
            if sub.get("count") is None:
                self.group(sub, f"{prefix}{sub['name']}.", top=False)
                continue
            for i in range(1, self.counts.get(sub["name"], 1) + 1):
                self.group(sub, f"{prefix}{sub['name']}.{i}.", top=False)

    def point(self, p: dict[str, Any], prefix: str, *, top: bool) -> None:
        name, ptype, size = p["name"], p["type"], p.get("size", 1)
        path = f"{prefix}{name}"
        at = self.address + len(self.regs)
        if top and name in ("ID", "L"):
            self.regs.append(self.model_id if name == "ID" else 0)  # L: set at the end
            return
        if ptype == "pad":
            self.regs.extend(_unimplemented(ptype, size))
            return
        self.k += 1
        value: Any
        if top and name in self.count_points:
            value = self.count_points[name]
            self.regs.extend(_encode(ptype, value, size))
        elif (self.model_id, _undotted(path)) in self.unimplemented:
            value = None
            self.regs.extend(_unimplemented(ptype, size))
        else:
            value = value_for(self.model_id, path, ptype, size, self.k, p.get("symbols", []))
            self.regs.extend(_encode(ptype, value, size))
        self.layout.addresses[self.model_id, self.n, path] = at
        self.layout.values[self.model_id, self.n, path] = value


def build_image(
    models: Iterable[tuple[int, Mapping[str, int]]],
    *,
    base: int = 40000,
    unimplemented: frozenset[tuple[int, str]] = UNIMPLEMENTED,
) -> Layout:
    """Models as (id, {group name: count of a repeating group}); an id without a
    definition gets 4 registers of body."""
    layout = Layout()
    img = layout.image
    img[base], img[base + 1] = 0x5375, 0x6E53
    address = base + 2
    seen: dict[int, int] = {}
    k = 0
    for model_id, counts in models:
        seen[model_id] = seen.get(model_id, 0) + 1
        try:
            doc = definition(model_id)
        except FileNotFoundError:
            body = [0x1000 + model_id % 0x1000 + i for i in range(4)]
            img[address], img[address + 1] = model_id, len(body)
            img.update((address + 2 + i, r) for i, r in enumerate(body))
            address += 2 + len(body)
            continue
        # top-level count points get their group's count
        count_points = {
            g["count"]: counts.get(g["name"], 1)
            for g in doc["group"].get("groups", [])
            if isinstance(g.get("count"), str)
        }
        writer = _Writer(
            layout, model_id, seen[model_id], address, counts, unimplemented, count_points, k=k
        )
        writer.group(doc["group"], "", top=True)
        k = writer.k
        regs = writer.regs
        regs[1] = len(regs) - 2
        img.update((address + i, r) for i, r in enumerate(regs))
        address += len(regs)
    img[address], img[address + 1] = 0xFFFF, 0
    return layout


PROOF_MODELS: list[tuple[int, dict[str, int]]] = [
    (1, {}),
    (103, {}),
    (160, {"module": 2}),
    (203, {}),
    (802, {}),
]
