"""What has been published, and what must be published next. Pure: no I/O.

The cache holds the latest value of every point, each device's availability and
`last_seen`. `update()` returns only the messages that a change requires, and
`full()` every message (at start and after each MQTT reconnect), so the MQTT
link can drop anything during an outage without losing state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bridge.model import Device, Output
from bridge.payloads import OFFLINE, ONLINE, Value, plain_value, state_json
from bridge.topics import Topics


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool


@dataclass
class DeviceState:
    device: Device
    values: dict[str, Value] = field(default_factory=dict)
    last_seen: float | None = None
    available: bool | None = None  # None until the first read finished


class StateCache:
    def __init__(
        self, devices: Iterable[Device], topics: Topics, *, output: Output, retain: bool
    ) -> None:
        self.topics = topics
        self.output = output
        self.retain = retain
        self.devices: dict[str, DeviceState] = {d.name: DeviceState(d) for d in devices}

    def update(self, device: str, values: Mapping[str, Value], now: float) -> list[Message]:
        """Merge freshly read values; return the state messages the changes need."""
        st = self.devices[device]
        st.last_seen = now
        changed = [
            name
            for name, v in values.items()
            if name not in st.values or st.values[name] != v or type(st.values[name]) is not type(v)
        ]
        for name in changed:
            st.values[name] = values[name]
        if not changed:
            return []
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
        return [
            Message(self.topics.availability(name), OFFLINE.encode(), True) for name in self.devices
        ]

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
