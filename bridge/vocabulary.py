"""The standard point names, one place for every profile and for SunSpec. Pure.

A dashboard or an automation written for one meter works with any meter when every
meter profile publishes the same quantity under the same name, in the same unit, with
the same sign. This module is that agreement: each `Term` is a name, its unit, the Home
Assistant device and state class it is published with, the kinds of device it belongs
to, and what it means (signs included). `docs/profiles.md` prints the same table for
people writing a profile from a datasheet.

Rules the terms follow:

- SI-ish units as Home Assistant shows them: V, A, W, var, VA, Hz, kWh, kvarh, °C, %.
  A device that counts energy in Wh or power in kW gets a `scale` in its profile, so
  the published value is in the term's unit.
- Signs: a meter's `power` is positive when energy flows in from the grid (import),
  negative on export; a battery's `battery_power` is positive while charging. A device
  that counts the other way gets `scale: -1` (or a negative scale) in its profile.
- Phases are `_l1`, `_l2`, `_l3`; line-to-line voltages are `voltage_l1_l2` ...; PV
  strings are `pv1_`, `pv2_` ...; energy counters say their direction first
  (`import_energy`, not `energy_import`).
- Anything else a device reports keeps a descriptive name of its own (lower case,
  words joined by `_`, the unit not in the name); `check_point` only judges points
  that use a standard name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Term:
    """One standard point name and what a point of that name must be."""

    name: str
    unit: str | None
    device_class: str | None
    state_class: str | None
    kinds: tuple[str, ...]
    meaning: str


METER: Final = "meter"
INVERTER: Final = "inverter"
BATTERY: Final = "battery"
EVSE: Final = "evse"

KINDS: Final = (METER, INVERTER, BATTERY, EVSE)
"""The `kind` a profile header may name."""

_AC = (METER, INVERTER, EVSE)
_M = "measurement"
_T = "total_increasing"


def _phases(stem: str, unit: str, dc: str, meaning: str, kinds: tuple[str, ...]) -> list[Term]:
    return [
        Term(f"{stem}_l{n}", unit, dc, _M, kinds, meaning.format(phase=f"L{n}")) for n in (1, 2, 3)
    ]


def _phases_pf() -> list[Term]:
    return [
        Term(f"power_factor_l{n}", None, "power_factor", _M, _AC, f"L{n} power factor, -1..1")
        for n in (1, 2, 3)
    ]


def _strings(count: int) -> list[Term]:
    out: list[Term] = []
    for n in range(1, count + 1):
        out += [
            Term(
                f"pv{n}_voltage",
                "V",
                "voltage",
                _M,
                (INVERTER,),
                f"DC voltage of PV string/MPPT {n}",
            ),
            Term(
                f"pv{n}_current",
                "A",
                "current",
                _M,
                (INVERTER,),
                f"DC current of PV string/MPPT {n}",
            ),
            Term(f"pv{n}_power", "W", "power", _M, (INVERTER,), f"DC power of PV string/MPPT {n}"),
        ]
    return out


TERMS: Final[tuple[Term, ...]] = (
    # AC side: meters, and an inverter's or a charger's own AC measurement
    Term("voltage", "V", "voltage", _M, _AC, "line-to-neutral voltage of a single-phase device"),
    *_phases("voltage", "V", "voltage", "{phase} line-to-neutral voltage", _AC),
    Term("voltage_l1_l2", "V", "voltage", _M, _AC, "L1-L2 line-to-line voltage"),
    Term("voltage_l2_l3", "V", "voltage", _M, _AC, "L2-L3 line-to-line voltage"),
    Term("voltage_l3_l1", "V", "voltage", _M, _AC, "L3-L1 line-to-line voltage"),
    Term("current", "A", "current", _M, _AC, "current of a single-phase device"),
    *_phases("current", "A", "current", "{phase} current", _AC),
    Term("current_n", "A", "current", _M, _AC, "neutral current"),
    Term(
        "power",
        "W",
        "power",
        _M,
        (METER, EVSE),
        "total active power; positive = import (drawn from the grid), negative = export",
    ),
    *_phases("power", "W", "power", "{phase} active power, signed as `power`", (METER, EVSE)),
    Term("reactive_power", "var", "reactive_power", _M, _AC, "total reactive power"),
    *_phases("reactive_power", "var", "reactive_power", "{phase} reactive power", _AC),
    Term("apparent_power", "VA", "apparent_power", _M, _AC, "total apparent power"),
    *_phases("apparent_power", "VA", "apparent_power", "{phase} apparent power", _AC),
    Term("power_factor", None, "power_factor", _M, _AC, "total power factor, -1..1"),
    *_phases_pf(),
    Term("frequency", "Hz", "frequency", _M, _AC, "grid frequency"),
    Term(
        "import_energy",
        "kWh",
        "energy",
        _T,
        (METER, EVSE),
        "active energy imported (drawn from the grid), total",
    ),
    *[
        Term(f"import_energy_l{n}", "kWh", "energy", _T, (METER,), f"L{n} active energy imported")
        for n in (1, 2, 3)
    ],
    Term(
        "export_energy",
        "kWh",
        "energy",
        _T,
        (METER,),
        "active energy exported (fed to the grid), total",
    ),
    *[
        Term(f"export_energy_l{n}", "kWh", "energy", _T, (METER,), f"L{n} active energy exported")
        for n in (1, 2, 3)
    ],
    Term("import_reactive_energy", "kvarh", None, _T, (METER,), "reactive energy imported, total"),
    Term("export_reactive_energy", "kvarh", None, _T, (METER,), "reactive energy exported, total"),
    # inverters
    Term(
        "ac_power",
        "W",
        "power",
        _M,
        (INVERTER,),
        "AC active power the inverter delivers (positive = generating)",
    ),
    Term("dc_power", "W", "power", _M, (INVERTER,), "total DC (PV input) power"),
    *_strings(4),
    Term("energy_total", "kWh", "energy", _T, (INVERTER,), "energy produced since commissioning"),
    Term(
        "energy_today",
        "kWh",
        "energy",
        _T,
        (INVERTER,),
        "energy produced today (the device resets it at midnight)",
    ),
    Term("temperature", "°C", "temperature", _M, (INVERTER, BATTERY, EVSE), "internal temperature"),
    Term(
        "grid_power",
        "W",
        "power",
        _M,
        (INVERTER, BATTERY),
        "power at the grid connection point as the device sees it; positive = import",
    ),
    Term("load_power", "W", "power", _M, (INVERTER, BATTERY), "power of the house load"),
    # batteries
    Term("soc", "%", "battery", _M, (BATTERY, INVERTER), "battery state of charge"),
    Term(
        "battery_power",
        "W",
        "power",
        _M,
        (BATTERY, INVERTER),
        "battery power; positive = charging, negative = discharging",
    ),
    Term("battery_voltage", "V", "voltage", _M, (BATTERY, INVERTER), "battery (DC bus) voltage"),
    Term(
        "battery_current",
        "A",
        "current",
        _M,
        (BATTERY, INVERTER),
        "battery current; positive = charging",
    ),
    Term(
        "battery_temperature", "°C", "temperature", _M, (BATTERY, INVERTER), "battery temperature"
    ),
    Term(
        "battery_charge_energy", "kWh", "energy", _T, (BATTERY, INVERTER), "energy charged, total"
    ),
    Term(
        "battery_discharge_energy",
        "kWh",
        "energy",
        _T,
        (BATTERY, INVERTER),
        "energy discharged, total",
    ),
)
"""Every standard name, in the order `docs/profiles.md` lists them."""

BY_NAME: Final[Mapping[str, Term]] = {t.name: t for t in TERMS}

_NAME = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")


def term(name: str) -> Term | None:
    """The standard term of that name, or None for a device-specific name."""
    return BY_NAME.get(name)


def check_point(
    name: str, unit: str | None, device_class: str | None, state_class: str | None
) -> list[str]:
    """What is wrong with a profile point against the vocabulary: a standard name must
    carry its term's unit, device class and state class; any name must be lower-case
    words joined by `_`. An empty list when nothing is."""
    problems: list[str] = []
    if not _NAME.fullmatch(name):
        problems.append(f"{name!r}: not lower-case words joined by '_'")
    t = BY_NAME.get(name)
    if t is None:
        return problems
    if (unit or None) != (t.unit or None):
        problems.append(f"{name}: unit {unit!r}, the vocabulary says {t.unit!r}")
    if device_class != t.device_class:
        problems.append(
            f"{name}: device_class {device_class!r}, the vocabulary says {t.device_class!r}"
        )
    if state_class != t.state_class:
        problems.append(
            f"{name}: state_class {state_class!r}, the vocabulary says {t.state_class!r}"
        )
    return problems
