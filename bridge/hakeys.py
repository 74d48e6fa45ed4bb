"""Home Assistant's modbus names against this bridge's: one table.

Someone who knew Home Assistant's `modbus:` integration first writes its keys in a
bridge configuration (`slave: 3`, `data_type: float`). `check` then says what the key
is called here instead of guessing a look-alike (`slave` is not `scale`). The same
table serves whoever needs the correspondence (the importer, `docs/migrating.md`,
whose table must agree: `tests/unit/test_hakeys.py`).

Pure: names in, phrases out. Each phrase completes "Home Assistant's name; here it
is ...".
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

# Where a key stands in this bridge's configuration.
HOST: Final = "host"
DEVICE: Final = "device"
POINT: Final = "point"

_SWAP = (
    "'byte_order' and 'word_order' (swap: byte is byte_order: little, swap: word is"
    " word_order: little, swap: word_byte is both)"
)

# section -> Home Assistant's key -> what it is here
_KEYS: Final[dict[str, dict[str, str]]] = {
    HOST: {
        "host": "'address'",
        "type": "'address'/'port' for tcp, with 'framer: rtu' for rtuovertcp, 'serial' for serial",
        "method": "'serial' (Modbus RTU; ASCII is not spoken)",
        "message_wait_milliseconds": "'pause'",
    },
    DEVICE: {
        "slave": "'unit'",
        "device_address": "'unit'",
        "scan_interval": "'interval'",
    },
    POINT: {
        "slave": "the device's 'unit'",
        "device_address": "the device's 'unit'",
        "input_type": "'table' (holding, input, coil or discrete)",
        "data_type": "'type'",
        "swap": _SWAP,
        "scan_interval": "'interval'",
        "unit_of_measurement": "'unit'",
        "count": "'length' (registers of a string; other types take theirs from 'type')",
        "write_type": "'write_table' (coil or holding)",
        "min_value": "none: the bridge publishes what the device says ('min' limits writes)",
        "max_value": "none: the bridge publishes what the device says ('max' limits writes)",
    },
}
KEYS: Final[Mapping[str, Mapping[str, str]]] = MappingProxyType(
    {section: MappingProxyType(keys) for section, keys in _KEYS.items()}
)

# (point key here, Home Assistant's value) -> what to write here instead
_VALUES: Final[dict[str, dict[str, str]]] = {
    "type": {
        # Home Assistant's old `float` took its width from `count`; most devices mean 32 bits
        "float": "'float32' (most devices: 2 registers) or 'float64' (4 registers)",
        "int": "'int16', 'int32' or 'int64' (the width of the value)",
        "uint": "'uint16', 'uint32' or 'uint64' (the width of the value)",
    },
    "table": {
        "discrete_input": "'discrete'",
    },
    "write_table": {
        "coils": "'coil' (and write_multiple: true on the device)",
        "holdings": "'holding' (and write_multiple: true on the device)",
    },
}
VALUES: Final[Mapping[str, Mapping[str, str]]] = MappingProxyType(
    {key: MappingProxyType(values) for key, values in _VALUES.items()}
)


def key_hint(section: str, key: str) -> str | None:
    """What Home Assistant's `key`, written in a `section` here, is called here; None
    when it is not one of Home Assistant's."""
    ours = KEYS.get(section, {}).get(key)
    return None if ours is None else f"Home Assistant's name; here it is {ours}"


def value_hint(key: str, value: str) -> str | None:
    """What to write for Home Assistant's `value` of our `key`; None when unknown."""
    ours = VALUES.get(key, {}).get(value.strip().lower())
    return None if ours is None else f"write {ours}"
