"""The reload plan: what a running bridge changes between two configurations."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import yaml

from bridge.config import parse_config
from bridge.messages import Message
from bridge.model import BridgeConfig, Output, Proxy
from bridge.reload import ReloadPlan, active_hosts, discovery_changes, dropped_points, plan_reload
from bridge.topics import Topics


def _points(*names: str) -> list[dict[str, Any]]:
    return [
        {"name": n, "table": "holding", "address": i, "type": "uint16"} for i, n in enumerate(names)
    ]


BASE: dict[str, Any] = {
    "version": 1,
    "mqtt": {"host": "127.0.0.1", "port": 1883, "client_id": "b", "base_topic": "modbus"},
    "hosts": [
        {"name": "gw-a", "address": "10.0.0.1"},
        {"name": "gw-b", "address": "10.0.0.2"},
        {"name": "gw-c", "address": "10.0.0.3"},
        {"name": "spare", "address": "10.0.0.9"},  # no devices: no session
    ],
    "devices": [
        {"name": "a1", "host": "gw-a", "unit": 1, "interval": "1s", "points": _points("x")},
        {"name": "a2", "host": "gw-a", "unit": 2, "interval": "1s", "points": _points("x")},
        {"name": "b1", "host": "gw-b", "unit": 1, "interval": "1s", "points": _points("x")},
        {"name": "c1", "host": "gw-c", "unit": 1, "interval": "1s", "points": _points("x")},
    ],
}


def _config(doc: dict[str, Any]) -> BridgeConfig:
    return parse_config(yaml.safe_dump(doc), env={})


def _edit() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def _device(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(d for d in doc["devices"] if d["name"] == name)
    return found


def _host(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(h for h in doc["hosts"] if h["name"] == name)
    return found


def test_the_same_file_changes_nothing() -> None:
    plan = plan_reload(_config(BASE), _config(BASE))
    assert plan.unchanged
    assert plan.hosts_kept == ("gw-a", "gw-b", "gw-c")
    assert plan.stopped == plan.started == ()
    assert plan.summary() == "nothing changed"


def test_hosts_without_devices_have_no_session() -> None:
    assert list(active_hosts(_config(BASE))) == ["gw-a", "gw-b", "gw-c"]
    doc = _edit()
    doc["hosts"][3]["timeout"] = "3s"  # the spare host changes: nothing runs there
    assert plan_reload(_config(BASE), _config(doc)).unchanged


def test_a_changed_host_is_reopened_and_its_devices_restart_with_their_state() -> None:
    doc = _edit()
    _host(doc, "gw-b")["timeout"] = "2s"
    plan = plan_reload(_config(BASE), _config(doc))
    assert plan.hosts_reopened == ("gw-b",)
    assert plan.hosts_kept == ("gw-a", "gw-c")
    assert plan.devices_restarted == ("b1",)
    assert plan.devices_changed == ()
    assert plan.stopped == plan.started == ("b1",)
    assert not plan.mqtt_changed


def test_added_and_removed_hosts_and_devices() -> None:
    doc = _edit()
    doc["devices"] = [d for d in doc["devices"] if d["name"] != "c1"]  # gw-c loses its only one
    doc["hosts"].append({"name": "gw-d", "address": "10.0.0.4"})
    doc["devices"].append(
        {"name": "d1", "host": "gw-d", "unit": 1, "interval": "1s", "points": _points("x")}
    )
    doc["devices"].append(
        {"name": "a3", "host": "gw-a", "unit": 3, "interval": "1s", "points": _points("x")}
    )
    plan = plan_reload(_config(BASE), _config(doc))
    assert plan.hosts_added == ("gw-d",)
    assert plan.hosts_removed == ("gw-c",)
    assert plan.hosts_kept == ("gw-a", "gw-b")
    assert plan.devices_added == ("d1", "a3")
    assert plan.devices_removed == ("c1",)
    assert plan.stopped == ("c1",)
    assert plan.started == ("d1", "a3")
    assert "added gw-d, removed gw-c" in plan.summary()
    assert "devices: added d1, a3; removed c1" in plan.summary()


def test_a_changed_device_restarts_alone() -> None:
    doc = _edit()
    _device(doc, "a2")["points"] = _points("x", "y")
    _device(doc, "b1")["interval"] = "2s"
    plan = plan_reload(_config(BASE), _config(doc))
    assert plan.devices_changed == ("a2", "b1")
    assert plan.hosts_kept == ("gw-a", "gw-b", "gw-c")
    assert plan.devices_restarted == ()


def test_a_device_moved_to_another_host_is_changed() -> None:
    doc = _edit()
    _device(doc, "a2")["host"] = "gw-b"
    _device(doc, "a2")["unit"] = 2
    plan = plan_reload(_config(BASE), _config(doc))
    assert plan.devices_changed == ("a2",)
    assert plan.hosts_kept == ("gw-a", "gw-b", "gw-c")


def test_a_changed_device_on_a_reopened_host_is_changed_not_restarted() -> None:
    doc = _edit()
    _host(doc, "gw-a")["port"] = 1502
    _device(doc, "a1")["interval"] = "5s"
    plan = plan_reload(_config(BASE), _config(doc))
    assert plan.hosts_reopened == ("gw-a",)
    assert plan.devices_changed == ("a1",)
    assert plan.devices_restarted == ("a2",)


def test_mqtt_settings_reconnect_and_a_new_broker_or_base_moves_the_topics() -> None:
    doc = _edit()
    doc["mqtt"]["keepalive"] = 20
    plan = plan_reload(_config(BASE), _config(doc))
    assert plan.mqtt_changed and not plan.mqtt_moved
    assert plan.stopped == () and plan.hosts_kept == ("gw-a", "gw-b", "gw-c")
    assert "MQTT: reconnecting" in plan.summary()
    for key, value in (("host", "10.1.1.1"), ("port", 1884), ("base_topic", "plant")):
        doc = _edit()
        doc["mqtt"][key] = value
        plan = plan_reload(_config(BASE), _config(doc))
        assert plan.mqtt_changed and plan.mqtt_moved, key
        assert "(topics move)" in plan.summary()


def test_home_assistant_settings_reconnect() -> None:
    doc = _edit()
    doc["homeassistant"] = {"enabled": True}
    plan = plan_reload(_config(BASE), _config(doc))
    assert plan.mqtt_changed and not plan.mqtt_moved


def test_bridge_wide_settings() -> None:
    doc = _edit()
    doc["metrics"] = {"listen": "127.0.0.1:9200"}
    doc["health_interval"] = "10s"
    doc["write_timeout"] = "5s"
    plan = plan_reload(_config(BASE), _config(doc))
    assert plan.metrics_changed and plan.health_changed and plan.commands_changed
    assert not plan.mqtt_changed and plan.stopped == ()
    assert not plan.unchanged
    assert "metrics endpoint changed" in plan.summary()


def test_summary_names_a_few_devices_and_counts_the_rest() -> None:
    names = tuple(f"d{i}" for i in range(8))
    assert "added d0, d1, d2, d3, d4 and 3 more" in ReloadPlan(devices_added=names).summary()


def test_discovery_changes() -> None:
    old = {"ha/a": b"1", "ha/b": b"2", "ha/c": b"3"}
    new = {"ha/a": b"1", "ha/b": b"20", "ha/d": b"4"}
    stale, fresh = discovery_changes(old, new)
    assert stale == [Message("ha/c", b"", True)]
    assert fresh == [Message("ha/b", b"20", True), Message("ha/d", b"4", True)]
    assert discovery_changes(old, {}) == ([Message(t, b"", True) for t in old], [])


def test_points_a_changed_device_lost_are_cleared_in_attribute_output() -> None:
    doc = _edit()
    _device(doc, "a1")["points"] = _points("x", "y", "z")
    old = _config(doc).devices[0]
    _device(doc, "a1")["points"] = _points("x")
    new = _config(doc).devices[0]
    topics = Topics("modbus")
    assert dropped_points(old, new, topics, Output.ATTRIBUTE) == [
        Message("modbus/a1/y", b"", True),
        Message("modbus/a1/z", b"", True),
    ]
    assert len(dropped_points(old, new, topics, Output.BOTH)) == 2
    assert dropped_points(old, new, topics, Output.JSON) == []  # one JSON topic: rewritten


def _with_proxy(config: BridgeConfig, host: str, proxy: Proxy | None) -> BridgeConfig:
    hosts = tuple(replace(h, proxy=proxy) if h.name == host else h for h in config.hosts)
    return replace(config, hosts=hosts)


def test_a_proxy_restarts_its_listener_never_the_session() -> None:
    old = _config(BASE)
    on = _with_proxy(old, "gw-a", Proxy(port=5020))
    plan = plan_reload(old, on)
    assert plan.proxies_changed == ("gw-a",)
    assert "gw-a" in plan.hosts_kept and not plan.hosts_reopened and not plan.stopped
    assert plan.summary().endswith("proxy restarted: gw-a")
    changed = _with_proxy(old, "gw-a", Proxy(port=5020, writes=True))
    assert plan_reload(on, changed).proxies_changed == ("gw-a",)
    assert plan_reload(on, on).unchanged
    assert plan_reload(on, old).proxies_changed == ("gw-a",)
    # A host reopened for its own settings keeps its proxy (and its clients).
    moved = replace(on, hosts=tuple(replace(h, timeout=3.0) for h in on.hosts))
    plan = plan_reload(on, moved)
    assert "gw-a" in plan.hosts_reopened and plan.proxies_changed == ()


def test_a_host_with_a_proxy_and_no_device_gets_a_session() -> None:
    config = _with_proxy(_config(BASE), "spare", Proxy(port=5021, units=(1,)))
    assert "spare" in active_hosts(config)
    plan = plan_reload(_config(BASE), config)
    assert plan.hosts_added == ("spare",) and plan.proxies_changed == ("spare",)
