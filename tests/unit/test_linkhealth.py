"""The link-health policy of a Modbus session, with no connection: when the backoff grows
and resets, when a silent link is recycled (issue 7, item 5; issue 9)."""

from __future__ import annotations

import pytest

from bridge.linkhealth import CLEAN_AFTER, LinkHealth


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_answers_on_a_poisoned_session_do_not_reset_the_backoff() -> None:
    clock = Clock()
    health = LinkHealth(clock=clock)
    failures = []
    for _ in range(4):
        health.opened()
        health.answer()  # a neighbour's poll is answered ...
        health.lost(garbage=True)  # ... then the stream is garbage
        failures.append(health.failures)
    assert failures == [1, 2, 3, 4]  # the backoff keeps growing

    # A session that stays clean for CLEAN_AFTER forgives the past.
    health.opened()
    clock.now += CLEAN_AFTER - 1
    health.answer()
    assert health.failures == 4
    clock.now += 1
    health.answer()
    assert (health.failures, health.garbage) == (0, 0)


def test_an_ordinary_lost_session_after_answers_does_not_count() -> None:
    health = LinkHealth(clock=Clock())
    health.opened()
    health.answer()
    health.lost()
    assert health.failures == 0  # it answered: the host works, reconnect at once
    health.opened()
    health.lost()  # no answer at all: a flapping host
    assert health.failures == 1
    health.open_failed()
    assert health.failures == 2
    health.opened()
    health.answer()
    assert health.failures == 0


@pytest.mark.parametrize(("units", "limit"), [(1, 3), (3, 3), (20, 20)])
def test_the_silence_rule_counts_the_units_behind_the_host(units: int, limit: int) -> None:
    health = LinkHealth(units=units, clock=Clock())
    health.opened()
    assert [health.timed_out() for _ in range(limit)] == [False] * (limit - 1) + [True]


def test_an_answer_or_a_new_session_restarts_the_silence_count() -> None:
    health = LinkHealth(units=3, clock=Clock())
    health.opened()
    health.timed_out()
    health.timed_out()
    health.answer()  # a neighbour answered: one dead unit never recycles the link
    assert not health.timed_out() and not health.timed_out()
    health.opened()
    assert not health.timed_out()
    health.set_units(1)  # a reload removed units: at least 3 still
    assert not health.timed_out() and health.timed_out()


def test_the_backoff_grows_with_the_failures_and_stays_in_bounds() -> None:
    health = LinkHealth(backoff_min=0.5, backoff_max=60.0, clock=Clock())
    for _ in range(1, 30):
        health.open_failed()
        assert 0.5 <= health.wait() <= 60.0
    assert health.failures == 29
