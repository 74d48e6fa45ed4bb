"""Units that come back, against the real daemon (issue 19 §4): a unit silent for a
minute backs off up to a minute, yet on an idle bus a probe in the link's spare time
finds it back within seconds; on a busy bus no probe is sent and the live units keep
their schedule while it is dead. Our own SimServer mutes the unit."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fleet import mqtt_section

from bridge.sim import SimServer

pytestmark = pytest.mark.integration

HEALTH = "modbus/bridge/health"
POINTS = [{"name": "a", "table": "holding", "address": 0, "type": "uint16"}]


def _config(
    broker: Any, server: SimServer, units: str, interval: str, timeout: float = 0.2
) -> dict[str, Any]:
    # A loopback device answers in well under a millisecond: 0.1 s is a generous timeout.
    host = {"name": "gw", "address": "127.0.0.1", "port": server.port, "timeout": timeout}
    return {
        "version": 1,
        "health_interval": "1s",
        "mqtt": mqtt_section(broker),
        "hosts": [host],
        "devices": [
            {"name": "d{unit}", "host": "gw", "units": units, "interval": interval,
             "points": POINTS},
        ],
    }  # fmt: skip


def _avail(unit: int, payload: bytes) -> Any:
    return lambda m: m.topic == f"modbus/d{unit}/availability" and m.payload == payload


async def test_a_unit_back_after_a_minute_of_silence_is_polled_within_5_s_on_an_idle_bus(
    broker, sim_servers, mqtt_watcher, run_bridge
) -> None:
    # Two meters on one gateway, each read once a second: the bus is idle nearly all
    # the time, and half a second lies between one poll and the other's.
    server = await sim_servers([1, 2])
    watcher = await mqtt_watcher(broker, "modbus/#")
    await run_bridge(_config(broker, server, "1-2", "1s"))
    await watcher.wait_for(_avail(2, b"online"), timeout=10)

    mark = watcher.mark()
    server.silent_units.add(2)
    await watcher.wait_for(_avail(2, b"offline"), timeout=5, since=mark)
    await asyncio.sleep(60.0)
    silent = json.loads(watcher.on(HEALTH)[-1].payload)
    server.silent_units.clear()
    loop = asyncio.get_running_loop()
    unmuted, mark = loop.time(), watcher.mark()
    await watcher.wait_for(_avail(2, b"online"), timeout=5, since=mark)
    back_after = loop.time() - unmuted

    # It did back off (a poll after a minute of silence is up to a minute away), the
    # probes found it, and they were no errors and recycled no socket.
    device = silent["devices"]["d2"]
    assert device["backoff_cycles"] >= 10, device
    assert device["probes"] >= 10, device
    host = silent["hosts"]["gw"]
    assert host["probes"] >= 10 and host["probe_timeouts"] >= 10, host
    assert host["timeouts"] < device["probes"], host  # probes time out apart
    assert server.connections_total == 1
    print(f"back after {back_after:.2f} s; d2 {device}; gw probes {host['probes']}")


async def test_a_busy_bus_keeps_its_polls_on_time_while_a_unit_is_dead(
    broker, sim_servers, mqtt_watcher, run_bridge
) -> None:
    # 40 meters every 200 ms on one gateway, polled in passes 50 ms apart: less than
    # the 0.1 s a probe of a dead unit could hold the link. No probe may go.
    interval, timeout = 0.2, 0.1
    server = await sim_servers(range(1, 41))
    watcher = await mqtt_watcher(broker, "modbus/#")
    await run_bridge(_config(broker, server, "1-40", "200ms", timeout))
    await watcher.wait_for(_avail(7, b"online"), timeout=10)
    mark = watcher.mark()
    server.silent_units.add(7)
    await watcher.wait_for(_avail(7, b"offline"), timeout=5, since=mark)
    await asyncio.sleep(8.0)  # its backoff grows to seconds

    server.clear_log()
    await asyncio.sleep(10.0)
    reads: dict[int, list[float]] = {}
    for record in server.request_log:
        if record.function == 3:
            reads.setdefault(record.unit, []).append(record.time)
    health = json.loads(watcher.on(HEALTH)[-1].payload)

    # Lag: each live unit's reads against its own drift-free grid, anchored at its
    # earliest read (queueing behind the dead unit's timeouts counts).
    lags = []
    for unit, times in reads.items():
        if unit == 7:
            continue
        first = times[0]
        grid = [first + round((t - first) / interval) * interval for t in times]
        offsets = [t - g for t, g in zip(times, grid, strict=True)]
        low = min(offsets)
        lags.extend(o - low for o in offsets)
        assert len(times) >= 0.95 * 10 / interval, (unit, len(times))
    lags.sort()
    p50, p99 = lags[len(lags) // 2], lags[int(0.99 * len(lags))]
    dead_reads = len(reads.get(7, []))
    host, device = health["hosts"]["gw"], health["devices"]["d7"]
    print(
        f"live reads {len(lags)}, lag p50 {p50 * 1000:.1f} ms p99 {p99 * 1000:.1f} ms "
        f"max {lags[-1] * 1000:.1f} ms; dead unit read {dead_reads} times in 10 s; "
        f"probes host {host['probes']} device {device['probes']}"
    )
    assert host["probes"] == 0 and device["probes"] == 0
    assert device["backoff_cycles"] > 0
    assert dead_reads <= 4, f"dead unit read {dead_reads} times in 10 s: no backoff"
    # Only the dead unit's own backoff retries (at most a timeout each) delay anyone:
    # the typical read is on its grid. The tail is printed, not asserted: in the whole
    # run another test shares the two cores and a stalled pass shows in p99 (0.2 s seen
    # once, 3-4 ms alone); bench/RESULTS.md has it measured on a quiet machine.
    assert p50 < 0.02, (p50, p99)
