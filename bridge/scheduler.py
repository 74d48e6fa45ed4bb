"""Per-device polling on monotonic deadlines.

Each (device, interval) group of read blocks gets one task. Deadlines advance by
exactly one interval from the first one, so polls never drift; the first poll
of each group is offset by a phase spread evenly over its interval, so a fleet of
240 devices does not fire at once. A poll still running at its next deadline is
not queued behind itself: the missed cycles are skipped and counted.

Registers that did not change since the last read of a block are not decoded
again: the poll reports only the points of blocks whose data changed, so steady
values cost no decoding, comparing, serialising or publishing. (A read outside
the polls, e.g. a write's read-back, calls `forget` so the next poll decodes.)

Faults handled here, per device, so one bad unit never stalls its neighbours:

- a device that stops answering is retried with its own full-jitter backoff
  (its interval growing to 60 s) instead of costing a timeout every cycle;
- "device busy" (exception 5/6) is retried a few times after a short delay;
- a merged block rejected with exception 2/3 is split point by point once; the
  offending range is remembered and skipped (its points published as null),
  and the remaining points keep being read in merged blocks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.backoff import full_jitter
from bridge.codec import CodecError
from bridge.errors import ExceptionReply, HostUnavailable, ModbusRequestError
from bridge.model import Device, Point
from bridge.payloads import Value
from bridge.planner import ReadBlock, decode_block, holes, replan_block
from bridge.session import HostSession
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

GroupKey = tuple[str, float]  # (device name, interval)


@dataclass(frozen=True)
class PollGroup:
    device: Device
    interval: float
    blocks: tuple[ReadBlock, ...]
    phase: float  # seconds after start of the first poll


def group_blocks(
    devices: Sequence[Device],
    plan: Mapping[str, Sequence[ReadBlock]],
    together: Collection[str] = (),
) -> list[PollGroup]:
    """Split every device's blocks by interval and give each group its first-poll phase.

    Phases are spread evenly per interval across all groups of that interval:
    group k of n gets k/n of the interval. The devices of a host named in `together`
    (`spread: false`) share the phase of its first group: they poll in one burst per
    interval, one wake-up for all of them, instead of one each.
    """
    raw: list[tuple[Device, float, tuple[ReadBlock, ...]]] = []
    for device in devices:
        by_interval: dict[float, list[ReadBlock]] = {}
        for block in plan[device.name]:
            by_interval.setdefault(block.interval, []).append(block)
        for interval in sorted(by_interval):
            raw.append((device, interval, tuple(by_interval[interval])))
    per_interval: dict[float, int] = {}
    for _, interval, _ in raw:
        per_interval[interval] = per_interval.get(interval, 0) + 1
    seen: dict[float, int] = {}
    burst: dict[tuple[str, float], float] = {}  # (host, interval) -> the phase it shares
    groups = []
    for device, interval, blocks in raw:
        k = seen.get(interval, 0)
        seen[interval] = k + 1
        phase = interval * k / per_interval[interval]
        if device.host in together:
            phase = burst.setdefault((device.host, interval), phase)
        groups.append(PollGroup(device, interval, blocks, phase))
    return groups


def _key(group: PollGroup) -> GroupKey:
    return (group.device.name, group.interval)


@dataclass
class _Backoff:
    failures: int = 0
    retry_at: float = 0.0
    generation: int = 0  # the host session's generation when the group last failed


class Scheduler:
    def __init__(
        self,
        groups: Sequence[PollGroup],
        sessions: Mapping[str, HostSession],
        *,
        on_poll: OnPoll,
    ) -> None:
        self.groups: list[PollGroup] = []
        self.sessions = sessions
        self.on_poll = on_poll
        self.stats: dict[str, PollStats] = {}
        # The live plan: starts as compiled, changes only when a range is learned bad.
        self.blocks: dict[GroupKey, list[ReadBlock]] = {}
        self._compiled: dict[GroupKey, tuple[ReadBlock, ...]] = {}
        # The last data read for each block of the live plan (None: decode next time).
        self._raw: dict[GroupKey, list[Sequence[int] | Sequence[bool] | None]] = {}
        self._relearn_at: dict[GroupKey, float] = {}
        self._learned: dict[GroupKey, set[str]] = {}  # ever learned bad (log once)
        self._skipping: dict[GroupKey, list[str]] = {}  # skipped now (health)
        # Backoff and last error per group: a device whose fast group reads fine
        # while its slow group fails stays offline instead of flapping.
        self._backoff: dict[GroupKey, _Backoff] = {}
        self._errors: dict[GroupKey, ModbusRequestError | None] = {}
        self._device_keys: dict[str, list[GroupKey]] = {}
        self._tasks: dict[GroupKey, asyncio.Task[None]] = {}
        self._running = False
        self._register(groups)

    def _register(self, groups: Sequence[PollGroup]) -> None:
        for g in groups:
            key = _key(g)
            self.groups.append(g)
            self.stats.setdefault(g.device.name, PollStats())
            self.blocks[key] = list(g.blocks)
            self._compiled[key] = g.blocks
            self._raw[key] = [None] * len(g.blocks)
            self._backoff[key] = _Backoff()
            self._device_keys.setdefault(g.device.name, []).append(key)

    def backoff_left(self, device: str, now: float) -> float:
        """Seconds until a device that backs off is polled again (0: polled as usual);
        `now` on the loop's clock."""
        waits = [
            self._backoff[key].retry_at - now
            for key in self._device_keys.get(device, ())
            if self._backoff[key].failures
        ]
        return max([0.0, *waits])

    def start(self) -> None:
        self._running = True
        self._launch(self.groups)

    def _launch(self, groups: Sequence[PollGroup]) -> None:
        t0 = asyncio.get_running_loop().time()
        for g in groups:
            self._tasks[_key(g)] = asyncio.create_task(
                self._loop(g, t0), name=f"poll:{g.device.name}:{g.interval}"
            )

    async def stop(self) -> None:
        self._running = False
        await self._cancel(list(self._tasks))

    async def _cancel(self, keys: Sequence[GroupKey]) -> None:
        tasks = [self._tasks.pop(key) for key in keys if key in self._tasks]
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, Exception):
                log.error("poll task %s had failed: %r", task.get_name(), result)

    def add(self, groups: Sequence[PollGroup]) -> None:
        """Poll these groups too (devices added or changed by a reload); their first polls
        are spread by their phases from now. Their devices must not be polled already."""
        clash = {g.device.name for g in groups} & set(self._device_keys)
        if clash:
            raise ValueError(f"already polled: {', '.join(sorted(clash))}")
        self._register(groups)
        if self._running:
            self._launch(groups)

    async def remove(self, devices: Collection[str], *, keep_stats: bool = False) -> None:
        """Stop polling `devices` and forget their groups. With `keep_stats` their
        `PollStats` stay, for a device polled again under the same name."""
        gone = set(devices)
        keys = [k for name in gone for k in self._device_keys.get(name, ())]
        await self._cancel(keys)
        self.groups = [g for g in self.groups if g.device.name not in gone]
        tables: tuple[dict[GroupKey, Any], ...] = (
            self.blocks,
            self._compiled,
            self._raw,
            self._backoff,
            self._errors,
            self._relearn_at,
            self._learned,
            self._skipping,
        )
        for key in keys:
            for table in tables:
                table.pop(key, None)
        for name in gone:
            self._device_keys.pop(name, None)
            if not keep_stats:
                self.stats.pop(name, None)

    async def _loop(self, group: PollGroup, t0: float) -> None:
        loop = asyncio.get_running_loop()
        stats = self.stats[group.device.name]
        key = _key(group)
        backoff = self._backoff[key]
        deadline = t0 + group.phase
        while True:
            delay = deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            # Backing off, unless the host has a new session since the failure: after
            # a hung or rebooted gateway comes back, every device is tried at once.
            session = self.sessions[group.device.host]
            fresh = session.generation != backoff.generation and session.connected
            if loop.time() >= backoff.retry_at or fresh:
                try:
                    self._maybe_relearn(key, loop.time())
                    await self._poll(group.device, key)
                except Exception:
                    # A bug must not end this device's polling for good: log, go on.
                    log.exception("poll of %s failed unexpectedly", group.device.name)
                stats.cycles += 1
            else:
                stats.backoff_skips += 1
            deadline += group.interval
            late = loop.time() - deadline
            if late > 0:
                missed = int(late // group.interval) + 1
                stats.skipped += missed
                deadline += missed * group.interval

    def forget(self, device: str) -> None:
        """Decode every block of `device` at its next poll: its state was set from a read
        the scheduler did not see (a write's read-back, a `get`)."""
        for key in self._device_keys.get(device, ()):
            raw = self._raw[key]
            raw[:] = [None] * len(raw)

    async def _poll(self, device: Device, key: GroupKey) -> bool:
        session = self.sessions[device.host]
        values: dict[str, Value] = {}
        raw = self._raw[key]
        try:
            index = 0
            while index < len(self.blocks[key]):
                block = self.blocks[key][index]
                try:
                    data = await self._read(session, block)
                except ExceptionReply as exc:
                    if exc.code not in ADDRESS_CODES:
                        raise
                    values.update(await self._learn(session, device, key, index, exc))
                    raw[:] = [None] * len(self.blocks[key])  # the plan changed
                    continue  # the block at `index` was replaced: read its successors
                if data != raw[index]:
                    try:
                        values.update(decode_block(block, data))
                    except CodecError as exc:  # a short or malformed answer
                        raw[index] = None
                        reason = f"bad reply: {exc}"
                        raise ModbusRequestError(device.host, device.unit, reason) from exc
                    raw[index] = data
                index += 1
        except ModbusRequestError as exc:
            self._failed(device, key, exc)
            self._errors[key] = exc
            self.on_poll(device, values, exc)
            return False
        backoff = self._backoff[key]
        backoff.failures, backoff.retry_at = 0, 0.0
        self._errors[key] = None
        # Online only when no group of the device is failing.
        pending = (self._errors.get(k) for k in self._device_keys[device.name])
        self.on_poll(device, values, next((e for e in pending if e is not None), None))
        return True

    def _failed(self, device: Device, key: GroupKey, exc: ModbusRequestError) -> None:
        self.stats[device.name].failures += 1
        if isinstance(exc, HostUnavailable):
            return  # the host's session backs off; nothing to add per device
        b = self._backoff[key]
        b.failures += 1
        b.generation = self.sessions[device.host].generation
        wait = full_jitter(b.failures, low=key[1], high=DEVICE_BACKOFF_MAX)
        b.retry_at = asyncio.get_running_loop().time() + wait

    def _maybe_relearn(self, key: GroupKey, now: float) -> None:
        """Every RELEARN_AFTER, go back to the compiled blocks: a device that refused a
        range while booting gets its points back; one that still refuses is learned
        again (logged at debug level when the ranges are the same)."""
        due = self._relearn_at.get(key)
        if due is not None and now >= due:
            del self._relearn_at[key]
            self.blocks[key] = list(self._compiled[key])
            self._raw[key] = [None] * len(self.blocks[key])
            self._skipping.pop(key, None)
            self._refresh_skipped(key[0])

    def _refresh_skipped(self, device: str) -> None:
        self.stats[device].skipped_ranges = [
            r for k in self._device_keys[device] for r in self._skipping.get(k, ())
        ]

    async def _read(self, session: HostSession, block: ReadBlock) -> list[int] | list[bool]:
        return await self._read_range(session, block.unit, block, block.start, block.count)

    async def _read_range(
        self, session: HostSession, unit: int, block: ReadBlock, start: int, count: int
    ) -> list[int] | list[bool]:
        attempt = 0
        while True:
            try:
                return await session.read(unit, block.table, start, count)
            except ExceptionReply as exc:
                if exc.code not in BUSY_CODES or attempt >= BUSY_RETRIES:
                    raise
            await asyncio.sleep(BUSY_DELAY * 2**attempt)
            attempt += 1

    async def _learn(
        self,
        session: HostSession,
        device: Device,
        key: GroupKey,
        index: int,
        exc: ExceptionReply,
    ) -> dict[str, Value]:
        """Split a rejected block, find what the device refuses, re-plan the rest.

        Returns null for the points now skipped. Other errors propagate.
        """
        block = self.blocks[key][index]
        bad: list[Point] = []
        if len(block.points) > 1:
            for point in block.points:
                try:
                    await self._read_range(session, block.unit, block, point.address, point.count)
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
                ReadBlock(block.unit, block.table, p.address, p.count, block.interval, (p,))
                for p in block.points
            ]
        self.blocks[key][index : index + 1] = replacement
        ranges = [f"{block.table.value} {a}..{b - 1}" for a, b in avoid]
        self._skipping.setdefault(key, []).extend(ranges)
        self._refresh_skipped(device.name)
        known = self._learned.setdefault(key, set())
        again = set(ranges) <= known
        known.update(ranges)
        self._relearn_at.setdefault(key, asyncio.get_running_loop().time() + RELEARN_AFTER)
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
