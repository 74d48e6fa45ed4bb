"""Home Assistant MQTT discovery: the validated configuration -> retained messages. Pure.

One device-based discovery message per bridge device, on
``<prefix>/device/<client>/<device>/config`` (both levels made topic-safe), holding
``dev`` (the device), ``o`` (this bridge as origin), the shared ``state_topic`` and
``availability`` (bridge state AND device availability, ``availability_mode: all``)
and ``cmps``: one component per point, its platform chosen by `bridge.hass.platform`.
A further device stands for the bridge itself, with diagnostic sensors read from the
health report; every other device names it as ``via_device``.

Identities are built from the MQTT ``client_id``, the device name and the point
name, which never contain ``/``, so ``<client_id>/<device>/<point>`` is unique and
the same after every restart. Each entity also suggests its entity id,
``<platform>.<device>_<point>`` (`entity_id`): as ``default_entity_id`` for Home
Assistant 2025.10 and later, and as ``object_id`` for earlier releases (2025.10 warns
about ``object_id`` only when ``default_entity_id`` is missing, and 2026.4 ignores it),
so a point keeps its entity id on every release. `Discovery.repair` recognises this bridge's own
earlier messages (origin name and identifiers) and answers those that are stale.

One shard of a fleet (`--shard`) keeps the configured client id for its devices (their
topics and identities do not depend on how the fleet is split) and uses its own client
id for its bridge device, which its devices name as ``via_device``; it leaves alone the
discovery of devices that other shards run.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from bridge import __version__, hass
from bridge.codec import int_range
from bridge.figures import DeviceFigures, HostFigures, health_key
from bridge.hass import Platform
from bridge.messages import Message
from bridge.model import BridgeConfig, DataType, Device, EntityCategory, Output, Point
from bridge.payloads import OFFLINE, ONLINE
from bridge.topics import Topics, topics_of

ORIGIN_NAME = "modbus-mqtt-bridge"
SUPPORT_URL: str | None = None  # the project has no public home yet; sent when it has one
BRIDGE_DEVICE = "bridge"  # a reserved device name, so no configured device can take it
EXPIRE_HEARTBEATS = 3  # a sensor with a heartbeat turns unavailable after this many missed
_SAFE = re.compile(r"[A-Za-z0-9_-]+")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_PLAIN = re.compile(r"[A-Za-z0-9_ -]+")  # names Home Assistant's slugify only lowercases and joins
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
_FLOAT_LIMIT = {DataType.FLOAT32: 3.4028234663852886e38, DataType.FLOAT64: 1.7976931348623157e308}
_MIN_STEP = 0.001  # Home Assistant's smallest number step
_BOOL_TRUE, _BOOL_FALSE = "true", "false"  # plain payloads and commands of bools


def safe_id(text: str) -> str:
    """`text` as a discovery topic level (letters, digits, ``_``, ``-``). Text that had to
    change gets a hash of the original, so two names never map to the same id."""
    if _SAFE.fullmatch(text):
        return text
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{_UNSAFE.sub('_', text).strip('_') or 'x'}_{digest}"


def readable(name: str) -> str:
    """A point name made readable: ``l1_voltage`` -> ``L1 voltage``."""
    words = re.sub(r"[_\s]+", " ", name).strip()
    return words[:1].upper() + words[1:] if words else name


def unique_id(client_id: str, device: str, point: str) -> str:
    return f"{client_id}/{device}/{point}"


def object_id(device: str, point: str) -> str:
    """What Home Assistant makes the entity id from (after its platform and a dot):
    ``<device>_<point>``, written as Home Assistant writes it where that is certain.

    Home Assistant slugifies it (lower case, transliterated, runs of anything else
    joined by ``_``). A name of letters, digits, ``_``, ``-`` and spaces is given in that
    form here (``meter-1`` + ``voltage`` -> ``meter_1_voltage``); any other is left as
    written, for Home Assistant to transliterate, so the entity id is the same whichever
    of ``object_id`` and ``default_entity_id`` a release reads."""
    text = f"{device}_{point}"
    if _PLAIN.fullmatch(text):
        return _NOT_SLUG.sub("_", text.lower()).strip("_") or text
    return text


def entity_id(platform: Platform, device: str, point: str) -> str:
    """The entity id suggested to Home Assistant: e.g. ``sensor.boiler_voltage``."""
    return f"{platform.value}.{object_id(device, point)}"


def device_identifier(client_id: str, device: str) -> str:
    return f"{client_id}/{device}"


def _key(name: str) -> str:
    """A name as a Jinja string literal that Home Assistant reads back as the same name.

    Jinja takes a literal's characters as they are and only then decodes backslash
    escapes (`\\uXXXX` one UTF-16 unit at a time), so a character outside the Basic
    Multilingual Plane escaped the JSON way (a surrogate pair) became two lone
    surrogates, and the template looked up a key no payload has: the entity stayed
    unknown. Every character is written as itself; only the quote and the backslash
    are escaped (names hold no control characters: `topics.name_problem`)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _json_number(value: float) -> float | int:
    """A whole number as an int, so JSON writes 5, not 5.0."""
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else value


@dataclass(frozen=True)
class Discovery:
    """Discovery messages of one configuration, and the repair of old ones."""

    config: BridgeConfig
    version: str = __version__

    @property
    def topics(self) -> Topics:
        return topics_of(self.config)

    @property
    def client_id(self) -> str:
        """The devices' identity: the configured client id, the same in every shard, so a
        device keeps its entities when the fleet is split or split differently."""
        shard = self.config.shard
        return self.config.mqtt.client_id if shard is None else shard.fleet_client_id

    @property
    def node_id(self) -> str:
        """This process's client id: the bridge device's identity (one per shard)."""
        return self.config.mqtt.client_id

    @property
    def prefix(self) -> str:
        return self.config.homeassistant.discovery_prefix

    @property
    def filter(self) -> str:
        """The subscription that replays this bridge's earlier discovery messages."""
        return f"{self.prefix}/device/{safe_id(self.client_id)}/+/config"

    def config_topic(self, device: str) -> str:
        return f"{self.prefix}/device/{safe_id(self.client_id)}/{safe_id(device)}/config"

    @property
    def bridge_topic(self) -> str:
        return f"{self.prefix}/device/{safe_id(self.node_id)}/{BRIDGE_DEVICE}/config"

    # -- messages -----------------------------------------------------------

    def messages(self) -> list[Message]:
        """Every retained discovery message: the bridge device first, then each device
        with at least one point in Home Assistant."""
        out = [Message(self.bridge_topic, _json(self.bridge_payload()), True)]
        for device in self.config.devices:
            payload = self.device_payload(device)
            if payload["cmps"]:
                out.append(Message(self.config_topic(device.name), _json(payload), True))
        return out

    def origin(self) -> dict[str, str]:
        origin = {"name": ORIGIN_NAME, "sw_version": self.version}
        if SUPPORT_URL is not None:
            origin["support_url"] = SUPPORT_URL
        return origin

    def device_payload(self, device: Device) -> dict[str, Any]:
        t = self.topics
        dev: dict[str, Any] = {
            "identifiers": [device_identifier(self.client_id, device.name)],
            "name": device.name,
            "via_device": device_identifier(self.node_id, BRIDGE_DEVICE),
        }
        for key, value in (
            ("manufacturer", device.manufacturer),
            ("model", device.model),
            ("serial_number", device.serial),
            ("sw_version", device.sw_version),
            ("suggested_area", device.area),
        ):
            if value is not None:
                dev[key] = value
        payload: dict[str, Any] = {"dev": dev, "o": self.origin()}
        if self.config.mqtt.output is not Output.ATTRIBUTE:
            payload["state_topic"] = t.state(device.name)
        payload["availability"] = [
            _available(t.bridge_state),
            _available(t.availability(device.name)),
        ]
        payload["availability_mode"] = "all"
        payload["cmps"] = {
            safe_id(p.name): self.component(device, p) for p in device.points if p.homeassistant
        }
        return payload

    def component(self, device: Device, p: Point) -> dict[str, Any]:
        """The component of one point (`hass.platform` decides which)."""
        kind = hass.platform(p, read_only=self.config.read_only)
        c: dict[str, Any] = {
            "p": kind.value,
            "name": p.display_name or readable(p.name),
            "unique_id": unique_id(self.client_id, device.name, p.name),
            **_entity_ids(kind, device.name, p.name),
            "qos": self.config.mqtt.qos,  # not inherited from the device level
        }
        if self.config.mqtt.output is Output.ATTRIBUTE:
            c["state_topic"] = self.topics.attribute(device.name, p.name)
        c["value_template"] = self._value_template(p, kind)
        if kind in (Platform.NUMBER, Platform.SWITCH, Platform.SELECT):
            c["command_topic"] = self.topics.point_set(device.name, p.name)
        elif kind is Platform.TEXT:
            # As JSON on the device's topic: an empty plain payload is no command (it is
            # how a retained command is cleared), and an empty text is a value here.
            c["command_topic"] = self.topics.set(device.name)
            c["command_template"] = f"{{{{ {{{_key(p.name)}: value}} | to_json }}}}"
            c.update(min=0, max=2 * p.length, mode="text")
        # With read_only a control becomes a sensor: keep only what a sensor can have.
        if p.device_class in hass.device_classes(p, read_only=self.config.read_only):
            c["device_class"] = p.device_class
        if p.entity_category is not None and (
            p.entity_category is not EntityCategory.CONFIG or kind not in hass.READ_ONLY_PLATFORMS
        ):
            c["entity_category"] = p.entity_category.value
        if p.icon is not None:
            c["icon"] = p.icon

        if kind in (Platform.BINARY_SENSOR, Platform.SWITCH):
            c["payload_on"], c["payload_off"] = _BOOL_TRUE, _BOOL_FALSE
        elif p.values:  # an enum: sensor or select
            if kind is Platform.SENSOR:
                c["device_class"] = "enum"
            c["options"] = [label for _, label in p.values]
        elif hass.is_number(p):
            if p.unit is not None:
                c["unit_of_measurement"] = p.unit
            if kind is Platform.SENSOR:
                if p.state_class is not None:
                    c["state_class"] = p.state_class.value
                if p.precision is not None:
                    c["suggested_display_precision"] = p.precision
            else:
                lo, hi = number_range(p)
                c.update(
                    min=_json_number(lo), max=_json_number(hi), step=_json_number(number_step(p))
                )
                c["mode"] = "box"
        expire = self._expire_after(device)
        if expire is not None and kind in hass.READ_ONLY_PLATFORMS:
            c["expire_after"] = expire
        return c

    def _value_template(self, p: Point, kind: Platform) -> str:
        """Renders the value as Home Assistant takes it; a null (or a point not read yet)
        as ``None``, which it shows as unknown instead of logging an error. A text entity
        has no unknown: a null is an empty text there."""
        as_bool = hass.yields_bool(p) and not p.values
        if kind is Platform.TEXT:
            if self.config.mqtt.output is Output.ATTRIBUTE:
                return "{{ value }}"
            return f"{{{{ value_json.get({_key(p.name)}) or '' }}}}"
        if self.config.mqtt.output is Output.ATTRIBUTE:
            # plain payloads: true/false, numbers, text; null is an empty payload
            return "{{ value if value else 'None' }}"
        get = f"value_json.get({_key(p.name)})"
        if as_bool:
            return (
                f"{{% set v = {get} %}}"
                f"{{{{ 'None' if v is none else ('{_BOOL_TRUE}' if v else '{_BOOL_FALSE}') }}}}"
            )
        return f"{{{{ {get} }}}}"

    def _expire_after(self, device: Device) -> int | None:
        """Seconds without a message after which Home Assistant shows a sensor as
        unavailable: a few heartbeats (or poll intervals, if those are longer)."""
        if device.heartbeat is None:
            return None
        fastest = min((p.interval for p in device.points), default=device.interval)
        return math.ceil(EXPIRE_HEARTBEATS * max(device.heartbeat, fastest))

    def bridge_payload(self) -> dict[str, Any]:
        """The bridge as a device: diagnostic sensors read from `bridge/health`.

        The report may be trimmed to the broker's maximum packet size
        (`health.fit_health`): hosts and devices then hold counts (numbers) instead of
        one entry per name, and what is left out renders as None (unknown).
        """
        t = self.topics
        # The report's keys, from their declarations (bridge.figures).
        connected = health_key(HostFigures, "connected")
        requests = health_key(HostFigures, "requests")
        errors = health_key(HostFigures, "errors")
        available = health_key(DeviceFigures, "available")
        hosts = "{% set h = value_json.get('hosts', {}) %}"
        devices = "{% set d = value_json.get('devices', {}) %}"
        trimmed = "h.connected is number"  # a host named `connected` holds a mapping
        sensors: Sequence[tuple[str, str, Mapping[str, Any]]] = (
            (
                "uptime",
                "{{ value_json.get('uptime_s') }}",
                {"device_class": "duration", "unit_of_measurement": "s"},
            ),
            (
                "hosts_connected",
                f"{hosts}{{{{ h.connected if {trimmed}"
                f" else h.values() | selectattr('{connected}') | list | count }}}}",
                {"state_class": "measurement"},
            ),
            (
                "devices_online",
                f"{devices}{{{{ d.total - d.offline if d.offline is number"
                f" else d.values() | selectattr('{available}') | list | count }}}}",
                {"state_class": "measurement"},
            ),
            (
                "requests",
                f"{hosts}{{{{ 'None' if {trimmed}"
                f" else h.values() | sum(attribute='{requests}') }}}}",
                {"state_class": "total_increasing"},
            ),
            (
                "errors",
                f"{hosts}{{{{ 'None' if {trimmed} else h.values() | sum(attribute='{errors}') }}}}",
                {"state_class": "total_increasing"},
            ),
            (
                "memory",
                "{{ value_json.get('rss_bytes') }}",
                {"device_class": "data_size", "unit_of_measurement": "B"},
            ),
        )
        cmps = {
            name: {
                "p": Platform.SENSOR.value,
                "name": readable(name),
                "unique_id": unique_id(self.node_id, BRIDGE_DEVICE, name),
                **_entity_ids(Platform.SENSOR, self.node_id, name),
                "value_template": template,
                "entity_category": "diagnostic",
                "qos": self.config.mqtt.qos,
                **extra,
            }
            for name, template, extra in sensors
        }
        return {
            "dev": {
                "identifiers": [device_identifier(self.node_id, BRIDGE_DEVICE)],
                "name": f"Modbus bridge {self.node_id}",
                "manufacturer": ORIGIN_NAME,
                "model": "Modbus to MQTT bridge",
                "sw_version": self.version,
            },
            "o": self.origin(),
            "state_topic": t.bridge_health,
            "availability": [_available(t.bridge_state)],
            "cmps": cmps,
        }

    # -- earlier messages ---------------------------------------------------

    @cached_property
    def _elsewhere(self) -> frozenset[str]:
        """Discovery topics of the devices other shards run."""
        return frozenset(self.config_topic(d) for d in self.config.elsewhere)

    def is_ours(self, payload: bytes) -> bool:
        """A discovery payload this bridge (this origin and client id) published."""
        doc = _load(payload)
        if doc is None:
            return False
        origin, dev = doc.get("o"), doc.get("dev")
        if not isinstance(origin, dict) or origin.get("name") != ORIGIN_NAME:
            return False
        ids = dev.get("identifiers") if isinstance(dev, dict) else None
        mine = f"{self.client_id}/"
        return isinstance(ids, list) and any(isinstance(i, str) and i.startswith(mine) for i in ids)

    def repair(self, topic: str, payload: bytes, current: Mapping[str, bytes]) -> Message | None:
        """What to publish about an earlier retained discovery message, or None.

        `current` maps each topic of `messages()` to its payload. Someone else's
        message, or one that is current, is left alone. Ours on a topic no longer in
        use is cleared (an empty retained payload: Home Assistant removes the device).
        Ours with components the current one lacks gets the current payload plus a
        ``{"p": <platform>}`` stub per removed component, which is how Home Assistant
        removes a single entity of a device.
        """
        if not payload or not self.is_ours(payload) or topic in self._elsewhere:
            return None  # not ours, or a device another shard runs
        now = current.get(topic)
        if now is None:
            return Message(topic, b"", True)
        if payload == now:
            return None
        old = _load(payload) or {}
        new = json.loads(now)
        old_cmps = old.get("cmps")
        if not isinstance(old_cmps, dict):
            return None
        gone = {
            key: {"p": comp["p"]}
            for key, comp in old_cmps.items()
            if key not in new["cmps"] and isinstance(comp, dict) and len(comp) > 1 and "p" in comp
        }
        if not gone:
            return None
        new["cmps"].update(gone)
        return Message(topic, _json(new), True)


def number_range(p: Point) -> tuple[float, float]:
    """The lowest and highest value a number entity offers: the point's `min`/`max`,
    else what its type can hold after scale and offset."""
    raw = int_range(p.type)
    if raw is not None:
        a, b = raw[0] * p.scale + p.offset, raw[1] * p.scale + p.offset
        lo, hi = min(a, b), max(a, b)
    else:
        limit = _FLOAT_LIMIT.get(p.type, _FLOAT_LIMIT[DataType.FLOAT32])
        lo, hi = -limit, limit
    return (
        lo if p.minimum is None else p.minimum,
        hi if p.maximum is None else p.maximum,
    )


def number_step(p: Point) -> float:
    """The step of a number entity: the scale of an integer register (a raw step of 1),
    or the published precision, whichever is coarser; at least 0.001."""
    steps = []
    if not p.type.is_float:
        steps.append(abs(p.scale))
    if p.precision is not None:
        steps.append(10.0**-p.precision)
    step = max(steps) if steps else _MIN_STEP
    return max(round(step, 12), _MIN_STEP)


def _entity_ids(platform: Platform, device: str, point: str) -> dict[str, str]:
    """``default_entity_id`` (Home Assistant 2025.10 and later) and ``object_id`` (the
    releases before, which drop the unknown ``default_entity_id``)."""
    return {
        "default_entity_id": entity_id(platform, device, point),
        "object_id": object_id(device, point),
    }


@dataclass(frozen=True)
class Owner:
    """Whose id it is: a device (and one of its points), or the bridge itself (None)."""

    device: str | None
    point: str | None = None

    def __str__(self) -> str:
        who = "the bridge" if self.device is None else f"device {self.device!r}"
        return who if self.point is None else f"{who} point {self.point!r}"


@dataclass(frozen=True)
class Clash:
    """Two names that Home Assistant discovery maps to one id (`what`: "discovery
    topic", "component key", "entity id"): one of the two would be lost or renamed."""

    what: str
    ident: str
    first: Owner
    second: Owner


@dataclass(frozen=True)
class TooLong:
    """An entity id longer than Home Assistant takes: the entity is not created."""

    ident: str
    owner: Owner


def id_problems(config: BridgeConfig) -> list[Clash | TooLong]:
    """The ids discovery builds from names that Home Assistant cannot tell apart or
    take, for `check` (none without Home Assistant). Every id is compared however it
    is built: a name made topic-safe with a hash can equal a name written that way
    (``x y`` and ``x_y_73dec593``), and two names can slugify alike (``meter-1`` +
    ``voltage`` and ``meter`` + ``1_voltage``: ``sensor.meter_1_voltage``)."""
    if not config.homeassistant.enabled:
        return []
    discovery = Discovery(config)
    out: list[Clash | TooLong] = []
    seen: dict[tuple[str, str | None, str], Owner] = {}

    def claim(what: str, scope: str | None, ident: str, owner: Owner) -> None:
        first = seen.setdefault((what, scope, ident), owner)
        if first is not owner:
            out.append(Clash(what, ident, first, owner))

    bridge = Owner(None)
    claim("discovery topic", None, BRIDGE_DEVICE, bridge)
    for name, component in discovery.bridge_payload()["cmps"].items():
        claim("entity id", None, _ha_entity_id(component), Owner(None, name))
    for device in config.devices:
        components = {p.name: discovery.component(device, p) for p in device.points
                      if p.homeassistant}  # fmt: skip
        if not components:
            continue
        owner = Owner(device.name)
        claim("discovery topic", None, safe_id(device.name), owner)
        for point, component in components.items():
            at = Owner(device.name, point)
            claim("component key", device.name, safe_id(point), at)
            ident = _ha_entity_id(component)
            claim("entity id", None, ident, at)
            if len(ident) > hass.MAX_ENTITY_ID:
                out.append(TooLong(ident, at))
    return out


def _ha_entity_id(component: Mapping[str, Any]) -> str:
    """The entity id Home Assistant makes of a component's suggestion."""
    return hass.entity_id(Platform(component["p"]), component["object_id"])


def _available(topic: str) -> dict[str, str]:
    return {"topic": topic, "payload_available": ONLINE, "payload_not_available": OFFLINE}


def _json(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _load(payload: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None
