"""The proxy wired into the bridge, in-process: `Bridge.proxies` on a gateway that takes
one connection, with a real broker. What a proxied write does to the bridge's own state
(read again and published), its figures in the health report, and reloads (a proxy
restarts its listener alone; the host's socket stays)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient

from bridge.app import Bridge
from bridge.config import parse_config
from bridge.model import BridgeConfig, Proxy
from bridge.reload import plan_reload
from bridge.sim import SimServer

pytestmark = pytest.mark.integration


def _config(broker: Any, sim: SimServer, interval: str = "60s", **proxy: Any) -> BridgeConfig:
    """A host with one device polled rarely (a value that changes on MQTT within a
    second came from the read-back, not from a poll) and `proxy` on it."""
    config = parse_config(
        "version: 1\n"
        f"mqtt: {{host: {broker.host}, port: {broker.port}, client_id: proxy-test}}\n"
        f"hosts: [{{name: gw, address: 127.0.0.1, port: {sim.port}, timeout: 300ms}}]\n"
        f"devices: [{{name: d, host: gw, unit: 1, interval: {interval},\n"
        "  points: [{name: setpoint, table: holding, address: 4, type: uint16,"
        " writable: true},\n"
        "           {name: other, table: holding, address: 9, type: uint16}]}]\n",
        env={},
    )
    return _with_proxy(config, **proxy)


def _with_proxy(config: BridgeConfig, **proxy: Any) -> BridgeConfig:
    proxy.setdefault("port", 0)
    host = dataclasses.replace(config.hosts[0], proxy=Proxy(**proxy))
    return dataclasses.replace(config, hosts=(host,))


@pytest.fixture
async def bridge_on(
    sim_servers,
) -> AsyncIterator[Callable[..., Awaitable[tuple[Bridge, SimServer]]]]:
    made: list[Bridge] = []

    async def make(broker: Any, **proxy: Any) -> tuple[Bridge, SimServer]:
        sim: SimServer = await sim_servers([1, 2])
        sim.max_connections = 1  # a gateway that takes one connection
        bridge = Bridge(_config(broker, sim, **proxy))
        made.append(bridge)
        await bridge.start()
        async with asyncio.timeout(5):
            while not bridge.sessions["gw"].connected:
                await asyncio.sleep(0.01)
        return bridge, sim

    yield make
    for bridge in made:
        await bridge.shutdown()


async def _client(port: int) -> AsyncModbusTcpClient:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    assert await client.connect()
    return client


async def test_a_proxied_write_is_read_back_and_published(broker, mqtt_watcher, bridge_on) -> None:
    watcher = await mqtt_watcher(broker, "modbus/d")
    bridge, sim = await bridge_on(broker, writes=True)
    await watcher.wait_for(lambda m: m.json().get("setpoint") == 0, timeout=5)
    client = await _client(bridge.proxies["gw"].port)
    try:
        assert not (await client.write_register(4, 321, device_id=1)).isError()
        # The poll interval is a minute: the bridge read the point again on its own.
        message = await watcher.wait_for(lambda m: m.json().get("setpoint") == 321, timeout=2)
        assert message.json()["other"] == 0
        rr = await client.read_holding_registers(4, count=1, device_id=1)
        assert rr.registers == [321]
    finally:
        client.close()
    assert sim.connections_total == 1
    health = bridge.health()["proxies"]["gw"]
    assert health["listening"] == 1 or health["listening"] is True
    assert health["writes"] == 1
    assert health["requests"]["answered"] == 2


async def test_units_and_writes_are_the_proxy_settings(broker, bridge_on) -> None:
    bridge, sim = await bridge_on(broker)  # reads only; units: those of the devices (1)
    client = await _client(bridge.proxies["gw"].port)
    try:
        wr = await client.write_register(4, 5, device_id=1)
        assert wr.isError() and wr.exception_code == 1
        rr = await client.read_holding_registers(0, count=1, device_id=2)
        assert rr.isError() and rr.exception_code == 0x0B
        assert sim.unit(1).get_registers("holding", 4) == [0]
    finally:
        client.close()


async def test_a_reload_restarts_a_changed_proxy_and_never_the_session(broker, bridge_on) -> None:
    bridge, sim = await bridge_on(broker)
    old_port = bridge.proxies["gw"].port
    client = await _client(old_port)
    try:
        # Devices change, the proxy does not: its client stays connected, the units follow.
        config = bridge.config
        device = dataclasses.replace(config.devices[0], unit=2)
        changed = dataclasses.replace(config, devices=(device,))
        await bridge.apply(plan_reload(config, changed), changed)
        assert bridge.proxies["gw"].port == old_port
        rr = await client.read_holding_registers(0, count=1, device_id=2)
        assert not rr.isError()
        rr = await client.read_holding_registers(0, count=1, device_id=1)
        assert rr.isError() and rr.exception_code == 0x0B
        # The proxy's settings change: its listener restarts, the gateway keeps its socket.
        writable = _with_proxy(changed, writes=True, units=(1, 2))
        plan = plan_reload(changed, writable)
        assert plan.proxies_changed == ("gw",) and plan.hosts_kept == ("gw",)
        await bridge.apply(plan, writable)
    finally:
        client.close()
    client = await _client(bridge.proxies["gw"].port)
    try:
        assert not (await client.write_register(4, 7, device_id=1)).isError()
    finally:
        client.close()
    assert sim.unit(1).get_registers("holding", 4) == [7]
    assert bridge.sockets_opened == {"gw": 1} and sim.connections_total == 1
    stats = bridge.health()["proxies"]["gw"]
    assert stats["connections"] == 2  # counters carried over the restart


async def test_a_port_in_use_leaves_the_bridge_running_without_that_proxy(
    broker, bridge_on, caplog
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        bridge, _ = await bridge_on(broker, port=port)
    assert f"proxy of host gw: cannot listen on 127.0.0.1:{port}" in caplog.text
    assert bridge.health()["proxies"]["gw"]["listening"] in (0, False)
    assert bridge.sessions["gw"].connected
