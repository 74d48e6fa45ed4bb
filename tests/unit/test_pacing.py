"""Passes, phases, ranks and deadlines of the poll groups (bridge.pacing), pure."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from bridge.pacing import PASS_MAX, PER_HOST, deadline, next_cycle, passes, slots


def _keys(hosts: dict[str, int], interval: float = 1.0) -> list[tuple[str, float]]:
    return [(host, interval) for host, n in hosts.items() for _ in range(n)]


def test_240_devices_on_3_hosts_never_fire_at_once() -> None:
    keys = _keys({"gw0": 80, "gw1": 80, "gw2": 80}, interval=0.5)
    placed = slots(keys)
    by_phase = Counter(s.phase for s in placed)
    assert len(by_phase) == 5  # 240 groups, at most 50 in a pass
    assert max(by_phase.values()) == 48
    # Evenly spaced over the interval.
    assert sorted(by_phase) == [pytest.approx(0.5 * k / 5) for k in range(5)]
    # Every pass takes its share of every host: 16 of each.
    per_host = Counter((host, s.phase) for (host, _), s in zip(keys, placed, strict=True))
    assert set(per_host.values()) == {16}


def test_no_pass_is_bigger_than_its_limits() -> None:
    keys = _keys({f"h{i}": n for i, n in enumerate([500, 3, 120, 1, 77])})
    placed = slots(keys)
    per_host: Counter[tuple[str, float]] = Counter()
    per_pass: Counter[float] = Counter()
    for (host, _), s in zip(keys, placed, strict=True):
        per_host[host, s.phase] += 1
        per_pass[s.phase] += 1
        assert 0.0 <= s.phase < 1.0
    assert max(per_host.values()) <= PER_HOST
    assert max(per_pass.values()) <= PASS_MAX
    assert len(per_pass) == passes([500, 3, 120, 1, 77]) == 500 // PER_HOST


def test_a_small_fleet_takes_few_wake_ups() -> None:
    # 50 devices behind one gateway: 2 wake-ups per interval, not 50.
    placed = slots(_keys({"gw": 50}))
    assert sorted(Counter(s.phase for s in placed).items()) == [(0.0, 25), (0.5, 25)]
    # Each device keeps its pass: a host's devices are dealt in order.
    assert [s.phase for s in placed[:25]] == [0.0] * 25


def test_many_single_device_hosts_share_passes_up_to_the_limit() -> None:
    placed = slots(_keys({f"meter{i}": 1 for i in range(250)}))
    by_phase = Counter(s.phase for s in placed)
    assert len(by_phase) == 5 and max(by_phase.values()) <= PASS_MAX


def test_hosts_take_turns_within_a_pass() -> None:
    keys = _keys({"a": 3, "b": 3})
    placed = slots(keys)
    assert len({s.phase for s in placed}) == 1
    order = [keys[i][0] for i in sorted(range(len(keys)), key=lambda i: placed[i].rank)]
    assert order == ["a", "b", "a", "b", "a", "b"]
    assert len({s.rank for s in placed}) == len(placed)


def test_a_host_polled_together_is_one_pass_and_does_not_count() -> None:
    keys = _keys({"burst": 40, "calm": 30})
    placed = slots(keys, together={"burst"})
    burst = {s.phase for (host, _), s in zip(keys, placed, strict=True) if host == "burst"}
    calm = Counter(s.phase for (host, _), s in zip(keys, placed, strict=True) if host == "calm")
    assert len(burst) == 1
    assert sorted(calm.values()) == [15, 15]  # the calm host's 30 need two passes
    # Together, the burst host would not be split up however big.
    placed = slots(_keys({"burst": 300}), together={"burst"})
    assert {s.phase for s in placed} == {0.0}


def test_each_interval_is_paced_apart() -> None:
    keys = _keys({"gw": 60}, interval=1.0) + _keys({"gw": 40}, interval=10.0)
    placed = slots(keys)
    phases: defaultdict[float, set[float]] = defaultdict(set)
    for (_, interval), s in zip(keys, placed, strict=True):
        phases[interval].add(s.phase)
    assert sorted(phases[1.0]) == [pytest.approx(k / 3) for k in range(3)]
    assert sorted(phases[10.0]) == [pytest.approx(k * 5.0) for k in range(2)]


def test_deadlines_do_not_drift_and_a_pass_shares_them_exactly() -> None:
    t0, phase, interval = 12345.678, 0.3, 0.1
    # The millionth deadline is where it belongs (no accumulated rounding) ...
    assert deadline(t0, phase, interval, 10**6) == t0 + phase + 10**6 * interval
    # ... and two groups of one pass compute the very same number every cycle.
    assert all(
        deadline(t0, phase, interval, n) == deadline(t0, phase, interval, n) for n in range(100)
    )


def test_next_cycle_skips_what_is_past_and_counts_it() -> None:
    t0, phase, interval = 100.0, 0.25, 1.0
    # On time: the next cycle, nothing skipped.
    assert next_cycle(100.5, t0, phase, interval, 0) == (1, 0)
    assert next_cycle(101.25, t0, phase, interval, 0) == (1, 0)  # exactly at the deadline
    # The poll of cycle 0 ran until after cycle 1's deadline (101.25): skip it.
    assert next_cycle(101.3, t0, phase, interval, 0) == (2, 1)
    # 2.5 intervals late: cycles 1, 2 and 3 are past.
    assert next_cycle(103.75, t0, phase, interval, 0) == (4, 3)
    cycle, missed = next_cycle(103.75, t0, phase, interval, 0)
    assert deadline(t0, phase, interval, cycle) > 103.75 and missed == 3
