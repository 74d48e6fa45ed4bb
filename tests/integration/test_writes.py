"""Write commands end to end: real Mosquitto, the real daemon, our Modbus simulator.

What lands on the device is checked server-side (`request_log`: function code,
address, values; and the unit's registers). Expected registers are built with
`struct` here, independently of `bridge.codec`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest
from fleet import mqtt_section
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.sim import RequestRecord, SimServer

pytestmark = pytest.mark.integration

WRITE_FCS = frozenset({5, 6, 15, 16, 22})


def regs(fmt: str, value: Any, *, words: str = "big", byte: str = "big") -> list[int]:
    """Registers of `value` packed big-endian, then reordered like a device would."""
    raw = struct.pack(">" + fmt, value)
    chunks = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if words == "little":
        chunks.reverse()
    if byte == "little":
        chunks = [c[::-1] for c in chunks]
    return [int.from_bytes(c, "big") for c in chunks]


def text_regs(text: str, length: int) -> list[int]:
    raw = text.encode("latin-1").ljust(2 * length, b"\x00")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def h(name: str, address: int, type_: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "table": "holding", "address": address, "type": type_, **extra}


W = {"writable": True}

DEV_POINTS = [
    h("f32_bb", 0, "float32", **W),
    h("f32_bl", 2, "float32", word_order="little", **W),
    h("f32_lb", 4, "float32", byte_order="little", **W),
    h("f32_ll", 6, "float32", byte_order="little", word_order="little", **W),
    h("f64_bb", 10, "float64", **W),
    h("f64_bl", 14, "float64", word_order="little", **W),
    h("f64_ll", 18, "float64", byte_order="little", word_order="little", **W),
    h("i64", 22, "int64", **W),
    h("u32", 26, "uint32", scale=0.01, offset=10, **W),
    h("temp", 28, "int16", scale=0.1, offset=-40, min=-20, max=80, **W),
    h("mode", 29, "uint16", values={0: "off", 1: "heat", 2: "cool"}, **W),
    h("label", 30, "string", length=4, **W),
    h("heater", 40, "uint16", bit=2, **W),
    h("pump", 41, "uint16", bit=9, mask_write=True, **W),
    {"name": "relay", "table": "coil", "address": 0, **W},
    {"name": "run", "table": "discrete", "address": 3, "write_table": "coil", "write_address": 8,
     **W},
    {"name": "target", "table": "input", "address": 5, "type": "uint16",
     "write_table": "holding", "write_address": 100, **W},
    h("level", 50, "uint16", min=0, max=1000, **W),
    h("plain", 51, "uint16"),  # not writable
    {"name": "measured", "table": "input", "address": 0, "type": "uint16"},
]  # fmt: skip


def _config(broker: Any, server: SimServer, **root: Any) -> dict[str, Any]:
    return {
        "version": 1,
        **root,
        "mqtt": mqtt_section(broker),
        "hosts": [{"name": "gw", "address": "127.0.0.1", "port": server.port, "timeout": 0.5}],
        "devices": [
            # Long intervals: what changes on the device is what the commands did.
            {"name": "dev", "host": "gw", "unit": 1, "interval": "60s", "points": DEV_POINTS},
            {
                "name": "multi",
                "host": "gw",
                "unit": 2,
                "interval": "61s",
                "write_multiple": True,
                "points": [
                    h("level", 0, "uint16", **W),
                    h("bits", 1, "uint16", bit=3, **W),
                    {"name": "relay", "table": "coil", "address": 0, **W},
                ],
            },
            {
                "name": "limited",
                "host": "gw",
                "unit": 3,
                "interval": "62s",
                "write_rate": "1/s",
                "points": [h("level", 0, "uint16", **W)],
            },
        ],
    }


class Commander:
    """An MQTT v5 client that sends commands and records answers on `replies/#`."""

    def __init__(self, broker: Any, watcher: Any) -> None:
        self.broker = broker
        self.client = aiomqtt.Client(
            broker.host,
            broker.port,
            identifier="commander",
            protocol=aiomqtt.ProtocolVersion.V5,
        )
        self.watcher = watcher
        self.replies: list[aiomqtt.Message] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Commander:
        await self.client.__aenter__()
        await self.client.subscribe("replies/#", qos=1)
        self._task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.client.__aexit__(None, None, None)

    async def _collect(self) -> None:
        async for message in self.client.messages:
            self.replies.append(message)

    async def send(
        self,
        topic: str,
        payload: bytes | str,
        *,
        device: str | None = None,
        response: tuple[str, bytes] | None = None,
    ) -> dict[str, Any]:
        """Publish a command and return its result from `<device>/set/result`."""
        device = device or topic.split("/")[1]
        props = None
        if response is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic, props.CorrelationData = response
        mark = self.watcher.mark()
        await self.client.publish(topic, payload, qos=1, properties=props)
        message = await self.watcher.wait_for(f"modbus/{device}/set/result", timeout=5, since=mark)
        result: dict[str, Any] = message.json()
        return result

    async def retained(self, topic_filter: str, wait: float = 0.5) -> list[str]:
        """Topics with a retained message under `topic_filter` (a fresh subscriber)."""
        found: list[str] = []
        async with aiomqtt.Client(self.broker.host, self.broker.port) as fresh:
            await fresh.subscribe(topic_filter)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    async for message in fresh.messages:
                        if message.retain:
                            found.append(str(message.topic))
        return found


@pytest.fixture
async def rig(broker, sim_servers, mqtt_watcher, run_bridge) -> AsyncIterator[Any]:
    async def start(**root: Any) -> tuple[SimServer, Any, Commander, Any]:
        server = await sim_servers((1, 2, 3))
        watcher = await mqtt_watcher(broker, "modbus/#")
        bridge = await run_bridge(_config(broker, server, **root))
        # The first poll of `dev` says the host session is up.
        await watcher.wait_for(
            lambda m: m.topic == "modbus/dev/availability" and m.payload == b"online", timeout=10
        )
        commander = Commander(broker, watcher)
        await commander.__aenter__()
        commanders.append(commander)
        return server, watcher, commander, bridge

    commanders: list[Commander] = []
    yield start
    for commander in commanders:
        await commander.__aexit__()


def writes_since(server: SimServer, t0: float) -> list[tuple[int, int | None, list[int]]]:
    return [
        (r.function, r.address, list(r.values or ()))
        for r in server.request_log
        if r.time >= t0 and r.function in WRITE_FCS
    ]


def records_since(server: SimServer, t0: float) -> list[RequestRecord]:
    return [r for r in server.request_log if r.time >= t0]


async def test_every_type_and_function_lands_exactly(rig) -> None:
    server, watcher, cmd, bridge = await rig()
    u1 = server.unit(1)
    u1.set_registers("holding", 40, [0x00F0, 0x0A0A])

    # (command topic, payload, expected writes, expected result data)
    cases: list[tuple[str, Any, list[tuple[int, int, list[int]]], dict[str, Any]]] = [
        ("dev/set", {"f32_bb": 21.5}, [(16, 0, regs("f", 21.5))], {"f32_bb": 21.5}),
        ("dev/set", {"f32_bl": -1.25}, [(16, 2, regs("f", -1.25, words="little"))], None),
        ("dev/set", {"f32_lb": 3.5}, [(16, 4, regs("f", 3.5, byte="little"))], None),
        ("dev/f32_ll/set", "1e3",
         [(16, 6, regs("f", 1000.0, words="little", byte="little"))], {"f32_ll": 1000.0}),
        ("dev/set", {"f64_bb": 1234.5678}, [(16, 10, regs("d", 1234.5678))], None),
        ("dev/set", {"f64_bl": -0.001}, [(16, 14, regs("d", -0.001, words="little"))], None),
        ("dev/set", {"f64_ll": 2.5e100},
         [(16, 18, regs("d", 2.5e100, words="little", byte="little"))], None),
        ("dev/set", {"i64": -(2**62) - 7}, [(16, 22, regs("q", -(2**62) - 7))],
         {"i64": -(2**62) - 7}),
        # eng = raw * 0.01 + 10  ->  123.45 is raw 11345 (uint32)
        ("dev/set", {"u32": 123.45}, [(16, 26, regs("I", 11345))], {"u32": 123.45}),
        # eng = raw * 0.1 - 40  ->  21.54 rounds to raw 615 (21.5)
        ("dev/temp/set", "21.54", [(6, 28, regs("h", 615))], {"temp": 21.5}),
        ("dev/set", {"temp": -20}, [(6, 28, regs("h", 200))], {"temp": -20.0}),
        ("dev/set", {"mode": "cool"}, [(6, 29, [2])], {"mode": "cool"}),
        ("dev/mode/set", "heat", [(6, 29, [1])], {"mode": "heat"}),
        ("dev/set", {"label": "AB-1"}, [(16, 30, text_regs("AB-1", 4))], {"label": "AB-1"}),
        ("dev/label/set", "xyz", [(16, 30, text_regs("xyz", 4))], {"label": "xyz"}),
        # read-modify-write: 0x00F0 with bit 2 set
        ("dev/set", {"heater": True}, [(6, 40, [0x00F4])], {"heater": True}),
        ("dev/heater/set", "OFF", [(6, 40, [0x00F0])], {"heater": False}),
        # FC22: and_mask clears bit 9, or_mask sets it
        ("dev/set", {"pump": "ON"}, [(22, 41, [0xFFFF ^ 0x0200, 0x0200])], {"pump": True}),
        ("dev/set", {"relay": "ON"}, [(5, 0, [1])], {"relay": True}),
        ("dev/relay/set", "off", [(5, 0, [0])], {"relay": False}),
        ("dev/relay/set", "TRUE", [(5, 0, [1])], {"relay": True}),
        ("dev/set", {"run": 1}, [(5, 8, [1])], {"run": False}),  # read back from discrete 3
        ("dev/set", {"target": 4242}, [(6, 100, [4242])], {"target": 0}),  # read: input 5
        ("multi/set", {"level": 7}, [(16, 0, [7])], {"level": 7}),
        ("multi/relay/set", "ON", [(15, 0, [1])], {"relay": True}),
        ("multi/set", {"bits": True}, [(16, 1, [0x0008])], {"bits": True}),
        # several points, in order, one command
        ("dev/set", {"level": 5, "mode": "off", "relay": False, "transaction": "tx-9"},
         [(6, 50, [5]), (6, 29, [0]), (5, 0, [0])], {"level": 5, "mode": "off", "relay": False}),
    ]  # fmt: skip
    for topic, payload, want_writes, want_data in cases:
        body = payload if isinstance(payload, str) else json.dumps(payload)
        t0 = time.monotonic()
        result = await cmd.send(f"modbus/{topic}", body)
        assert result["status"] == "ok", (topic, payload, result)
        assert "error" not in result
        got = writes_since(server, t0)
        assert got == want_writes, (topic, payload, got)
        if want_data is not None:
            assert result["data"] == want_data, (topic, result)
    assert result["transaction"] == "tx-9"

    # The registers themselves.
    assert u1.get_registers("holding", 0, 8) == (
        regs("f", 21.5)
        + regs("f", -1.25, words="little")
        + regs("f", 3.5, byte="little")
        + regs("f", 1000.0, words="little", byte="little")
    )
    assert u1.get_registers("holding", 22, 4) == regs("q", -(2**62) - 7)
    assert u1.get_registers("holding", 40, 2) == [0x00F0, 0x0A0A | 0x0200]
    assert u1.get_registers("holding", 100) == [4242]
    assert u1.get_bits("coils", 8) == [True]
    assert server.unit(2).get_registers("holding", 0, 2) == [7, 0x0008]

    # Read-modify-write is FC3 then FC6 of the same register, nothing in between.
    rmw = [r for r in server.request_log if r.unit == 1 and r.address == 40]
    for i, r in enumerate(rmw):
        if r.function == 6:
            assert rmw[i - 1].function == 3
    # A 32-bit value is one FC16, never two FC6.
    f32 = [r for r in server.request_log if r.function in (6, 16) and r.address in (0, 1)]
    assert [(r.function, r.count) for r in f32 if r.unit == 1] == [(16, 2)]

    # The read-back went out as state, like a poll would.
    state = watcher.latest("modbus/dev")
    assert state is not None
    doc = state.json()
    assert (doc["level"], doc["mode"], doc["relay"], doc["temp"]) == (5, "off", False, -20.0)

    # /get reads now: change registers behind the bridge (polls are 60 s apart).
    u1.set_registers("holding", 50, [321])
    mark = watcher.mark()
    t0 = time.monotonic()
    result = await cmd.send("modbus/dev/get", '["level"]')
    assert result == {"status": "ok", "data": {"level": 321}}
    assert time.monotonic() - t0 < 1.0
    state_msg = await watcher.wait_for(
        lambda m: m.topic == "modbus/dev" and m.json()["level"] == 321, timeout=2, since=mark
    )
    assert state_msg.json()["level"] == 321
    result = await cmd.send("modbus/dev/get", "")
    assert result["status"] == "ok"
    assert set(result["data"]) == {p["name"] for p in DEV_POINTS}

    # MQTT v5: the answer also goes to the response topic, with the correlation data.
    result = await cmd.send(
        "modbus/dev/level/set", "9", response=("replies/app-1", b"\x00corr\xff")
    )
    assert result["data"] == {"level": 9}
    for _ in range(100):
        if cmd.replies:
            break
        await asyncio.sleep(0.02)
    [reply] = cmd.replies
    assert str(reply.topic) == "replies/app-1"
    assert reply.properties is not None
    assert reply.properties.CorrelationData == b"\x00corr\xff"
    assert json.loads(reply.payload) == result
    assert not reply.retain

    # Results are never retained; state is.
    assert await cmd.retained("modbus/+/set/result") == []
    assert "modbus/dev" in await cmd.retained("modbus/dev")

    log = bridge.log()
    assert "modbus/dev/set: wrote dev.f32_bb = 21.5 (FC16 holding 0..1" in log
    assert " INFO " in log.split("wrote dev.f32_bb")[0].splitlines()[-1]
    assert bridge.alive()


async def test_bad_input_writes_nothing(rig) -> None:
    server, watcher, cmd, bridge = await rig()
    u1 = server.unit(1)
    u1.set_registers("holding", 0, list(range(1, 61)))
    before = u1.get_registers("holding", 0, 120)
    coils = u1.get_bits("coils", 0, 16)
    t0 = time.monotonic()

    huge = json.dumps({"label": "x" * (64 * 1024)})
    bad: list[tuple[str, bytes | str, str]] = [
        ("modbus/ghost/set", '{"level": 1, "transaction": 5}', "unknown device"),
        ("modbus/ghost/level/set", "1", "unknown device"),
        ("modbus/dev/set", '{"nope": 1}', "unknown point"),
        ("modbus/dev/nope/set", "1", "unknown point"),
        ("modbus/dev/set", '{"plain": 1}', "read-only"),
        ("modbus/dev/measured/set", "1", "read-only"),
        ("modbus/dev/set", "{level: 1}", "not valid JSON"),
        ("modbus/dev/set", b"\xff\xfe", "UTF-8"),
        ("modbus/dev/level/set", b"\xc3(", "UTF-8"),
        ("modbus/dev/set", huge, "larger than the 65536"),
        ("modbus/dev/set", '{"level": "12"}', "expected a number"),
        ("modbus/dev/level/set", "twelve", "expected a number"),
        ("modbus/dev/set", '{"level": true}', "expected a number"),
        ("modbus/dev/set", '{"mode": 1}', "expected one of"),
        ("modbus/dev/mode/set", "2", "not a number"),
        ("modbus/dev/set", '{"mode": "turbo"}', "is not one of"),
        ("modbus/dev/set", '{"level": 1001}', "above the maximum"),
        ("modbus/dev/temp/set", "-25", "below the minimum"),
        ("modbus/dev/set", '{"f32_bb": 1e39}', "out of range"),
        ("modbus/dev/set", '{"i64": 9223372036854775808}', "out of range"),
        ("modbus/dev/set", '{"f64_bb": NaN}', "NaN"),
        ("modbus/dev/set", '{"f64_bb": Infinity}', "NaN"),
        ("modbus/dev/set", '{"f64_bb": -Infinity}', "NaN"),
        ("modbus/dev/f64_bb/set", "nan", "expected a number"),
        ("modbus/dev/f64_bb/set", "inf", "expected a number"),
        ("modbus/dev/set", '{"label": "too long!"}', "longer than the 8"),
        ("modbus/dev/relay/set", "maybe", "expected true/false"),
        ("modbus/dev/set", '{"relay": 2}', "expected true/false"),
        # A valid first point and a bad second one: nothing at all is written.
        ("modbus/dev/set", '{"level": 3, "temp": 99, "transaction": [1]}', "above the maximum"),
        ("modbus/dev/set", '{"level": 3, "level": 4}', "more than once"),
        ("modbus/dev/set", "{}", "no point"),
    ]
    for topic, payload, reason in bad:
        device = topic.split("/")[1]
        result = await cmd.send(topic, payload, device=device)
        assert result["status"] == "error", (topic, result)
        assert reason in result["error"], (topic, result["error"])
        assert result["data"] == {}
    results = [m.json() for m in watcher.on("modbus/ghost/set/result")]
    assert results[0]["transaction"] == 5
    last = await cmd.send("modbus/dev/set", '{"level": 3, "temp": 99, "transaction": [1]}')
    assert last["transaction"] == [1]

    assert writes_since(server, t0) == []
    assert u1.get_registers("holding", 0, 120) == before
    assert u1.get_bits("coils", 0, 16) == coils
    assert bridge.alive()
    log = bridge.log()
    assert "modbus/dev/set: command rejected: unknown point" in log
    assert " WARNING " in log.split("command rejected: unknown point")[0].splitlines()[-1]

    # write_rate 1/s (burst 1): the second command right after is rejected, not queued.
    t1 = time.monotonic()
    first = await cmd.send("modbus/limited/level/set", "1")
    second = await cmd.send("modbus/limited/level/set", "2")
    assert first["status"] == "ok"
    assert second["status"] == "error"
    assert "write_rate" in second["error"]
    await asyncio.sleep(0.3)
    assert writes_since(server, t1) == [(6, 0, [1])]
    await asyncio.sleep(1.0)
    third = await cmd.send("modbus/limited/level/set", "3")
    assert third["status"] == "ok"
    assert server.unit(3).get_registers("holding", 0) == [3]


async def test_read_only_bridge_refuses_every_write(rig) -> None:
    server, _watcher, cmd, bridge = await rig(read_only=True)
    t0 = time.monotonic()
    for topic, payload in [
        ("modbus/dev/set", '{"level": 1, "transaction": "a"}'),
        ("modbus/dev/relay/set", "ON"),
        ("modbus/multi/set", '{"level": 2}'),
    ]:
        result = await cmd.send(topic, payload)
        assert result["status"] == "error"
        assert "read-only" in result["error"]
    assert result["data"] == {}
    # Reads still work.
    assert (await cmd.send("modbus/dev/get", '["level"]'))["status"] == "ok"
    assert writes_since(server, t0) == []
    assert bridge.alive()


async def test_write_passes_queued_polls_and_offline_is_refused(
    broker, sim_servers, mqtt_watcher, run_bridge
) -> None:
    units = range(1, 21)
    server = await sim_servers(units)
    watcher = await mqtt_watcher(broker, "modbus/#")
    config = {
        "version": 1,
        "mqtt": mqtt_section(broker),
        # 20 devices polled every 200 ms through a host that needs 50 ms between
        # requests: ~100 polls/s wanted, ~20/s possible, so polls are always queued.
        "hosts": [{"name": "slow", "address": "127.0.0.1", "port": server.port, "pause": "50ms"}],
        "devices": [
            {
                "name": "d{unit}",
                "host": "slow",
                "units": "1-20",
                "interval": "200ms",
                "points": [h("level", 0, "uint16", **W), h("temp", 1, "float32", **W)],
            }
        ],
    }
    bridge = await run_bridge(config)
    for unit in (1, 10, 20):
        await watcher.wait_for(
            lambda m, u=unit: m.topic == f"modbus/d{u}/availability" and m.payload == b"online",
            timeout=10,
        )
    await asyncio.sleep(1.0)  # let the queue fill up
    async with Commander(broker, watcher) as cmd:
        latencies = []
        for n, unit in enumerate((7, 13, 2)):
            await asyncio.sleep(0.37)
            t0 = time.monotonic()
            reads_before = [r for r in records_since(server, t0 - 1.0) if r.time < t0]
            result = await cmd.send(f"modbus/d{unit}/set", json.dumps({"temp": 20.5 + n}))
            assert result["status"] == "ok", result
            assert result["data"] == {"temp": 20.5 + n}
            [write] = [r for r in records_since(server, t0) if r.function in WRITE_FCS]
            assert (write.unit, write.function, write.count) == (unit, 16, 2)  # one FC16
            assert list(write.values or ()) == regs("f", 20.5 + n)
            between = [r for r in records_since(server, t0) if r.time < write.time]
            latencies.append(write.time - t0)
            # The host was saturated (about one request per pause) ...
            assert len(reads_before) >= 12, len(reads_before)
            # ... yet the write went out after at most the request in flight and the
            # one the worker had already taken, not after the ~19 queued polls.
            assert len(between) <= 3, [(r.unit, r.function) for r in between]
        assert max(latencies) < 0.35, latencies

        # The host goes away: devices go offline and commands are refused at once.
        await server.stop()
        await watcher.wait_for(
            lambda m: m.topic == "modbus/d5/availability" and m.payload == b"offline", timeout=5
        )
        t0 = time.monotonic()
        result = await cmd.send("modbus/d5/level/set", "1")
        assert time.monotonic() - t0 < 0.5
        assert result["status"] == "error"
        assert "offline" in result["error"] or "not connected" in result["error"]
    assert bridge.alive()
