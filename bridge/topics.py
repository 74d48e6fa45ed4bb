"""The topic scheme: the one place that knows where things are published.

Nothing else builds topic strings. The base topic is added here and only here.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

# Names that would clash with the bridge's own topics at that level.
RESERVED_POINT_NAMES = frozenset({"set", "get", "availability"})
RESERVED_DEVICE_NAMES = RESERVED_POINT_NAMES | {"bridge"}


def level_problem(name: str, reserved: Collection[str] = ()) -> str | None:
    """Why `name` cannot be one MQTT topic level of ours (a phrase to follow the
    name in a message), or None when it can."""
    if not name:
        return "must not be empty"
    for bad in ("/", "+", "#", "\x00"):
        if bad in name:
            return f"must not contain {bad!r} (it is used as an MQTT topic level)"
    if name in reserved:
        return "is reserved (it would clash with a topic of the bridge)"
    return None


@dataclass(frozen=True)
class Topics:
    """Topics under one base, e.g. ``Topics("modbus").state("meter-1")``."""

    base: str

    def __post_init__(self) -> None:
        if not self.base or self.base.startswith("/") or self.base.endswith("/"):
            raise ValueError(f"base topic {self.base!r}: empty, or leading/trailing '/'")
        if "+" in self.base or "#" in self.base:
            raise ValueError(f"base topic {self.base!r} must not contain wildcards")

    def _join(self, *levels: str) -> str:
        return "/".join((self.base, *levels))

    # bridge-wide
    @property
    def bridge_state(self) -> str:
        return self._join("bridge", "state")

    @property
    def bridge_health(self) -> str:
        return self._join("bridge", "health")

    # per device
    def state(self, device: str) -> str:
        return self._join(device)

    def availability(self, device: str) -> str:
        return self._join(device, "availability")

    def attribute(self, device: str, point: str) -> str:
        return self._join(device, point)

    def set(self, device: str) -> str:
        return self._join(device, "set")

    def point_set(self, device: str, point: str) -> str:
        return self._join(device, point, "set")

    def get(self, device: str) -> str:
        return self._join(device, "get")

    def set_result(self, device: str) -> str:
        return self._join(device, "set", "result")

    # subscriptions for commands
    @property
    def command_filters(self) -> tuple[str, ...]:
        return (self._join("+", "set"), self._join("+", "+", "set"), self._join("+", "get"))

    def first_level(self, topic: str) -> str | None:
        """The level right under the base (a device name, or "bridge"), or None
        when `topic` is not under the base."""
        prefix = self.base + "/"
        if not topic.startswith(prefix):
            return None
        return topic[len(prefix) :].split("/", 1)[0]

    def parse_command(self, topic: str) -> tuple[str, str | None, str] | None:
        """Split a command topic into (device, point or None, verb), or None if it is not one."""
        prefix = self.base + "/"
        if not topic.startswith(prefix):
            return None
        levels = topic[len(prefix) :].split("/")
        if len(levels) == 2 and levels[1] in ("set", "get"):
            return levels[0], None, levels[1]
        if len(levels) == 3 and levels[2] == "set" and levels[1] != "set":
            return levels[0], levels[1], "set"
        return None
