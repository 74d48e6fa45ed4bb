"""MqttLink in-process against a real Mosquitto: reconnect discipline."""

from __future__ import annotations

import asyncio
import logging

import pytest

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
