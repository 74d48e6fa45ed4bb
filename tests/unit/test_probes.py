"""Probing units that back off (issue 19 §4), against a session in memory: a unit
that answers again is polled at once when its link has time, and never probed when a
neighbour's poll is due before the probe could time out."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from test_scheduler_groups import Memory, _device, _scheduler, _until

from bridge.errors import RequestTimeout


def _back_off_for_long(scheduler: Any, name: str) -> None:
    """The device's backoff as a minute of silence leaves it: next poll a minute away."""
    loop = asyncio.get_running_loop()
    for state in scheduler._devices[name]:
        state.backoff.retry_at = loop.time() + 60.0


async def test_a_unit_back_after_a_long_backoff_is_polled_within_a_few_intervals() -> None:
    session = Memory()
    session.silent = True
    scheduler, polls = _scheduler(session, _device(interval=0.05))
    scheduler.start()
    try:
        await _until(lambda: len(polls) >= 1)
        assert isinstance(polls[0][2], RequestTimeout)
        _back_off_for_long(scheduler, "d")
        await asyncio.sleep(0.2)  # probed meanwhile, unanswered: still backing off
        assert scheduler.stats["d"].probes >= 2
        assert len(polls) == 1 and scheduler.stats["d"].backoff_skips >= 2
        session.silent = False
        loop = asyncio.get_running_loop()
        back = loop.time()
        await _until(lambda: polls[-1][2] is None, timeout=1.0)
        assert loop.time() - back < 0.2  # a few intervals, not the minute of backoff
        assert scheduler.backoff_left("d", loop.time()) == 0.0
    finally:
        await scheduler.stop()


async def test_no_probe_when_a_poll_is_due_before_it_could_time_out() -> None:
    interval = 0.05
    dead = dataclasses.replace(_device("dead", interval), unit=2)
    live = _device("live", interval)
    session = Memory()
    session.probe_costs = interval  # a probe would run into the neighbour's next poll
    original = session.read

    async def read(unit: int, table: Any, start: int, count: int, **kw: Any) -> list[int]:
        if unit == 2:
            raise RequestTimeout("gw", unit, "no answer")
        return await original(unit, table, start, count, **kw)

    session.read = read  # type: ignore[method-assign]
    scheduler, polls = _scheduler(session, live, dead)
    scheduler.start()
    try:
        await _until(lambda: any(name == "dead" for name, _, _ in polls))
        _back_off_for_long(scheduler, "dead")
        await asyncio.sleep(0.3)
        assert session.probes == 0 and scheduler.stats["dead"].probes == 0
        assert scheduler.stats["dead"].backoff_skips >= 4
        assert scheduler.stats["live"].skipped == 0
        # With time to spare before the neighbour's next poll, the probes go.
        session.probe_costs = interval / 10
        await _until(lambda: session.probes >= 2, timeout=1.0)
    finally:
        await scheduler.stop()


async def test_no_probe_while_the_link_is_busy() -> None:
    session = Memory()
    session.silent = True
    scheduler, polls = _scheduler(session, _device(interval=0.05))
    scheduler.start()
    try:
        await _until(lambda: len(polls) >= 1)
        _back_off_for_long(scheduler, "d")
        session.free = False
        session.silent = False
        await asyncio.sleep(0.2)
        assert session.probes == 0 and len(polls) == 1
        session.free = True
        await _until(lambda: polls[-1][2] is None, timeout=1.0)
    finally:
        await scheduler.stop()
