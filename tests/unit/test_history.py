"""The store-and-forward feature's pure edges: the history payload, and which live
changes a dropped connection hands to the store (the ones queued since the oldest
message it had not delivered)."""

from __future__ import annotations

import json
import math

from test_spnode import Hub  # a hub in memory

from bridge.config import parse_config
from bridge.history import History, history_payload

CONFIG = """\
version: 1
mqtt: {client_id: site-7, base_topic: plant}
buffer: {path: /nonexistent/b.db}
hosts:
  - {name: gw, address: 10.0.0.1}
devices:
  - name: boiler
    host: gw
    unit: 1
    points:
      - {name: temp, table: input, address: 0, type: float32}
"""


def test_history_payload_has_time_values_and_availability() -> None:
    doc = json.loads(history_payload(0.25, {"values": {"temp": math.nan, "x": 1}}))
    assert doc == {"time": "1970-01-01T00:00:00.250Z", "values": {"temp": None, "x": 1}}
    doc = json.loads(history_payload(1.0, {"available": False}))
    assert doc == {"time": "1970-01-01T00:00:01.000Z", "available": False}


def test_a_dropped_connection_hands_over_what_it_may_not_have_delivered() -> None:
    hub = Hub(parse_config(CONFIG))
    history = History(hub)
    history.store = object()  # type: ignore[assignment]  # only its presence is asked
    st = hub.state.devices["boiler"]
    hub.state.set_available("boiler", True)
    for t, value in ((100.0, 1.0), (101.0, 2.0), (102.0, 3.0)):
        history.clock = lambda t=t: t  # type: ignore[method-assign]
        hub.state.update("boiler", {"temp": value}, t)
        history.device_changed(st, [])
    assert history._collected == []  # connected: published live
    history.disconnected(101.0)
    assert [(n, at, b) for n, at, b in history._collected] == [
        ("boiler", 101.0, {"values": {"temp": 2.0}}),
        ("boiler", 102.0, {"values": {"temp": 3.0}}),
    ]
    hub.mqtt_connected = False
    hub.state.update("boiler", {"temp": 4.0}, 103.0)
    history.device_changed(st, [])
    assert history._collected[-1] == ("boiler", 103.0, {"values": {"temp": 4.0}})
