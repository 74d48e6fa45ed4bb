"""A test fleet: a device template with 12 points of mixed tables and types, the
register contents that encode known engineering values, and those values.

The register images are built here with `struct`, independently of
`bridge.codec`, so the end-to-end tests check the codec instead of echoing it.
"""

from __future__ import annotations

import struct
from typing import Any

from bridge.sim import SimServer

ENUM = {0: "off", 1: "on", 2: "auto"}

TEMPLATE: dict[str, Any] = {
    "byte_order": "big",
    "word_order": "big",
    "points": [
        {"name": "count", "table": "holding", "address": 0, "type": "uint16"},
        {"name": "delta", "table": "holding", "address": 1, "type": "int16"},
        {"name": "temp", "table": "holding", "address": 2, "type": "float32", "unit": "°C"},
        {
            "name": "energy",
            "table": "holding",
            "address": 4,
            "type": "uint32",
            "scale": 0.1,
            "precision": 1,
            "unit": "kWh",
        },
        {"name": "total", "table": "holding", "address": 6, "type": "int64"},
        # Written to YAML unquoted, `off`/`on` are YAML 1.1 booleans: labels must survive.
        {"name": "mode", "table": "holding", "address": 10, "type": "uint16", "values": ENUM},
        {"name": "alarm", "table": "holding", "address": 11, "type": "uint16", "bit": 3},
        {"name": "serial", "table": "holding", "address": 12, "type": "string", "length": 4},
        {
            "name": "power",
            "table": "input",
            "address": 0,
            "type": "float32",
            "word_order": "little",
        },
        {"name": "current", "table": "input", "address": 2, "type": "int16", "scale": 0.01},
        {"name": "relay", "table": "coil", "address": 0, "type": "bool"},
        {"name": "door", "table": "discrete", "address": 0, "type": "bool"},
    ],
}


def _words(fmt: str, value: float | int) -> list[int]:
    raw = struct.pack(">" + fmt, value)
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def expected(unit: int, generation: int = 0) -> dict[str, Any]:
    """Engineering values the bridge must publish for `unit` (all points)."""
    g = generation
    return {
        "count": (unit * 7 + g) % 65536,
        "delta": -unit - g,
        "temp": float(unit) + 0.5 + g,
        "energy": round((unit * 100_000 + 3 + g) * 0.1, 1),
        "total": -(unit * 10**12) - g,
        "mode": ENUM[(unit + g) % 3],
        "alarm": (unit + g) % 2 == 1,
        "serial": f"U{unit:03d}",
        "power": float(unit) * 2.25 + g,
        "current": round((-unit * 3 - g) * 0.01, 2),
        "relay": (unit + g) % 2 == 0,
        "door": (unit + g) % 3 == 0,
    }


def load_unit(server: SimServer, unit: int, generation: int = 0) -> None:
    """Put the registers that encode `expected(unit, generation)` into the server."""
    g = generation
    u = server.unit(unit)
    alarm_reg = 0x00F0 & ~0x0008 | (0x0008 if (unit + g) % 2 == 1 else 0)
    serial = f"U{unit:03d}".encode().ljust(8, b"\x00")
    holding = (
        _words("H", (unit * 7 + g) % 65536)
        + _words("h", -unit - g)
        + _words("f", float(unit) + 0.5 + g)
        + _words("I", unit * 100_000 + 3 + g)
        + _words("q", -(unit * 10**12) - g)
        + [(unit + g) % 3, alarm_reg]
        + [int.from_bytes(serial[i : i + 2], "big") for i in range(0, 8, 2)]
    )
    u.set_registers("holding", 0, holding)
    power = _words("f", float(unit) * 2.25 + g)
    u.set_registers("input", 0, [power[1], power[0], *_words("h", -unit * 3 - g)])
    u.set_bits("coil", 0, [(unit + g) % 2 == 0])
    u.set_bits("discrete", 0, [(unit + g) % 3 == 0])


def same(actual: dict[str, Any], want: dict[str, Any]) -> bool:
    """Published state equals `want` (floats to 1e-6, last_seen ignored)."""
    for key, value in want.items():
        got = actual.get(key, object())
        if isinstance(value, float) and isinstance(got, int | float) and not isinstance(got, bool):
            if abs(got - value) > 1e-6 * max(1.0, abs(value)):
                return False
        elif got != value or type(got) is not type(value):
            return False
    return True


def mqtt_section(broker: Any, **extra: Any) -> dict[str, Any]:
    return {
        "host": broker.host,
        "port": broker.port,
        "client_id": "bridge-under-test",
        "base_topic": "modbus",
        "qos": 1,
        "retain": True,
        "output": "json",
        **extra,
    }
