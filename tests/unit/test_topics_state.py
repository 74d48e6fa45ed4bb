"""Topic scheme, payloads and the state cache: what a subscriber sees."""

from __future__ import annotations

import json

import pytest

from bridge.backoff import full_jitter
from bridge.model import DataType, Device, Output, Point, Table
from bridge.payloads import iso_utc, plain_value, state_json
from bridge.state import StateCache
from bridge.topics import RESERVED_DEVICE_NAMES, Topics, level_problem, text_problem


def _device(name: str = "meter-1") -> Device:
    points = (
        Point("voltage", Table.INPUT, 0, DataType.FLOAT32, interval=1.0),
        Point("mode", Table.HOLDING, 20, DataType.UINT16, interval=1.0),
        Point("relay", Table.COIL, 0, DataType.BOOL, interval=1.0),
    )
    return Device(name=name, host="gw-a", unit=1, interval=1.0, points=points)


class TestTopics:
    def test_device_topics(self) -> None:
        t = Topics("modbus")
        assert t.state("meter-1") == "modbus/meter-1"
        assert t.availability("meter-1") == "modbus/meter-1/availability"
        assert t.attribute("meter-1", "voltage") == "modbus/meter-1/voltage"
        assert t.set("meter-1") == "modbus/meter-1/set"
        assert t.point_set("meter-1", "mode") == "modbus/meter-1/mode/set"
        assert t.get("meter-1") == "modbus/meter-1/get"
        assert t.set_result("meter-1") == "modbus/meter-1/set/result"
        assert t.bridge_state == "modbus/bridge/state"

    def test_nested_base(self) -> None:
        assert Topics("site/plant-1/modbus").state("m") == "site/plant-1/modbus/m"

    @pytest.mark.parametrize("base", ["", "/modbus", "modbus/", "a/+/b", "#"])
    def test_bad_base(self, base: str) -> None:
        with pytest.raises(ValueError, match="base topic"):
            Topics(base)

    def test_first_level(self) -> None:
        t = Topics("site/modbus")
        assert t.first_level("site/modbus/meter-1/voltage") == "meter-1"
        assert t.first_level("site/modbus/bridge") == "bridge"
        assert t.first_level("site/other/x") is None

    def test_parse_command(self) -> None:
        t = Topics("modbus")
        assert t.parse_command("modbus/meter-1/set") == ("meter-1", None, "set")
        assert t.parse_command("modbus/meter-1/get") == ("meter-1", None, "get")
        assert t.parse_command("modbus/meter-1/mode/set") == ("meter-1", "mode", "set")
        assert t.parse_command("modbus/meter-1/set/result") is None
        assert t.parse_command("other/meter-1/set") is None
        assert t.parse_command("modbus/meter-1") is None

    @pytest.mark.parametrize(
        ("name", "ok"), [("a", True), ("", False), ("a/b", False), ("a+", False), ("#", False)]
    )
    def test_level_problem(self, name: str, ok: bool) -> None:
        assert (level_problem(name) is None) is ok

    def test_reserved_names(self) -> None:
        assert level_problem("bridge", RESERVED_DEVICE_NAMES) is not None
        assert level_problem("bridge") is None

    @pytest.mark.parametrize(
        ("name", "why"),
        [
            ("tab\there", "control character U+0009"),
            ("del\x7f", "control character U+007F"),
            ("nel\x85", "control character U+0085"),
            ("nul\x00", "control character U+0000"),
            ("non\ufffe", "noncharacter U+FFFE"),
            ("non\ufdd0", "noncharacter U+FDD0"),
            ("bidi\u202e", "invisible format character"),
            ("zero\u200bwidth", "invisible format character"),
            ("line\u2028", "line separator"),
            (" lead", "start or end with a space"),
            ("x" * 129, "129 characters long"),
        ],
    )
    def test_names_that_break_or_surprise(self, name: str, why: str) -> None:
        problem = level_problem(name)
        assert problem is not None and why in problem

    @pytest.mark.parametrize("name", ["Kessel 2", "zähler-1", "메타", "a.b_c-d", "x" * 128])
    def test_names_people_use(self, name: str) -> None:
        assert level_problem(name) is None

    def test_text_problem_is_what_mqtt_strings_refuse(self) -> None:
        assert text_problem("a b\u200b") is None  # legal in MQTT, only surprising in names
        assert text_problem("\ud800") is not None
        assert text_problem("é" * 40_000) is not None  # 80,000 bytes

    @pytest.mark.parametrize(
        ("topic", "why"),
        [
            ("$SYS/x", "starts with '$'"),
            ("$share/g/t", "starts with '$'"),
            ("replies/+", "wildcard"),
            ("replies/#", "wildcard"),
            ("", "empty"),
            ("replies/\x07", "control character"),
            ("modbus/boiler/set", "command topic"),
            ("modbus/boiler/mode/set", "command topic"),
            ("modbus/boiler/get", "command topic"),
            ("modbus/boiler", "publishes state"),
            ("modbus/boiler/set/result", "publishes state"),
            ("modbus/bridge/state", "publishes state"),
        ],
    )
    def test_response_topics_refused(self, topic: str, why: str) -> None:
        problem = Topics("modbus").response_topic_problem(topic, {"boiler"})
        assert problem is not None and why in problem

    @pytest.mark.parametrize("topic", ["replies/app-1", "modbus/replies/x", "app/$x"])
    def test_response_topics_answered(self, topic: str) -> None:
        assert Topics("modbus").response_topic_problem(topic, {"boiler"}) is None


class TestPayloads:
    def test_state_json_has_last_seen_iso_utc(self) -> None:
        doc = json.loads(state_json({"a": 1.5, "b": "off", "c": True, "d": None}, 0.0))
        assert doc == {
            "a": 1.5,
            "b": "off",
            "c": True,
            "d": None,
            "last_seen": "1970-01-01T00:00:00.000Z",
        }

    def test_non_finite_floats_become_null(self) -> None:
        doc = json.loads(state_json({"a": float("nan"), "b": float("inf")}, None))
        assert doc == {"a": None, "b": None, "last_seen": None}

    @pytest.mark.parametrize(
        ("value", "wire"),
        [
            (True, b"true"),
            (False, b"false"),
            (12, b"12"),
            (1.25, b"1.25"),
            ("auto", b"auto"),
            (None, b""),
        ],
    )
    def test_plain_value(self, value: object, wire: bytes) -> None:
        assert plain_value(value) == wire  # type: ignore[arg-type]

    def test_iso_utc_milliseconds(self) -> None:
        assert iso_utc(1.2345) == "1970-01-01T00:00:01.234Z"


class TestStateCache:
    def test_json_publishes_only_on_change(self) -> None:
        cache = StateCache([_device()], Topics("modbus"), output=Output.JSON, retain=True)
        first = cache.update("meter-1", {"voltage": 230.0, "mode": "auto", "relay": True}, 10.0)
        assert [m.topic for m in first] == ["modbus/meter-1"]
        assert json.loads(first[0].payload)["mode"] == "auto"
        assert first[0].retain
        assert (
            cache.update("meter-1", {"voltage": 230.0, "mode": "auto", "relay": True}, 11.0) == []
        )
        again = cache.update("meter-1", {"voltage": 231.0, "mode": "auto", "relay": True}, 12.0)
        assert json.loads(again[0].payload)["voltage"] == 231.0

    def test_attribute_publishes_only_changed_points(self) -> None:
        cache = StateCache([_device()], Topics("modbus"), output=Output.ATTRIBUTE, retain=False)
        cache.update("meter-1", {"voltage": 230.0, "mode": "auto", "relay": True}, 10.0)
        msgs = cache.update("meter-1", {"voltage": 230.0, "mode": "manual", "relay": True}, 11.0)
        assert [(m.topic, m.payload, m.retain) for m in msgs] == [
            ("modbus/meter-1/mode", b"manual", False)
        ]

    def test_type_change_counts_as_change(self) -> None:
        cache = StateCache([_device()], Topics("modbus"), output=Output.ATTRIBUTE, retain=True)
        cache.update("meter-1", {"mode": 1}, 1.0)
        assert cache.update("meter-1", {"mode": True}, 2.0) != []

    def test_both_outputs(self) -> None:
        cache = StateCache([_device()], Topics("modbus"), output=Output.BOTH, retain=True)
        msgs = cache.update("meter-1", {"voltage": 1.0}, 1.0)
        assert {m.topic for m in msgs} == {"modbus/meter-1", "modbus/meter-1/voltage"}

    def test_availability_only_on_change(self) -> None:
        cache = StateCache([_device()], Topics("modbus"), output=Output.JSON, retain=True)
        assert [m.payload for m in cache.set_available("meter-1", True)] == [b"online"]
        assert cache.set_available("meter-1", True) == []
        assert [m.payload for m in cache.set_available("meter-1", False)] == [b"offline"]

    def test_full_republishes_everything_known(self) -> None:
        cache = StateCache(
            [_device("a"), _device("b")], Topics("m"), output=Output.JSON, retain=True
        )
        cache.update("a", {"voltage": 1.0}, 1.0)
        cache.set_available("a", True)
        assert {m.topic for m in cache.full()} == {"m/a", "m/a/availability"}
        assert {m.topic for m in cache.offline_all()} == {"m/a/availability", "m/b/availability"}


class TestBackoff:
    def test_full_jitter_bounds_and_growth(self) -> None:
        for failures in range(1, 20):
            ceiling = min(60.0, 0.5 * 2 ** (failures - 1))
            draws = [full_jitter(failures) for _ in range(200)]
            assert all(0.5 <= d <= max(0.5, ceiling) for d in draws)
        late = [full_jitter(30) for _ in range(500)]
        # Still spread out after a long outage: full jitter never converges on the cap.
        assert max(late) - min(late) > 30


def test_bridge_state_labels_for_the_layout_check() -> None:
    t = Topics("plant/a")
    assert t.layout_filters == ("plant/a/bridge/state", "plant/a/bridge/+/state")
    assert t.bridge_label("plant/a/bridge/state") == ""
    assert t.bridge_label("plant/a/bridge/2of4/state") == "2of4"
    assert t.bridge_label(Topics("plant/a", "1of3").bridge_state) == "1of3"
    for other in (
        "plant/a/bridge/health",
        "plant/a/bridge/2of4/health",
        "plant/b/bridge/state",
        "plant/a/boiler",
        "plant/a/bridge//state",
        "plant/a/bridge/x/y/state",
    ):
        assert t.bridge_label(other) is None, other
