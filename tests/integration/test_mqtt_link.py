"""MqttLink in-process against a real Mosquitto: reconnect discipline."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bridge.messages import Will
from bridge.model import Mqtt
from bridge.mqtt import MqttLink
from bridge.topics import Topics

pytestmark = pytest.mark.integration


async def test_duplicate_client_id_backs_off_instead_of_storming(
    broker, caplog: pytest.LogCaptureFixture
) -> None:
    # Two bridges configured with the same client_id: the broker drops whichever
    # connected first each time the other connects. Without backoff across short
    # sessions they would kick each other out every half second.
    caplog.set_level(logging.WARNING)
    settings = Mqtt(host=broker.host, port=broker.port, client_id="same-id")
    links = [MqttLink(settings, Topics(f"site{i}")) for i in range(2)]
    tasks = [asyncio.create_task(link.run()) for link in links]
    try:
        await asyncio.sleep(10.0)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    connects = sum(link.connects for link in links)
    # (A link kicked while awaiting the ack of its `online` publish waits out aiomqtt's
    # 10 s timeout before it notices, so only "each connected once" is certain.)
    assert connects >= 2, f"{connects} connects: both links must have connected"
    assert connects <= 16, f"{connects} connects in 10 s: a reconnect storm"
    # Sessions dropped right after connecting, again and again: the log suggests why.
    messages = [r.getMessage() for r in caplog.records]
    assert any("is another client using client_id 'same-id'?" in m for m in messages), messages
    assert not any("never retrieved" in m or "Exception in callback" in m for m in messages), [
        m for m in messages if "MQTT connection lost" not in m
    ]


async def test_will_acks_and_session_messages(broker, mqtt_watcher) -> None:
    """The hooks the Sparkplug and buffer features use: a will asked before every connect,
    no `online` announcement, a per-message QoS and acknowledgement, and messages bound
    to one connection that are given up (not re-sent) when it ends."""
    watcher = await mqtt_watcher(broker, "#")
    wills: list[int] = []
    ended: list[float | None] = []

    def will() -> Will:
        wills.append(len(wills))
        return Will("sp/death", f"will {len(wills)}".encode(), qos=1)

    settings = Mqtt(host=broker.host, port=broker.port, client_id="hooks")
    link = MqttLink(
        settings, Topics("site"), will=will, announce=False, on_disconnected=ended.append
    )
    task = asyncio.create_task(link.run())
    try:
        assert await link.wait_connected(5)
        done: list[bool] = []
        link.publish("sp/data", b"1", retain=False, coalesce=False, qos=1, on_done=done.append)
        link.publish("sp/data", b"2", retain=False, coalesce=False, qos=0, on_done=done.append)
        msg = await watcher.wait_for(lambda m: m.topic == "sp/data" and m.payload == b"2")
        assert [m.payload for m in watcher.on("sp/data")] == [b"1", b"2"]  # in order
        assert msg.qos == 0
        for _ in range(50):
            if len(done) == 2:
                break
            await asyncio.sleep(0.05)
        assert done == [True, True]
        assert watcher.on("site/bridge/state") == []  # announce=False
        # Broker gone: a session message is given up at once, and the link says since when
        # it has undelivered messages (None: everything was delivered).
        await broker.astop()
        for _ in range(100):
            if ended:
                break
            await asyncio.sleep(0.05)
        assert ended == [None]
        lost: list[bool] = []
        link.publish(
            "sp/data", b"3", retain=False, coalesce=False, session=True, on_done=lost.append
        )
        assert lost == [False]
        kept: list[bool] = []
        link.publish("sp/other", b"4", retain=False, coalesce=False, on_done=kept.append)
        await broker.astart()
        assert await link.wait_connected(10)
        await watcher.wait_subscribed(10)
        for _ in range(100):
            if kept:
                break
            await asyncio.sleep(0.05)
        assert kept == [True]  # an ordinary message waits for the next connection
        assert len(wills) >= 2  # asked again for the second connection
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
