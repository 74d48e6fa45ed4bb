"""Payload formats: what a value, a device state or a command's answer looks like on the wire."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime

from bridge.errors import Transaction

Value = bool | int | float | str | None


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


def result_payload(
    status: str,
    data: Mapping[str, Value],
    *,
    error: str | None = None,
    transaction: Transaction | None = None,
    warning: str | None = None,
) -> bytes:
    """The JSON answer to a command, on ``<device>/set/result``.

    ``{"status": "ok"|"error", "data": {...}, "error": "...", "transaction": ...}``:
    `error` only when given (errors), `transaction` only when the command had one.
    `warning` (ok results only) tells that the write went through but could
    not be confirmed.
    """
    if status not in ("ok", "error"):
        raise ValueError(f"status must be 'ok' or 'error', not {status!r}")
    doc: dict[str, object] = {
        "status": status,
        "data": {name: _clean(v) for name, v in data.items()},
    }
    if error is not None:
        doc["error"] = error
    if warning is not None:
        doc["warning"] = warning
    if transaction is not None:
        doc["transaction"] = transaction.value
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
