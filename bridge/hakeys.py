"""Home Assistant's modbus names against this bridge's: one table.

Someone who knew Home Assistant's `modbus:` integration first writes its keys in a
bridge configuration (`slave: 3`, `data_type: float`). `check` then says what the key
is called here instead of guessing a look-alike (`slave` is not `scale`).

The correspondences that both `check` and the importer (`bridge.hassimport`) rely on
are stated once, as data: `INPUT_TYPES`, `WRITE_TYPES`, `SWAPS`, `RENAMED` and
`CLAMPS`. `check`'s phrases (`KEYS`, `VALUES`) are built from them where they say the
same thing; `docs/migrating.md` must agree with both (`tests/unit/test_hakeys.py`).

Pure: names in, phrases out. Each phrase of `KEYS` completes "Home Assistant's name;
here it is ...".
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

# Where a key stands in this bridge's configuration.
HOST: Final = "host"
DEVICE: Final = "device"
POINT: Final = "point"

# Home Assistant's `input_type` (also a switch's `verify.input_type`, which takes the
# write types' plural names too) -> our `table`
INPUT_TYPES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "holding": "holding",
        "input": "input",
        "coil": "coil",
        "discrete_input": "discrete",
        "holdings": "holding",
        "coils": "coil",
    }
)

# Home Assistant's `write_type` -> (our `write_table`, whether the device then writes
# with function 15/16: `write_multiple: true`)
WRITE_TYPES: Final[Mapping[str, tuple[str, bool]]] = MappingProxyType(
    {
        "coil": ("coil", False),
        "coils": ("coil", True),
        "holding": ("holding", False),
        "holdings": ("holding", True),
    }
)

# Home Assistant's `swap` -> (byte_order: little, word_order: little): it reverses the
# bytes of each register, the order of the registers, or both, before decoding
SWAPS: Final[Mapping[str, tuple[bool, bool]]] = MappingProxyType(
    {"byte": (True, False), "word": (False, True), "word_byte": (True, True)}
)

# An entity's keys that are a point's here under another name (same meaning, same values)
RENAMED: Final[Mapping[str, str]] = MappingProxyType({"unit_of_measurement": "unit"})

# Home Assistant clamps the value it shows to these; here they have no counterpart (the
# point's key of a similar name limits writes only)
AS_READ: Final = "the bridge publishes what the device says"
CLAMPS: Final[Mapping[str, str]] = MappingProxyType({"min_value": "min", "max_value": "max"})


def _swap_phrase() -> str:
    cases = []
    for swap, (little_bytes, little_words) in SWAPS.items():
        orders = [o for o, on in (("byte_order", little_bytes), ("word_order", little_words)) if on]
        cases.append(f"swap: {swap} is " + ("both" if len(orders) == 2 else f"{orders[0]}: little"))
    return f"'byte_order' and 'word_order' ({', '.join(cases)})"


_SWAP = _swap_phrase()

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
        **{key: f"'{ours}'" for key, ours in RENAMED.items()},
        "count": "'length' (registers of a string; other types take theirs from 'type')",
        "write_type": "'write_table' (coil or holding)",
        **{key: f"none: {AS_READ} ('{ours}' limits writes)" for key, ours in CLAMPS.items()},
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
    "table": {  # the input types whose name is not ours (the plural ones are write types)
        theirs: f"'{ours}'"
        for theirs, ours in INPUT_TYPES.items()
        if theirs != ours and theirs not in WRITE_TYPES
    },
    "write_table": {
        theirs: f"'{ours}' (and write_multiple: true on the device)"
        for theirs, (ours, multiple) in WRITE_TYPES.items()
        if multiple
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
