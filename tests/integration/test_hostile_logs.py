"""The daemon's log under hostile conditions (issue 16, item 5), with `--log-format json`:
every line it writes must parse as one JSON object (a log shipper drops the rest), and a
flood of events must not become a flood of lines."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import aiomqtt
import pytest
from broker import free_port
from fleet import mqtt_section

from bridge.sim import SimServer

pytestmark = pytest.mark.integration

JSON = {"BRIDGE_LOG_FORMAT": "json"}
POINTS = [{"name": "level", "table": "holding", "address": 0, "type": "uint16"}]


def _records(log: str) -> list[dict[str, Any]]:
    """Every line of the log as JSON; fails on the first line that is not."""
    records = []
    for n, line in enumerate(log.splitlines(), 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"line {n} of the log is not JSON: {line!r}\n{log[-3000:]}")
    return records


def _messages(log: str) -> list[str]:
    return [r["message"] for r in _records(log)]


def _config(broker: Any, server: SimServer, **extra: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "health_interval": "1s",
        "mqtt": mqtt_section(broker),
        "hosts": [{"name": "gw", "address": "127.0.0.1", "port": server.port, "timeout": 0.5}],
        "devices": [{"name": "boiler", "host": "gw", "unit": 1, "interval": "500ms",
                     "points": POINTS}],
        **extra,
    }  # fmt: skip


async def _until(check: Any, bridge: Any, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert bridge.alive(), bridge.log()[-3000:]
        assert loop.time() < deadline, bridge.log()[-3000:]
        await asyncio.sleep(0.1)


def _scrapes(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            return sock.recv(12)[8:] == b" 200"  # HTTP/1.x 200
    except OSError:
        return False


async def test_metrics_moved_by_reload_while_a_request_is_held(
    broker, sim_servers, run_bridge
) -> None:
    """The library's server printed a 20-line wsgiref traceback on stderr here, and the
    held connection stayed on the old server's thread."""
    server = await sim_servers([1])
    before, after = free_port(), free_port()
    config = _config(broker, server, metrics={"listen": f"127.0.0.1:{before}"})
    bridge = await run_bridge(config, env=JSON)
    await _until(lambda: _scrapes(before), bridge)
    held = socket.create_connection(("127.0.0.1", before))
    held.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and the rest never comes
    half = socket.create_connection(("127.0.0.1", before))  # nothing sent at all
    await asyncio.sleep(0.3)
    config["metrics"] = {"listen": f"127.0.0.1:{after}"}
    bridge.write_config(config)
    bridge.reload()
    await _until(lambda: "reload done" in bridge.log(), bridge)
    await _until(lambda: _scrapes(after), bridge)
    held.settimeout(5)
    half.settimeout(5)
    assert held.recv(100) == b""  # closed by the reload, not left behind
    assert half.recv(100) == b""
    held.close()
    half.close()
    assert not _scrapes(before)
    assert await bridge.terminate() == 0
    log = bridge.log()
    messages = _messages(log)
    assert "Traceback" not in log
    assert f"metrics on http://127.0.0.1:{after}/metrics" in messages


async def test_a_flood_of_home_assistant_births_is_a_few_lines(
    broker, sim_servers, mqtt_watcher, run_bridge
) -> None:
    """1,000 birth messages in 0.2 s were 1,000 INFO lines."""
    server = await sim_servers([1])
    config = _config(broker, server, homeassistant={"enabled": True})
    bridge = await run_bridge(config, env=JSON)
    watcher = await mqtt_watcher(broker, "homeassistant/#")
    await watcher.wait_for(lambda m: m.topic.endswith("/boiler/config"), timeout=15)
    async with aiomqtt.Client(broker.host, broker.port) as client:
        for _ in range(1000):
            await client.publish("homeassistant/status", b"online", qos=0)
    born = "Home Assistant is online: publishing discovery and state again"
    await _until(lambda: "more Home Assistant births" in bridge.log(), bridge, timeout=20)
    assert await bridge.terminate() == 0
    messages = _messages(bridge.log())
    assert messages.count(born) <= 3, [m for m in messages if "Home Assistant" in m]
    counted = [m for m in messages if "more Home Assistant births" in m]
    assert counted and counted[0].startswith("... and ")


@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_a_broker_packet_limit_on_mqtt_3_1_1_gets_its_own_hint(
    broker_factory, sim_servers, run_bridge, qos: int
) -> None:
    """An MQTT 3.1.1 broker with a packet limit drops the client that exceeds it without
    saying why: the hint named a duplicate client id, and paho's socket error came out
    as a line of its own."""
    broker = broker_factory(extra_config="max_packet_size 4000")
    server = await sim_servers(range(1, 101))
    config = _config(broker, server)
    config["mqtt"] = mqtt_section(broker, protocol="3.1.1", qos=qos)
    config["devices"] = [
        {"name": f"dev{u}", "host": "gw", "unit": u, "interval": "500ms", "points": POINTS}
        for u in range(1, 101)
    ]  # the health report is more than 4,000 bytes
    bridge = await run_bridge(config, env=JSON)
    await _until(lambda: "mqtt.max_packet_size" in bridge.log(), bridge, timeout=30)
    assert await bridge.terminate() == 0
    records = _records(bridge.log())
    lost = [r["message"] for r in records if r["message"].startswith("MQTT connection lost")]
    assert lost, records[-20:]
    if qos:  # an acknowledged QoS: the message larger than any acknowledged was in flight
        assert not any("another client" in m for m in lost), lost
        assert any("was in flight: an MQTT 3.1.1 broker" in m for m in lost), lost
    else:  # QoS 0 is never acknowledged: both causes are named
        assert any("Or a packet limit? Set mqtt.max_packet_size" in m for m in lost), lost
    # The socket error is part of the bridge's own line, not paho's "failed to receive".
    assert not any("on socket" in r["message"] for r in records)
    assert all(r["logger"] != "mqtt" for r in records)
