"""End-to-end behaviour of the running bridge: changes, outages, broker restarts."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fleet import TEMPLATE, expected, load_unit, mqtt_section, same
from sockets import connections_to

pytestmark = pytest.mark.integration

INTERVAL = 0.5


def _config(broker: Any, servers: list[Any], units: int, **mqtt: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "mqtt": mqtt_section(broker, **mqtt),
        "hosts": [
            {"name": f"gw-{h}", "address": "127.0.0.1", "port": s.port, "timeout": 0.5}
            for h, s in enumerate(servers)
        ],
        "templates": {"seed": TEMPLATE},
        "devices": [
            {
                "name": f"gw{h}-{{unit}}",
                "host": f"gw-{h}",
                "units": f"1-{units}",
                "template": "seed",
                "interval": f"{int(INTERVAL * 1000)}ms",
            }
            for h in range(len(servers))
        ],
    }


async def _wait_state(
    watcher: Any, device: str, want: dict[str, Any], timeout: float, since: int = 0
) -> Any:
    return await watcher.wait_for(
        lambda m: m.topic == f"modbus/{device}" and same(json.loads(m.payload), want),
        timeout=timeout,
        since=since,
    )


async def test_change_arrives_within_one_interval_and_unchanged_is_quiet(
    broker, sim_servers, mqtt_watcher, run_bridge
) -> None:
    server = await sim_servers(range(1, 4))
    for unit in range(1, 4):
        load_unit(server, unit)
    watcher = await mqtt_watcher(broker, "modbus/#")
    await run_bridge(_config(broker, [server], 3))
    for unit in range(1, 4):
        await _wait_state(watcher, f"gw0-{unit}", expected(unit), timeout=10)
        await watcher.wait_for(f"modbus/gw0-{unit}/availability", timeout=5)

    # Nothing changes on the devices: no state is republished for several intervals.
    quiet_from = watcher.mark()
    await asyncio.sleep(INTERVAL * 6)
    republished = [m.topic for m in watcher.messages[quiet_from:]]
    assert republished == [], republished

    # One register changes: the new value is on MQTT within one interval (+ slack for
    # the broker round trip), and only the changed device publishes.
    mark = watcher.mark()
    t0 = asyncio.get_running_loop().time()
    load_unit(server, 2, generation=1)
    msg = await _wait_state(watcher, "gw0-2", expected(2, 1), timeout=5, since=mark)
    assert msg.time - t0 <= INTERVAL + 0.25, f"took {msg.time - t0:.3f}s"
    await asyncio.sleep(INTERVAL * 2)
    assert {m.topic for m in watcher.messages[mark:]} == {"modbus/gw0-2"}


async def test_host_outage_offline_then_back_with_one_new_connection(
    broker, sim_servers, mqtt_watcher, run_bridge
) -> None:
    down = await sim_servers(range(1, 4))
    other = await sim_servers(range(1, 3))
    for unit in range(1, 4):
        load_unit(down, unit)
    for unit in range(1, 3):
        load_unit(other, unit)
    watcher = await mqtt_watcher(broker, "modbus/#")
    bridge = await run_bridge(_config(broker, [down, other], 2))
    for unit in (1, 2):
        await _wait_state(watcher, f"gw0-{unit}", expected(unit), timeout=10)
        await _wait_state(watcher, f"gw1-{unit}", expected(unit), timeout=10)
    assert down.connections_total == 1

    mark = watcher.mark()
    await down.stop()
    for unit in (1, 2):
        await watcher.wait_for(
            lambda m, u=unit: m.topic == f"modbus/gw0-{u}/availability" and m.payload == b"offline",
            timeout=5,
            since=mark,
        )
    # The other host is not affected.
    assert all(m.topic.startswith("modbus/gw0-") for m in watcher.messages[mark:])
    assert watcher.latest("modbus/gw1-1/availability").payload == b"online"

    # Values change while the host is down; it comes back on the same port.
    for unit in (1, 2):
        load_unit(down, unit, generation=3)
    mark = watcher.mark()
    await down.start()
    for unit in (1, 2):
        await watcher.wait_for(
            lambda m, u=unit: m.topic == f"modbus/gw0-{u}/availability" and m.payload == b"online",
            timeout=70,  # one backoff step of at most 60 s plus a poll
            since=mark,
        )
        await _wait_state(watcher, f"gw0-{unit}", expected(unit, 3), timeout=5, since=mark)
    await asyncio.sleep(1.0)
    assert down.connections_total == 2, "exactly one new connection after the outage"
    assert other.connections_total == 1
    assert connections_to(bridge.pid, {down.port, other.port}) == 2


async def test_broker_restart_republishes_everything(
    broker, sim_servers, mqtt_watcher, run_bridge
) -> None:
    server = await sim_servers(range(1, 6))
    for unit in range(1, 6):
        load_unit(server, unit)
    watcher = await mqtt_watcher(broker, "modbus/#")
    bridge = await run_bridge(_config(broker, [server], 5))
    for unit in range(1, 6):
        await _wait_state(watcher, f"gw0-{unit}", expected(unit), timeout=10)

    await broker.arestart()  # no persistence: retained messages are gone
    await watcher.wait_subscribed(timeout=10)
    mark = watcher.mark()
    await watcher.wait_for(
        lambda m: m.topic == "modbus/bridge/state" and m.payload == b"online",
        timeout=70,
        since=mark,
    )
    for unit in range(1, 6):
        # Values did not change, yet the full state comes again after the reconnect.
        await _wait_state(watcher, f"gw0-{unit}", expected(unit), timeout=5, since=mark)
        await watcher.wait_for(
            lambda m, u=unit: m.topic == f"modbus/gw0-{u}/availability" and m.payload == b"online",
            timeout=5,
            since=mark,
        )
    assert bridge.alive()
    assert server.connections_total == 1, "a broker restart must not touch Modbus sessions"
    assert "another client" not in bridge.log()  # a restart is not a duplicate client id
