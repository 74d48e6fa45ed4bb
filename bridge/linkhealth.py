"""When a Modbus link is given up, and how long to wait before opening it again. Pure.

`LinkHealth` is told what happens on one host's link (opened, an open failed, a reply,
a timeout, the session lost, the stream poisoned) and answers the session's two
questions: is the link silent for so long it must be recycled (the silence rule), and
how long to wait before the next open (the backoff).

- Failures: a failed open, and a session lost without a single answer (a host that
  accepts and then drops is no reconnect storm), grow the backoff; any well-formed
  answer resets it.
- Garbage: a session lost to an unframeable stream counts as failed however many
  answers it gave, and later answers reset the backoff only once a session has lasted
  CLEAN_AFTER seconds, so a device that poisons every session backs off for good.
- Silence: after as many timeouts in a row as there are unit ids behind the host (at
  least 3) with no answer at all, the socket is recycled: one dead unit alone never
  reaches it while its neighbours answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bridge.backoff import BACKOFF_MAX, BACKOFF_MIN, full_jitter

CLEAN_AFTER = 60.0  # seconds a session must last before earlier garbage is forgiven
MIN_SILENCE = 3  # timeouts in a row before a link is recycled, however few units it has


class LinkHealth:
    def __init__(
        self,
        *,
        units: int = 1,
        backoff_min: float = BACKOFF_MIN,
        backoff_max: float = BACKOFF_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backoff = (backoff_min, backoff_max)
        self.clock = clock
        self.silence_limit = max(MIN_SILENCE, units)
        self.failures = 0  # failed opens or answerless sessions in a row: the backoff
        self.garbage = 0  # sessions in a row lost to an unframeable stream
        self.timeouts = 0  # requests in a row unanswered on this session
        self.answered = False  # any answer since the last open
        self.opened_at = 0.0

    def set_units(self, units: int) -> None:
        """The number of unit ids behind the host changed (a reload)."""
        self.silence_limit = max(MIN_SILENCE, units)

    def open_failed(self) -> None:
        self.failures += 1

    def opened(self) -> None:
        """A session has just been opened."""
        self.timeouts = 0
        self.answered = False
        self.opened_at = self.clock()

    def answer(self) -> None:
        """A well-formed answer arrived (an exception reply counts: the device spoke).
        The link works and the backoff resets, unless the host poisoned recent sessions
        (then only a session lasting CLEAN_AFTER forgives it)."""
        self.timeouts = 0
        self.answered = True
        if self.garbage and self.clock() - self.opened_at >= CLEAN_AFTER:
            self.garbage = 0
        if not self.garbage:
            self.failures = 0

    def timed_out(self) -> bool:
        """A request went unanswered; True when the link is silent enough to recycle."""
        self.timeouts += 1
        return self.timeouts >= self.silence_limit

    def lost(self, *, garbage: bool = False) -> None:
        """The session was lost; `garbage`: to bytes that could not be framed."""
        if garbage:
            self.garbage += 1
        if garbage or not self.answered:
            self.failures += 1

    def wait(self) -> float:
        """Seconds to wait before the next open (0.5 s to 60 s by default, full jitter)."""
        return full_jitter(self.failures, low=self.backoff[0], high=self.backoff[1])
