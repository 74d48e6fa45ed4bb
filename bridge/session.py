"""One persistent Modbus TCP session per host. The only module that imports pymodbus.

A `HostSession` owns exactly one pymodbus client for its whole life. Every
request for any unit behind the host goes through one priority queue and one
worker, so requests never overlap on the socket, and writes (priority 0) pass
queued polls (priority 1).

Connecting happens in exactly one place, `_connector`, driven by one tenacity
loop with full-jitter exponential backoff. A lost session is closed, then
re-opened; pymodbus's own reconnect and retries are switched off. While the
host is down, requests fail at once with `HostUnavailable` instead of piling up.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never

from bridge.backoff import BACKOFF_MAX, BACKOFF_MIN, full_jitter
from bridge.errors import ExceptionReply, HostUnavailable, ModbusRequestError, RequestTimeout
from bridge.model import Host, Table

log = logging.getLogger("bridge.session")

# pymodbus logs every timeout at ERROR with raw frames of all clients; we log ourselves.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL + 1)
logging.getLogger("pymodbus").propagate = False

PRIORITY_WRITE = 0
PRIORITY_POLL = 1

Job = Callable[[AsyncModbusTcpClient], Awaitable[Any]]
Claim = Callable[[], bool]
"""Asked when a write job reaches the socket: False means the caller gave up, skip it."""


def _claimed(job: Job, claim: Claim | None) -> Job:
    if claim is None:
        return job

    async def guarded(client: AsyncModbusTcpClient) -> Any:
        if not claim():
            return None
        return await job(client)

    return guarded


class _ConnectFailed(Exception):
    pass


@dataclass
class SessionStats:
    """Counters a health report or a test reads. Plain numbers, no I/O."""

    sockets_opened: int = 0
    reconnects: int = 0
    requests: int = 0
    errors: int = 0
    timeouts: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=1000))

    def percentile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(order=True)
class _Queued:
    priority: int
    seq: int
    job: Job = field(compare=False)
    unit: int = field(compare=False)
    future: asyncio.Future[Any] = field(compare=False)


class HostSession:
    """The single, persistent connection to one Modbus host."""

    def __init__(
        self,
        host: Host,
        *,
        units: int = 1,
        on_state: Callable[[str, bool], None] | None = None,
        backoff_min: float = BACKOFF_MIN,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        self.host = host
        self.stats = SessionStats()
        self._on_state = on_state
        self._backoff = (backoff_min, backoff_max)
        # Recycle the socket after this many timeouts in a row with no answer at all:
        # a dead unit alone never reaches it while its neighbours answer.
        self._silence_limit = max(3, units)
        self._consecutive_timeouts = 0
        self._failures = 0  # consecutive failed connects or answerless sessions: the backoff
        self._answered = False  # any reply since the last connect
        self._client = AsyncModbusTcpClient(
            host.address,
            port=host.port,
            timeout=host.timeout,
            retries=0,
            reconnect_delay=0,
            name=f"bridge-{host.name}",
            trace_connect=self._traced_connect,
        )
        # Our own silence rule replaces pymodbus's "close after retries+3 no-responses".
        self._client.set_max_no_responses(1_000_000)
        self._queue: asyncio.PriorityQueue[_Queued] = asyncio.PriorityQueue()
        self._seq = itertools.count()
        self._up = False
        self._attempted = asyncio.Event()  # set once the first connect attempt finished
        self._need_connect = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._up

    async def start(self) -> None:
        self._need_connect.set()
        self._tasks = [
            asyncio.create_task(self._connector(), name=f"connect:{self.host.name}"),
            asyncio.create_task(self._worker(), name=f"worker:{self.host.name}"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # asyncio.wait, not wait_for: on 3.11 wait_for can swallow a cancellation.
            await asyncio.wait(self._tasks, timeout=1.0)
        self._tasks = []
        self._client.close()
        self._up = False
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(HostUnavailable(self.host.name, item.unit, "stopping"))

    # -- public requests -------------------------------------------------

    async def read(
        self, unit: int, table: Table, start: int, count: int, *, priority: int = PRIORITY_POLL
    ) -> list[int] | list[bool]:
        """Read `count` registers or bits; raises a ModbusRequestError subclass on failure."""

        async def job(client: AsyncModbusTcpClient) -> list[int] | list[bool]:
            call = {
                Table.COIL: client.read_coils,
                Table.DISCRETE: client.read_discrete_inputs,
                Table.HOLDING: client.read_holding_registers,
                Table.INPUT: client.read_input_registers,
            }[table]
            rr = await call(start, count=count, device_id=unit)
            self._check_reply(rr, unit, f"read {table.value} {start}+{count}")
            if table.is_bits:
                return [bool(b) for b in rr.bits[:count]]
            return list(rr.registers)

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

        `claim` (all write methods): called when the job reaches the socket; when it
        returns False the caller gave up waiting and nothing is sent.
        """

        async def job(client: AsyncModbusTcpClient) -> None:
            if len(values) == 1 and not multiple:
                rr = await client.write_register(address, values[0], device_id=unit)
            else:
                rr = await client.write_registers(address, list(values), device_id=unit)
            self._check_reply(rr, unit, f"write holding {address}+{len(values)}")

        await self.submit(unit, _claimed(job, claim), priority=PRIORITY_WRITE)

    async def write_coil(
        self, unit: int, address: int, value: bool, *, multiple: bool, claim: Claim | None = None
    ) -> None:
        """FC5, or FC15 with `multiple`."""

        async def job(client: AsyncModbusTcpClient) -> None:
            if multiple:
                rr = await client.write_coils(address, [value], device_id=unit)
            else:
                rr = await client.write_coil(address, value, device_id=unit)
            self._check_reply(rr, unit, f"write coil {address}")

        await self.submit(unit, _claimed(job, claim), priority=PRIORITY_WRITE)

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

        async def job(client: AsyncModbusTcpClient) -> None:
            if mask_write:
                and_mask = 0xFFFF ^ (1 << bit)
                or_mask = (1 << bit) if value else 0
                rr = await client.mask_write_register(
                    address=address, and_mask=and_mask, or_mask=or_mask, device_id=unit
                )
                self._check_reply(rr, unit, f"mask write {address}")
                return
            rr = await client.read_holding_registers(address, count=1, device_id=unit)
            self._check_reply(rr, unit, f"read holding {address} (for bit write)")
            current = rr.registers[0]
            new = (current | (1 << bit)) if value else (current & ~(1 << bit) & 0xFFFF)
            if multiple:
                wr = await client.write_registers(address, [new], device_id=unit)
            else:
                wr = await client.write_register(address, new, device_id=unit)
            self._check_reply(wr, unit, f"write holding {address} (bit {bit})")

        await self.submit(unit, _claimed(job, claim), priority=PRIORITY_WRITE)

    async def submit(self, unit: int, job: Job, *, priority: int = PRIORITY_POLL) -> Any:
        """Queue `job` for the worker; everything on the socket goes through here."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Queued(priority, next(self._seq), job, unit, future))
        return await future

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    # -- internals -------------------------------------------------------

    def _check_reply(self, rr: Any, unit: int, what: str) -> None:
        if rr.isError():
            code = int(getattr(rr, "exception_code", 0) or 0)
            raise ExceptionReply(self.host.name, unit, code, what)

    def _traced_connect(self, connected: bool) -> None:
        if connected:
            self.stats.sockets_opened += 1

    def _next_wait(self) -> float:
        return full_jitter(self._failures, low=self._backoff[0], high=self._backoff[1])

    def _backoff_wait(self, _state: RetryCallState) -> float:
        return self._next_wait()

    def _log_retry(self, state: RetryCallState) -> None:
        if self._failures == 1:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "host %s (%s:%d) unreachable: %s; retrying with backoff",
                self.host.name,
                self.host.address,
                self.host.port,
                exc,
            )

    async def _open_once(self) -> None:
        # Never a second socket: whatever was there is closed before connecting.
        self._client.close()
        ok = await self._client.connect()
        if not ok or not self._client.connected:
            self._failures += 1
            raise _ConnectFailed(f"cannot connect to {self.host.address}:{self.host.port}")
        self._set_keepalive()

    async def _connector(self) -> None:
        """The only place that opens the socket."""
        first = True
        while True:
            await self._need_connect.wait()
            if self._failures:
                # The last session died without a single answer (a flapping host):
                # wait before reopening so a host that accepts-then-drops is no storm.
                await asyncio.sleep(self._next_wait())
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
            self._consecutive_timeouts = 0
            self._answered = False
            self._up = True
            if not first:
                self.stats.reconnects += 1
            first = False
            log.info("host %s connected (%s:%d)", self.host.name, self.host.address, self.host.port)
            if self._on_state:
                self._on_state(self.host.name, True)

    def _lost(self, reason: str) -> None:
        """Mark the session lost and hand it to the connector. Idempotent."""
        if not self._up:
            return
        self._up = False
        self._client.close()
        if not self._answered:
            self._failures += 1
        log.warning("host %s: session lost (%s); reconnecting", self.host.name, reason)
        if self._on_state:
            self._on_state(self.host.name, False)
        self._need_connect.set()

    def _set_keepalive(self) -> None:
        transport = getattr(self._client.ctx, "transport", None)
        sock = transport.get_extra_info("socket") if transport else None
        if sock is None:
            return
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, self.host.keepalive_idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, self.host.keepalive_interval)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, self.host.keepalive_count)

    async def _worker(self) -> None:
        """Run queued jobs one at a time, writes first."""
        while True:
            item = await self._queue.get()
            if item.future.done():  # the caller gave up
                continue
            if not self._up and not self._attempted.is_set():
                await self._attempted.wait()
                await asyncio.sleep(0)  # let the connector publish its result
            if self._up and not self._client.connected:
                self._lost("connection closed by peer")
            if not self._up:
                item.future.set_exception(
                    HostUnavailable(self.host.name, item.unit, "not connected")
                )
                continue
            await self._run(item)
            if self.host.pause > 0:
                await asyncio.sleep(self.host.pause)

    async def _run(self, item: _Queued) -> None:
        started = time.monotonic()
        self.stats.requests += 1
        try:
            result = await item.job(self._client)
        except ModbusRequestError as exc:
            # The device answered (an exception reply): the link is healthy.
            self._consecutive_timeouts = 0
            self._answered = True
            self._failures = 0
            self.stats.errors += 1
            self._settle(item, exc=exc)
        except ConnectionException as exc:
            self.stats.errors += 1
            self._lost(f"connection error: {exc}")
            self._settle(item, exc=HostUnavailable(self.host.name, item.unit, "connection lost"))
        except ModbusIOException:
            self.stats.errors += 1
            if not self._client.connected:
                self._lost("connection closed")
                self._settle(
                    item, exc=HostUnavailable(self.host.name, item.unit, "connection lost")
                )
                return
            self.stats.timeouts += 1
            self._consecutive_timeouts += 1
            reason = f"no answer within {self.host.timeout:g}s"
            self._settle(item, exc=RequestTimeout(self.host.name, item.unit, reason))
            if self._consecutive_timeouts >= self._silence_limit:
                self._lost(f"{self._consecutive_timeouts} requests in a row unanswered")
        except (ModbusException, OSError) as exc:
            self.stats.errors += 1
            if not self._client.connected:
                self._lost(f"{type(exc).__name__}: {exc}")
            self._settle(item, exc=ModbusRequestError(self.host.name, item.unit, str(exc)))
        except asyncio.CancelledError:
            if not item.future.done():
                item.future.cancel()
            raise
        else:
            self._consecutive_timeouts = 0
            self._answered = True
            self._failures = 0
            self.stats.latencies.append(time.monotonic() - started)
            if not item.future.done():
                item.future.set_result(result)

    @staticmethod
    def _settle(item: _Queued, *, exc: BaseException) -> None:
        if not item.future.done():
            item.future.set_exception(exc)
