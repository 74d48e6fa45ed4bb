"""One persistent Modbus TCP session per host. The only module that imports pymodbus.

A `HostSession` owns exactly one pymodbus client for its whole life. Every
request for any unit behind the host goes through one priority queue and one
worker, so requests never overlap on the socket, and writes (priority 0) pass
queued polls (priority 1).

Connecting happens in exactly one place, `_connector`, driven by one tenacity
loop with full-jitter exponential backoff. A lost session is closed, then
re-opened; pymodbus's own reconnect and retries are switched off. While the
host is down, requests fail at once with `HostUnavailable` instead of piling up.

Replies are checked before they are believed. On Modbus TCP every frame is
checked against the request on the wire (transaction id, unit, function, a byte
count that fits the frame) before pymodbus decodes it; a reply that fails a check
fails its request with `BadReply` and the socket stays, because MBAP frames carry
their length. A stream that cannot be framed (a bad MBAP header) is closed and
reopened through the backoff, and answers on such a session never reset it.
Nothing a device sends can raise inside pymodbus's protocol handler.

A host with `framer: rtu` (a serial gateway in transparent mode) carries RTU frames,
which have no transaction id. After a failed request the worker first drains the
line: it waits until nothing has arrived for a quiet period, so a late reply lands
while no request is pending and pymodbus drops it, and pymodbus clears its receive
buffer before the next request. Replies are also checked against the request (unit,
function code, length or echo); a mismatch is discarded and drained the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import itertools
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, ModbusBaseClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.pdu import bit_message as pdu_bit
from pymodbus.pdu import register_message as pdu_reg
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never

from bridge.backoff import BACKOFF_MAX, BACKOFF_MIN, full_jitter
from bridge.codec import apply_bit, crc16
from bridge.errors import (
    BadReply,
    ExceptionReply,
    HostUnavailable,
    ModbusRequestError,
    RequestTimeout,
)
from bridge.logs import Throttle
from bridge.model import Host, SerialLink, Table, TcpLink
from bridge.stats import SessionStats

log = logging.getLogger("bridge.session")
_throttle = Throttle(log, window=60.0)

# pymodbus logs every timeout at ERROR with raw frames of all clients; we log ourselves.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL + 1)
logging.getLogger("pymodbus").propagate = False

PRIORITY_WRITE = 0
PRIORITY_POLL = 1

DRAIN_MAX_PERIODS = 5  # a line that never goes quiet: stop draining after this many periods
CLEAN_AFTER = 60.0  # seconds a session must last before earlier garbage is forgiven
_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit
_MBAP_MAX_LENGTH = 254  # unit id + a PDU of at most 253 bytes
_READ_FUNCTION = {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}
_READ_REQUEST: dict[Table, type[ModbusPDU]] = {
    Table.COIL: pdu_bit.ReadCoilsRequest,
    Table.DISCRETE: pdu_bit.ReadDiscreteInputsRequest,
    Table.HOLDING: pdu_reg.ReadHoldingRegistersRequest,
    Table.INPUT: pdu_reg.ReadInputRegistersRequest,
}
# The replies to the requests the bridge sends, by function code.
_RESPONSE: dict[int, type[ModbusPDU]] = {
    1: pdu_bit.ReadCoilsResponse,
    2: pdu_bit.ReadDiscreteInputsResponse,
    3: pdu_reg.ReadHoldingRegistersResponse,
    4: pdu_reg.ReadInputRegistersResponse,
    5: pdu_bit.WriteSingleCoilResponse,
    6: pdu_reg.WriteSingleRegisterResponse,
    15: pdu_bit.WriteMultipleCoilsResponse,
    16: pdu_reg.WriteMultipleRegistersResponse,
    22: pdu_reg.MaskWriteRegisterResponse,
}

Job = Callable[[ModbusBaseClient], Awaitable[Any]]
Claim = Callable[[], bool]
"""Asked when a write job reaches the socket: False means the caller gave up, skip it."""


def _no_answer(waiting: asyncio.Future[Any]) -> None:
    if not waiting.done():
        waiting.set_exception(ModbusIOException("no answer within the timeout"))


def _claimed(job: Job, claim: Claim | None) -> Job:
    if claim is None:
        return job

    async def guarded(client: ModbusBaseClient) -> Any:
        if not claim():
            return None
        return await job(client)

    return guarded


class _ConnectFailed(Exception):
    pass


class _Mismatch(Exception):
    """A reply that cannot belong to the request in flight (another function, count,
    address or unit: on RTU a late or stray frame)."""


class _Malformed(Exception):
    """A reply frame that cannot be decoded; set on the pending request by the frame guard."""


Trace = Callable[[bool, bytes], bytes]
TraceConnect = Callable[[bool], None]


class _Transport:
    """What a host's link means to the session: how to build its one pymodbus client,
    what to do once it is open, and how to say why it could not be opened. Connecting,
    reopening and the request path are the session's, the same for every link."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def client(self, *, trace_packet: Trace, trace_connect: TraceConnect) -> ModbusBaseClient:
        raise NotImplementedError

    def _options(self, trace_packet: Trace, trace_connect: TraceConnect) -> dict[str, Any]:
        """What every link's client gets: pymodbus's own retries and reconnects off (the
        session owns both), the host's timeout, and the session's trace hooks."""
        return {
            "timeout": self.host.timeout,
            "retries": 0,
            "reconnect_delay": 0,
            "name": f"bridge-{self.host.name}",
            "trace_packet": trace_packet,
            "trace_connect": trace_connect,
        }

    def opened(self, client: ModbusBaseClient) -> None:
        """Called after every successful open."""

    def unreachable(self) -> str:
        """Why the last open failed, for the log."""
        return f"cannot connect to {self.host.describe()}"

    @property
    def frame_gap(self) -> float:
        """Silence the line needs between two frames (0: the link keeps frames apart)."""
        return 0.0


class _TcpTransport(_Transport):
    """A TCP connection: Modbus TCP (MBAP) or RTU frames through a transparent gateway."""

    def __init__(self, host: Host, link: TcpLink) -> None:
        super().__init__(host)
        self.link = link

    def client(self, *, trace_packet: Trace, trace_connect: TraceConnect) -> ModbusBaseClient:
        return AsyncModbusTcpClient(
            self.link.address,
            port=self.link.port,
            framer=FramerType.RTU if self.host.rtu else FramerType.SOCKET,
            **self._options(trace_packet, trace_connect),
        )

    def opened(self, client: ModbusBaseClient) -> None:
        """TCP keepalive on the socket: a dead peer is noticed even while idle."""
        transport = getattr(client.ctx, "transport", None)
        sock = transport.get_extra_info("socket") if transport else None
        if sock is None:
            return
        link = self.link
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, link.keepalive_idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, link.keepalive_interval)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, link.keepalive_count)


class _SerialTransport(_Transport):
    """A serial port (an RS485 adapter): Modbus RTU, one open port for the process.

    RTU frames are delimited by silence: at least 3.5 character times between two
    frames (1.75 ms above 19200 baud, as the Modbus serial line spec fixes it).
    """

    def __init__(self, host: Host, link: SerialLink) -> None:
        super().__init__(host)
        self.link = link

    def client(self, *, trace_packet: Trace, trace_connect: TraceConnect) -> ModbusBaseClient:
        link = self.link
        return AsyncModbusSerialClient(
            link.port,
            framer=FramerType.RTU,
            baudrate=link.baudrate,
            bytesize=link.bytesize,
            parity=link.parity.value,
            stopbits=link.stopbits,
            **self._options(trace_packet, trace_connect),
        )

    def unreachable(self) -> str:
        """The likely fix, not just the failure: a missing adapter or a missing group."""
        port = self.link.port
        try:
            st = os.stat(port)
        except FileNotFoundError:
            return (
                f"serial port {port} does not exist: is the USB adapter plugged in? (a "
                "/dev/serial/by-id/... path names the adapter and survives replugging)"
            )
        except OSError as exc:
            return f"serial port {port}: {exc.strerror or exc}"
        if not os.access(port, os.R_OK | os.W_OK):
            try:
                group = grp.getgrgid(st.st_gid).gr_name
            except KeyError:
                group = str(st.st_gid)
            return (
                f"permission denied on serial port {port}: add the bridge's user to the "
                f"'{group}' group (sudo usermod -aG {group} <user>; under systemd, "
                f"SupplementaryGroups={group})"
            )
        return f"cannot open serial port {port} (is another program using it?)"

    @property
    def frame_gap(self) -> float:
        baudrate = self.link.baudrate
        if baudrate > 19200:
            return 0.00175
        return 3.5 * self.link.char_bits / baudrate


def _transport_for(host: Host) -> _Transport:
    if isinstance(host.link, TcpLink):
        return _TcpTransport(host, host.link)
    return _SerialTransport(host, host.link)


def _rtu_frame_size(data: bytes) -> int | None:
    """Length of the RTU reply frame starting at data[0] (at least 3 bytes), from its
    function code and byte count; None for a function the bridge never sends."""
    function = data[1]
    if function & 0x80:
        return 5  # unit, function | 0x80, exception code, CRC
    if function in (1, 2, 3, 4):
        return 5 + data[2]
    if function in (5, 6, 15, 16):
        return 8
    if function == 22:
        return 10
    return None


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
        backoff_min: float = BACKOFF_MIN,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        self.host = host
        self.stats = SessionStats()
        self._backoff = (backoff_min, backoff_max)
        # Recycle the socket after this many timeouts in a row with no answer at all:
        # a dead unit alone never reaches it while its neighbours answer.
        self._silence_limit = max(3, units)
        self._consecutive_timeouts = 0
        self._failures = 0  # consecutive failed connects or answerless sessions: the backoff
        self._answered = False  # any reply since the last connect
        # RTU framing has no transaction id: after a failure, wait for a quiet line.
        self._rtu = host.rtu
        self._allow_zero_tid = isinstance(host.link, TcpLink) and host.link.allow_zero_tid
        baudrate = host.bus_baudrate or 9600
        self._quiet = max(host.timeout, 3.5 * host.char_bits / baudrate)
        self._stale_at: float | None = None  # when a failure left the line unsettled
        self._last_rx = 0.0  # monotonic time bytes last arrived (RTU only)
        self._sent: tuple[int, int] | None = None  # (transaction id, unit) on the wire (TCP)
        self._garbage = 0  # sessions in a row lost to an unframeable stream
        self._connected_at = 0.0
        self._transport = _transport_for(host)
        self._client = self._transport.client(
            trace_packet=self._traced_packet, trace_connect=self._traced_connect
        )
        self.generation = 0  # sessions opened so far: "a new connection since" for backoffs
        self.open_error: str | None = None  # why the last attempt to open failed (None: open)
        # Our own silence rule replaces pymodbus's "close after retries+3 no-responses".
        self._client.set_max_no_responses(1_000_000)
        # The session runs each transaction itself (`_transact`): pymodbus encodes the
        # request and carries bytes; every received byte comes to the frame guard
        # (`_on_data`), which frames, checks and decodes the reply.
        self._client.ctx.callback_data = self._on_data  # type: ignore[method-assign]
        self._waiting: asyncio.Future[ModbusPDU] | None = None  # the request on the wire
        self._unit = 0  # the unit of the request on the wire
        # A serial line needs silence between frames (kept before every request).
        self._frame_gap = self._transport.frame_gap
        self._char_time = host.char_bits / (host.bus_baudrate or 9600)
        self._line_busy_until = 0.0  # monotonic: the end of the last frame on the line
        self._read_jobs: dict[tuple[int, Table, int, int], Job] = {}
        self._busy = False  # a job runs (in the worker or on the fast path)
        self._holding = False  # the worker has taken a job and is about to run it
        self._idle = asyncio.Event()  # set while no job runs
        self._idle.set()
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

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the socket (metrics)."""
        return self._queue.qsize()

    def set_units(self, units: int) -> None:
        """The number of unit ids behind the host changed (a reload): the silence rule
        counts them."""
        self._silence_limit = max(3, units)

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
            # Even when the caller's deadline cuts the wait short: the socket is closed
            # and nobody is left waiting on a queued request.
            self._tasks = []
            self._client.close()
            self._up = False
            waiting = self._waiting  # a request on the fast path: it ends now, not later
            if waiting is not None and not waiting.done():
                waiting.set_exception(ConnectionException("the session is stopping"))
            while not self._queue.empty():
                self._settle(
                    self._queue.get_nowait(),
                    exc=HostUnavailable(self.host.name, 0, "the bridge is stopping"),
                )

    # -- public requests -------------------------------------------------

    async def read(
        self, unit: int, table: Table, start: int, count: int, *, priority: int = PRIORITY_POLL
    ) -> list[int] | list[bool]:
        """Read `count` registers or bits; raises a ModbusRequestError subclass on failure."""

        job = self._read_jobs.get((unit, table, start, count))
        if job is None:
            job = self._read_jobs[unit, table, start, count] = self._read_job(
                unit, table, start, count
            )
        result: list[int] | list[bool] = await self.submit(unit, job, priority=priority)
        return result

    def _read_job(self, unit: int, table: Table, start: int, count: int) -> Job:
        """The job reading one block, built once per block (polls repeat it)."""
        request = _READ_REQUEST[table](address=start, count=count, dev_id=unit)
        function = _READ_FUNCTION[table]
        want = (count + 7) // 8 * 8 if table.is_bits else count

        async def job(client: ModbusBaseClient) -> list[int] | list[bool]:
            rr = await self._transact(request)
            if rr.function_code != function or rr.dev_id != unit:
                self._check_reply(rr, unit, f"read {table.value} {start}+{count}", function)
            if table.is_bits:
                if len(rr.bits) != want:
                    raise _Mismatch(f"read {table.value} {start}+{count}: {len(rr.bits)} bits")
                return [bool(b) for b in rr.bits[:count]]
            if len(rr.registers) != want:
                what = f"read {table.value} {start}+{count}"
                raise _Mismatch(f"{what}: the reply holds {len(rr.registers)} values")
            return list(rr.registers)

        return job

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

        async def job(client: ModbusBaseClient) -> None:
            what = f"write holding {address}+{len(values)}"
            regs = list(values)
            request: ModbusPDU
            if len(values) == 1 and not multiple:
                request = pdu_reg.WriteSingleRegisterRequest(
                    address=address, registers=regs, dev_id=unit
                )
                rr = await self._transact(request)
                self._check_reply(rr, unit, what, 6, echo=(address, regs))
            else:
                request = pdu_reg.WriteMultipleRegistersRequest(
                    address=address, registers=regs, dev_id=unit
                )
                rr = await self._transact(request)
                self._check_reply(rr, unit, what, 16, echo=(address, len(values)))

        await self.submit(unit, _claimed(job, claim), priority=PRIORITY_WRITE)

    async def write_coil(
        self, unit: int, address: int, value: bool, *, multiple: bool, claim: Claim | None = None
    ) -> None:
        """FC5, or FC15 with `multiple`."""

        async def job(client: ModbusBaseClient) -> None:
            what = f"write coil {address}"
            request: ModbusPDU
            if multiple:
                request = pdu_bit.WriteMultipleCoilsRequest(
                    address=address, bits=[value], dev_id=unit
                )
                rr = await self._transact(request)
                self._check_reply(rr, unit, what, 15, echo=(address, 1))
            else:
                request = pdu_bit.WriteSingleCoilRequest(address=address, bits=[value], dev_id=unit)
                rr = await self._transact(request)
                self._check_reply(rr, unit, what, 5, echo=(address, [value]))

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

        async def job(client: ModbusBaseClient) -> None:
            if mask_write:
                and_mask = 0xFFFF ^ (1 << bit)
                or_mask = (1 << bit) if value else 0
                mask = pdu_reg.MaskWriteRegisterRequest(
                    address=address, and_mask=and_mask, or_mask=or_mask, dev_id=unit
                )
                rr = await self._transact(mask)
                self._check_reply(rr, unit, f"mask write {address}", 22, echo=(address, None))
                return
            what = f"read holding {address} (for bit write)"
            read = pdu_reg.ReadHoldingRegistersRequest(address=address, count=1, dev_id=unit)
            rr = await self._transact(read)
            self._check_reply(rr, unit, what, 3)
            if len(rr.registers) != 1:
                raise _Mismatch(f"{what}: the reply holds {len(rr.registers)} values")
            current = rr.registers[0]
            new = apply_bit(current, bit, value)  # `bit` is already the wire bit
            what = f"write holding {address} (bit {bit})"
            write: ModbusPDU
            if multiple:
                write = pdu_reg.WriteMultipleRegistersRequest(
                    address=address, registers=[new], dev_id=unit
                )
                wr = await self._transact(write)
                self._check_reply(wr, unit, what, 16, echo=(address, 1))
            else:
                write = pdu_reg.WriteSingleRegisterRequest(
                    address=address, registers=[new], dev_id=unit
                )
                wr = await self._transact(write)
                self._check_reply(wr, unit, what, 6, echo=(address, [new]))

        await self.submit(unit, _claimed(job, claim), priority=PRIORITY_WRITE)

    async def submit(self, unit: int, job: Job, *, priority: int = PRIORITY_POLL) -> Any:
        """Run `job` on the link; everything on the socket goes through here.

        When the link is idle the job runs at once in the caller's task (the fast
        path: no queue, no hop to the worker); otherwise it waits in the queue,
        writes ahead of polls, for the worker. Either way one job at a time.
        """
        if self._free():
            return await self._execute(unit, job)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Queued(priority, next(self._seq), job, unit, future))
        return await future

    # -- internals -------------------------------------------------------

    async def _transact(self, request: ModbusPDU) -> ModbusPDU:
        """Send `request` and wait for its reply, at most the host's timeout.

        One request at a time (the worker, or the caller on the fast path, runs one
        job at a time), so there is no lock to take and no other reply to sort out:
        the frame guard answers `_waiting` with the one decoded reply that fits the
        request on the wire. A timeout raises ModbusIOException, a link that closes
        meanwhile ConnectionException at once.
        """
        ctx = self._client.ctx
        if not ctx.transport:
            raise ConnectionException("not connected")
        if self._frame_gap:  # a serial line: 3.5 characters of silence before a frame
            wait = self._line_busy_until + self._frame_gap - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        loop = asyncio.get_running_loop()
        self._unit = request.dev_id
        request.transaction_id = ctx.getNextTID()
        ctx.recv_buffer = b""  # what a late reply left behind is never this answer
        waiting = self._waiting = loop.create_future()
        ctx.pdu_send(request)
        timer = loop.call_at(loop.time() + self.host.timeout, _no_answer, waiting)
        try:
            reply: ModbusPDU = await waiting
        finally:
            timer.cancel()
            if self._waiting is waiting:
                self._waiting = None
        return reply

    def _answer(self, reply: bytes, unit: int, tid: int) -> None:
        """Decode a reply PDU that fits the request on the wire and hand it over."""
        waiting = self._waiting
        if waiting is None or waiting.done():
            self.stats.stray_frames += 1  # a late reply: nothing waits for it any more
            return
        try:
            function = reply[0]
            if function & 0x80:
                pdu: ModbusPDU = ExceptionResponse(function & 0x7F)
            else:
                cls = _RESPONSE.get(function)
                if cls is None:
                    self._reject_reply(f"reply with function code {function}")
                    return
                pdu = cls()
            pdu.decode(reply[1:])
        except Exception as exc:  # a malformed PDU: nothing of it is believed
            self._reject_reply(f"undecodable reply ({type(exc).__name__}: {exc})")
            return
        pdu.dev_id = unit
        pdu.transaction_id = tid
        waiting.set_result(pdu)

    def _check_reply(
        self,
        rr: Any,
        unit: int,
        what: str,
        function: int,
        *,
        echo: tuple[int, int | list[int] | list[bool] | None] | None = None,
    ) -> None:
        """Raise for an exception reply, and for a reply to another request.

        `echo` is what a write reply repeats: (address, count) for FC 15/16,
        (address, [value]) for FC 5/6, (address, None) for FC 22.
        """
        got_fc = int(rr.function_code) & 0x7F
        if (unit and rr.dev_id != unit) or got_fc != function:
            raise _Mismatch(f"{what}: reply from unit {rr.dev_id}, function {got_fc}")
        if rr.isError():
            code = int(getattr(rr, "exception_code", 0) or 0)
            raise ExceptionReply(self.host.name, unit, code, what)
        if echo is not None:
            address, detail = echo
            if rr.address != address:
                raise _Mismatch(f"{what}: the reply echoes address {rr.address}")
            if isinstance(detail, int) and rr.count != detail:
                raise _Mismatch(f"{what}: the reply echoes count {rr.count}")
            if isinstance(detail, list):
                got = list(rr.bits[:1]) if function == 5 else list(rr.registers)
                if got != detail:
                    raise _Mismatch(f"{what}: the reply echoes value {got}")

    def _traced_packet(self, sending: bool, data: bytes) -> bytes:
        now = time.monotonic()
        if not sending:
            self._last_rx = now
            self._line_busy_until = max(self._line_busy_until, now)
        elif self._rtu:
            # The frame is on the line until its last character has gone out.
            self._line_busy_until = now + len(data) * self._char_time
        elif len(data) >= _MBAP.size:
            tid, _pid, _length, unit = _MBAP.unpack_from(data)
            self._sent = (tid, unit)
        return data

    # -- the frame guard -------------------------------------------------------

    def _on_data(self, data: bytes, addr: tuple[str, int] | None = None) -> int:
        """Everything received, before pymodbus decodes it; returns the bytes used.

        pymodbus raises inside its protocol handler on some malformed replies (a byte
        count larger than the data, an exception reply without its code): asyncio
        then logs a traceback and closes the socket. Here such a reply fails only its
        request. On RTU there are no frame lengths to check: anything undecodable is
        discarded and the line drained.
        """
        if self._rtu:
            return self._on_rtu_data(data, addr)
        used = 0
        while len(data) - used > _MBAP.size:
            tid, pid, length, unit = _MBAP.unpack_from(data, used)
            if pid != 0 or not 2 <= length <= _MBAP_MAX_LENGTH:
                # No frame boundary to trust: the stream cannot be resynchronised.
                reason = f"invalid Modbus TCP header (protocol id {pid}, length {length})"
                self._reject_reply(reason)
                self._lost(f"{reason}: the byte stream is out of step", garbage=True)
                return len(data)
            end = used + 6 + length
            if len(data) < end:
                break  # wait for the rest of the frame
            admitted = self._admit(data[used:end], tid, unit)
            used = end
            if admitted is not None:
                self._answer(admitted[7:], unit, self._sent[0] if self._sent else tid)
        return used

    def _admit(self, frame: bytes, tid: int, unit: int) -> bytes | None:
        """A TCP frame that answers the request on the wire, or None when it does not
        (dropped, or its request failed here)."""
        sent = self._sent
        if sent is None or tid != sent[0]:
            if tid == 0 and sent is not None and self._allow_zero_tid:
                pass  # taken as the answer to the request on the wire
            elif tid == 0 and sent is not None:
                self.stats.stray_frames += 1
                _throttle.log(
                    logging.WARNING,
                    ("tid 0", self.host.name),
                    f"replies with transaction id 0 from host {self.host.name}",
                    "host %s: ignored a reply with transaction id 0 (the request had %d); if "
                    "this device always answers so, set allow_zero_tid: true on the host",
                    self.host.name,
                    sent[0],
                )
                return None
            else:
                # A late reply to a request that timed out, or a reply that names no
                # request (transaction id 0 without allow_zero_tid): never believed.
                self.stats.stray_frames += 1
                log.debug(
                    "host %s: dropped a reply with transaction id %d (waiting for %s)",
                    self.host.name,
                    tid,
                    "none" if sent is None else sent[0],
                )
                return None
        function = frame[7]
        problem = None
        if sent is not None and sent[1] and unit != sent[1]:
            problem = f"reply from unit {unit} to a request for unit {sent[1]}"
        elif function & 0x80:
            if len(frame) != 9:
                problem = f"exception reply of {len(frame) - 7} bytes (a code byte expected)"
        elif function in (1, 2, 3, 4):
            if len(frame) < 9 or frame[8] != len(frame) - 9:
                counted = frame[8] if len(frame) > 8 else "no"
                problem = f"byte count {counted} for {len(frame) - 9} data bytes"
        elif function in (5, 6, 15, 16) and len(frame) != 12:
            problem = f"function {function} reply of {len(frame) - 7} bytes (5 expected)"
        elif function == 22 and len(frame) != 14:
            problem = f"function 22 reply of {len(frame) - 7} bytes (7 expected)"
        if problem is not None:
            self._reject_reply(problem)
            return None
        return frame

    def _on_rtu_data(self, data: bytes, addr: tuple[str, int] | None) -> int:
        """RTU (serial port or transparent gateway): a reply whose CRC does not match is
        counted and discarded here (pymodbus would drop it silently and let the request
        time out); a good one goes on to be decoded and checked against the request."""
        used = 0
        while used < len(data):
            rest = data[used:]
            if len(rest) < 3:
                return used  # a frame has begun: on a real line bytes trickle in
            size = _rtu_frame_size(rest)
            if size is None:  # not a reply to anything the bridge sends: line noise
                self._reject_reply(f"unexpected function code {rest[1]}")
                return len(data)
            if len(rest) < size:
                return used  # the rest is still on its way (the request's timeout bounds it)
            if crc16(rest[: size - 2]) != int.from_bytes(rest[size - 2 : size], "little"):
                self.stats.crc_errors += 1
                self.stats.unit(self._unit).crc_errors += 1
                self._reject_reply(f"CRC error in a {size}-byte reply")
                return len(data)  # nothing here can be trusted; the line is drained
            # One frame at a time: a late reply and the awaited one can come in one read.
            if rest[0] == self._unit or not self._unit:
                self._answer(rest[1 : size - 2], rest[0], 0)
            else:
                self.stats.stray_frames += 1  # another unit's late reply: not ours
            used += size
        return used

    def _reject_reply(self, reason: str) -> None:
        """Fail the request on the wire with `reason` (a reply arrived, unusable)."""
        self.stats.bad_replies += 1
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            waiting.set_exception(_Malformed(reason))

    def _traced_connect(self, connected: bool) -> None:
        if connected:
            self.stats.sockets_opened += 1
            return
        # The link closed under a request: fail it now, not after the timeout.
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            waiting.set_exception(ConnectionException("the connection closed"))

    def _next_wait(self) -> float:
        return full_jitter(self._failures, low=self._backoff[0], high=self._backoff[1])

    def _backoff_wait(self, _state: RetryCallState) -> float:
        return self._next_wait()

    def _log_retry(self, state: RetryCallState) -> None:
        if self._failures == 1:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "host %s (%s) unreachable: %s; retrying with backoff",
                self.host.name,
                self.host.describe(),
                exc,
            )

    async def _open_once(self) -> None:
        # Never a second socket: whatever was there is closed before connecting.
        self._client.close()
        ok = await self._client.connect()
        if not ok or not self._client.connected:
            self._failures += 1
            self.open_error = self._transport.unreachable()
            raise _ConnectFailed(self.open_error)
        self.open_error = None
        self._transport.opened(self._client)

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
            self._sent = None
            self._connected_at = time.monotonic()
            self.generation += 1
            self._up = True
            if not first:
                self.stats.reconnects += 1
            first = False
            log.info("host %s connected (%s)", self.host.name, self.host.describe())

    def _lost(self, reason: str, *, garbage: bool = False) -> None:
        """Mark the session lost and hand it to the connector. Idempotent.

        `garbage`: the peer sent bytes that cannot be framed. Such a session counts
        as failed however many answers it gave, so a device that poisons every
        session is retried with a growing backoff, not at once.
        """
        if not self._up:
            return
        self._up = False
        self._client.close()
        if garbage:
            self._garbage += 1
        if garbage or not self._answered:
            self._failures += 1
        log.warning("host %s: session lost (%s); reconnecting", self.host.name, reason)
        self._need_connect.set()

    async def _drain(self) -> None:
        """RTU: wait until nothing has arrived for a quiet period since the failure.

        A late reply then lands while no request is pending, and pymodbus drops it
        ("received pdu without a corresponding request"); it also clears its receive
        buffer when it sends the next request. Bytes arriving restart the quiet period,
        up to DRAIN_MAX_PERIODS periods in all (a line that never goes quiet is left to
        the reply checks and the silence rule).
        """
        stale_at = self._stale_at
        if stale_at is None:
            return
        give_up = stale_at + DRAIN_MAX_PERIODS * self._quiet
        while True:
            quiet_from = max(stale_at, self._last_rx)
            wait = min(quiet_from + self._quiet, give_up) - time.monotonic()
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        self._stale_at = None
        self.stats.drains += 1

    async def _worker(self) -> None:
        """Run queued jobs one at a time, writes first."""
        while True:
            if self._stale_at is not None and self._up:
                await self._drain()  # before taking a job: one queued meanwhile may go first
            item = await self._queue.get()
            if item.future.done():  # the caller gave up
                continue
            self._holding = True  # from here on no caller may take the fast path
            try:
                while self._busy:  # a job runs on the fast path: it is short
                    await self._idle.wait()
                if not self._up and not self._attempted.is_set():
                    await self._attempted.wait()
                    await asyncio.sleep(0)  # let the connector publish its result
                if self._up and not self._client.connected:
                    self._lost("connection closed by peer")
                if not self._up:
                    exc = HostUnavailable(self.host.name, item.unit, "not connected")
                    self._settle(item, exc=exc)
                    continue
                if self._stale_at is not None:  # went stale before the session came back
                    await self._drain()
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

    def _free(self) -> bool:
        """Whether a caller may run its job at once, in its own task (the fast path):
        the link is up and in step, nothing runs, nothing waits in the queue."""
        return (
            self._up
            and not self._busy
            and not self._holding
            and self._stale_at is None
            and self.host.pause <= 0
            and self._queue.empty()
            and self._client.connected
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

    async def _execute(self, unit: int, job: Job) -> Any:
        """Run one job on the link; every failure comes out as a ModbusRequestError,
        with the link's bookkeeping (silence rule, drain, lost session) done."""
        started = time.monotonic()
        self.stats.requests += 1
        self._unit = unit
        self._busy = True
        self._idle.clear()
        try:
            result = await job(self._client)
        except ModbusRequestError as exc:
            # The device answered (an exception reply): the link is healthy.
            self._consecutive_timeouts = 0
            self._answered_now()
            self.stats.failed("exception" if isinstance(exc, ExceptionReply) else "other")
            raise
        except (_Mismatch, _Malformed) as exc:
            # An answer that does not fit the request. On RTU it may be a late or stray
            # frame and ours may still come: drain. On TCP the frames stay in step.
            self.stats.failed("bad_reply")
            self.stats.unit(unit).bad_replies += 1
            if isinstance(exc, _Mismatch):
                self.stats.bad_replies += 1
            if self._rtu:
                self._stale_at = time.monotonic()
            log.debug("host %s unit %d: bad reply (%s)", self.host.name, unit, exc)
            reason = f"the reply did not match the request ({exc})"
            raise BadReply(self.host.name, unit, reason) from None
        except ConnectionException as exc:
            self.stats.failed("connection")
            self._lost(f"connection error: {exc}")
            raise HostUnavailable(self.host.name, unit, "connection lost") from None
        except ModbusIOException:
            if not self._client.connected:
                self.stats.failed("connection")
                self._lost("connection closed")
                raise HostUnavailable(self.host.name, unit, "connection lost") from None
            self.stats.failed("timeout")
            self.stats.timeouts += 1
            self.stats.unit(unit).timeouts += 1
            self._consecutive_timeouts += 1
            if self._rtu:  # a late reply may still come: drain before the next request
                self._stale_at = time.monotonic()
            if self._consecutive_timeouts >= self._silence_limit:
                self._lost(f"{self._consecutive_timeouts} requests in a row unanswered")
            reason = f"no answer within {self.host.timeout:g}s"
            raise RequestTimeout(self.host.name, unit, reason) from None
        except (ModbusException, OSError) as exc:
            self.stats.failed("other" if self._client.connected else "connection")
            if not self._client.connected:
                self._lost(f"{type(exc).__name__}: {exc}")
            elif self._rtu:
                self._stale_at = time.monotonic()
            raise ModbusRequestError(self.host.name, unit, str(exc)) from None
        except asyncio.CancelledError:
            if self._rtu:  # the request may be on the line: let it settle first
                self._stale_at = time.monotonic()
            raise
        except Exception as exc:
            # A bug: this request fails, the worker (and every other device on the
            # host) carries on.
            log.exception("host %s unit %d: request failed unexpectedly", self.host.name, unit)
            self.stats.failed("other")
            if self._rtu:
                self._stale_at = time.monotonic()
            reason = f"unexpected {type(exc).__name__}: {exc}"
            raise ModbusRequestError(self.host.name, unit, reason) from None
        finally:
            self._busy = False
            self._idle.set()
        self._consecutive_timeouts = 0
        self._answered_now()
        self.stats.observe(time.monotonic() - started)
        return result

    def _answered_now(self) -> None:
        """A well-formed answer arrived: the link works, the backoff may reset, unless
        the host poisoned recent sessions (then only a session lasting CLEAN_AFTER
        forgives it)."""
        self._answered = True
        if self._garbage and time.monotonic() - self._connected_at >= CLEAN_AFTER:
            self._garbage = 0
        if not self._garbage:
            self._failures = 0

    @staticmethod
    def _settle(item: _Queued, *, exc: BaseException) -> None:
        if not item.future.done():
            item.future.set_exception(exc)
