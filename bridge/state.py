"""What has been published, and what must be published next. Pure: no I/O.

The cache holds the latest value of every point, each device's availability and
`last_seen`. `update()` returns only the messages that a change requires, and
`full()` every message (at start and after each MQTT reconnect), so the MQTT
link can drop anything during an outage without losing state.

Publishing policy (per device, `Device.heartbeat`, and per point, `Point.deadband`):

* a point's change triggers a publish only when it differs from the value last
  published for it by at least its `deadband` (numbers only; any other change,
  a type change or a null counts at once). A message sent for another reason
  (another point changed, a heartbeat) carries the newest values;
* with a `heartbeat`, the device's whole state goes out again when that long has
  passed since it last did, changed or not, so `last_seen` keeps moving.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bridge.messages import Message
from bridge.model import Device, Output
from bridge.payloads import OFFLINE, ONLINE, Value, plain_value, state_json
from bridge.topics import Topics


@dataclass
class DeviceState:
    device: Device
    values: dict[str, Value] = field(default_factory=dict)  # the newest read of each point
    last_seen: float | None = None
    available: bool | None = None  # None until the first read finished
    published: dict[str, Value] = field(default_factory=dict)  # last published as a change
    published_all_at: float | None = None  # when every point last went out (heartbeat)
    deadbands: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.deadbands = {p.name: p.deadband for p in self.device.points if p.deadband}


class StateCache:
    def __init__(
        self, devices: Iterable[Device], topics: Topics, *, output: Output, retain: bool
    ) -> None:
        self.topics = topics
        self.output = output
        self.retain = retain
        self.devices: dict[str, DeviceState] = {d.name: DeviceState(d) for d in devices}

    def update(self, device: str, values: Mapping[str, Value], now: float) -> list[Message]:
        """Merge freshly read values (read at `now`, wall-clock seconds); return the state
        messages the changes, or a due heartbeat, need."""
        st = self.devices[device]
        st.last_seen = now
        st.values.update(values)
        if _heartbeat_due(st, now):
            changed = list(st.values)
        else:
            changed = [name for name, v in values.items() if _significant(st, name, v)]
        if not changed:
            return []
        for name in changed:
            st.published[name] = st.values[name]
        if self.output is Output.JSON or len(changed) == len(st.values):
            st.published_all_at = now
        return self._state_messages(st, changed)

    def set_available(self, device: str, available: bool) -> list[Message]:
        """Record availability; a message only when it changed."""
        st = self.devices[device]
        if st.available is available:
            return []
        st.available = available
        return [self._availability(st)]

    def full(self) -> list[Message]:
        """Every retained message the bridge stands behind right now."""
        out: list[Message] = []
        for st in self.devices.values():
            if st.available is not None:
                out.append(self._availability(st))
            if st.values:
                out.extend(self._state_messages(st, list(st.values)))
        return out

    def offline_all(self) -> list[Message]:
        """Availability `offline` for every device (shutdown)."""
        return self.offline(self.devices)

    def offline(self, devices: Iterable[str]) -> list[Message]:
        """Availability `offline` for `devices` (shutdown; devices a reload removes)."""
        return [Message(self.topics.availability(name), OFFLINE.encode(), True) for name in devices]

    def _availability(self, st: DeviceState) -> Message:
        payload = ONLINE if st.available else OFFLINE
        return Message(self.topics.availability(st.device.name), payload.encode(), True)

    def _state_messages(self, st: DeviceState, changed: list[str]) -> list[Message]:
        out: list[Message] = []
        name = st.device.name
        if self.output in (Output.JSON, Output.BOTH):
            ordered = {p.name: st.values[p.name] for p in st.device.points if p.name in st.values}
            out.append(
                Message(self.topics.state(name), state_json(ordered, st.last_seen), self.retain)
            )
        if self.output in (Output.ATTRIBUTE, Output.BOTH):
            for point in changed:
                out.append(
                    Message(
                        self.topics.attribute(name, point),
                        plain_value(st.values[point]),
                        self.retain,
                    )
                )
        return out


_MISSING = object()


def _significant(st: DeviceState, name: str, new: Value) -> bool:
    """Whether `new` is a change worth publishing against what was published last."""
    old = st.published.get(name, _MISSING)
    if old is _MISSING or type(old) is not type(new):
        return True
    deadband = st.deadbands.get(name)
    if (
        deadband is not None
        and isinstance(old, int | float)
        and isinstance(new, int | float)
        and math.isfinite(old)
        and math.isfinite(new)
    ):
        return abs(new - old) >= deadband
    return bool(old != new)


def _heartbeat_due(st: DeviceState, now: float) -> bool:
    """The device's full state is due again (a clock set back counts as due)."""
    beat, last = st.device.heartbeat, st.published_all_at
    if beat is None or last is None:
        return False
    return now - last >= beat or now < last
