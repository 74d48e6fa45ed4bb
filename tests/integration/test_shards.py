"""Two shards of one fleet: two real bridge processes (`run --shard K/2`) reading the
same configuration, six simulated gateways, one Mosquitto."""

from __future__ import annotations

import asyncio
from typing import Any

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


# -- two layouts at once (issue 16, item 2) -----------------------------------------------


async def _fleet(sim_servers: Any, broker: Any, base: str) -> tuple[dict[str, Any], dict]:
    servers: dict[str, SimServer] = {h: await sim_servers(UNITS) for h in HOSTS}
    config = {
        "version": 1,
        "mqtt": mqtt_section(broker, client_id=CLIENT, base_topic=base),
        "hosts": [{"name": h, "address": "127.0.0.1", "port": servers[h].port} for h in HOSTS],
        "devices": [
            {"name": f"{h}-u{{unit}}", "host": h, "units": "1-2", "interval": "300ms",
             "points": POINTS}
            for h in HOSTS
        ],
    }  # fmt: skip
    return config, servers


async def _exit(bridge: Any, timeout: float = 15.0) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while bridge.alive():
        assert loop.time() < deadline, bridge.log()[-3000:]
        await asyncio.sleep(0.1)
    return await bridge.terminate()


async def _online(watcher: Any, base: str, label: str) -> None:
    topic = f"{base}/bridge/{label}/state" if label else f"{base}/bridge/state"
    await watcher.wait_for(lambda m: m.topic == topic and m.payload == b"online", timeout=15)


async def test_a_second_shard_layout_refuses_to_run(
    broker, sim_servers, mqtt_watcher, run_bridge
) -> None:
    """`--shard 1/2` and `--shard 1/3` on one configuration wrote every command to four
    hosts twice, left three hosts unpolled, and neither said a word."""
    config, servers = await _fleet(sim_servers, broker, "modbus")
    watcher = await mqtt_watcher(broker, "modbus/#")
    running = {k: await run_bridge(config, args=("--shard", f"{k}/2")) for k in (1, 2)}
    for k in (1, 2):
        await _online(watcher, "modbus", f"{k}of2")
    for host in HOSTS:
        await watcher.wait_for(f"modbus/{host}-u1/availability", timeout=10)
    sockets = {h: s.connections_total for h, s in servers.items()}
    mark = watcher.mark()

    other = await run_bridge(config, args=("--shard", "1/3"))
    assert await _exit(other) == 2
    log = other.log()
    assert (
        "shard 1/3 (of 3 shards) refuses to run: shards 1/2, 2/2 (of 2 shards) of another "
        "layout are online under base topic 'modbus' (modbus/bridge/1of2/state, "
        "modbus/bridge/2of2/state)"
    ) in log, log[-3000:]
    assert "Traceback" not in log
    # It opened no Modbus socket, and left the running layout's states alone; its own
    # bridge state says offline.
    assert {h: s.connections_total for h, s in servers.items()} == sockets
    assert not [m for m in watcher.messages[mark:] if m.payload == b"offline"
                and m.topic != "modbus/bridge/1of3/state"]  # fmt: skip
    assert watcher.latest("modbus/bridge/1of3/state").payload == b"offline"

    # A command is written once, by the layout that runs.
    device = f"{HOSTS[0]}-u1"
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish(f"modbus/{device}/set", b'{"x": 77}', qos=1)
    await watcher.wait_for(f"modbus/{device}/set/result", timeout=5, since=mark)
    await asyncio.sleep(0.5)
    writes = [r for r in servers[HOSTS[0]].request_log if r.function == 6]
    assert [(r.unit, r.values) for r in writes] == [(1, (77,))]

    # The unsharded bridge is another layout too.
    unsharded = await run_bridge(config)
    assert await _exit(unsharded) == 2
    assert "the unsharded bridge refuses to run: shards 1/2, 2/2" in unsharded.log()

    # The same shard twice keeps its behaviour (the broker drops one of two clients with
    # one id; the hint says so): not refused.
    twin = await run_bridge(config, args=("--shard", "2/2"))
    await asyncio.sleep(3.0)
    assert twin.alive(), twin.log()[-3000:]
    assert "refuses to run" not in twin.log()
    await twin.terminate()
    for bridge in running.values():
        assert bridge.alive() and "refuses to run" not in bridge.log()


async def test_layouts_started_together_and_a_layout_killed(
    broker, sim_servers, mqtt_watcher, run_bridge
) -> None:
    """Two layouts started at the same moment: at least one refuses (both, when each saw
    the other's `online`), never both run. A layout killed with SIGKILL: its last will
    says `offline`, so a new layout starts."""
    config, _servers = await _fleet(sim_servers, broker, "race")
    watcher = await mqtt_watcher(broker, "race/#")
    pair = [await run_bridge(config, args=("--shard", "1/2")),
            await run_bridge(config, args=("--shard", "1/3"))]  # fmt: skip
    await asyncio.sleep(6.0)  # both past their first connect
    alive = [b.alive() for b in pair]
    assert alive != [True, True], [b.log()[-1500:] for b in pair]
    for bridge in pair:
        if not bridge.alive():
            assert await bridge.terminate() == 2
            assert "refuses to run" in bridge.log()
    for bridge in pair:
        if bridge.alive():
            bridge.proc.kill()  # SIGKILL: no clean offline, only the last will
            bridge.proc.wait()
            await bridge.terminate()
    await asyncio.sleep(0.5)
    for label in ("1of2", "1of3"):
        state = watcher.latest(f"race/bridge/{label}/state")
        assert state is None or state.payload == b"offline", label
    after = await run_bridge(config, args=("--shard", "2/4"))
    await _online(watcher, "race", "2of4")
    await asyncio.sleep(1.0)
    assert after.alive() and "refuses to run" not in after.log()
    assert await after.terminate() == 0


async def test_a_reload_onto_another_layouts_base_topic_refuses_to_run(
    broker, sim_servers, mqtt_watcher, run_bridge
) -> None:
    """Issue 16, item 2, on reload: a layout running under its own base topic that a
    reload moves under the base of another layout stops (exit 2, both named), and
    leaves the other layout's device states alone."""
    config, _servers = await _fleet(sim_servers, broker, "modbus")
    watcher = await mqtt_watcher(broker, "#")
    running = await run_bridge(config, args=("--shard", "1/2"))
    await _online(watcher, "modbus", "1of2")
    elsewhere = dict(config, mqtt=dict(config["mqtt"], base_topic="elsewhere"))
    mover = await run_bridge(elsewhere, args=("--shard", "1/3"))
    await _online(watcher, "elsewhere", "1of3")
    ours = [d for h in HOSTS if shard_of(h, 2) == 1 for d in _devices(h)]
    for device in ours:
        await watcher.wait_for(
            lambda m, d=device: m.topic == f"modbus/{d}/availability" and m.payload == b"online",
            timeout=10,
        )
    mark = watcher.mark()

    mover.write_config(config)  # the base topic of the running layout
    mover.reload()
    assert await _exit(mover) == 2
    log = mover.log()
    assert (
        "shard 1/3 (of 3 shards) refuses to run: shard 1/2 (of 2 shards) of another layout "
        "is online under base topic 'modbus' (modbus/bridge/1of2/state)"
    ) in log, log[-3000:]
    assert "Traceback" not in log
    await asyncio.sleep(0.5)
    # Under the running layout's base, only the refused layout's own state changed.
    changed = {m.topic for m in watcher.messages[mark:] if m.topic.startswith("modbus/")
               and m.payload == b"offline"}  # fmt: skip
    assert changed <= {"modbus/bridge/1of3/state"}, changed
    assert watcher.latest("modbus/bridge/1of2/state").payload == b"online"
    assert running.alive() and "refuses to run" not in running.log()
