"""The session's backoff bookkeeping, with no connection: answers on a session that
sent garbage must not reset the reconnect backoff (issue 7, item 5)."""

from __future__ import annotations

import time

from bridge.model import Host, TcpLink
from bridge.session import CLEAN_AFTER, HostSession


def _up(session: HostSession, *, since: float = 0.0) -> None:
    """Pretend the connector just opened a session (`since` seconds ago)."""
    session._up = True
    session._answered = False
    session._connected_at = time.monotonic() - since


async def test_answers_on_a_poisoned_session_do_not_reset_the_backoff() -> None:
    session = HostSession(Host(name="gw", link=TcpLink("127.0.0.1")))
    failures = []
    for _ in range(4):
        _up(session)
        session._answered_now()  # a neighbour's poll is answered ...
        session._lost("invalid header", garbage=True)  # ... then the stream is garbage
        failures.append(session._failures)
    assert failures == [1, 2, 3, 4]  # the backoff keeps growing

    # A session that stays clean for CLEAN_AFTER forgives the past.
    _up(session, since=CLEAN_AFTER)
    session._answered_now()
    assert session._failures == 0


async def test_an_ordinary_lost_session_after_answers_does_not_count() -> None:
    session = HostSession(Host(name="gw", link=TcpLink("127.0.0.1")))
    _up(session)
    session._answered_now()
    session._lost("connection closed")
    assert session._failures == 0  # it answered: the host works, reconnect at once
    _up(session)
    session._lost("connection closed")  # no answer at all: a flapping host
    assert session._failures == 1
