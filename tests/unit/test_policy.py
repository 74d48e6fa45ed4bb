"""The publishing policy of the state cache: deadband and heartbeat, on a fake clock.

`StateCache.update` takes the time of each read, so the clock here is just numbers.
"""

from __future__ import annotations

import json

import pytest

from bridge.messages import Message
from bridge.model import DataType, Device, Output, Point, Table
from bridge.state import StateCache
from bridge.topics import Topics


def _device(*, heartbeat: float | None = None, deadband: float | None = 0.5) -> Device:
    points = (
        Point("voltage", Table.INPUT, 0, DataType.FLOAT32, interval=1.0, deadband=deadband),
        Point("count", Table.HOLDING, 0, DataType.UINT16, interval=1.0),
        Point("relay", Table.COIL, 0, DataType.BOOL, interval=1.0),
    )
    return Device("m", "gw", 1, 1.0, points, heartbeat=heartbeat)


def _cache(device: Device, output: Output = Output.JSON) -> StateCache:
    return StateCache([device], Topics("modbus"), output=output, retain=True)


def _doc(messages: list[Message]) -> dict[str, object]:
    [message] = [m for m in messages if m.topic == "modbus/m"]
    doc: dict[str, object] = json.loads(message.payload)
    return doc


def _topics(messages: list[Message]) -> list[str]:
    return [m.topic for m in messages]


class TestDeadband:
    def test_small_changes_are_held_back_until_they_add_up(self) -> None:
        cache = _cache(_device())
        assert _doc(cache.update("m", {"voltage": 230.0}, 1.0))["voltage"] == 230.0
        assert cache.update("m", {"voltage": 230.3}, 2.0) == []
        assert cache.update("m", {"voltage": 229.8}, 3.0) == []  # |229.8 - 230.0| < 0.5
        # measured against the last PUBLISHED value, not the last read: drift adds up
        assert _doc(cache.update("m", {"voltage": 230.5}, 4.0))["voltage"] == 230.5
        assert cache.update("m", {"voltage": 230.1}, 5.0) == []
        assert _doc(cache.update("m", {"voltage": 230.0}, 6.0))["voltage"] == 230.0

    def test_exactly_the_deadband_is_published(self) -> None:
        cache = _cache(_device(deadband=2.0))
        cache.update("m", {"voltage": 10.0}, 1.0)
        assert cache.update("m", {"voltage": 11.5}, 2.0) == []
        assert cache.update("m", {"voltage": 12.0}, 3.0) != []
        assert cache.update("m", {"voltage": 10.0}, 4.0) != []  # downwards too

    def test_points_without_deadband_publish_every_change(self) -> None:
        cache = _cache(_device())
        cache.update("m", {"voltage": 230.0, "count": 1}, 1.0)
        doc = _doc(cache.update("m", {"voltage": 230.2, "count": 2}, 2.0))
        # the message goes out for `count`; it carries the newest voltage along
        assert (doc["count"], doc["voltage"]) == (2, 230.2)

    @pytest.mark.parametrize("new", [None, float("nan")])
    def test_null_and_nan_always_count(self, new: float | None) -> None:
        cache = _cache(_device())
        cache.update("m", {"voltage": 230.0}, 1.0)
        assert _doc(cache.update("m", {"voltage": new}, 2.0))["voltage"] is None
        assert cache.update("m", {"voltage": 230.0}, 3.0) != []

    def test_attribute_output_publishes_only_the_point_past_its_deadband(self) -> None:
        cache = _cache(_device(), Output.ATTRIBUTE)
        cache.update("m", {"voltage": 230.0, "count": 1}, 1.0)
        assert cache.update("m", {"voltage": 230.4, "count": 1}, 2.0) == []
        msgs = cache.update("m", {"voltage": 231.0, "count": 1}, 3.0)
        assert [(m.topic, m.payload) for m in msgs] == [("modbus/m/voltage", b"231.0")]

    def test_full_state_after_reconnect_has_the_newest_values(self) -> None:
        cache = _cache(_device())
        cache.update("m", {"voltage": 230.0}, 1.0)
        cache.update("m", {"voltage": 230.2}, 2.0)
        assert _doc(cache.full())["voltage"] == 230.2


class TestHeartbeat:
    def test_unchanged_state_is_republished_every_heartbeat(self) -> None:
        cache = _cache(_device(heartbeat=60.0))
        values = {"voltage": 230.0, "count": 5, "relay": True}
        first = cache.update("m", values, 1000.0)
        assert _doc(first)["last_seen"] == "1970-01-01T00:16:40.000Z"
        beats = [t for t in range(1001, 1200) if cache.update("m", values, float(t))]
        # 1000 + 60, then every 60 s after the last full publish
        assert beats == [1060, 1120, 1180]

    def test_a_change_resets_the_heartbeat(self) -> None:
        cache = _cache(_device(heartbeat=60.0))
        cache.update("m", {"voltage": 230.0, "count": 5}, 0.0)
        assert cache.update("m", {"voltage": 230.0, "count": 6}, 30.0) != []
        assert cache.update("m", {"voltage": 230.0, "count": 6}, 61.0) == []
        assert cache.update("m", {"voltage": 230.0, "count": 6}, 90.0) != []

    def test_heartbeat_sends_values_held_back_by_the_deadband(self) -> None:
        cache = _cache(_device(heartbeat=10.0))
        cache.update("m", {"voltage": 230.0}, 0.0)
        assert cache.update("m", {"voltage": 230.1}, 5.0) == []
        assert _doc(cache.update("m", {"voltage": 230.2}, 10.0))["voltage"] == 230.2
        # and the deadband now counts from 230.2
        assert cache.update("m", {"voltage": 230.6}, 11.0) == []
        assert cache.update("m", {"voltage": 230.7}, 12.0) != []

    def test_attribute_output_heartbeat_republishes_every_point(self) -> None:
        cache = _cache(_device(heartbeat=10.0), Output.ATTRIBUTE)
        values = {"voltage": 230.0, "count": 5, "relay": False}
        cache.update("m", values, 0.0)
        assert cache.update("m", values, 5.0) == []
        assert sorted(_topics(cache.update("m", values, 10.0))) == [
            "modbus/m/count",
            "modbus/m/relay",
            "modbus/m/voltage",
        ]

    def test_attribute_output_a_single_change_does_not_reset_the_heartbeat(self) -> None:
        cache = _cache(_device(heartbeat=10.0), Output.ATTRIBUTE)
        cache.update("m", {"voltage": 230.0, "count": 5}, 0.0)
        assert _topics(cache.update("m", {"voltage": 230.0, "count": 6}, 8.0)) == ["modbus/m/count"]
        assert len(cache.update("m", {"voltage": 230.0, "count": 6}, 10.0)) == 2

    def test_no_heartbeat_no_republish(self) -> None:
        cache = _cache(_device(heartbeat=None))
        cache.update("m", {"count": 5}, 0.0)
        assert all(cache.update("m", {"count": 5}, float(t)) == [] for t in range(1, 10_000, 7))

    def test_clock_set_back_sends_the_heartbeat(self) -> None:
        cache = _cache(_device(heartbeat=60.0))
        cache.update("m", {"count": 5}, 1000.0)
        assert cache.update("m", {"count": 5}, 900.0) != []
        assert cache.update("m", {"count": 5}, 901.0) == []
