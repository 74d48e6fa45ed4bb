"""The wire to one Modbus host: its one pymodbus client, one transaction at a time.
The only module that imports pymodbus.

A `Wire` owns the host's pymodbus client for its whole life, built by the link's
`Transport` (a TCP connection, Modbus TCP or RTU through a transparent gateway, or a
serial port). pymodbus encodes each request and carries the bytes; the wire runs each
transaction itself (`transact`: one future, one timer) and every byte received goes to
the frame guard (`bridge.frames`) before anything decodes it, so nothing a device
sends can raise inside pymodbus. A reply is then checked against its request
(`frames.reply_mismatch`) before it is believed.

On an RTU line (no transaction id) a failed request leaves the line unsettled: before
the next request the session waits until nothing has arrived for a quiet period
(`drain`), so a late reply lands while no request waits and the frame guard counts it
as stray; a serial line also keeps 3.5 character times of silence between frames.

What the wire does not decide: when to open or give up the link (the session's
connector and `LinkHealth`), and which request goes next (the session's queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import grp
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, ModbusBaseClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.pdu import bit_message as pdu_bit
from pymodbus.pdu import register_message as pdu_reg

from bridge.codec import apply_bit
from bridge.errors import (
    ExceptionReply,
    describe_os_error,
    out_of_descriptors,
    serial_device_problem,
)
from bridge.frames import (
    Answer,
    Echo,
    OutOfStep,
    Refused,
    Stray,
    frame_mbap,
    frame_rtu,
    mbap_frame,
    mbap_request,
    reply_mismatch,
)
from bridge.logs import Throttle
from bridge.model import Host, SerialLink, Table, TcpLink
from bridge.proxy_rules import READS, ProxyRequest
from bridge.stats import SessionStats

log = logging.getLogger("bridge.session")
_throttle = Throttle(log, window=60.0)

# pymodbus logs every timeout at ERROR with raw frames of all clients; we log ourselves.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL + 1)
logging.getLogger("pymodbus").propagate = False

DRAIN_MAX_PERIODS = 5  # a line that never goes quiet: stop draining after this many periods

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

Job = Callable[[], Awaitable[Any]]
"""One unit of work on the wire (a read, a write, a read-modify-write), run by the session."""


class NoAnswer(Exception):
    """No reply within the host's timeout."""


class LinkClosed(Exception):
    """The link closed (or was not open) under a request."""


class WireError(Exception):
    """pymodbus could not send the request."""


class Mismatch(Exception):
    """A reply that cannot belong to the request in flight (another function, count,
    address or unit: on RTU a late or stray frame)."""


class Malformed(Exception):
    """A reply frame the frame guard refused; set on the pending request."""


def _no_answer(waiting: asyncio.Future[Any]) -> None:
    if not waiting.done():
        waiting.set_exception(NoAnswer("no answer within the timeout"))


Trace = Callable[[bool, bytes], bytes]
TraceConnect = Callable[[bool], None]


class Transport:
    """What a host's link means to the wire: how to build its one pymodbus client, what
    to do once it is open, and how to say why it could not be opened. Opening,
    reopening and the request path are the same for every link."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def client(self, *, trace_packet: Trace, trace_connect: TraceConnect) -> ModbusBaseClient:
        raise NotImplementedError

    def _options(self, trace_packet: Trace, trace_connect: TraceConnect) -> dict[str, Any]:
        """What every link's client gets: pymodbus's own retries and reconnects off (the
        session owns both), the host's timeout, and the wire's trace hooks."""
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

    def unreachable(self, error: OSError | None = None) -> str:
        """Why the last open failed (`error`: what opening raised, if it said), for the log."""
        where = f"cannot connect to {self.host.describe()}"
        return where if error is None else f"{where}: {describe_os_error(error)}"

    @property
    def frame_gap(self) -> float:
        """Silence the line needs between two frames (0: the link keeps frames apart)."""
        return 0.0


class TcpTransport(Transport):
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


class SerialTransport(Transport):
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

    def unreachable(self, error: OSError | None = None) -> str:
        """The likely fix, not just the failure: a missing adapter or a missing group,
        a path that is no serial port, no descriptor left."""
        port = self.link.port
        if error is not None and out_of_descriptors(error):
            return f"cannot open serial port {port}: {describe_os_error(error)}"
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
        kind = serial_device_problem(st.st_mode, st.st_rdev)
        if kind is not None:
            return f"serial port {port} is {kind}: check the host's serial: path"
        if error is not None and error.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            # pymodbus opens the port with an exclusive lock (flock): another open of
            # it holds that lock, most often another program or a second bridge.
            return (
                f"serial port {port} is locked by another program: {_lock_holders(port)}; "
                "stop it or give each program its own adapter (two masters on one RS485 "
                "bus collide)"
            )
        if error is not None:
            return f"cannot open serial port {port}: {describe_os_error(error)}"
        return f"cannot open serial port {port}"

    @property
    def frame_gap(self) -> float:
        baudrate = self.link.baudrate
        if baudrate > 19200:
            return 0.00175
        return 3.5 * self.link.char_bits / baudrate


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"
    return cmd[:80] or "?"


def port_lockers(port: str) -> list[tuple[int, str]]:
    """The processes (pid, command line) holding a `flock` on the device file `port`,
    from /proc/locks (the lock pymodbus takes on every serial port it opens)."""
    try:
        st = os.stat(port)
        with open("/proc/locks") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids: list[int] = []
    for line in lines:
        fields = line.split()
        # "N: FLOCK ADVISORY WRITE <pid> <maj:min:inode> 0 EOF"; "N: -> ..." waits for it
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == key:
            with contextlib.suppress(ValueError):
                pids.append(int(fields[4]))
    return [(pid, _cmdline(pid)) for pid in sorted(set(pids))]


def _lock_holders(port: str) -> str:
    """Who holds the lock on `port`, for the log: "pid N (command)", at most three."""
    me = os.getpid()
    holders = port_lockers(port)
    if not holders:
        return "a process not listed in /proc/locks"
    return ", ".join(
        f"this bridge, pid {pid} (an earlier open not closed)"
        if pid == me
        else f"pid {pid} ({cmd})"
        for pid, cmd in holders[:3]
    )


def transport_for(host: Host) -> Transport:
    if isinstance(host.link, TcpLink):
        return TcpTransport(host, host.link)
    return SerialTransport(host, host.link)


class Wire:
    """One host's pymodbus client and the transaction on it.

    `on_out_of_step(reason)` is called when the received stream can no longer be framed:
    the session must give this link up (and count it as poisoned).
    """

    def __init__(
        self, host: Host, stats: SessionStats, *, on_out_of_step: Callable[[str], None]
    ) -> None:
        self.host = host
        self.stats = stats
        self._on_out_of_step = on_out_of_step
        self._rtu = host.rtu
        self._allow_zero_tid = isinstance(host.link, TcpLink) and host.link.allow_zero_tid
        self.transport = transport_for(host)
        self._client = self.transport.client(
            trace_packet=self._traced_packet, trace_connect=self._traced_connect
        )
        self._open_failure: OSError | None = None  # what the last open raised
        self._record_open_failures()
        # The session's silence rule replaces pymodbus's "close after retries+3 no-responses".
        self._client.set_max_no_responses(1_000_000)
        # Every received byte comes to the frame guard (`_on_data`), which frames, checks
        # and decodes the reply.
        self._client.ctx.callback_data = self._on_data  # type: ignore[method-assign]
        self.open_error: str | None = None  # why the last attempt to open failed (None: open)
        self._waiting: asyncio.Future[ModbusPDU] | None = None  # the request on the wire
        self.unit = 0  # the unit of the request on the wire
        self._sent: tuple[int, int] | None = None  # (transaction id, unit) on the wire (TCP)
        # A serial line needs silence between frames (kept before every request).
        self._frame_gap = self.transport.frame_gap
        self._char_time = host.char_bits / (host.bus_baudrate or 9600)
        self._line_busy_until = 0.0  # monotonic: the end of the last frame on the line
        self._last_rx = 0.0  # monotonic time bytes last arrived (RTU only)
        # RTU framing has no transaction id: after a failure, wait for a quiet line.
        baudrate = host.bus_baudrate or 9600
        self._quiet = max(host.timeout, 3.5 * host.char_bits / baudrate)
        self._stale_at: float | None = None  # when a failure left the line unsettled

    # -- the link ------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return bool(self._client.connected)

    def _record_open_failures(self) -> None:
        """pymodbus's connect() answers False and logs why (our logging silences it):
        keep the exception, so the log can say it, out of file descriptors included."""
        ctx = self._client.ctx
        create = ctx.call_create

        async def recorded() -> Any:
            try:
                return await create()
            except OSError as exc:
                self._open_failure = exc
                raise

        ctx.call_create = recorded

    async def open(self) -> bool:
        """Open the link; False (with `open_error` saying why) when it cannot be opened.
        Never a second socket: whatever was there is closed before connecting."""
        self._client.close()
        self._open_failure = None
        ok = await self._client.connect()
        if not ok or not self._client.connected:
            self.open_error = self.transport.unreachable(self._open_failure)
            return False
        self.open_error = None
        self.transport.opened(self._client)
        self._sent = None
        return True

    def close(self) -> None:
        self._client.close()

    def abort(self, reason: str) -> None:
        """Fail the request on the wire now (the session stops)."""
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            waiting.set_exception(LinkClosed(reason))

    # -- an RTU line settles after a failure ---------------------------------

    @property
    def quiet(self) -> float:
        """The quiet period a failed request leaves on an RTU line (`drain`)."""
        return self._quiet

    @property
    def unsettled(self) -> bool:
        return self._stale_at is not None

    def unsettle(self) -> None:
        """A request failed or was cut off: on an RTU line its reply may still come."""
        if self._rtu:
            self._stale_at = time.monotonic()

    async def drain(self) -> None:
        """RTU: wait until nothing has arrived for a quiet period since the failure.

        A late reply then lands while no request waits: the frame guard counts it as
        stray. Bytes arriving restart the quiet period, up to DRAIN_MAX_PERIODS periods
        in all (a line that never goes quiet is left to the reply checks and the
        silence rule).
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

    # -- requests --------------------------------------------------------------

    def read_job(self, unit: int, table: Table, start: int, count: int) -> Job:
        """The job reading one block, built once per block (polls repeat it)."""
        request = _READ_REQUEST[table](address=start, count=count, dev_id=unit)
        function = _READ_FUNCTION[table]
        want = (count + 7) // 8 * 8 if table.is_bits else count
        pdu = None if self._rtu else bytes((function,)) + request.encode()

        async def job() -> list[int] | list[bool]:
            rr = await self.transact(request, pdu)
            if rr.function_code != function or rr.dev_id != unit:
                self._check(rr, unit, f"read {table.value} {start}+{count}", function)
            if table.is_bits:
                if len(rr.bits) != want:
                    raise Mismatch(f"read {table.value} {start}+{count}: {len(rr.bits)} bits")
                return [bool(b) for b in rr.bits[:count]]
            if len(rr.registers) != want:
                what = f"read {table.value} {start}+{count}"
                raise Mismatch(f"{what}: the reply holds {len(rr.registers)} values")
            return list(rr.registers)

        return job

    def write_registers_job(
        self, unit: int, address: int, values: Sequence[int], *, multiple: bool
    ) -> Job:
        """FC6 for one register unless `multiple`, FC16 otherwise (never split)."""

        async def job() -> None:
            what = f"write holding {address}+{len(values)}"
            regs = list(values)
            request: ModbusPDU
            if len(values) == 1 and not multiple:
                request = pdu_reg.WriteSingleRegisterRequest(
                    address=address, registers=regs, dev_id=unit
                )
                rr = await self.transact(request)
                self._check(rr, unit, what, 6, echo=(address, regs))
            else:
                request = pdu_reg.WriteMultipleRegistersRequest(
                    address=address, registers=regs, dev_id=unit
                )
                rr = await self.transact(request)
                self._check(rr, unit, what, 16, echo=(address, len(values)))

        return job

    def write_coil_job(self, unit: int, address: int, value: bool, *, multiple: bool) -> Job:
        """FC5, or FC15 with `multiple`."""

        async def job() -> None:
            what = f"write coil {address}"
            request: ModbusPDU
            if multiple:
                request = pdu_bit.WriteMultipleCoilsRequest(
                    address=address, bits=[value], dev_id=unit
                )
                rr = await self.transact(request)
                self._check(rr, unit, what, 15, echo=(address, 1))
            else:
                request = pdu_bit.WriteSingleCoilRequest(address=address, bits=[value], dev_id=unit)
                rr = await self.transact(request)
                self._check(rr, unit, what, 5, echo=(address, [value]))

        return job

    def write_coils_job(self, unit: int, address: int, bits: Sequence[bool]) -> Job:
        """FC15 with every bit given (a proxied request)."""
        request = pdu_bit.WriteMultipleCoilsRequest(address=address, bits=list(bits), dev_id=unit)

        async def job() -> None:
            rr = await self.transact(request)
            self._check(
                rr, unit, f"write coil {address}+{len(bits)}", 15, echo=(address, len(bits))
            )

        return job

    async def _mask_write(self, unit: int, address: int, and_mask: int, or_mask: int) -> None:
        mask = pdu_reg.MaskWriteRegisterRequest(
            address=address, and_mask=and_mask, or_mask=or_mask, dev_id=unit
        )
        rr = await self.transact(mask)
        self._check(rr, unit, f"mask write {address}", 22, echo=(address, None))

    def mask_write_job(self, unit: int, address: int, and_mask: int, or_mask: int) -> Job:
        """FC22 with both masks given (a proxied request)."""
        return functools.partial(self._mask_write, unit, address, and_mask, or_mask)

    def request_job(self, request: ProxyRequest) -> Job:
        """The job for a proxied request (validated by `proxy_rules.parse_request`); it
        returns the registers or bits read, None for a write."""
        f, unit, address, values = request.function, request.unit, request.address, request.values
        if f in READS:
            return self.read_job(unit, READS[f], address, request.count)
        if f in (6, 16):
            return self.write_registers_job(unit, address, values, multiple=f == 16)
        if f == 5:
            return self.write_coil_job(unit, address, bool(values[0]), multiple=False)
        if f == 15:
            return self.write_coils_job(unit, address, [bool(v) for v in values])
        return self.mask_write_job(unit, address, *values)

    def write_bit_job(
        self, unit: int, address: int, bit: int, value: bool, *, mask_write: bool, multiple: bool
    ) -> Job:
        """Set one bit of a holding register: FC22, or read-modify-write as ONE job."""

        async def job() -> None:
            if mask_write:
                or_mask = (1 << bit) if value else 0
                await self._mask_write(unit, address, 0xFFFF ^ (1 << bit), or_mask)
                return
            what = f"read holding {address} (for bit write)"
            read = pdu_reg.ReadHoldingRegistersRequest(address=address, count=1, dev_id=unit)
            rr = await self.transact(read)
            self._check(rr, unit, what, 3)
            if len(rr.registers) != 1:
                raise Mismatch(f"{what}: the reply holds {len(rr.registers)} values")
            current = rr.registers[0]
            new = apply_bit(current, bit, value)  # `bit` is already the wire bit
            what = f"write holding {address} (bit {bit})"
            write: ModbusPDU
            if multiple:
                write = pdu_reg.WriteMultipleRegistersRequest(
                    address=address, registers=[new], dev_id=unit
                )
                wr = await self.transact(write)
                self._check(wr, unit, what, 16, echo=(address, 1))
            else:
                write = pdu_reg.WriteSingleRegisterRequest(
                    address=address, registers=[new], dev_id=unit
                )
                wr = await self.transact(write)
                self._check(wr, unit, what, 6, echo=(address, [new]))

        return job

    async def transact(self, request: ModbusPDU, pdu: bytes | None = None) -> ModbusPDU:
        """Send `request` and wait for its reply, at most the host's timeout.

        One request at a time (the session runs one job at a time), so there is no lock
        to take and no other reply to sort out: the frame guard answers `_waiting` with
        the one decoded reply that fits the request on the wire. A timeout raises
        NoAnswer, a link that closes meanwhile LinkClosed at once.

        `pdu`: the request already encoded (a poll's read, encoded once), on a Modbus
        TCP link: the wire frames and writes it itself, without pymodbus's framer and
        its per-frame logging and tracing (a few microseconds of every read).
        """
        ctx = self._client.ctx
        if not ctx.transport:
            raise LinkClosed("not connected")
        if self._frame_gap:  # a serial line: 3.5 characters of silence before a frame
            wait = self._line_busy_until + self._frame_gap - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        loop = asyncio.get_running_loop()
        self.unit = request.dev_id
        request.transaction_id = ctx.getNextTID()
        ctx.recv_buffer = b""  # what a late reply left behind is never this answer
        waiting = self._waiting = loop.create_future()
        try:
            if pdu is None:
                ctx.pdu_send(request)
            else:
                self._sent = (request.transaction_id, self.unit)
                frame = mbap_frame(request.transaction_id, self.unit, pdu)
                ctx.transport.write(frame)  # type: ignore[attr-defined]  # a TCP transport
        except ModbusException as exc:
            self._waiting = None
            raise WireError(str(exc)) from exc
        timer = loop.call_at(loop.time() + self.host.timeout, _no_answer, waiting)
        try:
            reply: ModbusPDU = await waiting
        finally:
            timer.cancel()
            if self._waiting is waiting:
                self._waiting = None
        return reply

    def _check(
        self, rr: Any, unit: int, what: str, function: int, *, echo: Echo | None = None
    ) -> None:
        """Raise for a reply to another request (Mismatch) and for an exception reply."""
        problem = reply_mismatch(rr, unit, what, function, echo)
        if problem is not None:
            raise Mismatch(problem)
        if rr.isError():
            code = int(getattr(rr, "exception_code", 0) or 0)
            raise ExceptionReply(self.host.name, unit, code, what)

    # -- what arrives ----------------------------------------------------------

    def _traced_packet(self, sending: bool, data: bytes) -> bytes:
        now = time.monotonic()
        if not sending:
            self._last_rx = now
            self._line_busy_until = max(self._line_busy_until, now)
        elif self._rtu:
            # The frame is on the line until its last character has gone out.
            self._line_busy_until = now + len(data) * self._char_time
        else:
            sent = mbap_request(data)
            if sent is not None:
                self._sent = sent
        return data

    def _traced_connect(self, connected: bool) -> None:
        if connected:
            self.stats.sockets_opened += 1
            return
        # The link closed under a request: fail it now, not after the timeout.
        self.abort("the connection closed")

    def _on_data(self, data: bytes, addr: tuple[str, int] | None = None) -> int:
        """Everything received, before pymodbus decodes it; returns the bytes used.

        pymodbus raises inside its protocol handler on some malformed replies (a byte
        count larger than the data, an exception reply without its code): asyncio
        then logs a traceback and closes the socket. Here the frame guard decides, and
        such a reply fails only its request.
        """
        if self._rtu:
            used, verdicts = frame_rtu(data, self.unit)
        else:
            used, verdicts = frame_mbap(data, self._sent, allow_zero_tid=self._allow_zero_tid)
        for verdict in verdicts:
            if type(verdict) is Answer:
                self._answer(verdict.pdu, verdict.unit, verdict.tid)
            elif type(verdict) is Stray:
                self._stray(verdict)
            elif type(verdict) is Refused:
                if verdict.crc:
                    self.stats.crc_errors += 1
                    self.stats.unit(self.unit).crc_errors += 1
                self._refuse(verdict.reason)
            elif type(verdict) is OutOfStep:
                self._refuse(verdict.reason)
                self._on_out_of_step(f"{verdict.reason}: the byte stream is out of step")
        return used

    def _stray(self, stray: Stray) -> None:
        self.stats.stray_frames += 1
        if stray.zero:
            _throttle.log(
                logging.WARNING,
                ("tid 0", self.host.name),
                f"replies with transaction id 0 from host {self.host.name}",
                "host %s: ignored a reply with transaction id 0 (the request had %d); if "
                "this device always answers so, set allow_zero_tid: true on the host",
                self.host.name,
                stray.expected,
            )
        elif stray.tid is not None:
            log.debug(
                "host %s: dropped a reply with transaction id %d (waiting for %s)",
                self.host.name,
                stray.tid,
                "none" if stray.expected is None else stray.expected,
            )

    def _refuse(self, reason: str) -> None:
        """Fail the request on the wire with `reason` (a reply arrived, unusable)."""
        self.stats.bad_replies += 1
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            waiting.set_exception(Malformed(reason))

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
                    self._refuse(f"reply with function code {function}")
                    return
                pdu = cls()
            pdu.decode(reply[1:])
        except Exception as exc:  # a malformed PDU: nothing of it is believed
            self._refuse(f"undecodable reply ({type(exc).__name__}: {exc})")
            return
        pdu.dev_id = unit
        pdu.transaction_id = tid
        waiting.set_result(pdu)
