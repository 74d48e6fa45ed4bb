"""`/metrics` of the real daemon, scraped over HTTP and parsed with prometheus_client's
own parser, against our simulator (Modbus TCP and RTU framing) and a real Mosquitto."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
from typing import Any

import aiomqtt
import pytest
from broker import free_port
from fleet import mqtt_section
from prometheus_client.parser import text_string_to_metric_families

from bridge.sim import SimServer

pytestmark = pytest.mark.integration

P = "modbus_bridge_"
POINTS = [{"name": "a", "table": "holding", "address": 0, "type": "uint16", "writable": True}]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _config(broker: Any, tcp: SimServer, rtu: SimServer, port: int) -> dict[str, Any]:
    device = {"interval": "200ms", "points": POINTS}
    return {
        "version": 1,
        "metrics": {"listen": f"127.0.0.1:{port}"},
        "mqtt": mqtt_section(broker),
        "hosts": [
            {"name": "gw-a", "address": "127.0.0.1", "port": tcp.port, "timeout": "200ms"},
            {"name": "gw-b", "address": "127.0.0.1", "port": rtu.port, "timeout": "200ms",
             "framer": "rtu"},
        ],
        "devices": [
            {"name": "a{unit}", "host": "gw-a", "units": "1-2", **device},
            {"name": "b{unit}", "host": "gw-b", "units": "1-2", **device},
        ],
    }  # fmt: skip


def _scrape(port: int) -> tuple[str, Samples, dict[str, str]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return text, samples, types


def _get(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((P + name, frozenset(labels.items())))


async def test_metrics_scraped_from_the_running_bridge(broker, run_bridge) -> None:
    tcp = SimServer([1, 2])
    tcp.silent_units.add(2)  # a2 times out: offline, backs off
    rtu = SimServer([1, 2], framing="rtu")
    rtu.corrupt_units.add(2)  # b2's replies carry a wrong CRC
    port = free_port()
    for server in (tcp, rtu):
        await server.start()
    try:
        bridge = await run_bridge(_config(broker, tcp, rtu, port))
        loop = asyncio.get_running_loop()

        async def until(ready: Any, timeout: float = 15.0) -> Samples:
            deadline = loop.time() + timeout
            while True:
                try:
                    _, samples, _ = await asyncio.to_thread(_scrape, port)
                    if ready(samples):
                        return samples
                except OSError:
                    pass  # not listening yet
                assert bridge.alive(), bridge.log()[-3000:]
                assert loop.time() < deadline, "metrics never showed the expected state"
                await asyncio.sleep(0.3)

        await until(lambda s: _get(s, "device_available", device="a1", host="gw-a") == 1)
        # Two commands: one written (ok), one refused before anything was sent.
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.publish("modbus/a1/set", b'{"a": 7}', qos=1)
            await client.publish("modbus/a1/set", b'{"nope": 1}', qos=1)
        samples = await until(
            lambda s: (_get(s, "mqtt_commands_total", result="rejected") or 0) >= 1
            and (_get(s, "mqtt_commands_total", result="ok") or 0) >= 1
            and (_get(s, "device_skipped_cycles_total", device="a2", host="gw-a", reason="backoff")
                 or 0) >= 1
            and (_get(s, "unit_crc_errors_total", host="gw-b", unit="2") or 0) >= 1
            and all((_get(s, "host_requests_total", host=h) or 0) >= 4 for h in ("gw-a", "gw-b"))
        )  # fmt: skip
        text, samples, types = await asyncio.to_thread(_scrape, port)
        assert tcp.unit(1).get_registers("holding", 0) == [7]
    finally:
        for server in (tcp, rtu):
            await server.stop()
    assert await bridge.terminate() == 0

    # Per host: one socket each, counted on both sides.
    assert tcp.connections_total == rtu.connections_total == 1
    for host in ("gw-a", "gw-b"):
        assert _get(samples, "host_connected", host=host) == 1
        assert _get(samples, "host_sockets_opened_total", host=host) == 1
        assert _get(samples, "host_reconnects_total", host=host) == 0
        assert (_get(samples, "host_requests_total", host=host) or 0) >= 4
        assert _get(samples, "host_queue_depth", host=host) is not None
        count = _get(samples, "host_request_duration_seconds_count", host=host)
        inf = _get(samples, "host_request_duration_seconds_bucket", host=host, le="+Inf")
        assert count == inf and count is not None and count > 0
    assert (_get(samples, "host_request_errors_total", host="gw-a", kind="timeout") or 0) >= 1
    assert (_get(samples, "unit_timeouts_total", host="gw-a", unit="2") or 0) >= 1
    assert _get(samples, "unit_timeouts_total", host="gw-a", unit="1") == 0
    assert (_get(samples, "host_crc_errors_total", host="gw-b") or 0) >= 1
    # Per device.
    assert _get(samples, "device_available", device="a1", host="gw-a") == 1
    assert _get(samples, "device_available", device="a2", host="gw-a") == 0
    seen = _get(samples, "device_last_read_timestamp_seconds", device="a1", host="gw-a")
    assert seen is not None and abs(time.time() - seen) < 10
    assert _get(samples, "device_last_read_timestamp_seconds", device="a2", host="gw-a") is None
    assert (_get(samples, "device_poll_cycles_total", device="a1", host="gw-a") or 0) >= 3
    assert (_get(samples, "device_backoff_seconds", device="a2", host="gw-a") or 0) >= 0
    # MQTT.
    assert _get(samples, "mqtt_connected") == 1
    assert (_get(samples, "mqtt_messages_published_total") or 0) >= 4
    assert _get(samples, "mqtt_commands_total", result="ok") == 1
    assert _get(samples, "mqtt_commands_total", result="rejected") == 1
    assert _get(samples, "points_written_total") == 1
    # Process collectors.
    assert (_get(samples, "build_info", version=__import__("bridge").__version__)) == 1
    rss = samples[("process_resident_memory_bytes", frozenset())]
    assert 10 * 2**20 < rss < 500 * 2**20
    # Conventions: counters end in _total; label values only from the configuration.
    names = {"host": {"gw-a", "gw-b"}, "device": {"a1", "a2", "b1", "b2"}, "unit": {"1", "2"}}
    for (name, labels), _value in samples.items():
        if types.get(name.removesuffix("_total")) == "counter" and name.startswith(P):
            assert name.endswith("_total"), name
        for label, value in labels:
            if label in names:
                assert value in names[label], (name, label, value)
    assert "# TYPE modbus_bridge_host_request_duration_seconds histogram" in text


async def test_a_port_in_use_leaves_the_bridge_running_without_metrics(caplog) -> None:
    from bridge.app import Bridge
    from bridge.config import parse_config

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = parse_config(
            "version: 1\n"
            f"metrics: {{listen: 127.0.0.1:{port}}}\n"
            "hosts: [{name: gw, address: 127.0.0.1}]\n"
            "devices: [{name: d, host: gw, unit: 1,\n"
            "           points: [{name: a, table: coil, address: 0}]}]\n",
            env={},
        )
        bridge = Bridge(config)
        bridge._start_metrics()
    assert bridge.metrics is None
    assert f"metrics: cannot listen on 127.0.0.1:{port}" in caplog.text
