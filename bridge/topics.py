"""The topic scheme: the one place that knows where things are published.

Nothing else builds topic strings. The base topic is added here and only here.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bridge.model import BridgeConfig

# Names that would clash with the bridge's own topics at that level.
RESERVED_POINT_NAMES = frozenset({"set", "get", "availability", "history"})
RESERVED_DEVICE_NAMES = RESERVED_POINT_NAMES | {"bridge"}

MAX_TOPIC_BYTES = 65535  # an MQTT string: a longer topic cannot be sent at all
MAX_NAME_LENGTH = 128  # characters of a device, point or host name: longer is surely a mistake
MAX_BASE_TOPIC = 1024  # characters: every topic of the bridge stays far below MQTT's 65535 bytes

# Unicode categories that are legal in some topics but invisible or line-breaking in
# logs, dashboards and entity ids (format characters such as bidi overrides, and the
# line/paragraph separators): refused in names as "surprising".
_SURPRISING = {"Cf": "an invisible format character", "Zl": "a line separator",
               "Zp": "a paragraph separator"}  # fmt: skip


def _noncharacter(code: int) -> bool:
    return 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE


def text_problem(text: str) -> str | None:
    """Why `text` cannot travel in an MQTT string (topic, client id, user name), or None.

    MQTT forbids U+0000 and surrogates; brokers such as Mosquitto also refuse control
    characters (U+0001..U+001F, U+007F..U+009F) and Unicode noncharacters, and drop
    the connection of a client that sends one. A phrase to follow the value.
    """
    for ch in text:
        code = ord(ch)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            return f"must not contain the control character U+{code:04X}"
        if 0xD800 <= code <= 0xDFFF:
            return f"must not contain the surrogate U+{code:04X}"
        if _noncharacter(code):
            return f"must not contain the Unicode noncharacter U+{code:04X}"
    if len(text.encode("utf-8")) > MAX_TOPIC_BYTES:
        return f"is longer than the {MAX_TOPIC_BYTES} bytes an MQTT string can hold"
    return None


def name_problem(name: str) -> str | None:
    """Why `name` is not a name a person can read in a topic, a log line or a dashboard:
    `text_problem`, plus invisible or line-breaking characters, surrounding spaces and
    excessive length. None when it is fine."""
    if len(name) > MAX_NAME_LENGTH:
        return f"is {len(name)} characters long (at most {MAX_NAME_LENGTH})"
    why = text_problem(name)
    if why is not None:
        return why
    for ch in name:
        kind = _SURPRISING.get(unicodedata.category(ch))
        if kind is not None:
            return f"must not contain {kind} (U+{ord(ch):04X})"
    if name != name.strip():
        return "must not start or end with a space"
    return None


def level_problem(name: str, reserved: Collection[str] = ()) -> str | None:
    """Why `name` cannot be one MQTT topic level of ours (a phrase to follow the
    name in a message), or None when it can."""
    if not name:
        return "must not be empty"
    for bad in ("/", "+", "#"):
        if bad in name:
            return f"must not contain {bad!r} (it is used as an MQTT topic level)"
    why = name_problem(name)
    if why is not None:
        return why
    if name in reserved:
        return "is reserved (it would clash with a topic of the bridge)"
    return None


def base_topic_problem(base: str) -> str | None:
    """Why `base` cannot be the base topic (a phrase to follow the quoted topic in a
    message; an empty base gets a whole sentence), or None when it can."""
    if not base:
        return "must not be empty"
    if base.startswith("/") or base.endswith("/"):
        return "must not start or end with '/'"
    if "//" in base:
        return "must not contain an empty level"
    for bad in ("+", "#"):
        if bad in base:
            return f"must not contain {bad!r}"
    if base.startswith("$"):
        return "must not start with '$' (topics reserved for the broker)"
    if len(base) > MAX_BASE_TOPIC:
        return f"is {len(base)} characters long (at most {MAX_BASE_TOPIC})"
    return text_problem(base)


@dataclass(frozen=True)
class Topics:
    """Topics under one base, e.g. ``Topics("modbus").state("meter-1")``.

    `shard` (e.g. ``2of4``) gives one shard of a fleet its own bridge topics
    (``<base>/bridge/2of4/state``); device topics are the same in every shard."""

    base: str
    shard: str | None = None

    def __post_init__(self) -> None:
        why = base_topic_problem(self.base)
        if why is not None:
            raise ValueError(f"base topic {self.base!r} {why}")

    def _join(self, *levels: str) -> str:
        return "/".join((self.base, *levels))

    # bridge-wide (this process's: one per shard)
    def _bridge(self, name: str) -> str:
        if self.shard is None:
            return self._join("bridge", name)
        return self._join("bridge", self.shard, name)

    @property
    def bridge_state(self) -> str:
        return self._bridge("state")

    @property
    def bridge_health(self) -> str:
        return self._bridge("health")

    @property
    def bridge_info(self) -> str:
        return self._bridge("info")

    @property
    def bridge_devices(self) -> str:
        return self._bridge("devices")

    @property
    def layout_filters(self) -> tuple[str, str]:
        """Every bridge state under the base: the unsharded bridge's and each shard's
        (a process checks at its first connect that no other layout runs there)."""
        return (self._join("bridge", "state"), self._join("bridge", "+", "state"))

    def bridge_label(self, topic: str) -> str | None:
        """Whose bridge state `topic` is: "" for the unsharded bridge, the shard's label
        (e.g. ``2of4``) for a shard's, None when it is no bridge state under the base."""
        first = self.first_level(topic)
        if first != "bridge":
            return None
        levels = topic[len(self.base) + 1 :].split("/")
        if levels == ["bridge", "state"]:
            return ""
        if len(levels) == 3 and levels[2] == "state" and levels[1]:
            return levels[1]
        return None

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

    def history(self, device: str) -> str:
        """Changes buffered while the broker was away, replayed (not retained)."""
        return self._join(device, "history")

    def set_result(self, device: str) -> str:
        return self._join(device, "set", "result")

    # subscriptions for commands
    @property
    def command_filters(self) -> tuple[str, ...]:
        """Filters of every command topic. A command must be live: subscribers ask the
        broker not to replay retained ones (see `payloads.Subscription`)."""
        return (self._join("+", "set"), self._join("+", "+", "set"), self._join("+", "get"))

    def first_level(self, topic: str) -> str | None:
        """The level right under the base (a device name, or "bridge"), or None
        when `topic` is not under the base."""
        prefix = self.base + "/"
        if not topic.startswith(prefix):
            return None
        return topic[len(prefix) :].split("/", 1)[0]

    def response_topic_problem(self, topic: str, devices: Collection[str]) -> str | None:
        """Why an MQTT v5 response topic is not answered on, or None.

        Refused: what a broker would reject or disconnect us for (wildcards, `$`
        topics such as `$SYS/...`, characters MQTT strings must not hold), and the
        bridge's own topics (its command topics, and the state of `devices` and of
        the bridge itself), so a command can never make the bridge overwrite them.
        """
        if not topic:
            return "it is empty"
        if topic.startswith("$"):
            return "it starts with '$' (topics reserved for the broker)"
        if "+" in topic or "#" in topic:
            return "it contains a wildcard"
        why = text_problem(topic)
        if why is not None:
            return f"it {why}"
        if self.parse_command(topic) is not None:
            return "it is a command topic of this bridge"
        first = self.first_level(topic)
        if first is not None and (first in devices or first == "bridge"):
            return "the bridge publishes state there"
        return None

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


def topics_of(config: BridgeConfig) -> Topics:
    """The topics of a configuration (of one shard, when it is one)."""
    shard = config.shard
    return Topics(config.mqtt.base_topic, None if shard is None else shard.label)
