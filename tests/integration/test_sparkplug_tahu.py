"""The Sparkplug B edge node end to end: the real daemon, Mosquitto, our Modbus
simulator, and a host application's view through Eclipse Tahu's decoder
(`tests/sparkplug_host.py`), which is not the library the bridge encodes with.

Checked: births carry every point with its datatype and unit; DDATA only what changed;
`seq` continuous across every node message and wrapping after 255; a rebirth on NCMD;
a DCMD write that lands (read back from the device) and one refused with nothing
written; DDEATH for a unit that falls silent; after a kill -9 the broker's NDEATH (the
will) carries the NBIRTH's `bdSeq`; with a primary host, silence until it is online,
NDEATH and a new `bdSeq` when it goes offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest
from fleet import mqtt_section
from sparkplug_host import decode, encode, require_tahu

from bridge.sim import SimServer

pytestmark = pytest.mark.integration

NS = "spBv1.0/plant/DDATA"
EDGE = "spBv1.0/plant/{kind}/line-1"
TICKS = range(3, 11)  # units of the devices that change all the time (seq wrapping)


def topic(kind: str, device: str | None = None) -> str:
    base = EDGE.format(kind=kind)
    return base if device is None else f"{base}/{device}"


METER = [
    {"name": "voltage", "table": "holding", "address": 0, "type": "uint16", "scale": 0.1,
     "unit": "V"},
    {"name": "current", "table": "holding", "address": 1, "type": "int16", "unit": "A"},
    {"name": "energy", "table": "holding", "address": 2, "type": "uint32", "unit": "kWh"},
    {"name": "power", "table": "holding", "address": 4, "type": "float32", "unit": "W"},
    {"name": "mode", "table": "holding", "address": 6, "type": "uint16",
     "values": {0: "off", 1: "on"}},
    {"name": "level", "table": "holding", "address": 7, "type": "uint16", "min": 0,
     "max": 1000, "writable": True},
    {"name": "relay", "table": "coil", "address": 0, "writable": True},
]  # fmt: skip


def _config(broker: Any, server: SimServer, **sparkplug: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "health_interval": "1s",
        "mqtt": mqtt_section(broker),
        "sparkplug": {"group_id": "plant", "edge_node_id": "line-1", **sparkplug},
        "hosts": [{"name": "gw", "address": "127.0.0.1", "port": server.port, "timeout": 0.3}],
        "devices": [
            {"name": "meter", "host": "gw", "unit": 1, "interval": "0.2s", "points": METER},
            {
                "name": "pump",
                "host": "gw",
                "unit": 2,
                "interval": "0.2s",
                "points": [{"name": "speed", "table": "holding", "address": 0, "type": "uint16"}],
            },
            *(
                {
                    "name": f"tick{u}",
                    "host": "gw",
                    "unit": u,
                    "interval": "0.05s",
                    "points": [{"name": "n", "table": "holding", "address": 0, "type": "uint16"}],
                }
                for u in TICKS
            ),
        ],
    }


def _meter_registers(server: SimServer) -> None:
    unit = server.unit(1)
    unit.set_registers("holding", 0, [2305])  # 230.5 V
    unit.set_registers("holding", 1, [0x10000 - 5])  # -5 A
    unit.set_registers("holding", 2, [0x0001, 0x0002])  # 65538 kWh
    unit.set_registers("holding", 4, [0x4049, 0x0FDB])  # float32 3.1415927
    unit.set_registers("holding", 6, [1])
    unit.set_registers("holding", 7, [10])


async def _send(broker: Any, where: str, payload: bytes) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier="scada") as client:
        await client.publish(where, payload, qos=1)


def _decoded(watcher: Any, since: int = 0) -> list[dict[str, Any]]:
    got = [(m.topic, m.payload) for m in watcher.messages[since:]]
    return decode(got)


def _by_name(message: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in message["metrics"]}


@pytest.fixture
async def ticking(sim_servers: Any) -> AsyncIterator[SimServer]:
    """The simulator, with the tick devices' register moving every 20 ms."""
    server = await sim_servers((1, 2, *TICKS))
    _meter_registers(server)

    async def tick() -> None:
        n = 0
        while True:
            n += 1
            for u in TICKS:
                server.unit(u).set_registers("holding", 0, [n % 65536])
            await asyncio.sleep(0.02)

    task = asyncio.create_task(tick())
    yield server
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_edge_node_as_a_host_application_sees_it(
    broker: Any, ticking: SimServer, mqtt_watcher: Any, run_bridge: Any
) -> None:
    require_tahu()
    server = ticking
    watcher = await mqtt_watcher(broker, "spBv1.0/#")
    json_watcher = await mqtt_watcher(broker, "modbus/#")
    bridge = await run_bridge(_config(broker, server))

    # -- births: every point, its datatype and unit
    await watcher.wait_for(topic("DBIRTH", "meter"), timeout=10)
    await watcher.wait_for(topic("DBIRTH", "pump"), timeout=5)
    msgs = _decoded(watcher)
    nbirth = next(m for m in msgs if m["topic"] == topic("NBIRTH"))
    assert nbirth["seq"] == 0
    node = _by_name(nbirth)
    assert node["bdSeq"]["type"] == "Int64"  # Sparkplug 3.0 §5: the datatype of INT64
    # no alias on the rebirth metric: a host that knows no alias can still ask for one
    rebirth = node["Node Control/Rebirth"]
    assert (rebirth["type"], rebirth["value"], rebirth["alias"]) == ("Boolean", False, None)
    assert node["Node Info/Devices"]["value"] == 2 + len(TICKS)
    bd_seq = node["bdSeq"]["value"]
    dbirth = next(m for m in msgs if m["topic"] == topic("DBIRTH", "meter"))
    metrics = _by_name(dbirth)
    types = {name: m["type"] for name, m in metrics.items()}
    assert types == {
        "voltage": "Double",  # scaled: an engineering value
        "current": "Int16",
        "energy": "UInt32",
        "power": "Float",
        "mode": "String",
        "level": "UInt16",
        "relay": "Boolean",
    }
    assert metrics["voltage"]["value"] == pytest.approx(230.5)
    assert metrics["current"]["value"] == -5
    assert metrics["energy"]["value"] == 65538
    assert metrics["power"]["value"] == pytest.approx(3.1415927, rel=1e-6)
    assert metrics["mode"]["value"] == "on"
    assert metrics["level"]["value"] == 10
    units = {n: (m["properties"] or {}).get("engUnit", {}).get("value") for n, m in metrics.items()}
    assert units == {
        "voltage": "V", "current": "A", "energy": "kWh", "power": "W",
        "mode": None, "level": None, "relay": None,
    }  # fmt: skip
    assert metrics["voltage"]["properties"]["scale"]["value"] == pytest.approx(0.1)
    assert metrics["level"]["properties"]["readOnly"]["value"] is False
    assert metrics["current"]["properties"]["readOnly"]["value"] is True
    aliases = {n: m["alias"] for n, m in metrics.items()}
    assert len(set(aliases.values())) == len(aliases)

    # -- DDATA: only what changed, by alias
    mark = watcher.mark()
    server.unit(1).set_registers("holding", 1, [0x10000 - 7])
    await watcher.wait_for(topic("DDATA", "meter"), timeout=5, since=mark)
    [ddata] = [m for m in _decoded(watcher, mark) if m["topic"] == topic("DDATA", "meter")]
    assert [(m["alias"], m["value"], m["name"]) for m in ddata["metrics"]] == [
        (aliases["current"], -7, None)
    ]

    # -- seq: continuous over every node message, wrapping after 255
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(watcher.messages) < 300:
        await asyncio.sleep(0.2)
    assert len(watcher.messages) >= 300, "the tick devices did not make 300 messages"
    msgs = _decoded(watcher)
    seqs = [m["seq"] for m in msgs if not m["topic"].endswith(("NDEATH", "STATE"))]
    assert seqs[0] == 0
    assert all(b == (a + 1) % 256 for a, b in itertools.pairwise(seqs)), seqs
    assert 255 in seqs and seqs.count(0) >= 2  # wrapped

    # -- rebirth on NCMD (the host's payload, encoded by Tahu)
    mark = watcher.mark()
    await _send(
        broker,
        topic("NCMD"),
        encode([{"name": "Node Control/Rebirth", "type": "Boolean", "value": True}]),
    )
    await watcher.wait_for(topic("NBIRTH"), timeout=5, since=mark)
    await watcher.wait_for(topic("DBIRTH", "meter"), timeout=5, since=mark)
    reborn = next(m for m in _decoded(watcher, mark) if m["topic"] == topic("NBIRTH"))
    assert reborn["seq"] == 0 and _by_name(reborn)["bdSeq"]["value"] == bd_seq

    # -- a DCMD that lands: read back from the device, and seen as DDATA
    mark = watcher.mark()
    jmark = json_watcher.mark()
    await _send(
        broker, topic("DCMD", "meter"), encode([{"name": "level", "type": "UInt16", "value": 500}])
    )
    await watcher.wait_for(
        lambda m: (
            m.topic == topic("DDATA", "meter")
            and any(
                x["alias"] == aliases["level"] for x in decode([(m.topic, m.payload)])[0]["metrics"]
            )
        ),
        timeout=5,
        since=mark,
    )
    assert server.unit(1).get_registers("holding", 7) == [500]
    # its answer (on the bridge's own connection, so in no set order with the DDATA)
    landed = await json_watcher.wait_for("modbus/meter/set/result", timeout=5, since=jmark)
    assert landed.json()["status"] == "ok"

    # -- a DCMD refused (over max): nothing written, the answer says why
    server.clear_log()
    jmark = json_watcher.mark()
    await _send(
        broker, topic("DCMD", "meter"), encode([{"name": "level", "type": "UInt16", "value": 5000}])
    )
    result = await json_watcher.wait_for("modbus/meter/set/result", timeout=5, since=jmark)
    assert result.json()["status"] == "error" and "level" in result.json()["error"]
    # and one naming a point that is read-only, by alias
    await _send(
        broker,
        topic("DCMD", "meter"),
        encode([{"alias": aliases["current"], "type": "Int16", "value": 3}]),
    )
    await json_watcher.wait_for(
        lambda m: m.topic == "modbus/meter/set/result" and "current" in m.text,
        timeout=5,
        since=jmark,
    )
    # and one naming a metric the device does not have: refused by the node itself,
    # counted in health (and /metrics) beside the commands it received
    hmark = json_watcher.mark()
    await _send(
        broker, topic("DCMD", "meter"), encode([{"name": "nope", "type": "UInt16", "value": 1}])
    )
    health = await json_watcher.wait_for(
        lambda m: m.topic == "modbus/bridge/health" and b'"refused":1' in m.payload,
        timeout=5,
        since=hmark,
    )
    assert health.json()["sparkplug"]["commands"] >= 4
    await asyncio.sleep(0.3)
    assert not [r for r in server.request_log if r.unit == 1 and r.function in (5, 6, 15, 16)]
    assert server.unit(1).get_registers("holding", 7) == [500]

    # -- DDEATH for a unit that falls silent
    mark = watcher.mark()
    server.silent_units.add(2)
    await watcher.wait_for(topic("DDEATH", "pump"), timeout=10, since=mark)

    # -- kill -9: the broker publishes the will, an NDEATH with the NBIRTH's bdSeq
    mark = watcher.mark()
    assert bridge.proc is not None
    bridge.proc.kill()
    await watcher.wait_for(topic("NDEATH"), timeout=5, since=mark)
    [death] = [m for m in _decoded(watcher, mark) if m["topic"] == topic("NDEATH")]
    assert death["seq"] is None
    assert _by_name(death)["bdSeq"]["value"] == bd_seq


async def _state(broker: Any, online: bool, stamp: int) -> None:
    payload = json.dumps({"online": online, "timestamp": stamp}).encode()
    async with aiomqtt.Client(broker.host, broker.port, identifier="scada-host") as client:
        await client.publish("spBv1.0/STATE/scada", payload, qos=1, retain=True)


async def test_primary_host_online_offline_and_back(
    broker: Any, sim_servers: Any, mqtt_watcher: Any, run_bridge: Any
) -> None:
    require_tahu()
    server = await sim_servers((1, 2))
    _meter_registers(server)
    await _state(broker, False, 1)
    watcher = await mqtt_watcher(broker, "spBv1.0/plant/#")
    config = _config(broker, server, primary_host_id="scada")
    config["devices"] = config["devices"][:2]
    bridge = await run_bridge(config)
    json_watcher = await mqtt_watcher(broker, "modbus/meter")
    await json_watcher.wait_for("modbus/meter", timeout=10)
    await asyncio.sleep(0.5)
    assert watcher.messages == [], "published before the primary host was online"

    await _state(broker, True, 2)
    await watcher.wait_for(topic("DBIRTH", "meter"), timeout=5)
    await watcher.wait_for(topic("DBIRTH", "pump"), timeout=5)
    first = next(m for m in _decoded(watcher) if m["topic"] == topic("NBIRTH"))
    bd_seq = _by_name(first)["bdSeq"]["value"]

    mark = watcher.mark()
    await _state(broker, False, 3)
    await watcher.wait_for(topic("NDEATH"), timeout=5, since=mark)
    [death] = [m for m in _decoded(watcher, mark) if m["topic"] == topic("NDEATH")]
    assert _by_name(death)["bdSeq"]["value"] == bd_seq
    await asyncio.sleep(0.5)
    # Then silence. The broker may add the will (the old connection's, if the new one
    # came first): the same bdSeq, which 3.0 tells hosts to ignore.
    after = _decoded(watcher, mark)
    assert {m["topic"] for m in after} == {topic("NDEATH")}
    assert {_by_name(m)["bdSeq"]["value"] for m in after} == {bd_seq}

    mark = watcher.mark()
    await _state(broker, True, 4)
    await watcher.wait_for(topic("NBIRTH"), timeout=10, since=mark)
    again = next(m for m in _decoded(watcher, mark) if m["topic"] == topic("NBIRTH"))
    assert _by_name(again)["bdSeq"]["value"] == (bd_seq + 1) % 256
    assert "reconnecting" in bridge.log()


async def test_bd_seq_goes_on_across_restarts(
    broker: Any, sim_servers: Any, mqtt_watcher: Any, run_bridge: Any, tmp_path: Any
) -> None:
    """Sparkplug 3.0: the will of every MQTT CONNECT carries the previous CONNECT's
    bdSeq plus one, starting at zero, and a new process is no exception (a host may
    still get the old process's will after the new NBIRTH; the same bdSeq would make
    it take the new session for dead). Nothing configured for it: the default file."""
    require_tahu()
    server = await sim_servers((1, 2))
    _meter_registers(server)
    watcher = await mqtt_watcher(broker, "spBv1.0/plant/#")
    config = _config(broker, server)
    config["devices"] = config["devices"][:2]
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}  # as a user's own, for every run
    state = tmp_path / "state" / "modbus-bridge" / "sparkplug-plant@line-1.bdseq"

    async def bd_seq(kind: str, mark: int) -> int:
        await watcher.wait_for(topic(kind), timeout=10, since=mark)
        message = next(m for m in _decoded(watcher, mark) if m["topic"] == topic(kind))
        value = _by_name(message)["bdSeq"]
        assert value["type"] == "Int64"
        return int(value["value"])

    bridge = await run_bridge(config, env=env)
    assert await bd_seq("NBIRTH", 0) == 0  # the first start ever
    assert state.read_text() == "0\n"

    # kill -9: the broker publishes the will; the next process goes on from it
    mark = watcher.mark()
    assert bridge.proc is not None
    bridge.proc.kill()
    bridge.proc.wait()
    assert await bd_seq("NDEATH", mark) == 0
    mark = watcher.mark()
    bridge.start()
    assert await bd_seq("NBIRTH", mark) == 1

    # SIGTERM: the node's own NDEATH, then again the next bdSeq after the restart
    mark = watcher.mark()
    assert await bridge.terminate() == 0
    assert await bd_seq("NDEATH", mark) == 1
    mark = watcher.mark()
    bridge.start()
    assert await bd_seq("NBIRTH", mark) == 2
    assert state.read_text() == "2\n"
    assert "bdSeq state file" not in bridge.log()  # no problem with it was logged


async def test_mqtt5_close_asks_the_broker_for_the_will(
    broker: Any, sim_servers: Any, mqtt_watcher: Any, run_bridge: Any
) -> None:
    """Sparkplug 3.0: an edge node on MQTT 5 that sends a DISCONNECT sets the reason
    code "Disconnect with will message". On SIGTERM the node publishes its NDEATH,
    then disconnects so: the broker publishes the will too, with the same bdSeq."""
    require_tahu()
    server = await sim_servers((1, 2))
    _meter_registers(server)
    watcher = await mqtt_watcher(broker, "spBv1.0/plant/#")
    config = _config(broker, server)
    config["mqtt"]["protocol"] = 5
    config["devices"] = config["devices"][:2]
    bridge = await run_bridge(config)
    await watcher.wait_for(topic("DBIRTH", "meter"), timeout=10)
    birth = next(m for m in _decoded(watcher) if m["topic"] == topic("NBIRTH"))
    bd_seq = _by_name(birth)["bdSeq"]["value"]

    mark = watcher.mark()
    assert await bridge.terminate() == 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if len([m for m in watcher.messages[mark:] if m.topic == topic("NDEATH")]) >= 2:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # a third would come now
    deaths = [m for m in _decoded(watcher, mark) if m["topic"] == topic("NDEATH")]
    assert [_by_name(d)["bdSeq"]["value"] for d in deaths] == [bd_seq, bd_seq]
    assert all(d["seq"] is None for d in deaths)
