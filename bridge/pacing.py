"""When poll groups run: passes, phases and deadlines (pure arithmetic).

Waking the process costs more than a read: an idle bridge woken for one read spends
several times that read's CPU on the wake-up (bench/RESULTS.md, issue 19). So the
groups of one interval are not spread one by one over it but dealt into *passes*,
evenly spaced over the interval: every group of a pass has the same phase, their
deadlines are the same number, and one timer of the event loop serves them all.

How many passes: enough that no pass holds more than `PER_HOST` groups of any one
host (a poll waits behind at most that many of its neighbours, writes still go first)
nor more than `PASS_MAX` groups in all (the loop is never held by one huge pass).
A host's groups are spread evenly over the passes, each host starting at its own
offset, so a pass takes a few groups of every host and their reads run side by side
on different links. The groups of a host polled with `spread: false` all share one
pass. Each group also gets a `rank`: its place in its pass, hosts taking turns, so a
pass wakes its groups in the same order every cycle and a device's place on its
link does not jitter from one cycle to the next.

Deadlines are computed from the cycle number, never accumulated: the n-th deadline
of a group is `t0 + phase + n * interval`, so polls never drift, and groups of one
pass compute bit-identical deadlines. A poll still running at its next deadline is
not queued behind itself: `next_cycle` skips the cycles already past and counts them.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

PER_HOST = 25  # groups of one host in one pass, at most
PASS_MAX = 50  # groups in one pass, at most


@dataclass(frozen=True)
class Slot:
    """Where a group runs: seconds after the start of its interval, and its place in
    the pass (lower first)."""

    phase: float
    rank: int


def passes(n_by_host: Sequence[int], together: Collection[int] = ()) -> int:
    """How many passes the groups of one interval take: `n_by_host` counts each host's
    groups; hosts whose index is in `together` poll in one pass and do not count."""
    total = sum(n_by_host)
    spread = [n for h, n in enumerate(n_by_host) if h not in together]
    return max([1, math.ceil(total / PASS_MAX), *(math.ceil(n / PER_HOST) for n in spread)])


def slots(keys: Sequence[tuple[str, float]], together: Collection[str] = ()) -> list[Slot]:
    """The slot of every group, in order; `keys` are each group's (host, interval).

    Groups of different intervals are paced apart, each interval on its own passes.
    """
    out: list[Slot | None] = [None] * len(keys)
    by_interval: dict[float, dict[str, list[int]]] = {}
    for index, (host, interval) in enumerate(keys):
        by_interval.setdefault(interval, {}).setdefault(host, []).append(index)
    for interval, by_host in by_interval.items():
        hosts = list(by_host)  # in order of first appearance
        burst = {h for h, name in enumerate(hosts) if name in together}
        count = passes([len(by_host[name]) for name in hosts], burst)
        # (pass, place in the host's share of it, host) for every group: the sort order
        # of a pass's groups is their rank.
        placed: list[tuple[int, int, int, int]] = []
        for h, name in enumerate(hosts):
            members = by_host[name]
            offset = h * count // len(hosts)
            share: dict[int, int] = {}
            for i, index in enumerate(members):
                p = offset if h in burst else (i * count // len(members) + offset) % count
                place = share.get(p, 0)
                share[p] = place + 1
                placed.append((p, place, h, index))
        placed.sort()
        for rank, (p, _, _, index) in enumerate(placed):
            out[index] = Slot(interval * p / count, rank)
    return [s for s in out if s is not None]


def deadline(t0: float, phase: float, interval: float, cycle: int) -> float:
    """The deadline of a group's cycle `cycle` (0: the first poll)."""
    return t0 + phase + cycle * interval


def next_cycle(now: float, t0: float, phase: float, interval: float, cycle: int) -> tuple[int, int]:
    """After cycle `cycle` ran, at `now`: the cycle to run next and how many were
    skipped because their deadline had passed."""
    following = cycle + 1
    late = now - deadline(t0, phase, interval, following)
    if late <= 0:
        return following, 0
    missed = int(late // interval) + 1
    return following + missed, missed
