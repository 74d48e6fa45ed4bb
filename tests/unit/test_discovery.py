"""Home Assistant discovery: golden payloads per platform, the mapping rules, identities,
and the repair of earlier retained messages. Pure: no broker."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from fuzz import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import hass
from bridge.config import parse_config
from bridge.discovery import (
    Clash,
    Discovery,
    Owner,
    TooLong,
    entity_id,
    id_problems,
    number_range,
    number_step,
    object_id,
    readable,
    safe_id,
)
from bridge.hass import Platform
from bridge.model import BridgeConfig, DataType, HomeAssistant, Point, Table
from bridge.shard import select, shard_of
from bridge.topics import level_problem

CONFIG = """\
version: 1
mqtt: {client_id: site-7, base_topic: plant, qos: 1}
homeassistant: {enabled: true}
hosts:
  - {name: gw, address: 10.0.0.1}
devices:
  - name: boiler
    host: gw
    unit: 1
    manufacturer: Acme
    model: B1
    area: Plant room
    points:
      - {name: temp, table: input, address: 0, type: int16, scale: 0.1, precision: 1,
         unit: °C, device_class: temperature, state_class: measurement}
      - {name: setpoint, table: holding, address: 0, type: int16, scale: 0.5, writable: true,
         min: 20, max: 80, unit: °C, device_class: temperature, display_name: Flow setpoint,
         icon: "mdi:thermometer", entity_category: config}
      - {name: pump, table: coil, address: 0, writable: true, device_class: switch}
      - {name: alarm, table: discrete, address: 0, device_class: problem}
      - {name: mode, table: holding, address: 1, type: uint16, writable: true,
         values: {0: off, 1: eco, 2: comfort}}
      - {name: state, table: holding, address: 2, type: uint16, values: {0: idle, 1: heating}}
      - {name: serial, table: holding, address: 3, type: string, length: 4,
         entity_category: diagnostic}
      - {name: hidden, table: holding, address: 7, type: uint16, homeassistant: false}
      - {name: label, table: holding, address: 8, type: string, length: 4, writable: true}
  - name: empty
    host: gw
    unit: 2
    points:
      - {name: x, table: holding, address: 0, type: uint16, homeassistant: false}
"""

AVAILABILITY = [
    {
        "topic": "plant/bridge/state",
        "payload_available": "online",
        "payload_not_available": "offline",
    },
    {
        "topic": "plant/boiler/availability",
        "payload_available": "online",
        "payload_not_available": "offline",
    },
]


def _config(text: str = CONFIG) -> BridgeConfig:
    return parse_config(text, env={})


def _payload(config: BridgeConfig, device: str = "boiler") -> dict[str, Any]:
    discovery = Discovery(config, version="1.2.3")
    [message] = [m for m in discovery.messages() if m.topic == discovery.config_topic(device)]
    assert message.retain
    doc: dict[str, Any] = json.loads(message.payload)
    return doc


def _bool_template(name: str) -> str:
    return (
        f'{{% set v = value_json.get("{name}") %}}'
        "{{ 'None' if v is none else ('true' if v else 'false') }}"
    )


# --------------------------------------------------------------------------- golden


def test_device_level() -> None:
    doc = _payload(_config())
    assert doc["dev"] == {
        "identifiers": ["site-7/boiler"],
        "name": "boiler",
        "via_device": "site-7/bridge",
        "manufacturer": "Acme",
        "model": "B1",
        "suggested_area": "Plant room",
    }
    assert doc["o"] == {"name": "modbus-mqtt-bridge", "sw_version": "1.2.3"}
    assert doc["state_topic"] == "plant/boiler"
    assert doc["availability"] == AVAILABILITY
    assert doc["availability_mode"] == "all"
    assert list(doc["cmps"]) == [
        "temp", "setpoint", "pump", "alarm", "mode", "state", "serial", "label"
    ]  # fmt: skip


GOLDEN: dict[str, dict[str, Any]] = {
    "temp": {  # sensor: a read-only number
        "p": "sensor",
        "name": "Temp",
        "unique_id": "site-7/boiler/temp",
        "default_entity_id": "sensor.boiler_temp",
        "object_id": "boiler_temp",
        "qos": 1,
        "value_template": '{{ value_json.get("temp") }}',
        "device_class": "temperature",
        "unit_of_measurement": "°C",
        "state_class": "measurement",
        "suggested_display_precision": 1,
    },
    "setpoint": {  # number: a writable number
        "p": "number",
        "name": "Flow setpoint",
        "unique_id": "site-7/boiler/setpoint",
        "default_entity_id": "number.boiler_setpoint",
        "object_id": "boiler_setpoint",
        "qos": 1,
        "value_template": '{{ value_json.get("setpoint") }}',
        "command_topic": "plant/boiler/setpoint/set",
        "device_class": "temperature",
        "entity_category": "config",
        "icon": "mdi:thermometer",
        "unit_of_measurement": "°C",
        "min": 20,
        "max": 80,
        "step": 0.5,
        "mode": "box",
    },
    "pump": {  # switch: a writable bool
        "p": "switch",
        "name": "Pump",
        "unique_id": "site-7/boiler/pump",
        "default_entity_id": "switch.boiler_pump",
        "object_id": "boiler_pump",
        "qos": 1,
        "value_template": _bool_template("pump"),
        "command_topic": "plant/boiler/pump/set",
        "device_class": "switch",
        "payload_on": "true",
        "payload_off": "false",
    },
    "alarm": {  # binary_sensor: a read-only bool
        "p": "binary_sensor",
        "name": "Alarm",
        "unique_id": "site-7/boiler/alarm",
        "default_entity_id": "binary_sensor.boiler_alarm",
        "object_id": "boiler_alarm",
        "qos": 1,
        "value_template": _bool_template("alarm"),
        "device_class": "problem",
        "payload_on": "true",
        "payload_off": "false",
    },
    "mode": {  # select: a writable point with values
        "p": "select",
        "name": "Mode",
        "unique_id": "site-7/boiler/mode",
        "default_entity_id": "select.boiler_mode",
        "object_id": "boiler_mode",
        "qos": 1,
        "value_template": '{{ value_json.get("mode") }}',
        "command_topic": "plant/boiler/mode/set",
        "options": ["off", "eco", "comfort"],
    },
    "state": {  # sensor, device class enum: a read-only point with values
        "p": "sensor",
        "name": "State",
        "unique_id": "site-7/boiler/state",
        "default_entity_id": "sensor.boiler_state",
        "object_id": "boiler_state",
        "qos": 1,
        "value_template": '{{ value_json.get("state") }}',
        "device_class": "enum",
        "options": ["idle", "heating"],
    },
    "serial": {  # sensor: a string
        "p": "sensor",
        "name": "Serial",
        "unique_id": "site-7/boiler/serial",
        "default_entity_id": "sensor.boiler_serial",
        "object_id": "boiler_serial",
        "qos": 1,
        "value_template": '{{ value_json.get("serial") }}',
        "entity_category": "diagnostic",
    },
    "label": {  # text: a writable string, set with JSON (an empty text is a value)
        "p": "text",
        "name": "Label",
        "unique_id": "site-7/boiler/label",
        "default_entity_id": "text.boiler_label",
        "object_id": "boiler_label",
        "qos": 1,
        "value_template": "{{ value_json.get(\"label\") or '' }}",
        "command_topic": "plant/boiler/set",
        "command_template": '{{ {"label": value} | to_json }}',
        "min": 0,
        "max": 8,
        "mode": "text",
    },
}


@pytest.mark.parametrize("point", list(GOLDEN))
def test_golden_component(point: str) -> None:
    assert _payload(_config())["cmps"][point] == GOLDEN[point]


def test_bridge_device() -> None:
    doc = _payload(_config(), "bridge")
    assert doc["dev"]["identifiers"] == ["site-7/bridge"]
    assert doc["state_topic"] == "plant/bridge/health"
    assert doc["availability"] == AVAILABILITY[:1]
    assert set(doc["cmps"]) == {
        "uptime",
        "hosts_connected",
        "devices_online",
        "requests",
        "errors",
        "memory",
    }
    assert all(c["entity_category"] == "diagnostic" for c in doc["cmps"].values())
    assert doc["cmps"]["uptime"] == {
        "p": "sensor",
        "name": "Uptime",
        "unique_id": "site-7/bridge/uptime",
        "default_entity_id": "sensor.site_7_uptime",
        "object_id": "site_7_uptime",
        "value_template": "{{ value_json.get('uptime_s') }}",
        "entity_category": "diagnostic",
        "qos": 1,
        "device_class": "duration",
        "unit_of_measurement": "s",
    }


def test_topics_and_order_of_messages() -> None:
    discovery = Discovery(_config())
    # the bridge device first (it is every device's via_device); no message for a device
    # without a point in Home Assistant
    assert [m.topic for m in discovery.messages()] == [
        "homeassistant/device/site-7/bridge/config",
        "homeassistant/device/site-7/boiler/config",
    ]
    assert discovery.filter == "homeassistant/device/site-7/+/config"


def test_attribute_output_reads_each_point_topic() -> None:
    doc = _payload(_config(CONFIG.replace("qos: 1}", "qos: 0, output: attribute}")))
    assert "state_topic" not in doc
    assert doc["cmps"]["temp"]["state_topic"] == "plant/boiler/temp"
    assert doc["cmps"]["temp"]["qos"] == 0
    # plain payloads; a null is an empty payload, shown as unknown
    assert doc["cmps"]["pump"]["value_template"] == "{{ value if value else 'None' }}"


def test_both_output_reads_the_json_state() -> None:
    doc = _payload(_config(CONFIG.replace("qos: 1}", "qos: 1, output: both}")))
    assert doc["state_topic"] == "plant/boiler"
    assert "state_topic" not in doc["cmps"]["temp"]


def test_heartbeat_sets_expire_after_on_sensors_only() -> None:
    text = CONFIG.replace("    area: Plant room\n", "    area: Plant room\n    heartbeat: 20s\n")
    cmps = _payload(_config(text))["cmps"]
    expiring = {key for key, c in cmps.items() if "expire_after" in c}
    assert expiring == {"temp", "alarm", "state", "serial"}  # sensor and binary_sensor
    assert cmps["temp"]["expire_after"] == 60  # 3 heartbeats


def test_expire_after_follows_a_poll_interval_longer_than_the_heartbeat() -> None:
    text = CONFIG.replace("    area: Plant room\n", "    area: Plant room\n    heartbeat: 5s\n")
    text = text.replace("    unit: 1\n", "    unit: 1\n    interval: 30s\n", 1)
    assert _payload(_config(text))["cmps"]["temp"]["expire_after"] == 90


def test_json_keys_are_escaped_in_templates() -> None:
    text = CONFIG.replace("name: temp,", """name: 'it''s "x" °',""")
    doc = _payload(_config(text))
    [(key, comp)] = [(k, c) for k, c in doc["cmps"].items() if "it" in k]
    assert comp["value_template"] == '{{ value_json.get("it\'s \\"x\\" °") }}'
    assert comp["name"] == 'It\'s "x" °'
    assert key == safe_id('it\'s "x" °')


def _sandbox() -> Any:
    """Jinja's immutable sandbox, as Home Assistant renders MQTT templates, with the one
    filter of its own these templates use."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment()
    env.filters["to_json"] = lambda value: json.dumps(value, ensure_ascii=False)
    return env


def _render(env: Any, template: str, payload: str) -> str:
    """As Home Assistant's `async_render_with_possible_json_value`: `value` is the
    payload, `value_json` the payload parsed."""
    result: str = env.from_string(template).render(value=payload, value_json=json.loads(payload))
    return result


def _command(env: Any, template: str, value: Any) -> str:
    """As a command template renders: `value` is what the entity sends (a text's text)."""
    result: str = env.from_string(template).render(value=value)
    return result


NAMES = st.text(min_size=1, max_size=40).filter(lambda n: level_problem(n) is None)
_PARSED = _config()  # frozen: the examples below cannot change it


@given(name=NAMES)
@settings(max_examples=examples(100))
def test_templates_render_every_valid_name(name: str) -> None:
    """Issue 16, item 4: a point named outside the Basic Multilingual Plane (an emoji)
    got a template with a surrogate-pair escape, which Jinja rendered as None."""
    env = _sandbox()
    holding = {"name": name, "table": Table.HOLDING, "address": 0, "interval": 1.0}
    number = Point(**holding, type=DataType.UINT16, writable=True)
    text = Point(**holding, type=DataType.STRING, length=4, writable=True)
    coil = Point(name=name, table=Table.COIL, address=0, type=DataType.BOOL, interval=1.0)
    config = _PARSED  # read once: parsing it took most of this test's time
    for point, value, shown in ((number, 42, "42"), (text, "ab", "ab"), (coil, True, "true")):
        device = config.devices[0]
        comp = Discovery(config).component(device, point)
        payload = json.dumps({name: value, "other": 1})
        assert _render(env, comp["value_template"], payload) == shown, comp["value_template"]
        if "command_template" in comp:
            assert json.loads(_command(env, comp["command_template"], value)) == {name: value}


@pytest.mark.parametrize("name", ["⚡ power", "😀", "𝔸 phase", 'quote " back \\ slash', "{{ x }}"])
def test_templates_render_names_that_broke_them(name: str) -> None:
    env = _sandbox()
    point = Point(name=name, table=Table.HOLDING, address=0, type=DataType.UINT16, interval=1.0)
    comp = Discovery(_config()).component(_config().devices[0], point)
    assert _render(env, comp["value_template"], json.dumps({name: 7})) == "7"


# --------------------------------------------------------------------------- mapping


def _point(**kw: Any) -> Point:
    base: dict[str, Any] = {
        "name": "p",
        "table": Table.HOLDING,
        "address": 0,
        "type": DataType.UINT16,
        "interval": 1.0,
    }
    return Point(**{**base, **kw})


@pytest.mark.parametrize(
    ("point", "read_only_platform", "writable_platform"),
    [
        (_point(), Platform.SENSOR, Platform.NUMBER),
        (_point(type=DataType.FLOAT32), Platform.SENSOR, Platform.NUMBER),
        (_point(table=Table.COIL, type=DataType.BOOL), Platform.BINARY_SENSOR, Platform.SWITCH),
        (_point(table=Table.DISCRETE, type=DataType.BOOL), Platform.BINARY_SENSOR, None),
        (_point(type=DataType.BOOL), Platform.BINARY_SENSOR, Platform.SWITCH),
        (_point(bit=3), Platform.BINARY_SENSOR, Platform.SWITCH),
        (_point(values=((0, "a"), (1, "b"))), Platform.SENSOR, Platform.SELECT),
        (_point(table=Table.COIL, type=DataType.BOOL, values=((0, "shut"), (1, "open"))),
         Platform.SENSOR, Platform.SELECT),
        (_point(type=DataType.STRING, length=4), Platform.SENSOR, Platform.TEXT),
    ],
)  # fmt: skip
def test_platform_mapping(
    point: Point, read_only_platform: Platform, writable_platform: Platform | None
) -> None:
    assert hass.platform(point) is read_only_platform
    if writable_platform is not None:
        writable = Point(**{**point.__dict__, "writable": True})
        assert hass.platform(writable) is writable_platform
        # a read-only bridge offers no controls
        assert hass.platform(writable, read_only=True) is read_only_platform


def test_read_only_bridge_discovers_sensors() -> None:
    cmps = _payload(_config(CONFIG.replace("version: 1\n", "version: 1\nread_only: true\n")))[
        "cmps"
    ]
    assert {k: c["p"] for k, c in cmps.items()} == {
        "temp": "sensor",
        "setpoint": "sensor",
        "pump": "binary_sensor",
        "alarm": "binary_sensor",
        "mode": "sensor",
        "state": "sensor",
        "serial": "sensor",
        "label": "sensor",
    }
    assert not any("command_topic" in c for c in cmps.values())
    # what a sensor cannot have is left out: config category, a switch's device class
    assert "entity_category" not in cmps["setpoint"]
    assert cmps["setpoint"]["device_class"] == "temperature"
    assert "device_class" not in cmps["pump"]
    assert cmps["alarm"]["device_class"] == "problem"


@pytest.mark.parametrize(
    ("point", "expected"),
    [
        (_point(writable=True), (0, 65535)),
        (_point(type=DataType.INT16, writable=True, scale=0.1), (-3276.8, 3276.7)),
        (_point(type=DataType.INT16, writable=True, scale=-2.0, offset=1.0), (-65533, 65537)),
        (_point(writable=True, minimum=5.0, maximum=80.0), (5.0, 80.0)),
        (_point(type=DataType.FLOAT32, writable=True), (-3.4028234663852886e38,
                                                         3.4028234663852886e38)),
    ],
)  # fmt: skip
def test_number_range(point: Point, expected: tuple[float, float]) -> None:
    lo, hi = number_range(point)
    assert lo == pytest.approx(expected[0])
    assert hi == pytest.approx(expected[1])


@pytest.mark.parametrize(
    ("point", "step"),
    [
        (_point(), 1.0),
        (_point(scale=0.1), 0.1),
        (_point(scale=0.01, precision=1), 0.1),  # published with 1 decimal
        (_point(scale=0.0001), 0.001),  # Home Assistant's smallest step
        (_point(type=DataType.FLOAT32), 0.001),
        (_point(type=DataType.FLOAT32, precision=2), 0.01),
        (_point(scale=-0.5), 0.5),
    ],
)
def test_number_step(point: Point, step: float) -> None:
    assert number_step(point) == pytest.approx(step)


# --------------------------------------------------------------------------- identities


def test_ids_are_stable_across_restarts() -> None:
    first = Discovery(_config()).messages()
    again = Discovery(_config()).messages()
    assert first == again


def test_unique_ids_survive_display_changes_and_follow_client_device_point() -> None:
    renamed = CONFIG.replace("display_name: Flow setpoint", "display_name: Vorlauf")
    a, b = _payload(_config())["cmps"], _payload(_config(renamed))["cmps"]
    assert a["setpoint"]["unique_id"] == b["setpoint"]["unique_id"] == "site-7/boiler/setpoint"
    assert b["setpoint"]["name"] == "Vorlauf"
    other = _payload(_config(CONFIG.replace("client_id: site-7", "client_id: site-8")))
    assert other["cmps"]["temp"]["unique_id"] == "site-8/boiler/temp"


def test_unique_ids_never_collide() -> None:
    """Names may contain '_' but never '/': device a_b + point c differs from a + b_c."""
    text = """\
version: 1
hosts: [{name: gw, address: 10.0.0.1}]
devices:
  - {name: a_b, host: gw, unit: 1, points: [{name: c, table: coil, address: 0}]}
  - {name: a, host: gw, unit: 2, points: [{name: b_c, table: coil, address: 0}]}
"""
    discovery = Discovery(_config(text))
    ids = [
        c["unique_id"] for m in discovery.messages() for c in json.loads(m.payload)["cmps"].values()
    ]
    assert len(ids) == len(set(ids))


def test_safe_id() -> None:
    assert safe_id("meter-1_A") == "meter-1_A"
    odd = safe_id("Kessel Raum/ä")
    assert odd.startswith("Kessel_Raum_")
    assert odd != safe_id("Kessel Raum/ö")
    assert safe_id("a b") != safe_id("a_b")
    assert safe_id("a b") == safe_id("a b")  # stable


def test_readable() -> None:
    assert readable("l1_voltage") == "L1 voltage"
    assert readable("door-open") == "Door-open"
    assert readable("mode") == "Mode"


# --------------------------------------------------------------------------- repair


def _current(discovery: Discovery) -> dict[str, bytes]:
    return {m.topic: m.payload for m in discovery.messages()}


def test_repair_clears_our_device_that_is_gone() -> None:
    old = Discovery(_config())
    new_config = CONFIG.replace("  - name: boiler", "  - name: kettle")
    new = Discovery(_config(new_config))
    topic = old.config_topic("boiler")
    message = new.repair(topic, _current(old)[topic], _current(new))
    assert message is not None
    assert (message.topic, message.payload, message.retain) == (topic, b"", True)


def test_repair_leaves_current_and_foreign_messages_alone() -> None:
    d = Discovery(_config())
    current = _current(d)
    topic = d.config_topic("boiler")
    assert d.repair(topic, current[topic], current) is None
    assert d.repair(topic, b"", current) is None  # already cleared
    foreign = json.loads(current[topic])
    foreign["o"]["name"] = "zigbee2mqtt"
    stale = d.config_topic("gone")
    assert d.repair(stale, json.dumps(foreign).encode(), current) is None
    other_bridge = json.loads(current[topic])
    other_bridge["dev"]["identifiers"] = ["site-70/boiler"]
    assert d.repair(stale, json.dumps(other_bridge).encode(), current) is None
    assert d.repair(stale, b"not json", current) is None
    assert d.repair(stale, b"[1, 2]", current) is None


def test_repair_removes_a_point_with_a_platform_stub() -> None:
    old = Discovery(_config())
    without_pump = CONFIG.replace("{name: pump,", "{name: pump, homeassistant: false,")
    new = Discovery(_config(without_pump))
    topic = old.config_topic("boiler")
    message = new.repair(topic, _current(old)[topic], _current(new))
    assert message is not None
    doc = json.loads(message.payload)
    assert doc["cmps"]["pump"] == {"p": "switch"}
    assert doc["cmps"]["temp"] == GOLDEN["temp"]
    # once repaired, the stub is not repaired again
    assert new.repair(topic, message.payload, _current(new)) is None


def test_a_shard_keeps_the_devices_identity_and_has_its_own_bridge_device() -> None:
    fleet = _config(CONFIG.replace("  - {name: gw, address: 10.0.0.1}", _TWO_HOSTS))
    count = 2
    boiler_shard = shard_of("gw", count)
    part = select(fleet, boiler_shard, count)
    assert [d.name for d in part.devices] == ["boiler", "empty"]
    other = select(fleet, 3 - boiler_shard, count)
    assert other.elsewhere == {"boiler", "empty"}
    label = f"{boiler_shard}of2"
    d = Discovery(part, version="1.2.3")
    assert [m.topic for m in d.messages()] == [
        f"homeassistant/device/site-7-shard-{label}/bridge/config",
        "homeassistant/device/site-7/boiler/config",  # as unsharded: entities survive
    ]
    boiler = json.loads(d.messages()[1].payload)
    assert boiler["dev"]["identifiers"] == ["site-7/boiler"]
    assert boiler["dev"]["via_device"] == f"site-7-shard-{label}/bridge"
    assert boiler["availability"][0]["topic"] == f"plant/bridge/{label}/state"
    assert boiler["availability"][1]["topic"] == "plant/boiler/availability"
    assert boiler["cmps"]["temp"]["unique_id"] == "site-7/boiler/temp"
    bridge = json.loads(d.messages()[0].payload)
    assert bridge["dev"]["identifiers"] == [f"site-7-shard-{label}/bridge"]
    assert bridge["state_topic"] == f"plant/bridge/{label}/health"
    assert bridge["availability"][0]["topic"] == f"plant/bridge/{label}/state"
    assert d.filter == "homeassistant/device/site-7/+/config"


def test_a_shard_leaves_the_other_shards_discovery_alone() -> None:
    fleet = _config(CONFIG.replace("  - {name: gw, address: 10.0.0.1}", _TWO_HOSTS))
    whole = Discovery(fleet)
    current = _current(whole)
    topic = whole.config_topic("boiler")
    other = Discovery(select(fleet, 3 - shard_of("gw", 2), 2))
    # the boiler runs in the other shard: not stale here
    assert other.repair(topic, current[topic], _current(other)) is None
    # the bridge device of an unsharded run is stale once the fleet is sharded
    unsharded = whole.bridge_topic
    fix = other.repair(unsharded, current[unsharded], _current(other))
    assert fix is not None and fix.payload == b""


_TWO_HOSTS = "  - {name: gw, address: 10.0.0.1}\n  - {name: gw-far, address: 10.0.0.2}"


# --------------------------------------------------------------------------- entity ids


@pytest.mark.parametrize(
    ("device", "point", "expected"),
    [
        ("boiler", "voltage", "boiler_voltage"),
        ("meter-1", "L1 voltage", "meter_1_l1_voltage"),  # as Home Assistant slugifies
        ("Meter__A ", "x", "meter_a_x"),
        ("zähler", "temp", "zähler_temp"),  # left for Home Assistant to transliterate
        ("it's", "x", "it's_x"),  # python-slugify drops quotes: not guessed here
    ],
)
def test_object_id_is_written_as_home_assistant_would_or_left_alone(
    device: str, point: str, expected: str
) -> None:
    assert object_id(device, point) == expected
    assert entity_id(Platform.SENSOR, device, point) == f"sensor.{expected}"


def test_every_entity_suggests_its_id_both_ways() -> None:
    """`default_entity_id` (Home Assistant 2025.10+) names the platform; `object_id` (the
    releases before) is the same id without it, so both give one entity id."""
    discovery = Discovery(_config())
    for message in discovery.messages():
        for comp in json.loads(message.payload)["cmps"].values():
            assert comp["default_entity_id"] == f"{comp['p']}.{comp['object_id']}"


# --------------------------------------------------------------------------- ids check


def _fleet(devices: str, ha: bool = True, head: str = "") -> BridgeConfig:
    """A configuration as the reader builds it, before its id check (which refuses
    exactly these: tests/configs/bad/ha_ids.yaml), Home Assistant switched on after."""
    config = parse_config(
        f"version: 1\n{head}hosts: [{{name: gw, address: 127.0.0.1}}]\ndevices:\n{devices}",
        env={},
    )
    return dataclasses.replace(config, homeassistant=HomeAssistant(enabled=ha))


def test_forged_hash_suffixes_are_caught() -> None:
    """Issue 16, item 4: `x y` and `x_y_73dec593` published the same discovery topic;
    points `p q` and `p_q_7376f44a` shared a component key, and one was dropped."""
    assert safe_id("x y") == "x_y_73dec593" and safe_id("p q") == "p_q_7376f44a"
    coil = "table: coil, address: 0"
    config = _fleet(
        f"  - {{name: x y, host: gw, unit: 1, points: [{{name: p q, {coil}}},\n"
        f"     {{name: p_q_7376f44a, table: coil, address: 1}}]}}\n"
        f"  - {{name: x_y_73dec593, host: gw, unit: 2, points: [{{name: a, {coil}}}]}}\n"
    )
    assert id_problems(config) == [
        Clash("component key", "p_q_7376f44a", Owner("x y", "p q"), Owner("x y", "p_q_7376f44a")),
        Clash("discovery topic", "x_y_73dec593", Owner("x y"), Owner("x_y_73dec593")),
    ]
    alone = f"  - {{name: x y, host: gw, unit: 1, points: [{{name: a, {coil}}}]}}\n"
    assert id_problems(_fleet(alone)) == []


def test_entity_ids_that_home_assistant_would_make_alike_are_caught() -> None:
    config = _fleet(
        "  - {name: meter-1, host: gw, unit: 1, points: [{name: voltage, table: holding,\n"
        "     address: 0, type: uint16}, {name: ⚡ power, table: holding, address: 1,\n"
        "     type: uint16}]}\n"
        "  - {name: meter, host: gw, unit: 2, points: [{name: 1_voltage, table: holding,\n"
        "     address: 0, type: uint16}]}\n"
        "  - {name: Zähler, host: gw, unit: 3, points: [{name: x, table: coil, address: 0}]}\n"
        "  - {name: zahler, host: gw, unit: 4, points: [{name: x, table: coil, address: 0}]}\n"
        "  - {name: meter 1, host: gw, unit: 5, points: [{name: power, table: holding,\n"
        "     address: 0, type: uint16}]}\n"
    )
    clashes = {(c.ident, str(c.first), str(c.second)) for c in id_problems(config)}
    assert clashes == {
        ("sensor.meter_1_voltage", "device 'meter-1' point 'voltage'",
         "device 'meter' point '1_voltage'"),
        ("binary_sensor.zahler_x", "device 'Zähler' point 'x'", "device 'zahler' point 'x'"),
        ("sensor.meter_1_power", "device 'meter-1' point '⚡ power'",
         "device 'meter 1' point 'power'"),
    }  # fmt: skip


def test_the_bridge_entities_count_too_and_nothing_without_home_assistant() -> None:
    devices = (
        "  - {name: bridge-under-test, host: gw, unit: 1, points: [{name: uptime,"
        " table: holding, address: 0, type: uint16}]}\n"
    )
    config = _fleet(devices, head="mqtt: {client_id: bridge-under-test}\n")
    [clash] = id_problems(config)
    assert clash.ident == "sensor.bridge_under_test_uptime"
    assert str(clash.first) == "the bridge point 'uptime'"
    assert id_problems(_fleet(devices, ha=False)) == []


def test_entity_ids_over_255_characters_are_caught() -> None:
    long = "d" * 127  # binary_sensor. + 127 + _ + 127: 270 characters
    config = _fleet(
        f"  - {{name: {long}, host: gw, unit: 1, points: [{{name: {'p' * 127}, table: coil,"
        " address: 0}, {name: short, table: coil, address: 1}]}\n"
        # Transliterated, a name grows: 100 CJK characters are 300 and more of ASCII.
        f"  - {{name: 中, host: gw, unit: 2, points: [{{name: {'温' * 100}, table: coil,"
        " address: 0}]}\n"
    )
    too_long = [p for p in id_problems(config) if isinstance(p, TooLong)]
    assert [(p.owner.device, len(p.ident) > 255) for p in too_long] == [(long, True), ("中", True)]
    assert hass.slugify("温" * 100).startswith("wen_wen")
