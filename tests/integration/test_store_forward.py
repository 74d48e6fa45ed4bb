"""Store and forward end to end: the broker stops while devices change, the bridge is
killed (-9) and restarted in the middle, the broker comes back. Every change made while
it was away arrives once, in order per device, with the time it was read, on
`<base>/<device>/history` and as historical Sparkplug DDATA (decoded by Eclipse Tahu's
library). The short version of bench/store_forward.py (10 minutes, 100 devices/s).
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest
from fleet import mqtt_section
from sparkplug_host import decode, require_tahu

from bridge.sim import SimServer

pytestmark = pytest.mark.integration

UNITS = (1, 2, 3)
HOLD = 0.3  # seconds each value stays: the bridge polls every 0.1 s, so it reads each


def _config(broker: Any, server: SimServer, path: str) -> dict[str, Any]:
    return {
        "version": 1,
        "health_interval": "1s",
        "mqtt": mqtt_section(broker),
        "sparkplug": {"group_id": "plant", "edge_node_id": "sf"},
        "buffer": {"path": path, "flush_interval": "0.2s", "replay_rate": "200/s"},
        "hosts": [{"name": "gw", "address": "127.0.0.1", "port": server.port, "timeout": 0.3}],
        "devices": [
            {
                "name": f"d{u}",
                "host": "gw",
                "unit": u,
                "interval": "0.1s",
                "points": [{"name": "n", "table": "holding", "address": 0, "type": "uint16"}],
            }
            for u in UNITS
        ],
    }


def _seconds(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def _change(
    server: SimServer, values: range, log: dict[int, list[tuple[int, float]]]
) -> None:
    """Each value on every unit in turn, held HOLD seconds; when each was set."""
    loop = asyncio.get_running_loop()
    for v in values:
        now = loop.time()
        wall = datetime.datetime.now(datetime.UTC).timestamp()
        for u in UNITS:
            server.unit(u).set_registers("holding", 0, [v + 100 * u])
            log[u].append((v + 100 * u, wall))
        await asyncio.sleep(max(0.0, HOLD - (loop.time() - now)))


async def test_changes_while_the_broker_is_away_arrive_once_in_order(
    broker: Any, sim_servers: Any, mqtt_watcher: Any, run_bridge: Any, tmp_path: Any
) -> None:
    require_tahu()
    server = await sim_servers(UNITS)
    watcher = await mqtt_watcher(broker, "#")
    config = _config(broker, server, str(tmp_path / "buffer" / "b.db"))
    first = await run_bridge(config)
    for u in UNITS:
        await watcher.wait_for(
            lambda m, u=u: m.topic == f"modbus/d{u}" and b'"n":0' in m.payload, 10
        )
    await watcher.wait_for("spBv1.0/plant/DBIRTH/sf/d3", timeout=10)

    await broker.astop()
    sent: dict[int, list[tuple[int, float]]] = {u: [] for u in UNITS}
    await _change(server, range(1, 6), sent)
    await asyncio.sleep(0.6)  # past a flush: what was read is committed
    assert first.proc is not None
    first.proc.kill()
    first.proc.wait()
    # The same buffer, a new process; it reads the current values once more.
    second = await run_bridge(config)
    reads = server.requests_total
    while server.requests_total < reads + 3 * len(UNITS):
        await asyncio.sleep(0.05)
    await _change(server, range(6, 11), sent)
    await asyncio.sleep(0.3)
    mark = watcher.mark()
    await broker.astart()
    await watcher.wait_subscribed(timeout=10)

    expected = {u: [v for v, _ in sent[u]] for u in UNITS}

    def history(u: int) -> list[dict[str, Any]]:
        return [m.json() for m in watcher.on(f"modbus/d{u}/history")]

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while loop.time() < deadline:
        got = {u: [h["values"]["n"] for h in history(u) if "values" in h] for u in UNITS}
        if all(expected[u][-1] in got[u] for u in UNITS):
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # anything more (a duplicate) would come now

    for u in UNITS:
        records = [h for h in history(u) if "values" in h]
        times = [_seconds(h["time"]) for h in records]
        values = [h["values"]["n"] for h in records]
        assert len(set(times)) == len(times), f"d{u}: a record replayed twice: {records}"
        assert times == sorted(times), f"d{u}: out of order"
        # Consecutive equal values: the restarted process's first read of a value the
        # first one had buffered (it cannot know the value did not change meanwhile).
        changes = [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]
        assert changes == expected[u], f"d{u}: {values}"
        # Each with the time it was first read: after it was set, before the next value.
        set_at = dict(sent[u])
        firsts = [(v, t) for i, (v, t) in enumerate(zip(values, times, strict=True))
                  if i == 0 or values[i - 1] != v]  # fmt: skip
        for v, t in firsts:
            assert set_at[v] - 0.05 <= t <= set_at[v] + HOLD + 0.5, (v, t, set_at[v])
        # Not retained; the live state got the newest value at once.
        assert not any(m.retain for m in watcher.on(f"modbus/d{u}/history"))
        live = [m for m in watcher.messages[mark:] if m.topic == f"modbus/d{u}"]
        assert live and live[0].json()["n"] == expected[u][-1]

    # Sparkplug: the same changes as DDATA flagged historical, with the original times.
    spb = decode([(m.topic, m.payload) for m in watcher.messages[mark:] if "DDATA" in m.topic])
    for u in UNITS:
        json_records = [h for h in history(u) if "values" in h]
        hist = [
            (metric["value"], metric["timestamp"])
            for msg in spb
            if msg["topic"] == f"spBv1.0/plant/DDATA/sf/d{u}"
            for metric in msg["metrics"]
            if metric["is_historical"]
        ]
        assert [v for v, _ in hist] == [h["values"]["n"] for h in json_records]
        for (_, ms), h in zip(hist, json_records, strict=True):
            assert abs(ms / 1000 - _seconds(h["time"])) < 0.002

    # Everything acknowledged was deleted from the store.
    health = await watcher.wait_for(
        lambda m: (
            m.topic == "modbus/bridge/health" and m.json().get("buffer", {}).get("records") == 0
        ),
        timeout=40,
        since=mark,
    )
    assert health.json()["buffer"]["dropped"] == 0
    assert second.alive()
