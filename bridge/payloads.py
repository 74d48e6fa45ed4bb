"""Payload formats: what a value or a device state looks like on the wire."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

Value = bool | int | float | str | None


@dataclass(frozen=True)
class Incoming:
    """A received MQTT message, free of client-library types.

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


ONLINE = "online"
OFFLINE = "offline"


def iso_utc(timestamp: float) -> str:
    """ISO-8601 UTC with millisecond precision, e.g. ``2026-11-27T03:01:02.345Z``."""
    seconds = math.floor(timestamp)
    millis = min(999, int((timestamp - seconds) * 1000))
    return f"{_iso_second(seconds)}.{millis:03d}Z"


@functools.lru_cache(maxsize=64)
def _iso_second(seconds: int) -> str:
    # Every state message and health entry formats a time, and most share their second.
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _clean(value: Value) -> Value:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def state_json(values: Mapping[str, Value], last_seen: float | None) -> bytes:
    """The JSON state object of a device: every point plus ``last_seen``."""
    doc: dict[str, Value] = {name: _clean(v) for name, v in values.items()}
    doc["last_seen"] = iso_utc(last_seen) if last_seen is not None else None
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def plain_value(value: Value) -> bytes:
    """One value as a plain payload: text as is, booleans true/false, null as empty."""
    value = _clean(value)
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"true" if value else b"false"
    return str(value).encode()


def json_doc(doc: Mapping[str, object]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=str).encode()
