"""SIGTERM/SIGINT under load: exit 0 within 5 s, every time, leaving `offline` retained.

Python 3.11 can swallow a cancellation inside `asyncio.wait_for` (used by pymodbus and
aiomqtt), so a shutdown that works once may hang the next time: run it many times.
"""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import time
from typing import Any

import pytest
from broker import Broker, MqttWatcher
from fleet import mqtt_section

from bridge.sim import SimServer

pytestmark = pytest.mark.integration

HOSTS = 2
UNITS = 40
RUNS = 20
SLOW_UNIT = 7  # on host 0: its replies take most of a cycle, so requests are in flight
POINTS = [
    {"name": "a", "table": "holding", "address": 0, "type": "uint16"},
    {"name": "b", "table": "input", "address": 0, "type": "int32"},
]
DEVICES = [f"h{h}-{u}" for h in range(HOSTS) for u in range(1, UNITS + 1)]


def _config(mqtt: dict[str, Any], servers: list[SimServer]) -> dict[str, Any]:
    return {
        "version": 1,
        "mqtt": mqtt,
        "hosts": [
            {"name": f"gw{h}", "address": "127.0.0.1", "port": s.port, "timeout": 0.5}
            for h, s in enumerate(servers)
        ],
        "devices": [
            {
                "name": f"h{h}-{{unit}}",
                "host": f"gw{h}",
                "units": f"1-{UNITS}",
                "interval": "250ms",
                "points": POINTS,
            }
            for h in range(HOSTS)
        ],
    }


async def _servers(sim_servers: Any) -> list[SimServer]:
    servers: list[SimServer] = []
    for h in range(HOSTS):
        server: SimServer = await sim_servers(range(1, UNITS + 1))
        for unit in range(1, UNITS + 1):
            server.unit(unit).set_registers("holding", 0, [h * 100 + unit])
        servers.append(server)
    servers[0].per_unit_delay = {SLOW_UNIT: 0.15}
    return servers


async def _all(watcher: MqttWatcher, payload: bytes, since: int, timeout: float) -> None:
    """`payload` on bridge/state and on every device's availability, from `since` on."""
    wanted = {"modbus/bridge/state"} | {f"modbus/{d}/availability" for d in DEVICES}

    def match(m: Any) -> bool:
        if m.topic in wanted and m.payload == payload:
            wanted.discard(m.topic)
        return not wanted

    try:
        await watcher.wait_for(match, timeout=timeout, since=since)
    except TimeoutError:
        missing = sorted(wanted)
        raise AssertionError(
            f"{len(missing)} topics never said {payload!r}: {missing[:5]}"
        ) from None


async def _retained_offline(broker: Broker) -> None:
    """A subscriber arriving after the exit finds everything `offline`, retained."""
    async with MqttWatcher(broker.host, broker.port, "modbus/#") as fresh:
        await _all(fresh, b"offline", 0, timeout=5)
        assert all(m.retain for m in fresh.messages)


async def _stop(bridge: Any, sig: signal.Signals) -> tuple[int, float]:
    """Send `sig`; return the exit code and the seconds from signal to exit."""
    proc = bridge.proc
    t0 = time.monotonic()
    proc.send_signal(sig)
    while proc.poll() is None and time.monotonic() - t0 < 10:
        await asyncio.sleep(0.005)
    elapsed = time.monotonic() - t0
    return await bridge.terminate(), elapsed


async def _run_once(
    broker: Broker,
    watcher: MqttWatcher,
    run_bridge: Any,
    config: dict[str, Any],
    sig: signal.Signals,
    *,
    env: dict[str, str] | None = None,
) -> float:
    mark = watcher.mark()
    bridge = await run_bridge(config, env)
    await _all(watcher, b"online", mark, timeout=10)
    await asyncio.sleep(random.uniform(0.05, 0.3))  # any phase: polls, publishes in flight
    mark = watcher.mark()
    code, elapsed = await _stop(bridge, sig)
    log = bridge.log()
    assert code == 0, log[-3000:]
    assert elapsed < 5.0, f"{sig.name} to exit took {elapsed:.2f}s"
    # A hung shutdown ends through the watchdog (exit 1): the orderly path must do it.
    assert "exiting anyway" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert "bridge stopped" in log
    await _all(watcher, b"offline", mark, timeout=2)
    await _retained_offline(broker)
    return elapsed


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_sigterm_under_load_20_times(
    broker, sim_servers, mqtt_watcher, run_bridge, *, loop: str
) -> None:
    # Half the runs on each event loop (the daemon uses uvloop when it is installed):
    # Python 3.11's asyncio is the one with the shutdown pitfalls.
    runs = RUNS // 2
    servers = await _servers(sim_servers)
    config = _config(mqtt_section(broker), servers)
    watcher = await mqtt_watcher(broker, "modbus/#")
    env = {"BRIDGE_EVENT_LOOP": loop}
    times = []
    for _ in range(runs):
        times.append(await _run_once(broker, watcher, run_bridge, config, signal.SIGTERM, env=env))
    assert max(times) < 5.0
    # Each run used one socket per host.
    assert [s.connections_total for s in servers] == [runs] * HOSTS
    print(f"SIGTERM to exit ({loop}): max {max(times):.3f}s, mean {sum(times) / len(times):.3f}s")


async def test_sigint_under_load(broker, sim_servers, mqtt_watcher, run_bridge) -> None:
    servers = await _servers(sim_servers)
    watcher = await mqtt_watcher(broker, "modbus/#")
    await _run_once(
        broker, watcher, run_bridge, _config(mqtt_section(broker), servers), signal.SIGINT
    )


async def test_sigterm_while_mqtt_tls_handshake_hangs(sim_servers, run_bridge) -> None:
    """A broker that accepts TCP but never answers: paho's TLS handshake blocks an
    executor thread for its 5 s connect timeout. The exit must not wait for it."""
    servers = await _servers(sim_servers)
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)  # the kernel completes TCP handshakes; nobody ever reads
        mqtt = {"host": "127.0.0.1", "port": mute.getsockname()[1], "tls": {"insecure": True}}
        bridge = await run_bridge(_config(mqtt, servers))
        while "bridge started" not in bridge.log():
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # mid-handshake
        code, elapsed = await _stop(bridge, signal.SIGTERM)
    log = bridge.log()
    assert code == 0, log[-3000:]
    assert "exiting anyway" not in log
    assert elapsed < 1.5, f"SIGTERM to exit took {elapsed:.2f}s: waited for the handshake"
