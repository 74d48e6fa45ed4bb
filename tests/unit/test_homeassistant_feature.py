"""Home Assistant discovery as a feature, against a hub in memory (no broker): what it
publishes on connect, on Home Assistant's birth, for earlier retained discovery, and on
a reload."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from bridge.config import parse_config
from bridge.homeassistant import HomeAssistant
from bridge.logs import Throttle
from bridge.messages import Incoming, Message
from bridge.model import BridgeConfig
from bridge.reload import plan_reload
from bridge.state import StateCache
from bridge.topics import Topics, topics_of

CONFIG = """\
version: 1
mqtt: {client_id: site-7, base_topic: plant, protocol: "%(protocol)s"}
homeassistant: {enabled: %(enabled)s}
hosts:
  - {name: gw, address: 10.0.0.1}
devices:
  - name: boiler
    host: gw
    unit: 1
    points:
      - {name: temp, table: input, address: 0, type: int16}
      - {name: pump, table: coil, address: 0, writable: true}
"""


def _config(*, enabled: bool = True, protocol: str = "5") -> BridgeConfig:
    return parse_config(CONFIG % {"enabled": str(enabled).lower(), "protocol": protocol})


class Hub:
    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.topics: Topics = topics_of(config)
        self.state = StateCache(config.devices, self.topics, output=config.mqtt.output, retain=True)
        self.published: list[Message] = []
        self.republished = 0
        self.mqtt_connected = True
        self.throttle = Throttle(logging.getLogger("test"))

    def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        self.published.append(Message(topic, payload, retain))

    def send(self, messages: Iterable[Message]) -> None:
        self.published.extend(messages)

    def republish(self) -> None:
        self.republished += 1

    async def command(self, message: Incoming) -> None:
        raise AssertionError("Home Assistant's commands take the command topics")


TOPIC = "homeassistant/device/site-7/boiler/config"


def test_connect_publishes_every_device_retained() -> None:
    hub = Hub(_config())
    feature = HomeAssistant(hub)
    feature.connected()
    topics = [m.topic for m in hub.published]
    assert TOPIC in topics and all(m.retain for m in hub.published)
    doc = json.loads(next(m.payload for m in hub.published if m.topic == TOPIC))
    assert set(doc["cmps"]) == {"temp", "pump"}


def test_switched_off_it_subscribes_to_nothing_and_publishes_nothing() -> None:
    hub = Hub(_config(enabled=False))
    feature = HomeAssistant(hub)
    feature.connected()
    assert feature.routes() == {} and hub.published == []


def test_home_assistants_birth_republishes_everything() -> None:
    hub = Hub(_config())
    feature = HomeAssistant(hub)
    routes = feature.routes()
    status = routes["homeassistant/status"]
    status(Incoming("homeassistant/status", b"offline"))
    assert hub.republished == 0
    status(Incoming("homeassistant/status", b"online\n"))
    assert hub.republished == 1


def test_stale_discovery_of_this_bridge_is_cleared() -> None:
    hub = Hub(_config())
    feature = HomeAssistant(hub)
    (old_discovery,) = [
        r for f, r in feature.routes().items() if f.startswith("homeassistant/device")
    ]
    ours = feature.announced[TOPIC]  # a device of this bridge, since renamed
    stale = "homeassistant/device/site-7/gone/config"
    old_discovery(Incoming(stale, ours, retained=True))
    old_discovery(Incoming(TOPIC, feature.announced[TOPIC], retained=True))  # current
    theirs = ours.replace(b"site-7/", b"site-8/")  # another bridge's
    old_discovery(Incoming("homeassistant/device/site-8/boiler/config", theirs, retained=True))
    assert [(m.topic, m.payload) for m in hub.published] == [(stale, b"")]


def test_no_discovery_clean_up_when_a_device_is_too_large_for_mqtt_311() -> None:
    hub = Hub(_config(protocol="3.1.1"))
    feature = HomeAssistant(hub)
    assert len(feature.routes()) == 2  # small enough: status and old discovery
    feature.announced = {TOPIC: b"x" * 200_000}  # a device with very many points
    assert list(feature.routes()) == ["homeassistant/status"]


def test_a_reload_publishes_the_difference_and_takes_over_when_told() -> None:
    old = _config()
    hub = Hub(old)
    feature = HomeAssistant(hub)
    before = dict(feature.announced)
    new = _config(enabled=False)
    changes = feature.reload(old, new, plan_reload(old, new))
    assert [(m.topic, m.payload) for m in changes.leaving] == [(t, b"") for t in before]
    assert changes.arriving == []
    assert feature.announced == before  # still the running configuration's
    hub.config = new
    feature.reloaded()
    assert feature.announced == {} and feature.routes() == {}
    # Switched on again: everything arrives.
    changes = feature.reload(new, old, plan_reload(new, old))
    assert changes.leaving == [] and {m.topic for m in changes.arriving} == set(before)
