"""`/metrics` of the real daemon, scraped over HTTP and parsed with prometheus_client's
own parser, against our simulator (Modbus TCP and RTU framing) and a real Mosquitto."""

from __future__ import annotations

import asyncio
import re
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from broker import free_port
from fleet import mqtt_section
from flood import Flood, ProcessFigures, process_figures, raise_own_descriptor_limit
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


NOFILE = 1024  # the bridge's descriptor limit in the flood test: the usual default


async def test_a_flood_on_the_metrics_port_leaves_the_bridge_its_links(
    broker, run_bridge, mqtt_watcher
) -> None:
    """Issue 16, item 1. With the library's server, about 1,010 idle connections took
    every descriptor under a limit of 1,024 (a thread each): the broker could not be
    reached again for as long as they were held. Here 1,000 idle and 1,000 slow
    connections are held (reopened whenever the bridge drops one) while the broker and
    the Modbus gateway restart: the bridge reconnects to both within its usual backoff,
    and a scrape answers once the flood stops reopening."""
    if not raise_own_descriptor_limit(2600):
        pytest.skip("needs 2,600 file descriptors for the flood")
    gateway = SimServer([1])
    await gateway.start()
    port = free_port()
    config = _config(broker, gateway, gateway, port)
    config["hosts"] = config["hosts"][:1]
    config["devices"] = [{"name": "a1", "host": "gw-a", "unit": 1, "interval": "200ms",
                          "points": POINTS}]  # fmt: skip
    flood = Flood(port, idle=1000, slow=1000)
    try:
        bridge = await run_bridge(config, nofile=NOFILE)
        loop = asyncio.get_running_loop()

        async def until(what: str, ready: Any, timeout: float) -> float:
            started = loop.time()
            while not ready():
                assert bridge.alive(), bridge.log()[-3000:]
                assert loop.time() - started < timeout, f"{what}: not within {timeout}s"
                await asyncio.sleep(0.1)
            return loop.time() - started

        def logged(text: str) -> int:
            return bridge.log().count(text)

        await until("first scrape", lambda: _answers(port), 15)
        await until("online", lambda: logged("MQTT connected to") == 1, 15)
        calm = process_figures(bridge.pid)

        await flood.start()
        peak = calm
        sampling = True

        async def sample() -> None:
            nonlocal peak
            while sampling:
                now = process_figures(bridge.pid)
                peak = ProcessFigures(
                    max(peak.descriptors, now.descriptors),
                    max(peak.threads, now.threads),
                    max(peak.rss, now.rss),
                )
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        await asyncio.sleep(3.0)  # the flood at full strength
        assert flood.opened >= 1000  # the flood is on

        # The broker restarts: the bridge is back within its backoff (0.5 s, doubling).
        watcher = await mqtt_watcher(broker, "modbus/a1")
        broker.restart()
        mqtt_back = await until("MQTT reconnect", lambda: logged("MQTT connected to") == 2, 20)
        # The gateway restarts: one new socket, the device polled again.
        await gateway.stop()
        await asyncio.sleep(0.5)
        await gateway.start()
        modbus_back = await until("Modbus reconnect", lambda: gateway.connections_total == 2, 20)
        gateway.unit(1).set_registers("holding", 0, [42])
        await until(
            "values flow", lambda: any(b'"a":42' in m.payload for m in watcher.messages), 10
        )
        flood.reopening = False
        scrape = await until("a scrape", lambda: _answers(port), 30)
        sampling = False
        await sampler
        opened, dropped = flood.opened, flood.dropped
    finally:
        await flood.stop()
        await gateway.stop()
    assert await bridge.terminate() == 0
    log = bridge.log()
    print(
        f"\nflood: {opened} connections opened, {dropped} dropped by the bridge; "
        f"descriptors {calm.descriptors} -> peak {peak.descriptors}, threads {calm.threads} "
        f"-> {peak.threads}, RSS {calm.rss / 2**20:.1f} -> {peak.rss / 2**20:.1f} MiB; MQTT "
        f"back in {mqtt_back:.1f}s, Modbus in {modbus_back:.1f}s, scrape after {scrape:.1f}s"
    )
    # What the flood costs the bridge is bounded: the connection cap (64 of 1,024), no
    # thread per connection.
    assert peak.descriptors <= calm.descriptors + 64 + 2 < NOFILE
    assert peak.threads <= calm.threads + 1
    assert "Too many open files" not in log
    assert "Traceback" not in log


def _answers(port: int) -> bool:
    try:
        _scrape(port)
    except OSError:
        return False
    return True


async def test_the_bridge_raises_its_descriptor_limit_and_warns_when_it_is_low(
    broker, run_bridge
) -> None:
    gateway = SimServer([1])
    await gateway.start()
    try:
        config = _config(broker, gateway, gateway, free_port())
        config["hosts"] = config["hosts"][:1]  # one host a gateway (two would be refused)
        config["devices"] = config["devices"][:1]
        raised = await run_bridge(config, nofile=(256, 4096))
        # Many hosts (down: nothing listens there) under a limit that cannot be raised;
        # each its own gateway: one address and port twice is refused.
        config = dict(config, hosts=[{"name": f"h{n}", "address": f"127.0.0.{n + 2}", "port": 1}
                                     for n in range(200)])  # fmt: skip
        config["devices"] = [{"name": f"d{n}", "host": f"h{n}", "unit": 1, "points": POINTS}
                             for n in range(200)]  # fmt: skip
        config["metrics"] = {"listen": f"127.0.0.1:{free_port()}"}
        low = await run_bridge(config, nofile=256)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while "bridge started" not in raised.log() or "bridge started" not in low.log():
            assert loop.time() < deadline, raised.log()[-2000:] + low.log()[-2000:]
            await asyncio.sleep(0.1)
        limits = Path(f"/proc/{raised.pid}/limits").read_text()  # noqa: ASYNC240
        assert re.search(r"Max open files\s+4096\s+4096", limits), limits
        assert "open file limit" not in raised.log()
        assert (
            "the open file limit (256) is too low for 200 hosts: the bridge needs about 328"
            in low.log()
        )
    finally:
        await gateway.stop()
