"""`proxy.Proxies`: after a proxied write, the bridge's points it touched are read again,
once per device at a time (a client writing in a loop does not queue a read per write)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from bridge.config import parse_config
from bridge.model import Device, Point
from bridge.proxy import Proxies
from bridge.proxy_rules import ProxyRequest

CONFIG = parse_config(
    """
version: 1
hosts: [{name: gw, address: 127.0.0.1}, {name: other, address: 127.0.0.2}]
devices:
  - {name: a, host: gw, unit: 1, points: [
      {name: x, table: holding, address: 0, type: uint16},
      {name: y, table: holding, address: 1, type: uint16},
      {name: z, table: input, address: 0, type: uint16}]}
  - {name: b, host: gw, unit: 2, points: [{name: x, table: holding, address: 0, type: uint16}]}
  - {name: c, host: other, unit: 1, points: [{name: x, table: holding, address: 0, type: uint16}]}
""",
    env={},
)


async def test_writes_are_read_back_coalesced_per_device() -> None:
    reads: list[tuple[str, tuple[str, ...]]] = []
    gate = asyncio.Event()

    async def reread(device: Device, points: Sequence[Point]) -> None:
        reads.append((device.name, tuple(p.name for p in points)))
        await gate.wait()

    proxies = Proxies(CONFIG, {}, reread)
    proxies._written("gw", ProxyRequest(6, 1, 0, 1, (5,)))
    await asyncio.sleep(0)
    assert reads == [("a", ("x",))]  # unit 1 on host gw only; input z is not a holding
    for _ in range(100):  # a client writing in a loop while the read-back runs
        proxies._written("gw", ProxyRequest(16, 1, 0, 2, (1, 2)))
    proxies._written("gw", ProxyRequest(6, 2, 0, 1, (1,)))
    await asyncio.sleep(0)
    assert reads == [("a", ("x",)), ("b", ("x",))]
    gate.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert reads == [("a", ("x",)), ("b", ("x",)), ("a", ("x", "y"))]  # once for the hundred
    await proxies.stop()


async def test_a_write_past_every_point_reads_nothing() -> None:
    reads: list[str] = []

    async def reread(device: Device, points: Sequence[Point]) -> None:
        reads.append(device.name)

    proxies = Proxies(CONFIG, {}, reread)
    proxies._written("gw", ProxyRequest(6, 1, 500, 1, (5,)))
    proxies._written("gw", ProxyRequest(5, 1, 0, 1, (1,)))  # a coil, not a register
    await asyncio.sleep(0.01)
    assert reads == []
