"""What Home Assistant accepts in MQTT discovery, and which entity a point becomes. Pure.

The vocabulary (device classes, units per device class, state classes per device
class) is Home Assistant Core's, as of 2025.4.4. A unit that does not fit its device
class is a warning there today and an error from 2025.7, and an unknown device class
rejects the entity, so the config loader refuses both up front.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from slugify import slugify as _slugify

from bridge.model import DataType, Point


class Platform(enum.Enum):
    """The Home Assistant entity platform a point is discovered as."""

    SENSOR = "sensor"
    BINARY_SENSOR = "binary_sensor"
    NUMBER = "number"
    SWITCH = "switch"
    SELECT = "select"
    TEXT = "text"


READ_ONLY_PLATFORMS = (Platform.SENSOR, Platform.BINARY_SENSOR)


def yields_bool(p: Point) -> bool:
    """The point reads as true/false: coils, discrete inputs, `bool` registers, bits."""
    return p.type is DataType.BOOL or p.bit is not None


def is_number(p: Point) -> bool:
    """The point publishes a number: a numeric type, not a bit, no `values` labels."""
    return p.type.is_numeric and p.bit is None and not p.values


def platform(p: Point, *, read_only: bool = False) -> Platform:
    """The entity a point becomes. `read_only` (bridge-wide) makes every point read-only.

    ==================================  =========================================
    point                               platform
    ==================================  =========================================
    values (an enum), read-only         sensor, device class enum, the labels
    values, writable                    select, the labels
    bool (coil, discrete, bool, bit)    binary_sensor; switch when writable
    string                              sensor; text when writable
    number                              sensor; number when writable
    ==================================  =========================================
    """
    writable = p.writable and not read_only
    if p.values:
        return Platform.SELECT if writable else Platform.SENSOR
    if yields_bool(p):
        return Platform.SWITCH if writable else Platform.BINARY_SENSOR
    if p.type is DataType.STRING:
        return Platform.TEXT if writable else Platform.SENSOR
    return Platform.NUMBER if writable else Platform.SENSOR


def describe(p: Point) -> str:
    """The entity and why, for messages: e.g. "a binary_sensor (a read-only bool)"."""
    if p.values:
        what = "point with values"
    elif yields_bool(p):
        what = "bool"
    elif p.type is DataType.STRING:
        what = "string"
    else:
        what = "number"
    writable = "writable" if p.writable else "read-only"
    return f"a {platform(p).value} (a {writable} {what})"


# fmt: off
SENSOR_DEVICE_CLASSES = (
    "date", "enum", "timestamp", "apparent_power", "aqi", "area", "atmospheric_pressure",
    "battery", "blood_glucose_concentration", "carbon_monoxide", "carbon_dioxide", "conductivity",
    "current", "data_rate", "data_size", "distance", "duration", "energy", "energy_distance",
    "energy_storage", "frequency", "gas", "humidity", "illuminance", "irradiance", "moisture",
    "monetary", "nitrogen_dioxide", "nitrogen_monoxide", "nitrous_oxide", "ozone", "ph", "pm1",
    "pm10", "pm25", "power_factor", "power", "precipitation", "precipitation_intensity",
    "pressure", "reactive_power", "signal_strength", "sound_pressure", "speed", "sulphur_dioxide",
    "temperature", "volatile_organic_compounds", "volatile_organic_compounds_parts", "voltage",
    "volume", "volume_storage", "volume_flow_rate", "water", "weight", "wind_direction",
    "wind_speed",
)
# fmt: on
SENSOR_DEVICE_CLASSES_TEXT = frozenset({"date", "timestamp"})  # for a string sensor
# fmt: off
BINARY_SENSOR_DEVICE_CLASSES = (
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
    "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving", "occupancy",
    "opening", "plug", "power", "presence", "problem", "running", "safety", "smoke", "sound",
    "tamper", "update", "vibration", "window",
)
# fmt: on
SWITCH_DEVICE_CLASSES = ("outlet", "switch")


def device_classes(p: Point, *, read_only: bool = False) -> tuple[str, ...]:
    """The device classes Home Assistant accepts for the entity of `p`."""
    kind = platform(p, read_only=read_only)
    if kind is Platform.BINARY_SENSOR:
        return BINARY_SENSOR_DEVICE_CLASSES
    if kind is Platform.SWITCH:
        return SWITCH_DEVICE_CLASSES
    if kind in (Platform.SELECT, Platform.TEXT):
        return ()
    if p.values:
        return ("enum",)
    if p.type is DataType.STRING:
        return tuple(c for c in SENSOR_DEVICE_CLASSES if c in SENSOR_DEVICE_CLASSES_TEXT)
    # numbers: a number entity takes the sensor's numeric classes
    return tuple(c for c in SENSOR_DEVICE_CLASSES if c not in ("date", "enum", "timestamp"))


def all_device_classes() -> frozenset[str]:
    return frozenset(
        (*SENSOR_DEVICE_CLASSES, *BINARY_SENSOR_DEVICE_CLASSES, *SWITCH_DEVICE_CLASSES)
    )


# fmt: off
# Units per sensor/number device class (None: no unit). A class missing here takes any unit.
UNITS: Mapping[str, frozenset[str | None]] = {
    "apparent_power": frozenset({"VA"}),
    "aqi": frozenset({None}),
    "area": frozenset({"ac", "cm²", "ft²", "ha", "in²", "km²", "mi²", "mm²", "m²", "yd²"}),
    "atmospheric_pressure": frozenset({
        "Pa", "bar", "cbar", "hPa", "inHg", "kPa", "mbar", "mmHg", "psi",
    }),
    "battery": frozenset({"%"}),
    "blood_glucose_concentration": frozenset({"mg/dL", "mmol/L"}),
    "carbon_monoxide": frozenset({"ppm"}),
    "carbon_dioxide": frozenset({"ppm"}),
    "conductivity": frozenset({"S/cm", "mS/cm", "µS/cm"}),
    "current": frozenset({"A", "mA"}),
    "data_rate": frozenset({
        "B/s", "GB/s", "Gbit/s", "GiB/s", "KiB/s", "MB/s", "Mbit/s", "MiB/s", "bit/s", "kB/s",
        "kbit/s",
    }),
    "data_size": frozenset({
        "B", "EB", "EiB", "GB", "Gbit", "GiB", "KiB", "MB", "Mbit", "MiB", "PB", "PiB", "TB",
        "TiB", "YB", "YiB", "ZB", "ZiB", "bit", "kB", "kbit",
    }),
    "distance": frozenset({"cm", "ft", "in", "km", "m", "mi", "mm", "nmi", "yd"}),
    "duration": frozenset({"d", "h", "min", "ms", "s", "μs"}),
    "energy": frozenset({
        "GJ", "GWh", "Gcal", "J", "MJ", "MWh", "Mcal", "TWh", "Wh", "cal", "kJ", "kWh", "kcal",
        "mWh",
    }),
    "energy_distance": frozenset({"kWh/100km", "km/kWh", "mi/kWh"}),
    "energy_storage": frozenset({
        "GJ", "GWh", "Gcal", "J", "MJ", "MWh", "Mcal", "TWh", "Wh", "cal", "kJ", "kWh", "kcal",
        "mWh",
    }),
    "frequency": frozenset({"GHz", "Hz", "MHz", "kHz"}),
    "gas": frozenset({"CCF", "ft³", "m³"}),
    "humidity": frozenset({"%"}),
    "illuminance": frozenset({"lx"}),
    "irradiance": frozenset({"BTU/(h⋅ft²)", "W/m²"}),
    "moisture": frozenset({"%"}),
    "nitrogen_dioxide": frozenset({"µg/m³"}),
    "nitrogen_monoxide": frozenset({"µg/m³"}),
    "nitrous_oxide": frozenset({"µg/m³"}),
    "ozone": frozenset({"µg/m³"}),
    "ph": frozenset({None}),
    "pm1": frozenset({"µg/m³"}),
    "pm10": frozenset({"µg/m³"}),
    "pm25": frozenset({"µg/m³"}),
    "power_factor": frozenset({"%", None}),
    "power": frozenset({"GW", "MW", "TW", "W", "kW", "mW"}),
    "precipitation": frozenset({"cm", "in", "mm"}),
    "precipitation_intensity": frozenset({"in/d", "in/h", "mm/d", "mm/h"}),
    "pressure": frozenset({"Pa", "bar", "cbar", "hPa", "inHg", "kPa", "mbar", "mmHg", "psi"}),
    "reactive_power": frozenset({"var"}),
    "signal_strength": frozenset({"dB", "dBm"}),
    "sound_pressure": frozenset({"dB", "dBA"}),
    "speed": frozenset({
        "Beaufort", "ft/s", "in/d", "in/h", "in/s", "km/h", "kn", "m/s", "mm/d", "mm/h", "mm/s",
        "mph",
    }),
    "sulphur_dioxide": frozenset({"µg/m³"}),
    "temperature": frozenset({"K", "°C", "°F"}),
    "volatile_organic_compounds": frozenset({"µg/m³"}),
    "volatile_organic_compounds_parts": frozenset({"ppb", "ppm"}),
    "voltage": frozenset({"MV", "V", "kV", "mV", "µV"}),
    "volume": frozenset({"CCF", "L", "fl. oz.", "ft³", "gal", "mL", "m³"}),
    "volume_storage": frozenset({"CCF", "L", "fl. oz.", "ft³", "gal", "mL", "m³"}),
    "volume_flow_rate": frozenset({"L/min", "ft³/min", "gal/min", "mL/s", "m³/h"}),
    "water": frozenset({"CCF", "L", "ft³", "gal", "m³"}),
    "weight": frozenset({"g", "kg", "lb", "mg", "oz", "st", "µg"}),
    "wind_direction": frozenset({"°"}),
    "wind_speed": frozenset({"Beaufort", "ft/s", "in/s", "km/h", "kn", "m/s", "mm/s", "mph"}),
}
# State classes per sensor device class (of measurement, total and total_increasing).
STATE_CLASSES: Mapping[str, frozenset[str]] = {
    "date": frozenset(),
    "enum": frozenset(),
    "timestamp": frozenset(),
    "apparent_power": frozenset({"measurement"}),
    "aqi": frozenset({"measurement"}),
    "area": frozenset({"measurement", "total", "total_increasing"}),
    "atmospheric_pressure": frozenset({"measurement"}),
    "battery": frozenset({"measurement"}),
    "blood_glucose_concentration": frozenset({"measurement"}),
    "carbon_monoxide": frozenset({"measurement"}),
    "carbon_dioxide": frozenset({"measurement"}),
    "conductivity": frozenset({"measurement"}),
    "current": frozenset({"measurement"}),
    "data_rate": frozenset({"measurement"}),
    "data_size": frozenset({"measurement", "total", "total_increasing"}),
    "distance": frozenset({"measurement", "total", "total_increasing"}),
    "duration": frozenset({"measurement", "total", "total_increasing"}),
    "energy": frozenset({"total", "total_increasing"}),
    "energy_distance": frozenset({"measurement"}),
    "energy_storage": frozenset({"measurement"}),
    "frequency": frozenset({"measurement"}),
    "gas": frozenset({"total", "total_increasing"}),
    "humidity": frozenset({"measurement"}),
    "illuminance": frozenset({"measurement"}),
    "irradiance": frozenset({"measurement"}),
    "moisture": frozenset({"measurement"}),
    "monetary": frozenset({"total"}),
    "nitrogen_dioxide": frozenset({"measurement"}),
    "nitrogen_monoxide": frozenset({"measurement"}),
    "nitrous_oxide": frozenset({"measurement"}),
    "ozone": frozenset({"measurement"}),
    "ph": frozenset({"measurement"}),
    "pm1": frozenset({"measurement"}),
    "pm10": frozenset({"measurement"}),
    "pm25": frozenset({"measurement"}),
    "power_factor": frozenset({"measurement"}),
    "power": frozenset({"measurement"}),
    "precipitation": frozenset({"measurement", "total", "total_increasing"}),
    "precipitation_intensity": frozenset({"measurement"}),
    "pressure": frozenset({"measurement"}),
    "reactive_power": frozenset({"measurement"}),
    "signal_strength": frozenset({"measurement"}),
    "sound_pressure": frozenset({"measurement"}),
    "speed": frozenset({"measurement"}),
    "sulphur_dioxide": frozenset({"measurement"}),
    "temperature": frozenset({"measurement"}),
    "volatile_organic_compounds": frozenset({"measurement"}),
    "volatile_organic_compounds_parts": frozenset({"measurement"}),
    "voltage": frozenset({"measurement"}),
    "volume": frozenset({"total", "total_increasing"}),
    "volume_storage": frozenset({"measurement"}),
    "volume_flow_rate": frozenset({"measurement"}),
    "water": frozenset({"total", "total_increasing"}),
    "weight": frozenset({"measurement", "total", "total_increasing"}),
    "wind_direction": frozenset(),
    "wind_speed": frozenset({"measurement"}),
}
# fmt: on


MAX_ENTITY_ID = 255  # characters of an entity id (homeassistant.const.MAX_LENGTH_STATE_ENTITY_ID)


def slugify(text: str) -> str:
    """Home Assistant's `homeassistant.util.slugify`: python-slugify with ``_`` (lower
    case, transliterated to ASCII, every other run of characters one ``_``), and
    ``unknown`` for text that leaves nothing. How it makes an entity id of an
    ``object_id``: the same library is used here, so `check` knows the id for sure."""
    if not text:
        return ""
    return _slugify(text, separator="_") or "unknown"


def entity_id(platform: Platform, object_id: str) -> str:
    """The entity id Home Assistant gives an entity with this `object_id`, before it
    appends ``_2`` to one that is taken."""
    return f"{platform.value}.{slugify(object_id)}"
