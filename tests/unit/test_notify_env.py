"""systemd notifications: the watchdog interval read from the environment, and nothing
sent outside systemd. (Sending is proven end to end in tests/integration/test_notify.py,
against a socket of the test's own.)"""

from __future__ import annotations

import os

from bridge.notify import Notifier, watchdog_interval


def test_watchdog_interval_from_the_environment() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}) == 20.0
    assert (
        watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}) == 20.0
    )
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}) is None  # not ours
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def test_outside_systemd_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready("up") is False and notifier.ping() is False
    assert not Notifier({"NOTIFY_SOCKET": "relative/path"}).enabled
    assert Notifier({"NOTIFY_SOCKET": "@abstract"}).address == "\0abstract"
