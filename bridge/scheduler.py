"""Per-device polling on monotonic deadlines.

Each (device, interval) group of read blocks gets one task. `bridge.pacing` deals
the groups of an interval into passes spread evenly over it and computes the
deadlines (from the cycle number: polls never drift). The groups of one pass wait
on one timer (`_Passes`): one wake-up of the process per pass instead of one per
device, and 240 devices on 3 hosts still never fire at once. The timer wakes the
first group of each host, in rank order; each hands its host's turn to the next when
it is done with the link (`_Turns`), so a device's reads run back to back and its
change is published after its own reads, not after those of its neighbours in the
pass, and they find the link idle (the session's fast path, no queue). A write
still goes first: it waits for the read on the line only. A poll still running at
its next deadline is not queued behind itself: the missed cycles are skipped and
counted.

Registers that did not change since the last read of a block are not decoded
again: the poll reports only the points of blocks whose data changed, so steady
values cost no decoding, comparing, serialising or publishing. (A read outside
the polls, e.g. a write's read-back, calls `forget` so the next poll decodes.)

Faults handled here, per device, so one bad unit never stalls its neighbours:

- a device that stops answering is retried with its own full-jitter backoff
  (its interval growing to 60 s) instead of costing a timeout every cycle;
  meanwhile it is probed at its deadlines in its link's idle time (`_probe`), so
  one that comes back is polled again at once when the bus has time for it;
- "device busy" (exception 5/6) is retried a few times after a short delay;
- a merged block rejected with exception 2/3 is split point by point once; the
  offending range is remembered and skipped (its points published as null),
  and the remaining points keep being read in merged blocks.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from bridge.backoff import full_jitter
from bridge.codec import CodecError
from bridge.errors import ExceptionReply, HostUnavailable, ModbusRequestError
from bridge.model import Device, Point
from bridge.pacing import deadline, next_cycle, slots
from bridge.payloads import Value
from bridge.planner import ReadBlock, decode_block, holes, replan_block
from bridge.session import HostSession, Priority
from bridge.stats import PollStats

log = logging.getLogger("bridge.poll")

# Called after every poll with the values read (possibly partial) and the error
# that stopped it, or None when every block was read.
OnPoll = Callable[[Device, dict[str, Value], ModbusRequestError | None], None]

BUSY_CODES = frozenset({5, 6})  # acknowledge / server device busy
BUSY_RETRIES = 3
BUSY_DELAY = 0.1  # seconds, doubled per retry
ADDRESS_CODES = frozenset({2, 3})  # illegal data address / value: the block is wrong
DEVICE_BACKOFF_MAX = 60.0
RELEARN_AFTER = 600.0  # seconds before a learned-bad range is tried again


@dataclass(frozen=True)
class PollGroup:
    device: Device
    interval: float
    blocks: tuple[ReadBlock, ...]
    phase: float  # seconds after start of the first poll
    rank: int = 0  # place in its pass: lower wakes first


def group_blocks(
    devices: Sequence[Device],
    plan: Mapping[str, Sequence[ReadBlock]],
    together: Collection[str] = (),
) -> list[PollGroup]:
    """Split every device's blocks by interval and give each group its slot: the phase
    of its pass and its rank in it (`bridge.pacing`). The devices of a host named in
    `together` (`spread: false`) share one pass per interval."""
    raw: list[tuple[Device, float, tuple[ReadBlock, ...]]] = []
    for device in devices:
        by_interval: dict[float, list[ReadBlock]] = {}
        for block in plan[device.name]:
            by_interval.setdefault(block.interval, []).append(block)
        for interval in sorted(by_interval):
            raw.append((device, interval, tuple(by_interval[interval])))
    placed = slots([(device.host, interval) for device, interval, _ in raw], together)
    return [
        PollGroup(device, interval, blocks, slot.phase, slot.rank)
        for (device, interval, blocks), slot in zip(raw, placed, strict=True)
    ]


class _Turns:
    """The groups of one host in one pass, in rank order: each is woken when the one
    before it is done with the link (`next`), so a device's reads run back to back and
    its change is published after its own reads, not after its neighbours' too. Its
    reads find the link idle and run in its own task (the session's fast path)."""

    __slots__ = ("_ended", "_over", "_waiting")

    def __init__(self) -> None:
        self._waiting: deque[asyncio.Future[_Turns]] = deque()
        self._ended: asyncio.Future[None] | None = None
        self._over = False  # the last group handed the turn on

    def next(self) -> None:
        """Wake the next group (one cancelled meanwhile is passed over)."""
        waiting = self._waiting
        while waiting:
            future = waiting.popleft()
            if not future.done():
                future.set_result(self)
                return
        self._over = True
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    async def ended(self) -> None:
        """Until every group of the pass on this host has had its turn."""
        if self._over:
            return
        if self._ended is None:
            self._ended = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._ended)


class _Passes:
    """One timer per deadline: the groups of a pass compute the same deadline and wait
    on the same timer; when it fires, the first group of each host is woken, in rank
    order, and each hands its host's turn on (`_Turns`)."""

    def __init__(self) -> None:
        self._due: dict[float, tuple[asyncio.TimerHandle, list[_Waiter]]] = {}

    async def wait(self, when: float, rank: int, host: str) -> _Turns:
        loop = asyncio.get_running_loop()
        entry = self._due.get(when)
        if entry is None:
            entry = self._due[when] = (loop.call_at(when, self._fire, when), [])
        future: asyncio.Future[_Turns] = loop.create_future()
        entry[1].append((rank, host, future))
        return await future

    def _fire(self, when: float) -> None:
        _, waiters = self._due.pop(when)
        waiters.sort(key=_rank)
        hosts: dict[str, _Turns] = {}
        for _, host, future in waiters:
            turns = hosts.get(host)
            if turns is None:
                turns = hosts[host] = _Turns()
            turns._waiting.append(future)
        for turns in hosts.values():
            turns.next()

    def close(self) -> None:
        for handle, _ in self._due.values():
            handle.cancel()
        self._due.clear()


_Waiter = tuple[int, str, "asyncio.Future[_Turns]"]


def _rank(waiter: _Waiter) -> int:
    return waiter[0]


@dataclass
class _Backoff:
    failures: int = 0
    retry_at: float = 0.0
    generation: int = 0  # the host session's generation when the group last failed


@dataclass(eq=False)
class _Group:
    """The live state of one poll group; forgetting a group is dropping this object."""

    group: PollGroup
    # The live plan: starts as compiled, changes only when a range is learned bad.
    blocks: list[ReadBlock]
    # The last data read for each block of the live plan (None: decode next time).
    raw: list[Sequence[int] | Sequence[bool] | None]
    # Backoff and last error: a device whose fast group reads fine while its slow group
    # fails stays offline instead of flapping.
    backoff: _Backoff = field(default_factory=_Backoff)
    error: ModbusRequestError | None = None
    relearn_at: float | None = None  # when the compiled blocks are tried again
    learned: set[str] = field(default_factory=set)  # ranges ever learned bad (log once)
    skipping: list[str] = field(default_factory=list)  # ranges skipped now (health)
    # The newest value of each scale factor point read by this group (`decode_block`).
    scales: dict[str, Value] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    # The deadline of its next poll not yet started (during a poll: that poll's), on
    # the loop's clock: when the link is next needed by it (`_quiet`).
    due: float = 0.0
    # Its host's turn in the pass it polls in, while it has it (`_Turns`).
    turns: _Turns | None = None

    @classmethod
    def of(cls, group: PollGroup) -> _Group:
        return cls(group, list(group.blocks), [None] * len(group.blocks))

    @property
    def device(self) -> Device:
        return self.group.device

    def replan(self, blocks: list[ReadBlock]) -> None:
        self.blocks = blocks
        self.raw = [None] * len(blocks)

    def forget(self) -> None:
        """Decode every block at the next read (in place: a poll running holds `raw`)."""
        self.raw[:] = [None] * len(self.raw)


class Scheduler:
    def __init__(
        self,
        groups: Sequence[PollGroup],
        sessions: Mapping[str, HostSession],
        *,
        on_poll: OnPoll,
    ) -> None:
        self.sessions = sessions
        self.on_poll = on_poll
        self.stats: dict[str, PollStats] = {}
        self._devices: dict[str, list[_Group]] = {}  # device name -> its groups' state
        self._running = False
        self._passes = _Passes()
        # Set while every group has been through its first cycle (polled, probed or
        # backing off): what first polls build and keep (each read's request, cached
        # by its session) then exists. The bridge freezes it out of the collector's way.
        self.first_round = asyncio.Event()
        self._unpolled: set[_Group] = set()
        self._register(groups)

    @property
    def groups(self) -> list[PollGroup]:
        return [g.group for groups in self._devices.values() for g in groups]

    def _register(self, groups: Sequence[PollGroup]) -> list[_Group]:
        states = [_Group.of(g) for g in groups]
        for state in states:
            self.stats.setdefault(state.device.name, PollStats())
            self._devices.setdefault(state.device.name, []).append(state)
        self._unpolled.update(states)
        self._first_cycle_done()
        return states

    def _first_cycle_done(self, state: _Group | None = None) -> None:
        if state is not None:
            self._unpolled.discard(state)
        if self._unpolled:
            self.first_round.clear()
        else:
            self.first_round.set()

    def backoff_left(self, device: str, now: float) -> float:
        """Seconds until a device that backs off is polled again (0: polled as usual);
        `now` on the loop's clock."""
        waits = [
            g.backoff.retry_at - now for g in self._devices.get(device, ()) if g.backoff.failures
        ]
        return max([0.0, *waits])

    def start(self) -> None:
        self._running = True
        self._launch([g for groups in self._devices.values() for g in groups])

    def _launch(self, states: Sequence[_Group]) -> None:
        t0 = asyncio.get_running_loop().time()
        for state in states:
            state.due = t0 + state.group.phase
            g = state.group
            state.task = asyncio.create_task(
                self._loop(state, t0), name=f"poll:{g.device.name}:{g.interval}"
            )

    async def stop(self) -> None:
        self._running = False
        await self._cancel([g for groups in self._devices.values() for g in groups])
        self._passes.close()

    async def _cancel(self, states: Sequence[_Group]) -> None:
        tasks = []
        for state in states:
            if state.task is not None:
                tasks.append(state.task)
                state.task = None
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, Exception):
                log.error("poll task %s had failed: %r", task.get_name(), result)

    def add(self, groups: Sequence[PollGroup]) -> None:
        """Poll these groups too (devices added or changed by a reload); their first polls
        are spread by their phases from now. Their devices must not be polled already."""
        clash = {g.device.name for g in groups} & set(self._devices)
        if clash:
            raise ValueError(f"already polled: {', '.join(sorted(clash))}")
        states = self._register(groups)
        if self._running:
            self._launch(states)

    async def remove(self, devices: Collection[str], *, keep_stats: bool = False) -> None:
        """Stop polling `devices` and forget their groups. With `keep_stats` their
        `PollStats` stay, for a device polled again under the same name."""
        gone = set(devices)
        states = [g for name in gone for g in self._devices.get(name, ())]
        await self._cancel(states)
        for name in gone:
            self._devices.pop(name, None)
            if not keep_stats:
                self.stats.pop(name, None)
        self._unpolled.difference_update(states)
        self._first_cycle_done()

    async def _loop(self, state: _Group, t0: float) -> None:
        loop = asyncio.get_running_loop()
        group = state.group
        stats = self.stats[group.device.name]
        backoff = state.backoff
        phase, interval, rank, host = group.phase, group.interval, group.rank, group.device.host
        cycle = 0
        while True:
            due = state.due = deadline(t0, phase, interval, cycle)
            if due > loop.time() or cycle == 0:  # the first pass too, though due at once
                state.turns = await self._passes.wait(due, rank, host)
            try:
                # Backing off, unless the host has a new session since the failure: after
                # a hung or rebooted gateway comes back, every device is tried at once.
                session = self.sessions[host]
                fresh = session.generation != backoff.generation and session.connected
                if loop.time() >= backoff.retry_at or fresh or await self._probe(state):
                    try:
                        self._maybe_relearn(state, loop.time())
                        await self._poll(state)
                    except Exception:
                        # A bug must not end this device's polling for good: log, go on.
                        log.exception("poll of %s failed unexpectedly", group.device.name)
                    stats.cycles += 1
                else:
                    stats.backoff_skips += 1
            finally:
                self._hand_on(state)
            if cycle == 0:
                self._first_cycle_done(state)
            cycle, missed = next_cycle(loop.time(), t0, phase, interval, cycle)
            stats.skipped += missed

    @staticmethod
    def _hand_on(state: _Group) -> None:
        """The group is done with the link for now: the next group of its host in its
        pass may go."""
        turns = state.turns
        if turns is not None:
            state.turns = None
            turns.next()

    async def _probe(self, state: _Group) -> bool:
        """A group that backs off, at its deadline: ask its unit, with one read of its
        first block in the link's idle time, whether it is back. True when it answered
        (poll it now). It waits (up to half its interval) for the rest of its pass on
        the host to have had their turns and the link to be free, so the polls of its
        pass go first; sent only if then no poll of another group of the host is due
        before the probe could time out (`HostSession.probe_costs`):
        on a busy bus the backoff stays whole, and a dead unit costs the live ones
        nothing."""
        device = state.device
        session = self.sessions[device.host]
        loop = asyncio.get_running_loop()
        until = loop.time() + state.group.interval / 2
        turns = state.turns
        if turns is not None:  # the rest of its pass on this host goes first
            self._hand_on(state)
            try:
                async with asyncio.timeout_at(until):
                    await turns.ended()
            except TimeoutError:
                return False
        if not await session.wait_free(until):
            return False
        now = loop.time()
        if not self._quiet(device.host, state, now + session.probe_costs):
            return False
        block = state.blocks[0]
        self.stats[device.name].probes += 1
        try:
            data = await session.probe(block.unit, block.table, block.start, block.count)
        except ExceptionReply:
            return True  # it answered: the poll decides what the answer means
        except ModbusRequestError:
            return False
        return data is not None

    def _quiet(self, host: str, probing: _Group, until: float) -> bool:
        """Whether no group of `host` that polls as usual (the probing one and those
        backing off aside) needs the link before `until`: its next poll is due later,
        and it is not in a poll now (then its `due` is that poll's, in the past)."""
        for groups in self._devices.values():
            for g in groups:
                if g is probing or g.task is None or g.device.host != host:
                    continue
                if g.backoff.failures and g.backoff.retry_at > until:
                    continue
                if g.due <= until:
                    return False
        return True

    def forget(self, device: str) -> None:
        """Decode every block of `device` at its next poll: its state was set from a read
        the scheduler did not see (a write's read-back, a `get`)."""
        for state in self._devices.get(device, ()):
            state.forget()

    async def _poll(self, state: _Group) -> bool:
        device = state.device
        session = self.sessions[device.host]
        values: dict[str, Value] = {}
        raw = state.raw
        scales = state.scales
        rescale = False  # a scale factor changed: its points in other blocks decode again
        try:
            index = 0
            while index < len(state.blocks):
                block = state.blocks[index]
                try:
                    data = await self._read(session, block, state, first=index == 0)
                except ExceptionReply as exc:
                    if exc.code not in ADDRESS_CODES:
                        raise
                    values.update(await self._learn(session, state, index, exc))
                    raw[:] = [None] * len(state.blocks)  # the plan changed
                    continue  # the block at `index` was replaced: read its successors
                if data != raw[index]:
                    before = [scales.get(n) for n, *_ in block.scale_slices]
                    try:
                        values.update(decode_block(block, data, scales))
                    except CodecError as exc:  # a short or malformed answer
                        raw[index] = None
                        reason = f"bad reply: {exc}"
                        raise ModbusRequestError(device.host, device.unit, reason) from exc
                    raw[index] = data
                    if before != [scales.get(n) for n, *_ in block.scale_slices]:
                        rescale = True
                index += 1
        except ModbusRequestError as exc:
            if rescale:
                values.update(self._rescaled(state))
            self._failed(state, exc)
            state.error = exc
            self.on_poll(device, values, exc)
            return False
        if rescale:
            values.update(self._rescaled(state))
        backoff = state.backoff
        backoff.failures, backoff.retry_at = 0, 0.0
        state.error = None
        # Online only when no group of the device is failing.
        pending = (g.error for g in self._devices[device.name])
        self.on_poll(device, values, next((e for e in pending if e is not None), None))
        return True

    @staticmethod
    def _rescaled(state: _Group) -> dict[str, Value]:
        """The scaled points of every block read, decoded again with the newest scale
        factors (a block read before its scale factor changed, or not changed itself)."""
        values: dict[str, Value] = {}
        for block, data in zip(state.blocks, state.raw, strict=True):
            if block.scaled and data is not None:
                values.update(decode_block(block, data, state.scales))
        return values

    def _failed(self, state: _Group, exc: ModbusRequestError) -> None:
        device = state.device
        self.stats[device.name].failures += 1
        if isinstance(exc, HostUnavailable):
            return  # the host's session backs off; nothing to add per device
        b = state.backoff
        b.failures += 1
        b.generation = self.sessions[device.host].generation
        wait = full_jitter(b.failures, low=state.group.interval, high=DEVICE_BACKOFF_MAX)
        b.retry_at = asyncio.get_running_loop().time() + wait

    def _maybe_relearn(self, state: _Group, now: float) -> None:
        """Every RELEARN_AFTER, go back to the compiled blocks: a device that refused a
        range while booting gets its points back; one that still refuses is learned
        again (logged at debug level when the ranges are the same)."""
        due = state.relearn_at
        if due is not None and now >= due:
            state.relearn_at = None
            state.replan(list(state.group.blocks))
            state.skipping = []
            self._refresh_skipped(state.device.name)

    def _refresh_skipped(self, device: str) -> None:
        self.stats[device].skipped_ranges = [r for g in self._devices[device] for r in g.skipping]

    async def _read(
        self, session: HostSession, block: ReadBlock, state: _Group, *, first: bool
    ) -> list[int] | list[bool]:
        priority = Priority.POLL if first else Priority.POLL_NEXT
        return await self._read_range(
            session, state, block, block.start, block.count, priority=priority
        )

    async def _read_range(
        self,
        session: HostSession,
        state: _Group,
        block: ReadBlock,
        start: int,
        count: int,
        *,
        priority: Priority = Priority.POLL_NEXT,
    ) -> list[int] | list[bool]:
        attempt = 0
        while True:
            try:
                return await session.read(block.unit, block.table, start, count, priority=priority)
            except ExceptionReply as exc:
                if exc.code not in BUSY_CODES or attempt >= BUSY_RETRIES:
                    raise
            self._hand_on(state)  # its neighbours use the link while it waits
            await asyncio.sleep(BUSY_DELAY * 2**attempt)
            attempt += 1

    async def _learn(
        self, session: HostSession, state: _Group, index: int, exc: ExceptionReply
    ) -> dict[str, Value]:
        """Split a rejected block, find what the device refuses, re-plan the rest.

        Returns null for the points now skipped. Other errors propagate.
        """
        device = state.device
        block = state.blocks[index]
        bad: list[Point] = []
        if len(block.points) > 1:
            for point in block.points:
                try:
                    await self._read_range(session, state, block, point.address, point.count)
                except ExceptionReply as inner:
                    if inner.code not in ADDRESS_CODES:
                        raise
                    bad.append(point)
        else:
            bad = list(block.points)
        avoid = [(p.address, p.end) for p in bad] or holes(block)
        if avoid:
            replacement = replan_block(device, block, drop=[p.name for p in bad], avoid=avoid)
        else:
            # Every point reads alone and there is no hole, yet the merged read is
            # refused: read the points one by one from now on.
            replacement = [
                ReadBlock(
                    block.unit,
                    block.table,
                    p.address,
                    p.count,
                    block.interval,
                    (p,),
                    block.scale_names,
                )
                for p in block.points
            ]
        state.blocks[index : index + 1] = replacement
        ranges = [f"{block.table.value} {a}..{b - 1}" for a, b in avoid]
        state.skipping.extend(ranges)
        self._refresh_skipped(device.name)
        again = set(ranges) <= state.learned
        state.learned.update(ranges)
        if state.relearn_at is None:
            state.relearn_at = asyncio.get_running_loop().time() + RELEARN_AFTER
        log.log(
            logging.DEBUG if again else logging.WARNING,
            "device %s (host %s, unit %d): %s %d..%d rejected with exception %d; %s%s",
            device.name,
            device.host,
            device.unit,
            block.table.value,
            block.start,
            block.end - 1,
            exc.code,
            f"skipping {', '.join(ranges)}" if ranges else "reading its points one by one",
            f" (points {', '.join(p.name for p in bad)} published as null)" if bad else "",
        )
        return {p.name: None for p in bad}
