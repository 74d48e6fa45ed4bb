"""What the bridge runs, as retained MQTT messages for anyone who subscribes: pure.

- ``<base>/bridge/info``: the bridge's version, its client id, its shard, and a summary of
  its configuration (hosts, devices, points, read blocks, output, Home Assistant);
- ``<base>/bridge/devices``: each device with its host (name and where it is), unit id,
  poll interval, device information, profile (and SunSpec models, when there are), its
  topics and its points (name, table, address, type, unit, writable).

One shard of a fleet (`--shard`) publishes its own under ``<base>/bridge/KofN/``, listing
the devices it runs. Like zigbee2mqtt's topics of the same names, they let a dashboard or
a script discover what there is without reading the configuration file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from bridge import __version__
from bridge.feature import Changes, Feature, Hub
from bridge.messages import Message
from bridge.model import BridgeConfig, Device, Point
from bridge.planner import plan_device
from bridge.reload import ReloadPlan
from bridge.topics import Topics, topics_of


def info_payload(
    config: BridgeConfig, *, read_blocks: int, version: str = __version__
) -> dict[str, Any]:
    """The document of ``bridge/info``."""
    shard = config.shard
    return {
        "version": version,
        "client_id": config.mqtt.client_id,
        "shard": None if shard is None else str(shard),
        "base_topic": config.mqtt.base_topic,
        "config": {
            "hosts": len(config.hosts),
            "devices": len(config.devices),
            "points": sum(len(d.points) for d in config.devices),
            "read_blocks": read_blocks,
            "output": config.mqtt.output.value,
            "read_only": config.read_only,
            "homeassistant": config.homeassistant.enabled,
            "metrics": None if config.metrics is None else config.metrics.describe(),
        },
    }


def point_entry(p: Point) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": p.name,
        "table": p.table.value,
        "address": p.address,
        "type": p.type.value,
    }
    if p.bit is not None:
        entry["bit"] = p.bit
    if p.unit is not None:
        entry["unit"] = p.unit
    if p.values:
        entry["values"] = [label for _, label in p.values]
    entry["writable"] = p.writable
    return entry


def device_entry(config: BridgeConfig, topics: Topics, device: Device) -> dict[str, Any]:
    host = config.host(device.host)
    entry: dict[str, Any] = {
        "name": device.name,
        "host": device.host,
        "link": host.describe(),
        "unit": device.unit,
        "interval": device.interval,
        "manufacturer": device.manufacturer,
        "model": device.model,
        # Where the points came from: a device profile (`profile: eastron/sdm630`, issue
        # 17) and, for a SunSpec device, the models read from it; null until then.
        "profile": device.profile,
        "sunspec_models": None if device.sunspec_models is None else list(device.sunspec_models),
        "topics": {
            "state": topics.state(device.name),
            "availability": topics.availability(device.name),
            "set": topics.set(device.name),
        },
        "points": [point_entry(p) for p in device.points],
    }
    return entry


def devices_payload(config: BridgeConfig) -> list[dict[str, Any]]:
    """The document of ``bridge/devices``: this process's devices, in configuration order."""
    topics = topics_of(config)
    return [device_entry(config, topics, d) for d in config.devices]


def messages(config: BridgeConfig, *, read_blocks: int) -> Mapping[str, bytes]:
    """Topic -> retained payload of both documents."""
    topics = topics_of(config)
    return {
        topics.bridge_info: _json(info_payload(config, read_blocks=read_blocks)),
        topics.bridge_devices: _json(devices_payload(config)),
    }


def _json(doc: Mapping[str, Any] | Sequence[Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


class Inventory(Feature):
    """``bridge/info`` and ``bridge/devices``, retained: published on every connect, and
    again by a reload that changes them (cleared where the bridge's topics move away)."""

    name = "inventory"

    def __init__(self, hub: Hub) -> None:
        super().__init__(hub)
        self.current = build(hub.config)
        self._next: dict[str, bytes] | None = None

    def connected(self) -> None:
        for topic, payload in self.current.items():
            self.hub.publish(topic, payload, retain=True)

    def reload(self, old: BridgeConfig, new: BridgeConfig, plan: ReloadPlan) -> Changes:
        fresh = build(new)
        self._next = fresh
        leaving = [Message(t, b"", True) for t in self.current if t not in fresh]
        arriving = [Message(t, p, True) for t, p in fresh.items() if self.current.get(t) != p]
        return Changes(leaving=leaving, arriving=arriving)

    def reloaded(self) -> None:
        if self._next is not None:
            self.current, self._next = self._next, None


def build(config: BridgeConfig) -> dict[str, bytes]:
    """Topic -> payload of both documents for `config` (its read plan compiled here)."""
    blocks = sum(len(plan_device(d)) for d in config.devices)
    return dict(messages(config, read_blocks=blocks))
