"""Log lines that cannot flood: the first occurrence, then a count.

A flood of bad commands, a device refusing every write or a broker denying a topic
would otherwise write one line per event, thousands a second, and push everything
useful out of the journal. `Throttle` logs the first event of a kind, counts the
repeats for `window` seconds, and then says how many there were.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

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
