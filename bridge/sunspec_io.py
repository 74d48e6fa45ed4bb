"""SunSpec discovery on a host's session: `sunspec.find_chain` run with real reads.

`run_program` feeds a discovery program the registers it asks for through
`HostSession.read` (a Modbus exception reply is sent as None: the device has no such
register; any other failure ends the run with that error).

`SunSpecFinder` watches each `sunspec: true` device: once its host's session is up,
and again each time the session is reopened (a new connection: the device may have
restarted with another firmware), it reads the chain and hands it to `found(name,
chain)`; the bridge then swaps in the device with those points (its plan compiled for
it alone, `app.Bridge.sunspec_found`). A failed read is retried with backoff; a device
without a marker is looked at again after `NO_MARKER_RETRY`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence

from bridge.backoff import full_jitter
from bridge.errors import ExceptionReply, ModbusRequestError
from bridge.model import BridgeConfig, Device, Table
from bridge.reload import plan_reload
from bridge.session import HostSession, Priority
from bridge.sunspec import MAX_READ, Chain, Program, discovered, find_chain, with_chains

log = logging.getLogger("bridge.sunspec")

WATCH_EVERY = 0.5  # seconds between looks at a session's state
RETRY_MIN, RETRY_MAX = 1.0, 60.0  # seconds: backoff after a failed discovery
NO_MARKER_RETRY = 300.0  # seconds: a device without a SunSpec marker, looked at again

Read = Callable[[int, int], Awaitable[Sequence[int] | None]]
Found = Callable[[str, Chain], Awaitable[None]]


async def run_program(program: Program, read: Read) -> Chain | None:
    """Run a discovery program with `read(address, count)`."""
    try:
        request = next(program)
        while True:
            regs = await read(*request)
            request = program.send(regs)
    except StopIteration as done:
        result: Chain | None = done.value
        return result


def session_reader(session: HostSession, unit: int) -> Read:
    """Reads of holding registers on `session`; a Modbus exception reply gives None."""

    async def read(address: int, count: int) -> Sequence[int] | None:
        try:
            regs = await session.read(unit, Table.HOLDING, address, count, priority=Priority.POLL)
        except ExceptionReply:
            return None
        return [int(r) for r in regs]

    return read


async def discover(session: HostSession, unit: int, max_read: int = MAX_READ) -> Chain | None:
    """The chain of `unit` behind `session`, read `max_read` registers at most at a
    time; None when it has no SunSpec marker."""
    return await run_program(find_chain(max_read), session_reader(session, unit))


class SunSpecFinder:
    """One watcher task per SunSpec device (see the module's docstring). `sessions`
    gives a host's current session (a reload may replace it)."""

    def __init__(self, sessions: Callable[[str], HostSession | None], found: Found) -> None:
        self._sessions = sessions
        self._found = found
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.chains: dict[str, Chain] = {}  # each device's chain, once read

    def swap(
        self, declared: BridgeConfig, running: BridgeConfig, name: str, chain: Chain
    ) -> BridgeConfig | None:
        """The configuration to run with `chain` read for device `name` (`declared`: as
        configured), or None when the device runs those points already (or is gone)."""
        configured = next((d for d in declared.devices if d.name == name), None)
        now = next((d for d in running.devices if d.name == name), None)
        if configured is None or now is None or discovered(configured, chain) == now:
            return None
        self.chains[name] = chain
        return with_chains(declared, self.chains)

    async def reloading(self, old: BridgeConfig, new: BridgeConfig) -> None:
        """A reload from `old` to `new` (both as configured): a device removed or changed
        forgets its chain and its watcher stops (`start` begins it again)."""
        plan = plan_reload(old, new)
        forget = plan.devices_removed + plan.devices_changed
        await self.stop(forget)
        for name in forget:
            self.chains.pop(name, None)

    @property
    def watching(self) -> frozenset[str]:
        return frozenset(self._tasks)

    def start(self, devices: Iterable[Device]) -> None:
        for device in devices:
            if device.sunspec and device.name not in self._tasks:
                self._tasks[device.name] = asyncio.create_task(
                    self._watch(device), name=f"sunspec:{device.name}"
                )

    async def stop(self, names: Iterable[str] | None = None) -> None:
        chosen = list(self._tasks) if names is None else [n for n in names if n in self._tasks]
        tasks = [self._tasks.pop(n) for n in chosen]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    async def _watch(self, device: Device) -> None:
        seen: tuple[int, int] | None = None  # (id of the session, its generation) read
        failures = 0
        while True:
            session = self._sessions(device.host)
            if session is None or not session.connected:
                await asyncio.sleep(WATCH_EVERY)
                continue
            opened = (id(session), session.generation)
            if opened == seen:
                await asyncio.sleep(WATCH_EVERY)
                continue
            try:
                chain = await discover(session, device.unit, device.max_read)
            except ModbusRequestError as exc:
                failures += 1
                wait = full_jitter(failures, low=RETRY_MIN, high=RETRY_MAX)
                log.warning(
                    "%s: SunSpec discovery failed (%s); again in %.0fs", device.name, exc, wait
                )
                await asyncio.sleep(wait)
                continue
            failures = 0
            seen = opened
            if chain is None:
                log.warning(
                    "%s: no SunSpec marker at 40000, 50000 or 0 (nor one register later); "
                    "looking again in %.0fs",
                    device.name,
                    NO_MARKER_RETRY,
                )
                await asyncio.sleep(NO_MARKER_RETRY)
                seen = None
                continue
            log.info(
                "%s: SunSpec models %s at %d",
                device.name,
                ", ".join(str(m.id) for m in chain.models),
                chain.base,
            )
            await self._found(device.name, chain)
