"""The Sparkplug feature against a hub in memory, without a broker: DDATA carries only
what changed since the node last sent it, a DCMD becomes a `set` command on the
validated write path, and one the node cannot read is refused with nothing run.
(tests/integration/test_sparkplug_tahu.py runs it against Mosquitto and Tahu's decoder.)"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from bridge.config import parse_config
from bridge.logs import Throttle
from bridge.messages import Incoming, Message
from bridge.model import BridgeConfig
from bridge.sparkplug import DataType, EdgeNode, Metric, Payload, SparkplugTopics
from bridge.sparkplug_pb import decode, encode
from bridge.spnode import SparkplugNode, changes
from bridge.state import StateCache
from bridge.topics import Topics, topics_of

CONFIG = """\
version: 1
mqtt: {client_id: site-7, base_topic: plant}
sparkplug: {group_id: g, edge_node_id: e}
hosts:
  - {name: gw, address: 10.0.0.1}
devices:
  - name: boiler
    host: gw
    unit: 1
    points:
      - {name: temp, table: input, address: 0, type: int16}
      - {name: level, table: holding, address: 1, type: uint16, writable: true}
"""


class Hub:
    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.topics: Topics = topics_of(config)
        self.state = StateCache(config.devices, self.topics, output=config.mqtt.output, retain=True)
        self.mqtt_connected = True
        self.throttle = Throttle(logging.getLogger("test"))
        self.commands: list[Incoming] = []

    def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        pass

    def send(self, messages: Iterable[Message]) -> None:
        pass

    def republish(self) -> None:
        pass

    async def command(self, message: Incoming) -> None:
        self.commands.append(message)


class Link:
    connected = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, Payload, dict[str, Any]]] = []

    def publish(self, topic: str, payload: bytes, **options: Any) -> None:
        self.sent.append((topic, decode(payload), options))


def _feature() -> tuple[SparkplugNode, Hub, Link]:
    hub = Hub(parse_config(CONFIG))
    feature = SparkplugNode(hub)
    assert hub.config.sparkplug is not None
    feature.node = EdgeNode(SparkplugTopics("g", "e"), hub.config.devices)
    link = Link()
    feature.link = link  # type: ignore[assignment]
    return feature, hub, link


def _poll(feature: SparkplugNode, hub: Hub, values: dict[str, Any], t: float) -> None:
    hub.state.set_available("boiler", True)
    messages = hub.state.update("boiler", values, t)
    feature.device_changed(hub.state.devices["boiler"], messages)


def test_changes_compares_type_and_nan() -> None:
    nan = float("nan")
    assert changes({"a": 1, "b": nan, "c": 1}, {"a": 1, "b": nan, "c": True}) == {"c": True}
    assert changes({}, {"a": 1}) == {"a": 1}


def test_ddata_only_the_metrics_that_changed() -> None:
    feature, hub, link = _feature()
    feature._on_connected()
    _poll(feature, hub, {"temp": 20, "level": 5}, 1.0)
    topics = [t for t, _, _ in link.sent]
    assert topics == ["spBv1.0/g/NBIRTH/e", "spBv1.0/g/DBIRTH/e/boiler", "spBv1.0/g/NDATA/e"]
    assert all(o["session"] and not o["retain"] and not o["coalesce"] for _, _, o in link.sent)
    link.sent.clear()
    _poll(feature, hub, {"temp": 21, "level": 5}, 2.0)
    _poll(feature, hub, {"temp": 21, "level": 5}, 3.0)  # nothing new: nothing sent
    [(topic, payload, _)] = link.sent
    assert topic == "spBv1.0/g/DDATA/e/boiler"
    assert [(m.name, m.value) for m in payload.metrics] == [(None, 21)]
    assert payload.metrics[0].alias == feature.node.device_metrics["boiler"][0].alias  # type: ignore[union-attr]


async def test_dcmd_takes_the_set_path() -> None:
    feature, hub, _ = _feature()
    dcmd = encode(Payload(metrics=(Metric("level", None, None, DataType.UINT16, 500),)))
    await feature._on_command(Incoming("spBv1.0/g/DCMD/e/boiler", dcmd))
    [command] = hub.commands
    assert command.topic == "plant/boiler/set"
    assert json.loads(command.payload) == {"level": 500}


async def test_dcmd_that_cannot_be_read_is_refused_unrun() -> None:
    feature, hub, _ = _feature()
    unknown = encode(Payload(metrics=(Metric("nope", None, None, DataType.UINT16, 1),)))
    await feature._on_command(Incoming("spBv1.0/g/DCMD/e/boiler", unknown))
    await feature._on_command(Incoming("spBv1.0/g/DCMD/e/boiler", b"\xff\xff not protobuf"))
    retained = encode(Payload(metrics=(Metric("level", None, None, DataType.UINT16, 1),)))
    await feature._on_command(Incoming("spBv1.0/g/DCMD/e/boiler", retained, retained=True))
    assert hub.commands == [] and feature.refused == 3
