"""A Modbus server that lies: malformed and mismatched replies never become values,
tracebacks or a reconnect storm (issue 7, items 5 and 6).

Unit 1 of the hostile server always answers correctly; unit 2 misbehaves in one way
per test. The bridge must keep unit 1 online on the same socket, refuse every reply
of unit 2, and say why.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fleet import mqtt_section
from hostile import HostileServer, register

pytestmark = pytest.mark.integration

POINTS = [{"name": f"r{i}", "table": "holding", "address": i, "type": "uint16"} for i in range(4)]


@pytest.fixture
async def hostile() -> AsyncIterator[Any]:
    servers: list[HostileServer] = []

    async def make(*modes: str) -> HostileServer:
        server = HostileServer({1: "normal", **{2 + i: m for i, m in enumerate(modes)}})
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


def _config(broker: Any, server: HostileServer, **host: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "mqtt": mqtt_section(broker),
        "hosts": [
            {"name": "gw", "address": "127.0.0.1", "port": server.port, "timeout": 0.3, **host}
        ],
        "devices": [
            {"name": f"dev{u}", "host": "gw", "unit": u, "interval": "200ms", "points": POINTS}
            for u in sorted(server.modes)
        ],
    }


def _good(unit: int) -> dict[str, int]:
    return {f"r{i}": register(unit, i) for i in range(4)}


async def _run(run_bridge, broker, mqtt_watcher, server, seconds: float, *, good=(1,), **host: Any):
    """Run the bridge until every unit in `good` has published its good values and been
    reported online, then `seconds` more; stop it and return what was seen."""
    watcher = await mqtt_watcher(broker, "modbus/#")
    bridge = await run_bridge(_config(broker, server, **host))
    for unit in good:
        await watcher.wait_for(
            lambda m, u=unit: (
                m.topic == f"modbus/dev{u}" and all(m.json()[k] == v for k, v in _good(u).items())
            ),
            timeout=10,
        )
        await watcher.wait_for(
            lambda m, u=unit: m.topic == f"modbus/dev{u}/availability" and m.text == "online",
            timeout=10,
        )
    await asyncio.sleep(seconds)
    assert bridge.alive()
    # Availability while running (shutdown publishes offline for every device).
    available = {
        u: watcher.latest(f"modbus/dev{u}/availability").text for u in sorted(server.modes)
    }
    await bridge.terminate()
    return watcher, available, bridge.log()


def _no_traceback(log: str) -> None:
    assert "Traceback" not in log, log[-3000:]
    assert "Fatal error" not in log, log[-3000:]


FRAMED = {  # mode: what the log must say about it
    "byte_count": "byte count 28 for 8 data bytes",  # item 5: raised inside pymodbus
    "no_code": "exception reply of 1 bytes",  # item 5: likewise
    "wrong_function": "function 4",  # item 6: was published as holding registers
    "extra": "the reply holds 6 values",  # item 6: was silently cut
    "wrong_unit": "reply from unit",
}


async def test_framed_bad_replies_fail_their_request_on_the_same_socket(
    broker, mqtt_watcher, run_bridge, hostile
) -> None:
    server = await hostile(*FRAMED)  # units 2.. misbehave, one way each
    watcher, available, log = await _run(run_bridge, broker, mqtt_watcher, server, 3.0)

    for unit, (mode, reason) in enumerate(FRAMED.items(), start=2):
        # Never a value, offline with the reason in the log.
        assert not watcher.on(f"modbus/dev{unit}"), (mode, watcher.on(f"modbus/dev{unit}"))
        assert available[unit] == "offline", mode
        offline = f"device dev{unit} (host gw, unit {unit}) offline: the reply did not match"
        assert offline in log, mode
        assert reason in log, mode
    # Unit 1 kept its values and the socket: the frames stayed in step.
    assert available[1] == "online"
    assert server.connections == 1, f"{server.connections} connections: a reconnect per reply"
    _no_traceback(log)


async def test_transaction_id_zero_is_not_an_answer_unless_allowed(
    broker, mqtt_watcher, run_bridge, hostile
) -> None:
    server = await hostile("tid_zero")
    watcher, _, log = await _run(run_bridge, broker, mqtt_watcher, server, 2.0)
    assert not watcher.on("modbus/dev2")
    assert "set allow_zero_tid: true" in log
    _no_traceback(log)

    allowed = await hostile("tid_zero")
    watcher, available, _ = await _run(
        run_bridge, broker, mqtt_watcher, allowed, 1.0, good=(1, 2), allow_zero_tid=True
    )
    state = watcher.latest("modbus/dev2")
    assert available[2] == "online"
    assert state is not None and all(state.json()[k] == v for k, v in _good(2).items())
    assert allowed.connections == 1


@pytest.mark.parametrize("mode", ["bad_header", "garbage"])
async def test_unframeable_stream_reopens_with_backoff_not_a_storm(
    broker, mqtt_watcher, run_bridge, hostile, mode: str
) -> None:
    # Every reply to unit 2 breaks the framing, while unit 1 answers fine on the same
    # session. Answers on a poisoned session must not reset the backoff.
    server = await hostile(mode)
    watcher = await mqtt_watcher(broker, "modbus/#")
    bridge = await run_bridge(_config(broker, server))
    await asyncio.sleep(6.0)
    assert bridge.alive()
    await bridge.terminate()
    log = bridge.log()
    # Backoff from 0.5 s doubling (full jitter): a handful of sessions in 6 s, where
    # resetting the backoff on unit 1's answers would reopen about twice a second.
    assert 2 <= server.connections <= 8, f"{server.connections} connections in 6 s"
    assert "the byte stream is out of step" in log or "undecodable reply" in log
    assert not watcher.on("modbus/dev2")
    _no_traceback(log)
