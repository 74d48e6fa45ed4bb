"""Two shards of one fleet: two real bridge processes (`run --shard K/2`) reading the
same configuration, six simulated gateways, one Mosquitto."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest
from fleet import mqtt_section

from bridge.shard import shard_of
from bridge.sim import SimServer

pytestmark = pytest.mark.integration

HOSTS = [f"gw-{n}" for n in range(1, 7)]
UNITS = (1, 2)
CLIENT = "fleet"
POINTS = [{"name": "x", "table": "holding", "address": 0, "type": "uint16", "writable": True}]


def _value(host: str, unit: int) -> int:
    return 100 * int(host.split("-")[1]) + unit


def _devices(host: str) -> list[str]:
    return [f"{host}-u{unit}" for unit in UNITS]


async def test_two_shards_share_a_fleet(broker, sim_servers, mqtt_watcher, run_bridge) -> None:
    mine = {k: [h for h in HOSTS if shard_of(h, 2) == k] for k in (1, 2)}
    assert mine[1] and mine[2], mine  # both shards have work in this fleet
    servers: dict[str, SimServer] = {}
    for host in HOSTS:
        servers[host] = await sim_servers(UNITS)
        for unit in UNITS:
            servers[host].unit(unit).set_registers("holding", 0, [_value(host, unit)])
    config = {
        "version": 1,
        "homeassistant": {"enabled": True},
        "health_interval": "1s",
        "mqtt": mqtt_section(broker, client_id=CLIENT),
        "hosts": [{"name": h, "address": "127.0.0.1", "port": servers[h].port} for h in HOSTS],
        "devices": [
            {"name": f"{h}-u{{unit}}", "host": h, "units": "1-2", "interval": "300ms",
             "points": POINTS}
            for h in HOSTS
        ],
    }  # fmt: skip
    watcher = await mqtt_watcher(broker, "#")
    shards = {k: await run_bridge(config, args=("--shard", f"{k}/2")) for k in (1, 2)}

    for k in (1, 2):
        await watcher.wait_for(
            lambda m, k=k: m.topic == f"modbus/bridge/{k}of2/state" and m.payload == b"online",
            timeout=10,
        )
    for host in HOSTS:
        for unit in UNITS:
            topic, value = f"modbus/{host}-u{unit}", _value(host, unit)
            await watcher.wait_for(
                lambda m, t=topic, v=value: m.topic == t and m.json()["x"] == v, timeout=10
            )
    await asyncio.sleep(1.5)  # five more poll cycles: a second poller would publish again
    for host in HOSTS:
        for device in _devices(host):
            # Values do not change: one state and one `online`, whoever polled it.
            assert len(watcher.on(f"modbus/{device}")) == 1, device
            assert [m.payload for m in watcher.on(f"modbus/{device}/availability")] == [
                b"online"
            ], device
    # One socket per host in the whole fleet.
    assert {h: s.connections_total for h, s in servers.items()} == dict.fromkeys(HOSTS, 1)
    assert all(s.connections_open == 1 for s in servers.values())

    # Each shard's health report: its own hosts and devices, named as its shard.
    reports = {}
    for k in (1, 2):
        report = await watcher.wait_for(f"modbus/bridge/{k}of2/health", timeout=5)
        reports[k] = report.json()
        assert reports[k]["config"]["shard"] == f"{k}/2"
        assert set(reports[k]["hosts"]) == set(mine[k])
        assert set(reports[k]["devices"]) == {d for h in mine[k] for d in _devices(h)}
    assert "modbus/bridge/state" not in watcher.topics()  # no unsharded bridge topic

    # Commands: each answered once, by the shard that runs the device (shard 1 for a
    # device no shard runs).
    write_to = f"{mine[1][0]}-u1"
    read_from = f"{mine[2][0]}-u2"
    mark = watcher.mark()
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish(f"modbus/{write_to}/set", b'{"x": 4321}', qos=1)
        await client.publish(f"modbus/{read_from}/get", b"", qos=1)
        await client.publish("modbus/ghost/get", b"", qos=1)
    for device in (write_to, read_from, "ghost"):
        await watcher.wait_for(f"modbus/{device}/set/result", timeout=5, since=mark)
    await asyncio.sleep(1.0)  # time for a second answer, if there were one
    answers = {
        d: [m.json() for m in watcher.messages[mark:] if m.topic == f"modbus/{d}/set/result"]
        for d in (write_to, read_from, "ghost")
    }
    assert answers[write_to] == [{"status": "ok", "data": {"x": 4321}}]
    assert answers[read_from] == [{"status": "ok", "data": {"x": _value(mine[2][0], 2)}}]
    assert [a["error"] for a in answers["ghost"]] == ['unknown device "ghost"']
    writes = [r for r in servers[mine[1][0]].request_log if r.function == 6]
    assert [(r.unit, r.values) for r in writes] == [(1, (4321,))]

    # Home Assistant: devices keep the fleet's identity, availability follows their
    # shard's bridge state; one bridge device per shard; no shard cleared another's.
    for k in (1, 2):
        device = _devices(mine[k][0])[0]
        doc = watcher.latest(f"homeassistant/device/{CLIENT}/{device}/config")
        assert doc is not None, device
        payload = doc.json()
        assert payload["availability"][0]["topic"] == f"modbus/bridge/{k}of2/state"
        assert payload["availability"][1]["topic"] == f"modbus/{device}/availability"
        assert payload["dev"]["via_device"] == f"{CLIENT}-shard-{k}of2/bridge"
        bridge = watcher.latest(f"homeassistant/device/{CLIENT}-shard-{k}of2/bridge/config")
        assert bridge is not None and bridge.json()["state_topic"] == f"modbus/bridge/{k}of2/health"
    cleared = [m.topic for m in watcher.messages if m.topic.startswith("homeassistant/") and
               not m.payload]  # fmt: skip
    assert cleared == []

    for k, bridge in shards.items():
        log = bridge.log()
        assert f"[shard {k}/2]" in log and "Traceback" not in log
        assert await bridge.terminate() == 0
    await asyncio.sleep(0.2)
    states = [watcher.latest(f"modbus/bridge/{k}of2/state") for k in (1, 2)]
    assert [s.payload if s else None for s in states] == [b"offline", b"offline"]
