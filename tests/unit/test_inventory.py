"""bridge/info and bridge/devices: what the bridge runs, as documents. Pure."""

from __future__ import annotations

import json
from pathlib import Path

from bridge import __version__
from bridge.config import parse_config
from bridge.inventory import Inventory, devices_payload, info_payload, messages
from bridge.messages import Message
from bridge.model import BridgeConfig
from bridge.reload import plan_reload
from bridge.shard import select

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"


def test_info_summarises_the_configuration() -> None:
    config = parse_config(EXAMPLE.read_text(), env={})
    doc = info_payload(config, read_blocks=17)
    assert doc["version"] == __version__
    assert doc["client_id"] == "modbus-bridge" and doc["shard"] is None
    assert doc["config"] == {
        "hosts": 3,
        "devices": 6,
        "points": sum(len(d.points) for d in config.devices),
        "read_blocks": 17,
        "output": "json",
        "read_only": False,
        "homeassistant": False,
        "metrics": None,
    }


def test_devices_lists_each_with_host_unit_topics_and_points() -> None:
    config = parse_config(EXAMPLE.read_text(), env={})
    docs = devices_payload(config)
    assert [d["name"] for d in docs] == [d.name for d in config.devices]
    boiler = next(d for d in docs if d["name"] == "boiler")
    assert (boiler["host"], boiler["link"], boiler["unit"]) == ("gw-b", "192.168.1.50:502", 7)
    assert boiler["topics"] == {
        "state": "modbus/boiler",
        "availability": "modbus/boiler/availability",
        "set": "modbus/boiler/set",
    }
    assert boiler["profile"] is None and boiler["sunspec_models"] is None  # fields kept
    setpoint = next(p for p in boiler["points"] if p["name"] == "setpoint")
    assert setpoint == {
        "name": "setpoint", "table": "holding", "address": 100, "type": "int16",
        "unit": "°C", "writable": True,
    }  # fmt: skip
    state = next(p for p in boiler["points"] if p["name"] == "state")
    assert state["values"] == ["off", "on", "fault"]
    heatpump = next(d for d in docs if d["name"] == "heatpump")
    assert heatpump["link"].startswith("/dev/serial/by-id/")


def test_a_shard_publishes_its_own_under_its_bridge_topics() -> None:
    fleet = parse_config(EXAMPLE.read_text(), env={})
    mine = select(fleet, 2, 2)
    out = messages(mine, read_blocks=3)
    assert set(out) == {"modbus/bridge/2of2/info", "modbus/bridge/2of2/devices"}
    assert json.loads(out["modbus/bridge/2of2/info"])["shard"] == "2/2"
    listed = [d["name"] for d in json.loads(out["modbus/bridge/2of2/devices"])]
    assert listed == [d.name for d in mine.devices]


class _Hub:
    """The running bridge as the feature sees it, in memory."""

    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.published: list[Message] = []

    def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        self.published.append(Message(topic, payload, retain))


def test_the_feature_publishes_on_connect_and_a_reload_its_difference() -> None:
    config = parse_config(EXAMPLE.read_text(), env={})
    hub = _Hub(config)
    feature = Inventory(hub)  # type: ignore[arg-type]
    feature.connected()
    assert [(m.topic, m.retain) for m in hub.published] == [
        ("modbus/bridge/info", True),
        ("modbus/bridge/devices", True),
    ]
    # A device more: the devices document (and the counts in info) again.
    more = EXAMPLE.read_text().replace("units: 1-4", "units: 1-5")
    new = parse_config(more, env={})
    changes = feature.reload(config, new, plan_reload(config, new))
    assert changes.leaving == []
    assert {m.topic for m in changes.arriving} == {"modbus/bridge/info", "modbus/bridge/devices"}
    feature.reloaded()
    hub.config = new
    # The base topic moves: the old documents are cleared, the new ones published.
    moved = parse_config(more.replace("base_topic: modbus", "base_topic: plant"), env={})
    changes = feature.reload(new, moved, plan_reload(new, moved))
    assert [(m.topic, m.payload) for m in changes.leaving] == [
        ("modbus/bridge/info", b""),
        ("modbus/bridge/devices", b""),
    ]
    assert {m.topic for m in changes.arriving} == {"plant/bridge/info", "plant/bridge/devices"}
