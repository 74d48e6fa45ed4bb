"""MQTT messages as the bridge sees them, free of client-library types. Pure.

`Message` is one to publish (built by the state cache, discovery, a reload, a feature),
`Incoming` one received, `Subscription` a topic filter subscribed to, `Gate` what a
link checks at its first connect before anything else. The MQTT link
(`mqtt.py`) turns them into aiomqtt's and paho's types and back; nothing else knows
those.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    """One message to publish."""

    topic: str
    payload: bytes
    retain: bool


@dataclass(frozen=True)
class Incoming:
    """A received MQTT message.

    `retained` is the retain flag on delivery: the broker replayed a message stored
    earlier (on subscribe), rather than forwarding one published just now.
    """

    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation_data: bytes | None = None
    retained: bool = False


@dataclass(frozen=True)
class Subscription:
    """A topic filter the bridge subscribes to.

    `retained=False` asks the broker not to replay retained messages on subscribe
    (MQTT 5 retain handling 2; an MQTT 3.1.1 broker replays them regardless, so
    receivers still check `Incoming.retained`).
    """

    filter: str
    retained: bool = True


@dataclass(frozen=True)
class Gate:
    """What the MQTT link checks at its first connect, before it subscribes to anything
    else or publishes more than the bridge's own state: the retained messages on
    `filters`, which `judge` turns into a reason not to run (or None)."""

    filters: tuple[str, ...]
    judge: Callable[[list[Incoming]], str | None]


@dataclass(frozen=True)
class Will:
    """The last will a connection registers (by default: `offline`, retained, on the
    bridge's state topic)."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    on_close: bool = False  # MQTT 5: also asked for when closing (Sparkplug 3.0's NDEATH)
