"""MQTT-side faults against the real daemon: no broker at start, wrong credentials, TLS.

Broker restarts are covered in test_bridge.py. Modbus keeps polling whatever MQTT does.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from broker import Broker, TlsFiles
from fleet import mqtt_section

from bridge.sim import SimServer

pytestmark = pytest.mark.integration

UNITS = range(1, 4)
POINTS = [{"name": "a", "table": "holding", "address": 0, "type": "uint16"}]
ATTEMPT = re.compile(r"MQTT cannot connect to \S+ \(attempt (\d+)\): (.*); retrying in")


def _config(broker: Broker, server: SimServer, **mqtt: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "mqtt": mqtt_section(broker, **mqtt),
        "hosts": [{"name": "gw", "address": "127.0.0.1", "port": server.port, "timeout": 0.5}],
        "devices": [
            {"name": "d{unit}", "host": "gw", "units": "1-3", "interval": "250ms", "points": POINTS}
        ],
    }


async def _server(sim_servers: Any) -> SimServer:
    server: SimServer = await sim_servers(UNITS)
    for unit in UNITS:
        server.unit(unit).set_registers("holding", 0, [unit * 11])
    return server


async def _everything_online(watcher: Any, base: str = "modbus", timeout: float = 10) -> None:
    await watcher.wait_for(
        lambda m: m.topic == f"{base}/bridge/state" and m.payload == b"online", timeout=timeout
    )
    for unit in UNITS:
        await watcher.wait_for(
            lambda m, u=unit: m.topic == f"{base}/d{u}/availability" and m.payload == b"online",
            timeout=5,
        )
        await watcher.wait_for(
            lambda m, u=unit: m.topic == f"{base}/d{u}" and m.json().get("a") == u * 11,
            timeout=5,
        )


def _attempts(log: str) -> list[tuple[int, str]]:
    return [(int(m[1]), m[2]) for m in ATTEMPT.finditer(log)]


async def test_broker_down_at_start_polls_then_connects_when_it_comes_up(
    broker_factory, sim_servers, mqtt_watcher, run_bridge
) -> None:
    server = await _server(sim_servers)
    broker = broker_factory(start=False)  # a port where nothing listens yet
    bridge = await run_bridge(_config(broker, server))

    await asyncio.sleep(2.0)
    assert bridge.alive()
    assert server.requests_total >= 3, "the bridge polls while the broker is away"
    assert server.connections_total == 1
    assert _attempts(bridge.log()), bridge.log()[-2000:]

    await broker.astart()
    watcher = await mqtt_watcher(broker, "modbus/#")
    # Backoff after ~2 s of failures is at most a few seconds.
    await _everything_online(watcher, timeout=15)
    log = bridge.log()
    assert "Traceback" not in log
    assert "MQTT connected" in log
    assert server.connections_total == 1, "an MQTT outage must not touch the Modbus session"
    assert await bridge.terminate() == 0


@pytest.mark.parametrize("protocol", [5, "3.1.1"])
async def test_wrong_password_logs_one_line_per_attempt_with_backoff(
    broker_factory, sim_servers, run_bridge, protocol: int | str
) -> None:
    server = await _server(sim_servers)
    broker = broker_factory(users={"bridge": "right"})
    bridge = await run_bridge(
        _config(broker, server, username="bridge", password="wrong", protocol=protocol)
    )

    await asyncio.sleep(6.0)
    assert bridge.alive()
    log = bridge.log()
    attempts = _attempts(log)
    # Backoff 0.5 s doubling (full jitter): about 4-5 attempts in 6 s, not a storm.
    assert 2 <= len(attempts) <= 8, attempts
    assert [n for n, _ in attempts] == list(range(1, len(attempts) + 1))
    for _, reason in attempts:
        assert re.search(r"not authori[sz]ed|bad user ?name or password", reason, re.I), reason
        assert "mqtt.username and mqtt.password" in reason, reason
    assert "Traceback" not in log
    assert "MQTT connected" not in log
    # Every attempt the bridge logged reached the broker, and was refused there.
    refused = broker.log_text().count("not authorised")
    assert abs(refused - len(attempts)) <= 1, (refused, attempts)
    assert server.requests_total >= 3, "polling goes on without MQTT"
    assert await bridge.terminate() == 0


async def test_tls_with_ca_and_client_certificate(
    broker_factory, tls_files: TlsFiles, sim_servers, mqtt_watcher, run_bridge
) -> None:
    server = await _server(sim_servers)
    broker = broker_factory(tls=tls_files, require_certificate=True)
    watcher = await mqtt_watcher(broker, "modbus/#", tls_context=tls_files.client_context())
    tls = {
        "ca_file": str(tls_files.ca_cert),
        "cert_file": str(tls_files.client_cert),
        "key_file": str(tls_files.client_key),
    }
    bridge = await run_bridge(_config(broker, server, tls=tls))
    await _everything_online(watcher)
    assert "Traceback" not in bridge.log()
    assert await bridge.terminate() == 0


async def test_tls_untrusted_server_refused_unless_insecure(
    broker_factory, tls_files: TlsFiles, sim_servers, mqtt_watcher, run_bridge
) -> None:
    server = await _server(sim_servers)
    broker = broker_factory(tls=tls_files, require_certificate=True)
    watcher = await mqtt_watcher(broker, "#", tls_context=tls_files.client_context())
    client = {"cert_file": str(tls_files.client_cert), "key_file": str(tls_files.client_key)}
    # Two bridges side by side, neither given the CA: the server certificate is
    # self-signed as far as the system trust store knows.
    strict = await run_bridge(
        _config(broker, server, tls=client, client_id="strict", base_topic="strict")
    )
    lax = await run_bridge(
        _config(
            broker,
            server,
            tls={**client, "insecure": True},
            client_id="lax",
            base_topic="lax",
        )
    )
    await _everything_online(watcher, base="lax")
    await asyncio.sleep(2.0)

    assert not [m for m in watcher.messages if m.topic.startswith("strict/")]
    assert strict.alive()
    attempts = _attempts(strict.log())
    assert attempts, strict.log()[-2000:]
    for _, reason in attempts:
        assert "certificate" in reason.lower(), reason
        assert "ca_file" in reason, reason
    assert "MQTT connected" not in strict.log()
    assert "Traceback" not in strict.log() + lax.log()
    warning = "mqtt.tls.insecure is true: the broker's certificate is NOT verified"
    assert lax.log().count(warning) == 1  # said once, at start
    assert warning not in strict.log()
    assert await strict.terminate() == 0
    assert await lax.terminate() == 0


async def test_host_down_at_start_is_one_line_not_one_per_device(
    broker, mqtt_watcher, run_bridge
) -> None:
    # 50 devices behind a gateway that is down when the bridge starts, then comes up.
    from broker import free_port

    port = free_port()
    config = {
        "version": 1,
        "mqtt": mqtt_section(broker),
        "hosts": [{"name": "gw", "address": "127.0.0.1", "port": port, "timeout": 0.5}],
        "devices": [
            {"name": "d{unit}", "host": "gw", "units": "1-50", "interval": "250ms",
             "points": POINTS}
        ],
    }  # fmt: skip
    watcher = await mqtt_watcher(broker, "modbus/#")
    bridge = await run_bridge(config)
    await asyncio.sleep(2.0)
    server = SimServer(range(1, 51), port=port)
    await server.start()
    try:
        for unit in (1, 50):
            await watcher.wait_for(
                lambda m, u=unit: m.topic == f"modbus/d{u}/availability" and m.payload == b"online",
                timeout=15,
            )
        await asyncio.sleep(1.0)
        log = bridge.log()
        info = [line for line in log.splitlines() if " DEBUG " not in line]
        assert sum("offline" in line for line in info) == 0, info
        assert sum("unreachable" in line for line in info) == 1, info
        assert sum("back online" in line for line in info) == 1, info
        assert "host gw: 50 device(s) back online" in log
    finally:
        await bridge.terminate()
        await server.stop()
