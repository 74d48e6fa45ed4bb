"""The seed scenario: 240 devices behind 3 hosts, one socket per host, all values right."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fleet import TEMPLATE, expected, load_unit, mqtt_section, same
from sockets import connections_to

pytestmark = pytest.mark.integration

HOSTS = 3
UNITS = 80
INTERVAL = 0.5
CYCLES = 20


async def test_240_devices_three_sockets(broker, sim_servers, mqtt_watcher, run_bridge) -> None:
    servers = [await sim_servers(range(1, UNITS + 1)) for _ in range(HOSTS)]
    for server in servers:
        for unit in range(1, UNITS + 1):
            load_unit(server, unit)
    config: dict[str, Any] = {
        "version": 1,
        "mqtt": mqtt_section(broker),
        "hosts": [
            {"name": f"gw-{h}", "address": "127.0.0.1", "port": s.port, "timeout": 2.0}
            for h, s in enumerate(servers)
        ],
        "templates": {"seed": TEMPLATE},
        "devices": [
            {
                "name": f"gw{h}-unit-{{unit}}",
                "host": f"gw-{h}",
                "units": f"1-{UNITS}",
                "template": "seed",
                "interval": f"{int(INTERVAL * 1000)}ms",
            }
            for h in range(HOSTS)
        ],
    }
    watcher = await mqtt_watcher(broker, "modbus/#")
    bridge = await run_bridge(config)

    names = {f"gw{h}-unit-{u}": (h, u) for h in range(HOSTS) for u in range(1, UNITS + 1)}

    def all_correct() -> list[str]:
        wrong = []
        for name, (_, unit) in names.items():
            msg = watcher.latest(f"modbus/{name}")
            if msg is None or not same(json.loads(msg.payload), expected(unit)):
                wrong.append(name)
        return wrong

    loop = asyncio.get_running_loop()
    started = loop.time()
    blocks_per_device = 4  # holding, input, coil, discrete
    needed = CYCLES * UNITS * blocks_per_device
    while loop.time() - started < 60:
        if all(s.requests_total >= needed for s in servers) and not all_correct():
            break
        assert bridge.alive(), bridge.log()[-3000:]
        await asyncio.sleep(0.5)
    wrong = all_correct()
    assert not wrong, f"{len(wrong)} devices wrong or missing, e.g. {wrong[:5]}"
    assert all(s.requests_total >= needed for s in servers), [s.requests_total for s in servers]

    for name in names:
        avail = watcher.latest(f"modbus/{name}/availability")
        assert avail is not None and avail.payload == b"online", name
    assert watcher.latest("modbus/bridge/state").payload == b"online"

    # One persistent session per host, for the whole run.
    assert [s.connections_total for s in servers] == [1, 1, 1]
    ports = {s.port for s in servers}
    assert connections_to(bridge.pid, ports) == HOSTS

    assert await bridge.terminate() == 0
    log = bridge.log()
    assert "Traceback" not in log
