"""Per-device polling on monotonic deadlines.

Each (device, interval) group of read blocks gets one task. Deadlines advance by
exactly one interval from the first one, so polls never drift; the first poll
of each group is offset by a phase spread evenly over its interval, so a fleet of
240 devices does not fire at once. A poll still running at its next deadline is
not queued behind itself: the missed cycles are skipped and counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from bridge.codec import CodecError
from bridge.errors import ModbusRequestError
from bridge.model import Device
from bridge.payloads import Value
from bridge.planner import ReadBlock, decode_block
from bridge.session import HostSession

log = logging.getLogger("bridge.poll")

# Called after every poll with the values read (possibly partial) and the error
# that stopped it, or None when every block was read.
OnPoll = Callable[[Device, dict[str, Value], ModbusRequestError | None], None]


@dataclass
class PollStats:
    cycles: int = 0
    skipped: int = 0
    failures: int = 0


@dataclass(frozen=True)
class PollGroup:
    device: Device
    interval: float
    blocks: tuple[ReadBlock, ...]
    phase: float  # seconds after start of the first poll


def group_blocks(
    devices: Sequence[Device], plan: Mapping[str, Sequence[ReadBlock]]
) -> list[PollGroup]:
    """Split every device's blocks by interval and give each group its first-poll phase.

    Phases are spread evenly per interval across all groups of that interval:
    group k of n gets k/n of the interval.
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
    groups = []
    for device, interval, blocks in raw:
        k = seen.get(interval, 0)
        seen[interval] = k + 1
        groups.append(PollGroup(device, interval, blocks, interval * k / per_interval[interval]))
    return groups


class Scheduler:
    def __init__(
        self,
        groups: Sequence[PollGroup],
        sessions: Mapping[str, HostSession],
        *,
        on_poll: OnPoll,
    ) -> None:
        self.groups = list(groups)
        self.sessions = sessions
        self.on_poll = on_poll
        self.stats: dict[str, PollStats] = {g.device.name: PollStats() for g in self.groups}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        self._tasks = [
            asyncio.create_task(self._loop(g, t0), name=f"poll:{g.device.name}:{g.interval}")
            for g in self.groups
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def poll_now(self, device: Device, blocks: Sequence[ReadBlock]) -> bool:
        """One read of `blocks` (also used by `/get`); True when every block was read."""
        return await self._poll(device, blocks)

    async def _loop(self, group: PollGroup, t0: float) -> None:
        loop = asyncio.get_running_loop()
        stats = self.stats[group.device.name]
        deadline = t0 + group.phase
        while True:
            delay = deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._poll(group.device, group.blocks)
            stats.cycles += 1
            deadline += group.interval
            late = loop.time() - deadline
            if late > 0:
                missed = int(late // group.interval) + 1
                stats.skipped += missed
                deadline += missed * group.interval

    async def _poll(self, device: Device, blocks: Sequence[ReadBlock]) -> bool:
        session = self.sessions[device.host]
        values: dict[str, Value] = {}
        for block in blocks:
            try:
                data = await session.read(block.unit, block.table, block.start, block.count)
            except ModbusRequestError as exc:
                self.stats[device.name].failures += 1
                self.on_poll(device, values, exc)
                return False
            try:
                values.update(decode_block(block, data))
            except CodecError as exc:  # a short or malformed answer
                error = ModbusRequestError(device.host, device.unit, f"bad reply: {exc}")
                self.stats[device.name].failures += 1
                self.on_poll(device, values, error)
                return False
        self.on_poll(device, values, None)
        return True
