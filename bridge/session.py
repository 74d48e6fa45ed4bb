"""One persistent Modbus session per host: the job queue, the worker and the connector.

A `HostSession` owns one `Wire` (the host's one pymodbus client, TCP or serial) for its
whole life. Every request for any unit behind the host goes through `submit`: when
the link is idle the job runs at once in the caller's task (the fast path); otherwise
it waits in one priority queue for the one worker, so requests never overlap on the
link, and a job of a lower `Priority` value passes queued ones of a higher value
(writes pass polls).

Opening happens in exactly one place, `_connector`, driven by one tenacity loop whose
waits come from `LinkHealth` (full-jitter backoff). A lost session is closed, then
reopened; pymodbus's own reconnect and retries are switched off. While the host is
down, requests fail at once with `HostUnavailable` instead of piling up.

Every failure of a job comes out as a `ModbusRequestError` subclass, with the link's
bookkeeping done: `LinkHealth` hears of answers and timeouts (the silence rule), a
failed request on an RTU line leaves it to be drained before the next one, and a link
that closed or cannot be framed any more is handed to the connector.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never

from bridge.backoff import BACKOFF_MAX, BACKOFF_MIN
from bridge.errors import (
    BadReply,
    ExceptionReply,
    HostUnavailable,
    ModbusRequestError,
    RequestTimeout,
)
from bridge.linkhealth import LinkHealth
from bridge.model import Host, Table
from bridge.proxy_rules import ProxyRequest
from bridge.stats import SessionStats
from bridge.wire import Job, LinkClosed, Malformed, Mismatch, NoAnswer, Wire, WireError

log = logging.getLogger("bridge.session")


LINK_LOST = "connection lost"  # a request's reason when the link died while it was on the wire


class Priority(enum.IntEnum):
    """The order queued jobs leave the queue: lower first, then first come first served.
    Only the order matters; the gaps leave room for another class of request.

    The proxy's requests (`forward`) queue as POLL: first come, first served with the
    polls, so neither starves the other; the proxy sends one at a time per host
    (`proxy.HostProxy`), so a poll waits behind at most one of them.

    PROBE is below everything and never waits in the queue: a probe (`probe`) is sent
    only when the link is free, and any request that arrives meanwhile cuts it short
    where that costs the link nothing (see `probe`)."""

    WRITE = 10  # set and get commands (and their read-backs)
    # A poll's blocks after its first: a device's poll, once begun, goes before the
    # first reads of the other devices of its pass (its change is published after a
    # few reads, not after the whole pass).
    POLL_NEXT = 20
    POLL = 30  # the scheduler's polls, and the proxy's requests
    PROBE = 50  # a unit that backs off, asked whether it is back (`probe`)


class Claim:
    """Decides, once, between the worker sending a write and the caller giving up on it:
    the session calls it when the job reaches the link (True: send it), the caller
    `abandon`s it when it stops waiting (True: it was not, and never will be, sent)."""

    def __init__(self) -> None:
        self.state = "queued"

    def __call__(self) -> bool:
        """The worker is about to send: True if the caller still waits for it."""
        if self.state == "queued":
            self.state = "sent"
            return True
        return False

    def abandon(self) -> bool:
        """The caller gives up: True if the write was not (and now never will be) sent."""
        if self.state == "queued":
            self.state = "abandoned"
            return True
        return False


def _claimed(job: Job, claim: Claim | None) -> Job:
    if claim is None:
        return job

    async def guarded() -> Any:
        if not claim():
            return None
        return await job()

    return guarded


class _ConnectFailed(Exception):
    pass


class _Queued:
    """A job waiting for the link, and the caller's future for its result."""

    __slots__ = ("future", "job", "unit")

    def __init__(self, job: Job, unit: int, future: asyncio.Future[Any]) -> None:
        self.job = job
        self.unit = unit
        self.future = future


class _Lanes:
    """The jobs waiting for the link: one first-in first-out lane per priority, the
    lane of the lowest value first. A few lanes and a deque each: cheaper per request
    than a heap of ordered records (with polls in passes most requests queue)."""

    def __init__(self) -> None:
        self._by_priority: dict[int, deque[_Queued]] = {}
        self._order: list[deque[_Queued]] = []  # the lanes, lowest priority value first
        self.size = 0

    def put(self, priority: int, item: _Queued) -> None:
        lane = self._by_priority.get(priority)
        if lane is None:
            lane = self._by_priority[priority] = deque()
            self._order = [self._by_priority[p] for p in sorted(self._by_priority)]
        lane.append(item)
        self.size += 1

    def take(self) -> _Queued | None:
        """The next job to run, None when none waits."""
        if self.size:
            for lane in self._order:
                if lane:
                    self.size -= 1
                    return lane.popleft()
        return None


class HostSession:
    """The single, persistent connection to one Modbus host.

    `stats`: counters to carry on (a host a reload reopens); new ones otherwise.
    """

    def __init__(
        self,
        host: Host,
        *,
        units: int = 1,
        backoff_min: float = BACKOFF_MIN,
        backoff_max: float = BACKOFF_MAX,
        stats: SessionStats | None = None,
    ) -> None:
        self.host = host
        self.stats = SessionStats() if stats is None else stats
        self.health = LinkHealth(units=units, backoff_min=backoff_min, backoff_max=backoff_max)
        self._wire = Wire(host, self.stats, on_out_of_step=self._out_of_step)
        self.generation = 0  # sessions opened so far: "a new connection since" for backoffs
        self._read_jobs: dict[tuple[int, Table, int, int], Job] = {}
        self._busy = False  # a job runs (in the worker or on the fast path)
        self._holding = False  # the worker has taken a job and is about to run it
        self._idle = asyncio.Event()  # set while no job runs
        self._idle.set()
        self._queue = _Lanes()
        self._work: asyncio.Future[None] | None = None  # the idle worker waits on it
        self._up = False
        self._attempted = asyncio.Event()  # set once the first connect attempt finished
        self._need_connect = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._probing: asyncio.Task[Any] | None = None  # a probe a request may cut short

    # -- lifecycle -------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._up

    @property
    def open_error(self) -> str | None:
        """Why the last attempt to open failed (None: the last one succeeded)."""
        return self._wire.open_error

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the link (metrics)."""
        return self._queue.size

    def set_units(self, units: int) -> None:
        """The number of unit ids behind the host changed (a reload): the silence rule
        counts them."""
        self.health.set_units(units)

    async def start(self) -> None:
        self._need_connect.set()
        self._tasks = [
            asyncio.create_task(self._connector(), name=f"connect:{self.host.name}"),
            asyncio.create_task(self._worker(), name=f"worker:{self.host.name}"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        try:
            if self._tasks:
                # asyncio.wait, not wait_for: on 3.11 wait_for can swallow a cancellation.
                await asyncio.wait(self._tasks, timeout=1.0)
        finally:
            # Even when the caller's deadline cuts the wait short: the link is closed
            # and nobody is left waiting on a queued request.
            self._tasks = []
            self._wire.close()
            self._up = False
            self._wire.abort("the session is stopping")  # a job on the fast path ends now
            while (item := self._queue.take()) is not None:
                self._settle(item, exc=HostUnavailable(self.host.name, 0, "the bridge is stopping"))

    # -- public requests -------------------------------------------------

    async def read(
        self, unit: int, table: Table, start: int, count: int, *, priority: int = Priority.POLL
    ) -> list[int] | list[bool]:
        """Read `count` registers or bits; raises a ModbusRequestError subclass on failure."""

        job = self._read_jobs.get((unit, table, start, count))
        if job is None:
            job = self._read_jobs[unit, table, start, count] = self._wire.read_job(
                unit, table, start, count
            )
        result: list[int] | list[bool] = await self.submit(unit, job, priority=priority)
        return result

    async def write_registers(
        self,
        unit: int,
        address: int,
        values: Sequence[int],
        *,
        multiple: bool,
        claim: Claim | None = None,
    ) -> None:
        """FC6 for one register unless `multiple`, FC16 otherwise (never split).

        `claim` (all write methods): called when the job reaches the link; when it
        returns False the caller gave up waiting and nothing is sent.
        """
        job = self._wire.write_registers_job(unit, address, values, multiple=multiple)
        await self.submit(unit, _claimed(job, claim), priority=Priority.WRITE)

    async def write_coil(
        self, unit: int, address: int, value: bool, *, multiple: bool, claim: Claim | None = None
    ) -> None:
        """FC5, or FC15 with `multiple`."""
        job = self._wire.write_coil_job(unit, address, value, multiple=multiple)
        await self.submit(unit, _claimed(job, claim), priority=Priority.WRITE)

    async def write_bit(
        self,
        unit: int,
        address: int,
        bit: int,
        value: bool,
        *,
        mask_write: bool,
        multiple: bool,
        claim: Claim | None = None,
    ) -> None:
        """Set one bit of a holding register: FC22, or read-modify-write as ONE queued job."""
        job = self._wire.write_bit_job(
            unit, address, bit, value, mask_write=mask_write, multiple=multiple
        )
        await self.submit(unit, _claimed(job, claim), priority=Priority.WRITE)

    async def forward(self, request: ProxyRequest) -> list[int] | list[bool] | None:
        """A proxied client's request (`bridge.proxy`): the registers or bits read, None
        for a write; raises a ModbusRequestError subclass on failure. It queues as a
        poll (see `Priority`); the wire's checks of the reply are the polls' own."""
        result: list[int] | list[bool] | None = await self.submit(
            request.unit, self._wire.request_job(request), priority=Priority.POLL
        )
        return result

    async def submit(self, unit: int, job: Job, *, priority: int = Priority.POLL) -> Any:
        """Run `job` on the link; everything on the link goes through here.

        When the link is idle the job runs at once in the caller's task (the fast
        path: no queue, no hop to the worker); otherwise it waits in the queue, by
        `priority`, for the worker. Either way one job at a time.
        """
        if self._free():
            return await self._execute(unit, job)
        probing = self._probing
        if probing is not None:
            probing.cancel()  # a probe never holds up a request (cut only where it is free)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put(priority, _Queued(job, unit, future))
        work = self._work
        if work is not None:
            self._work = None
            if not work.done():
                work.set_result(None)
        return await future

    @property
    def probe_costs(self) -> float:
        """Link time a probe of a silent unit can take, at worst, before the next
        request may go: its timeout, plus the quiet period a cut-off request leaves on
        an RTU line (`Wire.drain`)."""
        return self.host.timeout + (self._wire.quiet if self.host.rtu else 0.0)

    async def probe(
        self, unit: int, table: Table, start: int, count: int
    ) -> list[int] | list[bool] | None:
        """Ask a unit that backs off whether it answers again: one read, sent only when
        the link is free (up, settled, nothing running or queued). None when it was not
        sent, or was cut short; raises a ModbusRequestError subclass on failure (an
        exception reply means the unit answered).

        The caller makes sure no poll is due within `probe_costs`. A request that
        arrives while the probe is on the link (a write, the proxy's) cuts it short on
        a link with transaction ids, where the late reply is told apart and dropped;
        on an RTU line a cut-off request must be waited out anyway, so it runs to the
        end. A probe's timeout is counted apart (`probe_timeouts`), not as an error,
        and never towards the link's silence rule: the unit is known to be silent.
        """
        if not self._free():
            return None
        job = self._read_jobs.get((unit, table, start, count))
        if job is None:
            job = self._read_jobs[unit, table, start, count] = self._wire.read_job(
                unit, table, start, count
            )
        self.stats.probes += 1
        task = asyncio.ensure_future(self._execute(unit, job, probe=True))
        if not self.host.rtu:
            self._probing = task
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            if self._probing is task:
                self._probing = None
        if task.cancelled():
            self.stats.probes_cut += 1
            return None
        result: list[int] | list[bool] = task.result()
        return result

    # -- the connector ---------------------------------------------------

    def _backoff_wait(self, _state: RetryCallState) -> float:
        return self.health.wait()

    def _log_retry(self, state: RetryCallState) -> None:
        if self.health.failures == 1:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "host %s (%s) unreachable: %s; retrying with backoff",
                self.host.name,
                self.host.describe(),
                exc,
            )

    async def _open_once(self) -> None:
        if not await self._wire.open():
            self.health.open_failed()
            raise _ConnectFailed(self._wire.open_error)

    async def _connector(self) -> None:
        """The only place that opens the link."""
        first = True
        while True:
            await self._need_connect.wait()
            if self.health.failures:
                # The last session died without a single answer (a flapping host):
                # wait before reopening so a host that accepts-then-drops is no storm.
                await asyncio.sleep(self.health.wait())
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(_ConnectFailed),
                wait=self._backoff_wait,
                stop=stop_never,
                before_sleep=self._log_retry,
                reraise=True,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        try:
                            await self._open_once()
                        finally:
                            self._attempted.set()  # the worker may now fail fast
            except asyncio.CancelledError:
                raise
            self._need_connect.clear()
            self.health.opened()
            self.generation += 1
            self._up = True
            if not first:
                self.stats.reconnects += 1
            first = False
            log.info("host %s connected (%s)", self.host.name, self.host.describe())

    def _lost(self, reason: str, *, garbage: bool = False) -> None:
        """Mark the session lost and hand it to the connector. Idempotent.

        `garbage`: the peer sent bytes that cannot be framed (see `LinkHealth.lost`).
        """
        if not self._up:
            return
        self._up = False
        self._wire.close()
        self.health.lost(garbage=garbage)
        log.warning("host %s: session lost (%s); reconnecting", self.host.name, reason)
        self._need_connect.set()

    def _out_of_step(self, reason: str) -> None:
        self._lost(reason, garbage=True)

    # -- the worker --------------------------------------------------------

    async def _worker(self) -> None:
        """Run queued jobs one at a time, in priority order."""
        wire = self._wire
        while True:
            if wire.unsettled and self._up:
                await wire.drain()  # before taking a job: one queued meanwhile may go first
            item = self._queue.take()
            if item is None:
                work = self._work = asyncio.get_running_loop().create_future()
                await work  # until a job is queued
                continue
            if item.future.done():  # the caller gave up
                continue
            self._holding = True  # from here on no caller may take the fast path
            try:
                while self._busy:  # a job runs on the fast path: it is short
                    await self._idle.wait()
                if not self._up and not self._attempted.is_set():
                    await self._attempted.wait()
                    await asyncio.sleep(0)  # let the connector publish its result
                if self._up and not wire.connected:
                    self._lost("connection closed by peer")
                if not self._up:
                    exc = HostUnavailable(self.host.name, item.unit, "not connected")
                    self._settle(item, exc=exc)
                    continue
                if wire.unsettled:  # went stale before the session came back
                    await wire.drain()
                    if item.future.done():
                        continue
                await self._run(item)
            except asyncio.CancelledError:  # the session stops: the caller must hear so
                self._settle(item, exc=HostUnavailable(self.host.name, item.unit, "stopping"))
                raise
            finally:
                self._holding = False
            if self.host.pause > 0:
                await asyncio.sleep(self.host.pause)

    @property
    def free(self) -> bool:
        """Whether the link is up, settled and idle with nothing queued (`probe`)."""
        return self._free()

    async def wait_free(self, until: float) -> bool:
        """Wait until the link is `free` (True), or give up at `until` on the loop's
        clock (False). Each wait ends when a job does."""
        loop = asyncio.get_running_loop()
        if self.host.pause > 0:
            return False  # every request waits for the worker's pause: never free
        while not self._free():
            left = until - loop.time()
            if left <= 0 or not self._up:
                return False
            if self._idle.is_set():  # between two jobs, or an RTU line draining
                await asyncio.sleep(min(left, 0.005))
                continue
            try:
                async with asyncio.timeout(left):
                    await self._idle.wait()
            except TimeoutError:
                return False
            await asyncio.sleep(0)  # the worker takes what is queued first
        return True

    def _free(self) -> bool:
        """Whether a caller may run its job at once, in its own task (the fast path):
        the link is up and in step, nothing runs, nothing waits in the queue."""
        return (
            self._up
            and not self._busy
            and not self._holding
            and not self._wire.unsettled
            and self.host.pause <= 0
            and not self._queue.size
            and self._wire.connected
        )

    async def _run(self, item: _Queued) -> None:
        try:
            result = await self._execute(item.unit, item.job)
        except ModbusRequestError as exc:
            self._settle(item, exc=exc)
        except asyncio.CancelledError:
            # The session is stopping: the caller was not cancelled, tell it why.
            self._settle(item, exc=HostUnavailable(self.host.name, item.unit, "stopping"))
            raise
        else:
            if not item.future.done():
                item.future.set_result(result)

    async def _execute(self, unit: int, job: Job, *, probe: bool = False) -> Any:
        """Run one job on the link; every failure comes out as a ModbusRequestError,
        with the link's bookkeeping (silence rule, drain, lost session) done.
        `probe`: a timeout leaves the silence rule alone (see `probe`)."""
        wire = self._wire
        started = time.monotonic()
        self.stats.requests += 1
        wire.unit = unit
        self._busy = True
        self._idle.clear()
        try:
            result = await job()
        except ModbusRequestError as exc:
            # The device answered (an exception reply): the link is healthy.
            self.health.answer()
            self.stats.failed("exception" if isinstance(exc, ExceptionReply) else "other")
            raise
        except (Mismatch, Malformed) as exc:
            # An answer that does not fit the request. On RTU it may be a late or stray
            # frame and ours may still come: drain. On TCP the frames stay in step.
            self.stats.failed("bad_reply")
            self.stats.unit(unit).bad_replies += 1
            if isinstance(exc, Mismatch):
                self.stats.bad_replies += 1
            wire.unsettle()
            log.debug("host %s unit %d: bad reply (%s)", self.host.name, unit, exc)
            reason = f"the reply did not match the request ({exc})"
            raise BadReply(self.host.name, unit, reason) from None
        except LinkClosed as exc:
            self.stats.failed("connection")
            self._lost(f"connection error: {exc}")
            raise HostUnavailable(self.host.name, unit, LINK_LOST) from None
        except NoAnswer:
            if not wire.connected:
                self.stats.failed("connection")
                self._lost("connection closed")
                raise HostUnavailable(self.host.name, unit, LINK_LOST) from None
            wire.unsettle()  # a late reply may still come: drain before the next request
            reason = f"no answer within {self.host.timeout:g}s"
            if probe:  # expected of a silent unit: neither an error nor the link's silence
                self.stats.probe_timeouts += 1
                raise RequestTimeout(self.host.name, unit, reason) from None
            self.stats.failed("timeout")
            self.stats.timeouts += 1
            self.stats.unit(unit).timeouts += 1
            if self.health.timed_out():
                self._lost(f"{self.health.timeouts} requests in a row unanswered")
            raise RequestTimeout(self.host.name, unit, reason) from None
        except (WireError, OSError) as exc:
            self.stats.failed("other" if wire.connected else "connection")
            if not wire.connected:
                self._lost(f"{type(exc).__name__}: {exc}")
            else:
                wire.unsettle()
            raise ModbusRequestError(self.host.name, unit, str(exc)) from None
        except asyncio.CancelledError:
            wire.unsettle()  # the request may be on the line: let it settle first
            raise
        except Exception as exc:
            # A bug: this request fails, the worker (and every other device on the
            # host) carries on.
            log.exception("host %s unit %d: request failed unexpectedly", self.host.name, unit)
            self.stats.failed("other")
            wire.unsettle()
            reason = f"unexpected {type(exc).__name__}: {exc}"
            raise ModbusRequestError(self.host.name, unit, reason) from None
        finally:
            self._busy = False
            self._idle.set()
        self.health.answer()
        self.stats.observe(time.monotonic() - started)
        return result

    @staticmethod
    def _settle(item: _Queued, *, exc: BaseException) -> None:
        if not item.future.done():
            item.future.set_exception(exc)
