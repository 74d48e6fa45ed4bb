"""Throttled logs, the health report (from a snapshot, under a packet limit), MQTT packet sizes."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest

from bridge.figures import (
    Figures,
    config_figures,
    device_polls,
    host_figures,
    mqtt_figures,
)
from bridge.health import TRIMMED, build_health, fit_health
from bridge.logs import MAX_KINDS, JsonFormatter, Redactor, Throttle, redact
from bridge.model import DataType, Device, Point, Table
from bridge.packets import publish_packet_size
from bridge.state import DeviceState
from bridge.stats import CommandStats, LinkStats, PollStats, ReloadStats, SessionStats


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throttle_logs_the_first_then_a_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    throttle = Throttle(logging.getLogger("t"), window=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="t"):
        for i in range(5000):
            throttle.log(logging.WARNING, "rejected", "rejected commands", "rejected %d", i)
        throttle.log(logging.WARNING, "other", "other things", "other")
        assert [r.getMessage() for r in caplog.records] == ["rejected 0", "other"]
        clock.now = 10.0
        throttle.flush()
        assert caplog.records[-1].getMessage().startswith("... and 4999 more rejected commands")
        assert caplog.records[-1].levelno == logging.WARNING
        throttle.log(logging.WARNING, "rejected", "rejected commands", "rejected again")
        assert caplog.records[-1].getMessage() == "rejected again"  # a new window
        assert len(caplog.records) == 4  # "other" had no repeats: no summary


def test_throttle_remembers_a_bounded_number_of_kinds() -> None:
    clock = Clock()
    throttle = Throttle(logging.getLogger("t"), clock=clock)
    for i in range(MAX_KINDS * 3):
        throttle.log(logging.INFO, i, "x", "x")
    assert len(throttle._kinds) <= MAX_KINDS


def _health(devices: int, offline: set[int]) -> dict[str, Any]:
    return {
        "time": "2026-11-30T00:00:00.000Z",
        "uptime_s": 12.0,
        "rss_bytes": 1,
        "mqtt": {"connected": 1},
        "hosts": {f"gw{h}": {"connected": True, "requests": 10} for h in range(3)},
        "devices": {
            f"meter-{i:03d}": {
                "available": i not in offline,
                "last_seen": "2026-11-30T00:00:00.000Z",
                "errors": 0,
                "cycles": 100,
                "missed_cycles": 0,
                "skipped_ranges": [],
            }
            for i in range(devices)
        },
    }


def test_health_that_fits_is_untouched() -> None:
    doc = _health(3, set())
    assert json.loads(fit_health(doc, 100_000) or b"") == doc


@pytest.mark.parametrize("limit", [4000, 1500, 600, 300])
def test_health_is_trimmed_to_the_limit_keeping_offline_names(limit: int) -> None:
    doc = _health(100, offline={5, 17, 42})
    payload = fit_health(doc, limit)
    assert payload is not None and len(payload) <= limit
    trimmed = json.loads(payload)
    assert trimmed["devices"]["total"] == 100
    assert trimmed["devices"]["offline"] == 3
    assert "trimmed" in trimmed
    if limit >= 600:
        assert trimmed["devices"]["offline_names"] == ["meter-005", "meter-017", "meter-042"]
        assert trimmed["trimmed"] == TRIMMED


def test_health_that_cannot_fit_is_none() -> None:
    assert fit_health(_health(100, set()), 60) is None


def test_publish_packet_size_counts_every_header_byte() -> None:
    # QoS 0, MQTT 3.1.1: 1 fixed header + 1 length byte + 2 topic length + topic + payload.
    assert publish_packet_size("a/b", 10, qos=0, v5=False) == 1 + 1 + 2 + 3 + 10
    # QoS 1 adds the packet id; MQTT 5 the property length (0 here).
    assert publish_packet_size("a/b", 10, qos=1, v5=True) == 1 + 1 + 2 + 3 + 2 + 1 + 10
    # Correlation data: 1 id + 2 length + data. A remaining length over 127 takes 2 bytes.
    size = publish_packet_size("t", 200, qos=1, v5=True, correlation_data=b"abc")
    assert size == 1 + 2 + (2 + 1 + 2 + 1 + 6 + 200)


def test_health_renders_one_snapshot_of_the_live_counters() -> None:
    stats = SessionStats(sockets_opened=1, requests=40, errors=3, timeouts=2, crc_errors=1)
    stats.unit(3).timeouts = 2
    for seconds in (0.010, 0.020, 0.500):
        stats.observe(seconds)
    point = Point(name="a", table=Table.HOLDING, address=0, type=DataType.UINT16, interval=1.0)
    states = {f"d{u}": DeviceState(Device(f"d{u}", "gw", u, 1.0, (point,))) for u in (1, 3)}
    states["d1"].available, states["d1"].last_seen = True, 1_700_000_000.5
    polls = {"d1": PollStats(cycles=5, skipped=1, skipped_ranges=["holding 10..11"])}
    figures = Figures(
        time=1_700_000_100.0,
        started=1_700_000_000.0,
        rss=1234,
        hosts=(host_figures("gw", connected=True, stats=stats, queue_depth=0, units=[1, 3]),),
        devices=device_polls(states, polls),  # d3 has no poll statistics yet: zeros
        mqtt=mqtt_figures(
            connected=True,
            link=LinkStats(connects=1, published=33),
            commands=CommandStats(writes=4),
            pending=0,
            max_packet_size=1000,
        ),
        config=config_figures(ReloadStats()),
    )
    doc = build_health(figures)
    assert doc["uptime_s"] == 100.0 and doc["rss_bytes"] == 1234
    assert doc["config"] == {
        "shard": None,
        "reloads": 0,
        "reloads_invalid": 0,
        "last_reload": None,
    }
    host = doc["hosts"]["gw"]
    assert list(host)[:5] == ["connected", "sockets_opened", "reconnects", "requests", "errors"]
    assert host["requests"] == 40 and host["crc_errors"] == 1
    # Unit 1 had no fault: left out, so a bus of 200 healthy units stays short.
    assert host["units"] == {"3": {"timeouts": 2, "crc_errors": 0, "bad_replies": 0}}
    assert (host["latency_p50_ms"], host["latency_p99_ms"]) == (20.0, 500.0)
    assert doc["devices"]["d1"] == {
        "available": True,
        "last_seen": "2023-11-14T22:13:20.500Z",
        "errors": 0,
        "cycles": 5,
        "missed_cycles": 1,
        "backoff_cycles": 0,
        "probes": 0,
        "backoff_s": 0.0,
        "skipped_ranges": ["holding 10..11"],
    }
    assert doc["devices"]["d3"]["available"] is None and doc["devices"]["d3"]["cycles"] == 0
    assert doc["mqtt"]["connected"] == 1 and doc["mqtt"]["commands_written"] == 4


def test_redactor_hides_secrets_in_message_arguments_and_traceback() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(Redactor(["s3cr:t#pw", "s3cr"]))
    logger = logging.getLogger("t.redact")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("connect as %s failed", "s3cr:t#pw")
        try:
            raise ValueError("bad password s3cr:t#pw")
        except ValueError:
            logger.exception("boom")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # one JSON object per line, tracebacks included
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "connect as *** failed"  # the longer secret hidden whole
    assert first["level"] == "warning" and first["logger"] == "t.redact"
    assert first["time"].endswith("Z")
    assert "ValueError: bad password ***" in second["exception"]
    assert "s3cr" not in stream.getvalue()


def test_json_lines_name_the_shard() -> None:
    record = logging.LogRecord("bridge", logging.INFO, __file__, 1, "started", None, None)
    doc = json.loads(JsonFormatter({"shard": "2/4"}).format(record))
    assert doc["shard"] == "2/4" and doc["message"] == "started"
    assert "shard" not in json.loads(JsonFormatter().format(record))


def test_redact() -> None:
    assert redact("user bob, password hunter2", ["hunter2", "bob"]) == "user ***, password ***"
    assert redact("nothing here", ["hunter2"]) == "nothing here"
