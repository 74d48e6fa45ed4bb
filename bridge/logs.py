"""Log lines: how they are written, what they never show, and how they cannot flood.

- `JsonFormatter`: one JSON object per line, for log shippers (`--log-format json`);
  the text format stays the default, one line per event for journald.
- `Redactor` (a logging filter) and `redact`: secrets (`BridgeConfig.secrets`: the
  MQTT password, and the user name when it comes from the environment) are replaced
  with `***` wherever they appear in a line, its arguments or its traceback, whoever
  logged it (a library's exception text included).
- `Throttle`: a flood of bad commands, a device refusing every write or a broker
  denying a topic would otherwise write one line per event, thousands a second, and
  push everything useful out of the journal. It logs the first event of a kind,
  counts the repeats for `window` seconds, and then says how many there were.
- `OnlineLog`: which changes of a device's availability are worth a line: once per
  change, and a host that is down is one line for the host, not one per device.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from bridge.errors import HostUnavailable, ModbusRequestError
from bridge.model import Device

HIDDEN = "***"


def redact(text: str, secrets: Collection[str]) -> str:
    """`text` with every secret replaced by `***` (the longest first: a secret that
    contains another is hidden whole)."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret and secret in text:
            text = text.replace(secret, HIDDEN)
    return text


class Redactor(logging.Filter):
    """Hides secrets in every record that reaches the handler it is attached to."""

    def __init__(self, secrets: Collection[str] = ()) -> None:
        super().__init__()
        self.secrets: tuple[str, ...] = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        hidden = redact(message, self.secrets)
        if hidden != message:
            record.msg, record.args = hidden, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ms), level, logger, any fixed `fields` (the
    shard), message, and the traceback as `exception` when there is one."""

    def __init__(self, fields: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.fields = dict(fields or {})  # the same in every line, e.g. {"shard": "2/4"}

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, tz=UTC)
        doc: dict[str, object] = {
            "time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            **self.fields,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
        return json.dumps(doc, ensure_ascii=False)


MAX_KINDS = 1000  # distinct kinds remembered at once; the oldest are summarised first


@dataclass
class _Kind:
    until: float  # end of the quiet window
    level: int
    what: str  # how a repeat is named in the summary, e.g. "commands rejected for boiler"
    repeats: int = 0


class Throttle:
    """Rate-limits log lines per kind (a hashable key chosen by the caller)."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.window = window
        self.clock = clock
        self._kinds: dict[Hashable, _Kind] = {}

    def log(self, level: int, key: Hashable, what: str, msg: str, *args: object) -> bool:
        """Log `msg % args` unless an event of kind `key` was logged less than `window`
        seconds ago; then only count it. Returns whether the line was written."""
        now = self.clock()
        kind = self._kinds.get(key)
        if kind is not None and now < kind.until:
            kind.repeats += 1
            return False
        if kind is not None:
            self._summarise(kind)
            del self._kinds[key]
        elif len(self._kinds) >= MAX_KINDS:
            oldest = next(iter(self._kinds))
            self._summarise(self._kinds.pop(oldest))
        self.logger.log(level, msg, *args)
        self._kinds[key] = _Kind(now + self.window, level, what)
        return True

    def flush(self) -> None:
        """Summarise the kinds whose window has ended (call now and then, and at exit)."""
        now = self.clock()
        for key, kind in list(self._kinds.items()):
            if now >= kind.until:
                self._summarise(kind)
                del self._kinds[key]

    def _summarise(self, kind: _Kind) -> None:
        if kind.repeats:
            self.logger.log(
                kind.level,
                "... and %d more %s (within %gs of the line above; not logged one by one)",
                kind.repeats,
                kind.what,
                self.window,
            )
            kind.repeats = 0


Emit = Callable[..., None]  # (level, message, *args): `Logger.log`


class OnlineLog:
    """The log lines of devices going offline and coming back, once per state change.

    A device offline because its host is down is not logged one by one (the session
    logs the host once, and `emit` gets one line for the host when its devices are
    back); a device-level reason is, at WARNING when it is new. Lines go to `emit`
    (`Logger.log` of the bridge's logger; a list in tests).
    """

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self.failing: dict[str, ModbusRequestError] = {}  # offline devices and why
        # Devices offline only because their host is down, and those back since, per host.
        self.host_down: dict[str, set[str]] = {}
        self.host_back: dict[str, int] = {}

    def offline(self, device: Device, error: ModbusRequestError) -> None:
        previous = self.failing.get(device.name)
        self.failing[device.name] = error
        if isinstance(error, HostUnavailable):
            self.host_down.setdefault(device.host, set()).add(device.name)
            level = logging.DEBUG
        else:
            self._leave_host_down(device)
            if previous is not None and previous.reason == error.reason:
                return
            new = previous is None or isinstance(previous, HostUnavailable)
            level = logging.WARNING if new else logging.DEBUG
        if previous is None or previous.reason != error.reason:
            self.emit(
                level,
                "device %s (host %s, unit %d) offline: %s",
                device.name,
                device.host,
                device.unit,
                error.reason,
            )

    def online(self, device: Device) -> None:
        if self.failing.pop(device.name, None) is None:
            return
        down = self.host_down.get(device.host)
        if down is not None and device.name in down:
            self.host_back[device.host] = self.host_back.get(device.host, 0) + 1
            self._leave_host_down(device)
            return
        self.emit(
            logging.INFO,
            "device %s (host %s, unit %d) is back online",
            device.name,
            device.host,
            device.unit,
        )

    def forget(self, name: str) -> None:
        """A device a reload removed: no more bookkeeping for it."""
        self.failing.pop(name, None)
        for host in list(self.host_down):
            self.host_down[host].discard(name)
            if not self.host_down[host]:
                del self.host_down[host]
                self.host_back.pop(host, None)

    def _leave_host_down(self, device: Device) -> None:
        """`device` no longer waits for its host; when none does, one line for the host."""
        down = self.host_down.get(device.host)
        if down is None or device.name not in down:
            return
        down.discard(device.name)
        if down:
            return
        del self.host_down[device.host]
        back = self.host_back.pop(device.host, 0)
        if back:
            self.emit(logging.INFO, "host %s: %d device(s) back online", device.host, back)
