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
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

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
