"""The retained health report on `<base>/bridge/health`, from the real daemon."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from broker import MqttWatcher
from fleet import mqtt_section

from bridge.sim import SimServer, SimUnit

pytestmark = pytest.mark.integration

HEALTH = "modbus/bridge/health"
HOST_KEYS = {
    "connected", "sockets_opened", "reconnects", "requests", "errors", "timeouts",
    "latency_p50_ms", "latency_p99_ms",
}  # fmt: skip
DEVICE_KEYS = {"available", "last_seen", "errors", "skipped_ranges"}
POINTS = [
    {"name": "a", "table": "holding", "address": 0, "type": "uint16"},
    {"name": "b", "table": "holding", "address": 5, "type": "uint16"},
    {"name": "c", "table": "holding", "address": 10, "type": "uint16"},  # refused by unit 3
]


def _config(broker: Any, good: SimServer, other: SimServer) -> dict[str, Any]:
    device = {"interval": "250ms", "points": POINTS, "max_gap": 10}
    return {
        "version": 1,
        "health_interval": "1s",
        "mqtt": mqtt_section(broker),
        "hosts": [
            {"name": "gw-a", "address": "127.0.0.1", "port": good.port, "timeout": 0.3},
            {"name": "gw-b", "address": "127.0.0.1", "port": other.port, "timeout": 0.3},
        ],
        "devices": [
            {"name": "a{unit}", "host": "gw-a", "units": "1-3", **device},
            {"name": "b{unit}", "host": "gw-b", "units": "1-2", **device},
        ],
    }


async def test_health_report_every_interval_with_plausible_numbers(
    broker, mqtt_watcher, run_bridge
) -> None:
    # gw-a: unit 1 fine, unit 2 never answers, unit 3 refuses address 10.
    units = {1: SimUnit(), 2: SimUnit(), 3: SimUnit(valid={"holding": [(0, 10)]})}
    good = SimServer(units)
    other = SimServer([1, 2])
    good.silent_units.add(2)
    for server in (good, other):
        await server.start()
    try:
        watcher = await mqtt_watcher(broker, "modbus/#")
        bridge = await run_bridge(_config(broker, good, other))
        await watcher.wait_for(HEALTH, timeout=10)  # the first report, soon after start
        since = watcher.mark()
        one = await watcher.wait_for(HEALTH, timeout=3, since=since)
        two = await watcher.wait_for(HEALTH, timeout=3, since=watcher.mark())
        period = two.time - one.time
        first, second = one.json(), two.json()
    finally:
        for server in (good, other):
            await server.stop()

    assert 0.5 < period < 1.5, f"reports {period:.2f}s apart, expected every 1s"
    for doc in (first, second):
        assert set(doc["hosts"]) == {"gw-a", "gw-b"}
        assert set(doc["devices"]) == {"a1", "a2", "a3", "b1", "b2"}
        for host in doc["hosts"].values():
            assert set(host) >= HOST_KEYS, host
        for device in doc["devices"].values():
            assert set(device) >= DEVICE_KEYS, device
    assert 0.9 <= second["uptime_s"] - first["uptime_s"] <= 1.5
    assert second["uptime_s"] < 30
    assert 10 * 2**20 < second["rss_bytes"] < 500 * 2**20, second["rss_bytes"]

    a, b = second["hosts"]["gw-a"], second["hosts"]["gw-b"]
    for name, host in second["hosts"].items():
        assert host["connected"] is True
        assert host["sockets_opened"] == 1, (name, host)
        assert host["reconnects"] == 0, (name, host)
        # Four requests a second per device: the count grows by several each report.
        assert host["requests"] >= first["hosts"][name]["requests"] + 4, (name, host)
        assert 0 <= host["latency_p50_ms"] <= host["latency_p99_ms"] < 300, host
    assert b["errors"] == 0 and b["timeouts"] == 0
    assert a["timeouts"] >= 1 and a["errors"] >= a["timeouts"], a

    devices = second["devices"]
    assert devices["a1"]["available"] is True and devices["b2"]["available"] is True
    assert devices["a2"]["available"] is False and devices["a2"]["errors"] >= 1
    assert devices["a2"]["last_seen"] is None
    assert devices["a1"]["errors"] == 0 and devices["a1"]["skipped_ranges"] == []
    assert devices["a3"]["available"] is True and devices["a3"]["skipped_ranges"], devices["a3"]
    seen = dt.datetime.fromisoformat(devices["a1"]["last_seen"].replace("Z", "+00:00"))
    age = dt.datetime.now(dt.UTC) - seen
    assert dt.timedelta(seconds=-1) < age < dt.timedelta(seconds=5), age

    # Retained: a subscriber arriving later gets the newest report at once.
    async with MqttWatcher(broker.host, broker.port, HEALTH) as late:
        report = await late.wait_for(HEALTH, timeout=3)
        assert report.retain and report.json()["uptime_s"] >= second["uptime_s"]
    assert await bridge.terminate() == 0
