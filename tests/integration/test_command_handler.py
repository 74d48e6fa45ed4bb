"""Command execution in-process: a real HostSession against our simulator, MQTT faked.

Timing-sensitive paths (write_timeout, drain at shutdown) are checked here, where
the clock is ours; the end-to-end file runs the real daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from bridge.command_handler import CommandHandler
from bridge.config import parse_config
from bridge.errors import ModbusRequestError
from bridge.messages import Incoming
from bridge.model import BridgeConfig, Device, Shard
from bridge.payloads import Value
from bridge.session import Claim, HostSession
from bridge.sim import SimServer
from bridge.state import StateCache
from bridge.topics import Topics

pytestmark = pytest.mark.integration

WRITE_FCS = {5, 6, 15, 16, 22}


def _config(port: int, *, write_timeout: str = "1s", rate: str | None = None) -> BridgeConfig:
    rate_line = f"    write_rate: {rate}\n" if rate else ""
    return parse_config(
        f"""
version: 1
write_timeout: {write_timeout}
hosts: [{{name: gw, address: 127.0.0.1, port: {port}, timeout: 2s}}]
devices:
  - name: dev
    host: gw
    unit: 1
{rate_line}    points:
      - {{name: level, table: holding, address: 0, type: uint16, writable: true}}
      - {{name: other, table: holding, address: 1, type: uint16, writable: true}}
      - {{name: relay, table: coil, address: 0, writable: true}}
"""
    )


@dataclass
class Published:
    topic: str
    payload: bytes
    retain: bool
    coalesce: bool
    correlation_data: bytes | None


@dataclass
class Rig:
    server: SimServer
    session: HostSession
    handler: CommandHandler
    sent: list[Published] = field(default_factory=list)
    reads: list[tuple[str, dict[str, Value], ModbusRequestError | None]] = field(
        default_factory=list
    )

    def results(self, device: str = "dev") -> list[dict[str, Any]]:
        topic = f"modbus/{device}/set/result"
        return [json.loads(p.payload) for p in self.sent if p.topic == topic]

    def writes(self) -> list[int]:
        return [r.function for r in self.server.request_log if r.function in WRITE_FCS]

    async def command(
        self, topic: str, payload: bytes, *, response: str | None = None, corr: bytes | None = None
    ) -> dict[str, Any]:
        before = len(self.sent)
        await self.handler.handle(Incoming(topic, payload, response, corr))
        new = [p for p in self.sent[before:] if p.topic.endswith("/set/result")]
        assert len(new) == 1, new
        result: dict[str, Any] = json.loads(new[0].payload)
        return result


@pytest.fixture
async def rig_factory() -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    rigs: list[Rig] = []

    async def make(**options: Any) -> Rig:
        server = SimServer((1,))
        await server.start()
        config = _config(server.port, **options)
        session = HostSession(config.hosts[0], backoff_min=0.05, backoff_max=0.2)
        await session.start()
        for _ in range(100):
            if session.connected:
                break
            await asyncio.sleep(0.01)
        assert session.connected
        topics = Topics("modbus")
        state = StateCache(config.devices, topics, output=config.mqtt.output, retain=True)
        sent: list[Published] = []

        def publish(
            topic: str,
            payload: bytes,
            *,
            retain: bool,
            coalesce: bool = True,
            correlation_data: bytes | None = None,
        ) -> None:
            sent.append(Published(topic, payload, retain, coalesce, correlation_data))

        reads: list[tuple[str, dict[str, Value], ModbusRequestError | None]] = []

        def on_read(device: Device, values: dict[str, Value], error: Any) -> None:
            reads.append((device.name, dict(values), error))

        handler = CommandHandler(
            config, topics, {"gw": session}, state, publish=publish, on_read=on_read
        )
        rig = Rig(server, session, handler, sent, reads)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        await rig.session.stop()
        await rig.server.stop()


async def test_write_read_back_and_result(rig_factory: Callable[..., Awaitable[Rig]]) -> None:
    rig = await rig_factory()
    result = await rig.command("modbus/dev/set", b'{"level": 42, "relay": "ON", "transaction": 1}')
    assert result == {"status": "ok", "data": {"level": 42, "relay": True}, "transaction": 1}
    assert rig.server.unit(1).get_registers("holding", 0) == [42]
    assert rig.server.unit(1).get_bits("coils", 0) == [True]
    assert rig.writes() == [6, 5]
    assert rig.reads == [("dev", {"level": 42, "relay": True}, None)]  # published like a poll
    result_msgs = [p for p in rig.sent if p.topic == "modbus/dev/set/result"]
    assert all(not p.retain and not p.coalesce for p in result_msgs)


async def test_queued_write_past_write_timeout_is_withdrawn(
    rig_factory: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await rig_factory(write_timeout="100ms")
    rig.server.delay = 0.4
    busy = asyncio.create_task(
        rig.session.read(1, rig.handler.devices["dev"].points[1].table, 1, 1)
    )
    await asyncio.sleep(0.02)  # the read is on the wire, the host is busy for 0.4 s
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    result = await rig.command("modbus/dev/level/set", b"7")
    assert loop.time() - t0 < 0.3  # answered at write_timeout, not when the host frees up
    assert result["status"] == "error"
    assert "not sent" in result["error"]
    assert "write_timeout" in result["error"]
    await busy
    await asyncio.sleep(0.6)  # the host is free again: the withdrawn write never goes out
    assert rig.writes() == []
    assert rig.server.unit(1).get_registers("holding", 0) == [0]


async def test_write_on_the_wire_at_write_timeout_waits_for_its_answer(
    rig_factory: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await rig_factory(write_timeout="100ms")
    rig.server.delay = 0.3
    result = await rig.command("modbus/dev/level/set", b"9")
    assert result["status"] == "ok", result
    assert result["data"] == {"level": 9}
    assert rig.writes() == [6]


async def test_claim_decides_once() -> None:
    claim = Claim()
    assert claim()
    assert not claim.abandon()
    late = Claim()
    assert late.abandon()
    assert not late()


async def test_host_down_and_device_offline_are_refused_at_once(
    rig_factory: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await rig_factory()
    rig.handler.state.set_available("dev", False)
    result = await rig.command("modbus/dev/level/set", b"1")
    assert result["status"] == "error"
    assert "offline" in result["error"]
    rig.handler.state.set_available("dev", True)
    await rig.server.stop()
    for _ in range(300):
        if not rig.session.connected:
            break
        with contextlib.suppress(ModbusRequestError):
            await rig.session.read(1, rig.handler.devices["dev"].points[0].table, 0, 1)
        await asyncio.sleep(0.01)
    result = await rig.command("modbus/dev/level/set", b"1")
    assert result["status"] == "error"
    assert "not connected" in result["error"]
    assert rig.writes() == []


async def test_rate_limit_rejects_beyond_burst(rig_factory: Callable[..., Awaitable[Rig]]) -> None:
    rig = await rig_factory(rate="1/s")
    first = await rig.command("modbus/dev/level/set", b"1")
    second = await rig.command("modbus/dev/level/set", b"2")
    assert first["status"] == "ok"
    assert second["status"] == "error"
    assert "write_rate" in second["error"]
    assert rig.writes() == [6]
    assert rig.server.unit(1).get_registers("holding", 0) == [1]


async def test_exception_reply_and_partial_write(
    rig_factory: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await rig_factory()
    rig.server.exception_hook = lambda unit, fc, address, count: (
        2 if fc in WRITE_FCS and address == 1 else None
    )
    result = await rig.command("modbus/dev/set", b'{"level": 5, "other": 6}')
    assert result["status"] == "error"
    assert "exception 2 (illegal data address)" in result["error"]
    assert "already written: level" in result["error"]
    assert result["data"] == {"level": 5}
    assert rig.server.unit(1).get_registers("holding", 0, 2) == [5, 0]


async def test_response_topic_and_bad_ones(rig_factory: Callable[..., Awaitable[Rig]]) -> None:
    rig = await rig_factory()
    await rig.command("modbus/dev/level/set", b"3", response="app/replies/7", corr=b"\x00\x01")
    answer = [p for p in rig.sent if p.topic == "app/replies/7"]
    assert len(answer) == 1
    assert answer[0].correlation_data == b"\x00\x01"
    assert not answer[0].retain
    assert not answer[0].coalesce
    assert json.loads(answer[0].payload)["status"] == "ok"
    for bad in ("app/+/x", "", "modbus/dev/set", "modbus/dev", "modbus/bridge/state"):
        before = len(rig.sent)
        await rig.command("modbus/dev/level/set", b"4", response=bad, corr=b"c")
        assert [p.topic for p in rig.sent[before:]] == ["modbus/dev/set/result"]


async def test_unknown_device_answered_on_its_own_result_topic(
    rig_factory: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await rig_factory()
    await rig.handler.handle(Incoming("modbus/ghost/set", b'{"x": 1, "transaction": "t"}'))
    assert rig.results("ghost") == [
        {"status": "error", "data": {}, "error": 'unknown device "ghost"', "transaction": "t"}
    ]
    await rig.handler.handle(Incoming("modbus/ghost/get", b""))
    assert len(rig.results("ghost")) == 2
    await rig.handler.handle(Incoming("modbus/dev/whatever/else", b""))  # not a command topic
    assert rig.writes() == []


async def test_get_reads_now(rig_factory: Callable[..., Awaitable[Rig]]) -> None:
    rig = await rig_factory()
    rig.server.unit(1).set_registers("holding", 0, [11, 12])
    result = await rig.command("modbus/dev/get", b'["other"]')
    assert result == {"status": "ok", "data": {"other": 12}}
    result = await rig.command("modbus/dev/get", b"")
    assert result["data"] == {"level": 11, "other": 12, "relay": False}
    assert rig.reads[-1] == ("dev", {"level": 11, "other": 12, "relay": False}, None)


async def test_drain_answers_in_flight_commands(
    rig_factory: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await rig_factory(write_timeout="5s")
    rig.server.delay = 1.0
    task = asyncio.create_task(rig.handler.handle(Incoming("modbus/dev/level/set", b"8")))
    await asyncio.sleep(0.05)
    assert rig.handler.in_flight == 1
    await rig.handler.drain(0.1)
    assert task.done()
    [result] = rig.results()
    assert result["status"] == "error"
    assert "shutting down" in result["error"]
    # New commands after the drain are refused at once.
    late = await rig.command("modbus/dev/level/set", b"9")
    assert "shutting down" in late["error"]


def _shard_handler(rig: Rig, index: int) -> CommandHandler:
    """The rig's handler as shard `index` of 2 whose other shard runs device `far`."""
    base = rig.handler
    config = dataclasses.replace(
        base.config, shard=Shard(index, 2, "b"), elsewhere=frozenset({"far"})
    )
    return CommandHandler(
        config, base.topics, base.sessions, base.state, publish=base.publish, on_read=base.on_read
    )


async def test_a_shard_answers_its_own_devices_and_shard_1_the_unknown_ones(
    rig_factory: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await rig_factory()
    first, second = _shard_handler(rig, 1), _shard_handler(rig, 2)
    for handler in (first, second):  # `far` is the other shard's: it answers, not these
        await handler.handle(Incoming("modbus/far/set", b'{"x": 1}'))
        await handler.handle(Incoming("modbus/far/get", b""))
        handler.refuse_overloaded(Incoming("modbus/far/set", b"{}"))
    assert rig.results("far") == []
    await second.handle(Incoming("modbus/ghost/get", b""))  # in no shard: shard 1 answers
    assert rig.results("ghost") == []
    await first.handle(Incoming("modbus/ghost/get", b""))
    assert [r["error"] for r in rig.results("ghost")] == ['unknown device "ghost"']
    await second.handle(Incoming("modbus/dev/level/set", b"3", "modbus/far", b"c"))
    [result] = rig.results("dev")
    assert result["status"] == "ok"  # its own device; but the other shard's state topic
    assert "the bridge publishes state there" in result["warning"]  # is no response topic
    assert [p.topic for p in rig.sent if p.topic == "modbus/far"] == []


async def test_reload_holds_then_interrupts_commands_of_a_changing_device(
    rig_factory: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await rig_factory(write_timeout="5s")
    rig.server.delay = 1.0
    task = asyncio.create_task(rig.handler.handle(Incoming("modbus/dev/level/set", b"8")))
    await asyncio.sleep(0.05)
    rig.handler.hold(["dev"])
    held = await rig.command("modbus/dev/level/set", b"9")
    assert "being reconfigured" in held["error"] and "retry" in held["error"]
    await rig.handler.settle(["dev"], 0.1, "the device was changed by a reload")
    assert task.done()
    interrupted = rig.results()[-1]
    assert interrupted["status"] == "error"
    assert interrupted["error"].startswith("interrupted: the device was changed by a reload")
    rig.handler.release(["dev"])
    rig.server.delay = 0.0
    assert (await rig.command("modbus/dev/level/set", b"10"))["status"] == "ok"
