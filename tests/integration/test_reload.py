"""Reload without dropping sessions: SIGHUP to the real daemon, our simulators counting
connections server-side, a real Mosquitto.

One bridge process goes through five reloads: an invalid file (nothing changes), the
same file (nothing changes), a file that keeps one host, reopens one, removes one and
adds one, and changes, removes and adds devices while a command is on the wire, an MQTT
setting (one reconnect, no Modbus socket touched), and one with SIGTERM right behind it.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import time
import urllib.request
from typing import Any

import aiomqtt
import pytest
import yaml
from broker import Broker, MqttWatcher, free_port
from fleet import mqtt_section
from prometheus_client.parser import text_string_to_metric_families

from bridge.sim import SimServer

pytestmark = pytest.mark.integration

SECRET = "reload-secret-7f3a"  # in the invalid file only: it must never reach the log
CLIENT = "bridge-under-test"
DISCOVERY = f"homeassistant/device/{CLIENT}"


def _point(name: str, address: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "table": "holding", "address": address, "type": "uint16", **extra}


def _device(name: str, host: str, unit: int, *points: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "host": host, "unit": unit, "interval": "200ms", "points": list(points)}


def _first(broker: Broker, servers: dict[str, SimServer], metrics: int) -> dict[str, Any]:
    def host(name: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "address": "127.0.0.1", "port": servers[name].port, **extra}

    return {
        "version": 1,
        "write_timeout": "10s",  # the command below waits behind a slow poll, then is sent
        "health_interval": "1s",
        "metrics": {"listen": f"127.0.0.1:{metrics}"},
        "homeassistant": {"enabled": True},
        "mqtt": mqtt_section(broker, client_id=CLIENT),
        "hosts": [host("gwA", timeout="4s"), host("gwB", timeout="1s"), host("gwC")],
        "devices": [
            _device("a1", "gwA", 1, _point("x", 0)),
            _device("a2", "gwA", 2, _point("x", 0, writable=True)),
            _device("b1", "gwB", 1, _point("x", 0)),
            _device("c1", "gwC", 1, _point("x", 0)),
        ],
    }


def _second(first: dict[str, Any], servers: dict[str, SimServer]) -> dict[str, Any]:
    """gwA kept (a1 unchanged, a2 changed, a3 added); gwB reopened (b1 unchanged);
    gwC removed with c1; gwD added with d1."""
    doc = copy.deepcopy(first)
    doc["hosts"][1]["timeout"] = "1500ms"
    doc["hosts"] = [h for h in doc["hosts"] if h["name"] != "gwC"]
    doc["hosts"].append({"name": "gwD", "address": "127.0.0.1", "port": servers["gwD"].port})
    doc["devices"] = [
        _device("a1", "gwA", 1, _point("x", 0)),
        _device("a2", "gwA", 2, _point("x", 0, writable=True), _point("y", 1)),
        _device("a3", "gwA", 3, _point("x", 0)),
        _device("b1", "gwB", 1, _point("x", 0)),
        _device("d1", "gwD", 1, _point("x", 0)),
    ]
    return doc


def _invalid(first: dict[str, Any]) -> str:
    """The first file with a password, that password reused as the keepalive, and a typo."""
    doc = copy.deepcopy(first)
    doc["mqtt"]["password"] = SECRET
    doc["mqtt"]["keepalive"] = SECRET
    doc["devices"][0]["points"][0]["type"] = "unit16"
    return json.dumps(doc, indent=1)  # JSON is YAML: one key per line, so lines are named


def _connections(servers: dict[str, SimServer]) -> dict[str, int]:
    return {name: s.connections_total for name, s in servers.items()}


def _scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def _log_line(bridge: Any, text: str, count: int = 1, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while bridge.log().count(text) < count:
        assert bridge.alive(), bridge.log()[-3000:]
        assert loop.time() < deadline, f"never logged {text!r}:\n{bridge.log()[-3000:]}"
        await asyncio.sleep(0.05)


async def _value(watcher: MqttWatcher, device: str, point: str, value: int, since: int) -> None:
    def match(m: Any) -> bool:
        return m.topic == f"modbus/{device}" and m.json().get(point) == value

    await watcher.wait_for(match, timeout=10, since=since)


async def _retained(broker: Broker) -> dict[str, bytes]:
    """What a subscriber arriving now is given: the retained messages."""
    async with MqttWatcher(broker.host, broker.port, "#") as fresh:
        await asyncio.sleep(0.5)
        return {m.topic: m.payload for m in fresh.messages}


async def test_sighup_applies_the_difference(broker, sim_servers, mqtt_watcher, run_bridge) -> None:
    servers = {
        "gwA": await sim_servers((1, 2, 3)),
        "gwB": await sim_servers((1,)),
        "gwC": await sim_servers((1,)),
        "gwD": await sim_servers((1,)),
    }
    for name, server in servers.items():
        for unit in server.units:
            server.unit(unit).set_registers("holding", 0, [100 * unit + ord(name[-1])])
    metrics = free_port()
    first = _first(broker, servers, metrics)
    watcher = await mqtt_watcher(broker, "#")
    bridge = await run_bridge(first)
    for device, server, unit in (("a1", "gwA", 1), ("a2", "gwA", 2), ("b1", "gwB", 1),
                                 ("c1", "gwC", 1)):  # fmt: skip
        await _value(watcher, device, "x", 100 * unit + ord(server[-1]), 0)
    assert _connections(servers) == {"gwA": 1, "gwB": 1, "gwC": 1, "gwD": 0}

    # An invalid file: every problem logged with its line, no secret, nothing changes.
    bridge.write_config(_invalid(first))
    bridge.reload()
    await _log_line(bridge, "still running the previous one")
    # The problems follow the summary line, one log record each: wait for the last one
    # (the log file is read while the bridge may still be writing it).
    await _log_line(bridge, "unit16")
    log = bridge.log()
    path = str(bridge.config_path)
    assert f"{path}:" in log and "mqtt.keepalive" in log and "unit16" in log, log[-2000:]
    assert SECRET not in log
    mark = watcher.mark()
    servers["gwA"].unit(1).set_registers("holding", 0, [4242])
    await _value(watcher, "a1", "x", 4242, mark)  # still polling, on the old sockets
    # The same file again: nothing to do.
    bridge.write_config(first)
    bridge.reload()
    await _log_line(bridge, "reload: nothing changed")
    assert _connections(servers) == {"gwA": 1, "gwB": 1, "gwC": 1, "gwD": 0}

    # A command on the wire for a2 (which the reload changes): it must be answered.
    servers["gwA"].per_unit_delay = {2: 2.5}
    await asyncio.sleep(0.3)  # a poll of a2 is on the wire: the write queues behind it
    mark = watcher.mark()
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish("modbus/a2/set", b'{"x": 7}', qos=1)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 8
    while not any(r.unit == 2 and r.function == 6 for r in servers["gwA"].request_log):
        assert loop.time() < deadline, "the write never reached the device"
        await asyncio.sleep(0.02)
    servers["gwA"].per_unit_delay = {}  # the write on the wire still takes 2.5 s
    second = _second(first, servers)
    bridge.write_config(second)
    bridge.reload()
    answer = await watcher.wait_for("modbus/a2/set/result", timeout=10, since=mark)
    assert answer.json()["status"] == "error"
    assert "configuration reload" in answer.json()["error"], answer.json()
    await _log_line(bridge, "reload done")
    servers["gwA"].unit(2).set_registers("holding", 1, [55])
    await _value(watcher, "a2", "y", 55, mark)  # the changed device polls its new point
    await _value(watcher, "a3", "x", 300 + ord("A"), mark)  # added on a kept host
    await _value(watcher, "d1", "x", 100 + ord("D"), mark)  # added on an added host
    servers["gwB"].unit(1).set_registers("holding", 0, [999])
    await _value(watcher, "b1", "x", 999, mark)  # unchanged, on the reopened host
    await asyncio.sleep(0.5)
    assert len(watcher.on("modbus/a2/set/result")) == 1  # answered exactly once
    # gwA kept its socket; gwB was reopened (one more); gwC closed; gwD opened one.
    assert _connections(servers) == {"gwA": 1, "gwB": 2, "gwC": 1, "gwD": 1}
    assert servers["gwC"].connections_open == 0
    assert servers["gwA"].connections_open == 1 and servers["gwB"].connections_open == 1

    retained = await _retained(broker)
    assert retained["modbus/c1/availability"] == b"offline"  # removed: not claiming online
    assert f"{DISCOVERY}/c1/config" not in retained  # its discovery cleared
    a2 = json.loads(retained[f"{DISCOVERY}/a2/config"])
    assert set(a2["cmps"]) == {"x", "y"}  # changed: discovery published again
    assert f"{DISCOVERY}/a3/config" in retained and f"{DISCOVERY}/d1/config" in retained
    assert all(retained[f"modbus/{d}/availability"] == b"online" for d in ("a1", "a2", "b1"))

    # Health and metrics are built from the live parts: they follow the reload.
    def reloaded(m: Any) -> bool:
        return m.topic == "modbus/bridge/health" and "gwD" in m.json()["hosts"]

    health = (await watcher.wait_for(reloaded, timeout=5, since=mark)).json()
    assert {n: h["sockets_opened"] for n, h in health["hosts"].items()} == {
        "gwA": 1, "gwB": 2, "gwD": 1,
    }  # fmt: skip
    assert set(health["devices"]) == {"a1", "a2", "a3", "b1", "d1"}
    assert health["config"]["reloads"] == 2 and health["config"]["reloads_invalid"] == 1
    samples = await asyncio.to_thread(_scrape, metrics)
    opened = {
        dict(labels)["host"]: value
        for (name, labels), value in samples.items()
        if name == "modbus_bridge_host_sockets_opened_total"
    }
    assert opened == {"gwA": 1, "gwB": 2, "gwD": 1}
    assert samples[("modbus_bridge_config_reloads_total", frozenset({("result", "ok")}))] == 2

    # An MQTT setting: one new broker connection, no Modbus socket touched.
    before = broker.log_text().count(f" as {CLIENT} ")
    third = copy.deepcopy(second)
    third["mqtt"]["keepalive"] = 20
    mark = watcher.mark()
    bridge.write_config(third)
    bridge.reload()
    await _log_line(bridge, "reload done", count=3)
    await watcher.wait_for(
        lambda m: m.topic == "modbus/bridge/state" and m.payload == b"online", since=mark
    )
    servers["gwD"].unit(1).set_registers("holding", 0, [77])
    await _value(watcher, "d1", "x", 77, mark)
    await asyncio.sleep(1.0)
    assert broker.log_text().count(f" as {CLIENT} ") == before + 1, broker.log_text()[-2000:]
    assert f"as {CLIENT} (p5, c1, k20" in broker.log_text()
    assert _connections(servers) == {"gwA": 1, "gwB": 2, "gwC": 1, "gwD": 1}
    # Its own clean disconnect: no last will, bridge/state stays online.
    assert [m.payload for m in watcher.on("modbus/bridge/state")[-1:]] == [b"online"]
    assert (await _retained(broker))["modbus/bridge/state"] == b"online"

    # A reload and SIGTERM at once: shutdown waits for the reload (or cuts it short) and
    # still ends cleanly within the usual 5 s.
    fourth = copy.deepcopy(third)
    fourth["devices"] = fourth["devices"][:-1]
    fourth["mqtt"]["keepalive"] = 25
    bridge.write_config(fourth)
    started = time.monotonic()
    bridge.reload()
    assert await bridge.terminate() == 0
    assert time.monotonic() - started < 5.0
    log = bridge.log()
    assert "bridge stopped" in log and "exiting anyway" not in log
    assert "Traceback" not in log and SECRET not in log


async def test_a_fifo_or_a_file_being_written_does_not_wedge_reload(
    broker, sim_servers, run_bridge
) -> None:
    """Issue 16, item 3. A FIFO in place of the file blocked the reload's read for ever:
    no later SIGHUP was applied, and nothing said why. And a file caught half-written
    can be valid: a reload reads a file only once it has been still for a moment."""
    servers = {name: await sim_servers([1, 2]) for name in ("gwA", "gwB", "gwC")}
    first = _first(broker, servers, free_port())
    bridge = await run_bridge(first)
    loop = asyncio.get_running_loop()

    async def until(text: str, count: int = 1, timeout: float = 15.0) -> None:
        deadline = loop.time() + timeout
        while bridge.log().count(text) < count:
            assert bridge.alive(), bridge.log()[-3000:]
            assert loop.time() < deadline, f"{text!r} x{count}\n{bridge.log()[-3000:]}"
            await asyncio.sleep(0.1)

    await until("bridge started")
    path = bridge.config_path
    path.unlink()
    os.mkfifo(path)
    bridge.reload()
    await until("is a FIFO (named pipe), not a regular file")
    path.unlink()

    # Written in two halves 0.3 s apart, as a slow copy would: the first half alone is a
    # valid configuration (one device fewer), which must not be applied.
    second = copy.deepcopy(first)
    second["devices"].append(_device("a9", "gwA", 2, _point("y", 5)))
    text = yaml.safe_dump(second, sort_keys=False)
    cut = text.index("- name: a9")
    half = yaml.safe_load(text[:cut])
    assert len(half["devices"]) == len(first["devices"])  # the half is valid
    path.write_text(text[:cut])
    bridge.reload()
    await asyncio.sleep(0.3)
    with path.open("a") as fh:
        fh.write(text[cut:])
    await until("reload done: 3 hosts, 5 devices")
    log = bridge.log()
    assert "reload done: 3 hosts, 4 devices" not in log
    assert log.count("reload: 1 problem") == 1  # the FIFO; the half file was never read
    assert await bridge.terminate() == 0
