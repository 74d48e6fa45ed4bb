"""The live counters, counted where things happen. Plain numbers, no I/O.

Each part of the bridge that counts owns one of these records: every host session a
`SessionStats` (with a `UnitStats` per unit id), the scheduler a `PollStats` per
device, the MQTT link a `LinkStats`, the command handler a `CommandStats`, the
composition root a `ReloadStats`, the store-and-forward buffer a `BufferStats`, each
host's Modbus TCP proxy a `ProxyStats`.
`figures.py` copies them into one frozen snapshot for the health report and the
metrics; nothing reads the live records otherwise.

This module imports nothing of the bridge: every layer may count into it.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

# Upper bounds (seconds) of the request latency histogram (SessionStats counts by them): a
# local Modbus TCP device answers in a few ms, a unit behind a 9600-baud gateway in 50-300 ms.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# Why a request failed (SessionStats.failed_by): an exception reply, no answer in time, an
# answer that did not fit the request, the connection, anything else.
ERROR_KINDS = ("exception", "timeout", "bad_reply", "connection", "other")

# How the proxy answered a client's request (ProxyStats.requests): with the device's reply
# (answered), with the device's exception reply (exception), with an exception of its own
# without asking the device (refused: a unit, function or size it does not forward), or
# with 0x0A/0x0B because the request failed on the session (failed).
PROXY_RESULTS = ("answered", "exception", "refused", "failed")
# Why the proxy closed a client's connection (ProxyStats.closed): over the client limit
# (limit), a header that cannot be framed (out_of_step: garbage, an ADU beyond 260 bytes),
# a frame not completed in time (slow), no request for a long time (idle), answers left
# unread (unread).
PROXY_CLOSES = ("limit", "out_of_step", "slow", "idle", "unread")


@dataclass
class UnitStats:
    """Line faults of one unit id behind a host (health, metrics)."""

    timeouts: int = 0
    crc_errors: int = 0
    bad_replies: int = 0


@dataclass
class SessionStats:
    """One host session's requests and link faults."""

    sockets_opened: int = 0
    reconnects: int = 0
    requests: int = 0
    errors: int = 0
    timeouts: int = 0
    drains: int = 0  # RTU: waits for a quiet line after a failed request
    bad_replies: int = 0  # malformed or mismatched replies (the request failed)
    stray_frames: int = 0  # late replies: no request waits for them (TCP: by transaction id)
    crc_errors: int = 0  # RTU replies whose CRC did not match (line noise, a bad cable)
    probes: int = 0  # reads sent to units that back off, in the link's idle time
    probe_timeouts: int = 0  # probes unanswered (not errors: the unit was known silent)
    probes_cut: int = 0  # probes cut short by a request that arrived meanwhile
    units: dict[int, UnitStats] = field(default_factory=dict)  # per unit id, once it had one
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    failed_by: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KINDS, 0))
    # answered requests per LATENCY_BUCKETS bound (the last: slower than all), and their sum
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def observe(self, seconds: float) -> None:
        """An answered request took `seconds`."""
        self.latencies.append(seconds)
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def failed(self, kind: str) -> None:
        """A request failed; `kind` is one of ERROR_KINDS."""
        self.errors += 1
        self.failed_by[kind] += 1

    def percentile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def unit(self, unit: int) -> UnitStats:
        stats = self.units.get(unit)
        if stats is None:
            stats = self.units[unit] = UnitStats()
        return stats


@dataclass
class PollStats:
    """One device's polling (the scheduler)."""

    cycles: int = 0
    skipped: int = 0  # cycles missed because a poll overran its interval
    backoff_skips: int = 0  # cycles not polled while the device backs off
    probes: int = 0  # cycles on which the device, backing off, was probed
    failures: int = 0
    skipped_ranges: list[str] = field(default_factory=list)


@dataclass
class LinkStats:
    """The MQTT link."""

    connects: int = 0
    published: int = 0  # acknowledged by the broker (QoS 1/2) or written (QoS 0)
    dropped: int = 0  # queued messages given up: the one-off queue overflowed
    requeued: int = 0  # cut off by a disconnect mid-send, sent again after the reconnect
    oversize: int = 0  # skipped: larger than the broker's maximum packet size
    refused: int = 0  # the broker answered the publish with a failure reason code


@dataclass
class CommandStats:
    """MQTT commands (`set`, `get`), as the command handler answered them."""

    ok: int = 0  # commands answered ok
    writes: int = 0  # points written
    rejected: int = 0  # commands refused before anything was sent
    failed: int = 0  # commands that failed while executing
    retained: int = 0  # replayed retained commands, refused (answered once each)
    overloaded: int = 0  # refused by the flood guard


@dataclass
class ReloadStats:
    """Configuration reloads (the composition root)."""

    ok: int = 0
    invalid: int = 0
    last: float | None = None  # Unix time of the last applied reload


@dataclass
class ReportStats:
    """How the last health report held the event loop (the composition root builds it
    in slices, `app.Bridge._health_steps`)."""

    longest_slice: float = 0.0  # seconds: the longest the loop was held at once
    longest_slice_cpu: float = 0.0  # seconds: the most CPU one slice used (its own work)
    slices: int = 0  # pieces the report was built in
    held: float = 0.0  # seconds: all its slices together (what one piece would hold)
    took: float = 0.0  # seconds from the first slice to the publish, waits included


@dataclass
class BufferStats:
    """The store-and-forward buffer (`buffer.BufferStore`)."""

    records: int = 0  # in the store (committed)
    bytes: int = 0  # their estimated cost on disk
    appended: int = 0  # changes taken since start
    replayed: int = 0  # acknowledged by the broker and deleted
    dropped: int = 0  # evicted by max_bytes or max_age
    dropped_age: int = 0  # of which by max_age
    commits: int = 0  # transactions (each a write to the disk)
    commit_seconds: float = 0.0  # time spent committing


@dataclass
class ProxyStats:
    """One host's Modbus TCP proxy (`proxy.HostProxy`)."""

    listening: bool = False
    clients: int = 0  # connected now
    connections: int = 0  # accepted (those closed at once over the limit included)
    waiting: int = 0  # requests waiting for their turn on the session (one at a time)
    in_flight: int = 0  # requests on the session now (queued with the polls, or on the wire)
    writes: int = 0  # writes forwarded and answered by the device
    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PROXY_RESULTS, 0))
    closed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PROXY_CLOSES, 0))
