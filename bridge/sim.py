"""A small Modbus TCP device server for the demo, the integration tests and benchmarks.

Pure asyncio and struct: one `asyncio.Protocol` per connection, requests answered
straight from `data_received` unless a delay is in force. It speaks the MBAP framing
(transaction id and unit id echoed) and function codes 1-6, 15, 16 and 22, and has
runtime fault switches: silent units, late replies, refused or dropped connections,
forced exception codes.

With ``framing="rtu"`` it plays a serial gateway in transparent mode instead: RTU
frames (unit id, PDU, CRC-16/Modbus sent low byte first) over the TCP stream, with
no MBAP header and so no transaction id. The fault switches work the same way.

`SimSerial` puts the same units on a serial device instead (in tests, one end of a
`socat` pty pair: a virtual null-modem cable), as devices on an RS485 bus answer.

Data lives in `SimUnit` banks addressed from 0 (protocol addresses, no 40001 offsets).
A bank is allocated on its first write; unwritten banks read as zeros.

Address ranges given in `SimUnit(valid=...)` are half-open ``(start, end)`` pairs:
``(0, 100)`` allows addresses 0 to 99. A request is legal when all the addresses it
touches lie inside one range.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import termios
import time
import tty
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, cast

from bridge.codec import crc16

__all__ = [
    "BIT_TABLES",
    "REGISTER_TABLES",
    "TABLES",
    "ExceptionHook",
    "RequestRecord",
    "SimPty",
    "SimSerial",
    "SimServer",
    "SimUnit",
    "WriteHook",
    "crc16",
]

log = logging.getLogger(__name__)

BIT_TABLES: Final = ("coils", "discrete")
REGISTER_TABLES: Final = ("holding", "input")
TABLES: Final = BIT_TABLES + REGISTER_TABLES

# Accepted spellings, including `bridge.model.Table` values ("coil"). Enum members
# are accepted too: anything with a string `.value`.
_TABLE_ALIASES: Final[dict[str, str]] = {
    "coil": "coils",
    "coils": "coils",
    "discrete": "discrete",
    "discretes": "discrete",
    "discrete_input": "discrete",
    "discrete_inputs": "discrete",
    "holding": "holding",
    "holding_register": "holding",
    "holding_registers": "holding",
    "input": "input",
    "input_register": "input",
    "input_registers": "input",
}

DEFAULT_SIZE: Final = 65536
REQUEST_LOG_SIZE: Final = 10000

# Exception codes used by the server.
ILLEGAL_FUNCTION: Final = 1
ILLEGAL_ADDRESS: Final = 2
ILLEGAL_VALUE: Final = 3
GATEWAY_TARGET_FAILED: Final = 11

_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
_ADDR_COUNT = struct.Struct(">HH")
_MASK = struct.Struct(">HHH")
_MULTI = struct.Struct(">HHB")  # address, count, byte count
_MAX_LENGTH = 254  # MBAP length field: unit id + PDU of at most 253 bytes

FRAMINGS: Final = ("tcp", "rtu")
# RTU request length (unit id .. CRC) by function code; 15 and 16 add their byte count.
_RTU_FIXED: Final[dict[int, int]] = {1: 8, 2: 8, 3: 8, 4: 8, 5: 8, 6: 8, 22: 10}
_RTU_MULTI_HEADER: Final = 7  # unit, function, address, count, byte count

# (table, maximum count) per function code
_READS: Final[dict[int, tuple[str, int]]] = {
    1: ("coils", 2000),
    2: ("discrete", 2000),
    3: ("holding", 125),
    4: ("input", 125),
}


def _table_name(table: object) -> str:
    key = getattr(table, "value", table)
    if isinstance(key, str):
        name = _TABLE_ALIASES.get(key.lower())
        if name is not None:
            return name
    raise ValueError(f"unknown table {table!r}; expected one of {', '.join(TABLES)}")


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as received (before any delay or fault decided its fate).

    `count` is the number of registers or bits touched (1 for FC 5, 6 and 22).
    `values` holds written values: registers for FC 6/16, 0/1 for FC 5/15,
    ``(and_mask, or_mask)`` for FC 22; None for reads and unparsable requests.
    """

    time: float  # time.monotonic()
    unit: int
    function: int
    address: int | None
    count: int | None
    values: tuple[int, ...] | None
    transaction_id: int  # 0 with RTU framing
    connection: int  # serial number of the connection, from 1


class SimUnit:
    """The four data banks of one Modbus unit."""

    __slots__ = ("_bits", "_regs", "size", "valid")

    def __init__(
        self,
        *,
        size: int = DEFAULT_SIZE,
        valid: Mapping[str, Sequence[tuple[int, int]]] | None = None,
    ) -> None:
        if not 1 <= size <= DEFAULT_SIZE:
            raise ValueError(f"size must be 1..{DEFAULT_SIZE}, got {size}")
        self.size = size
        # table -> half-open (start, end) ranges; a table absent here is valid in full.
        self.valid: dict[str, list[tuple[int, int]]] = {}
        for table, ranges in (valid or {}).items():
            checked = []
            for start, end in ranges:
                if not 0 <= start < end <= size:
                    raise ValueError(f"bad range ({start}, {end}) for {table!r}")
                checked.append((start, end))
            self.valid[_table_name(table)] = checked
        self._bits: dict[str, bytearray] = {}
        self._regs: dict[str, array[int]] = {}

    def is_valid(self, table: str, address: int, count: int) -> bool:
        """True when `count` addresses from `address` exist in `table`."""
        end = address + count
        if address < 0 or count < 1 or end > self.size:
            return False
        ranges = self.valid.get(_table_name(table))
        if ranges is None:
            return True
        return any(start <= address and end <= stop for start, stop in ranges)

    def _bit_bank(self, table: str) -> bytearray:
        bank = self._bits.get(table)
        if bank is None:
            bank = self._bits[table] = bytearray(self.size)
        return bank

    def _register_bank(self, table: str) -> array[int]:
        bank = self._regs.get(table)
        if bank is None:
            bank = self._regs[table] = array("H", bytes(2 * self.size))
        return bank

    def _check_span(self, address: int, count: int) -> None:
        if address < 0 or count < 0 or address + count > self.size:
            raise IndexError(
                f"addresses {address}..{address + count - 1} outside 0..{self.size - 1}"
            )

    # -- registers -----------------------------------------------------------------

    def set_registers(self, table: str, address: int, values: Iterable[int]) -> None:
        """Store 16-bit values (0..65535) from `address` on."""
        name = _table_name(table)
        if name not in REGISTER_TABLES:
            raise ValueError(f"{name!r} is a bit table; use set_bits")
        data = list(values)
        for value in data:
            if not 0 <= value <= 0xFFFF:
                raise ValueError(f"register value {value} outside 0..65535")
        self._check_span(address, len(data))
        self._register_bank(name)[address : address + len(data)] = array("H", data)

    def get_registers(self, table: str, address: int, count: int = 1) -> list[int]:
        name = _table_name(table)
        if name not in REGISTER_TABLES:
            raise ValueError(f"{name!r} is a bit table; use get_bits")
        self._check_span(address, count)
        bank = self._regs.get(name)
        if bank is None:
            return [0] * count
        return list(bank[address : address + count])

    # -- bits ----------------------------------------------------------------------

    def set_bits(self, table: str, address: int, values: Iterable[bool | int]) -> None:
        name = _table_name(table)
        if name not in BIT_TABLES:
            raise ValueError(f"{name!r} is a register table; use set_registers")
        data = bytes(1 if v else 0 for v in values)
        self._check_span(address, len(data))
        self._bit_bank(name)[address : address + len(data)] = data

    def get_bits(self, table: str, address: int, count: int = 1) -> list[bool]:
        name = _table_name(table)
        if name not in BIT_TABLES:
            raise ValueError(f"{name!r} is a register table; use get_registers")
        self._check_span(address, count)
        bits = self._bits.get(name)
        if bits is None:
            return [False] * count
        return [bool(b) for b in bits[address : address + count]]

    # -- wire encoding (used by the server) -------------------------------------------

    def _read_registers_bytes(self, table: str, address: int, count: int) -> bytes:
        bank = self._regs.get(table)
        if bank is None:
            return bytes(2 * count)
        chunk = bank[address : address + count]
        chunk.byteswap()  # host order (little-endian) to Modbus big-endian
        return chunk.tobytes()

    def _read_bits_bytes(self, table: str, address: int, count: int) -> bytes:
        out = bytearray((count + 7) // 8)
        bank = self._bits.get(table)
        if bank is None:
            return bytes(out)
        for i, bit in enumerate(bank[address : address + count]):
            if bit:
                out[i >> 3] |= 1 << (i & 7)
        return bytes(out)


ExceptionHook = Callable[[int, int, int, int], "int | None"]
"""``hook(unit, function, address, count)`` -> exception code to answer, or None."""

WriteHook = Callable[[int, str, int, int], None]
"""``hook(unit, table, address, count)`` after a write changed `table` ("coils" or
"holding") from `address` on, before the reply goes out."""

# function code -> the table it writes
_WRITES: Final[dict[int, str]] = {
    5: "coils",
    15: "coils",
    6: "holding",
    16: "holding",
    22: "holding",
}


class _Connection(asyncio.Protocol):
    """One client connection: MBAP framing and in-order (possibly delayed) replies."""

    def __init__(self, server: SimServer) -> None:
        self.server = server
        self.serial = 0
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        # Requests waiting for their reply time: (due, transaction id, unit, pdu).
        self._queue: deque[tuple[float, int, int, bytes]] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._drip_end = 0.0  # loop time the last dripped byte goes out

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server._admit(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._release(self)
        if self._worker is not None:
            self._worker.cancel()
        self._queue.clear()
        self.transport = None

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        server = self.server
        pos = 0
        size = len(buf)
        while size - pos >= 7:
            tid, pid, length, unit = _MBAP.unpack_from(buf, pos)
            if length < 2 or length > _MAX_LENGTH:
                log.debug("sim: bad MBAP length %d, closing connection", length)
                self.abort()
                return
            end = pos + 6 + length
            if end > size:
                break
            pdu = bytes(buf[pos + 7 : end])
            pos = end
            if pid == 0:
                server._on_request(self, tid, unit, pdu)
        if pos:
            del buf[:pos]

    def send(self, tid: int, unit: int, pdu: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.write(_MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu)
            self.server.responses_total += 1

    def write(self, frame: bytes) -> None:
        """Send `frame`, at once, or a byte at a time `server.drip` seconds apart (as a
        slow serial line delivers it)."""
        transport = self.transport
        drip = self.server.drip
        if transport is None:
            return
        if drip <= 0:
            transport.write(frame)
            return
        # One byte at a time on the line: a frame starts after the last one ended.
        loop = asyncio.get_running_loop()
        start = max(loop.time(), self._drip_end)
        for i in range(len(frame)):
            loop.call_at(start + i * drip, self._write_byte, frame[i : i + 1])
        self._drip_end = start + len(frame) * drip

    def _write_byte(self, byte: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(byte)

    def enqueue(self, due: float, tid: int, unit: int, pdu: bytes) -> None:
        self._queue.append((due, tid, unit, pdu))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._drain())

    @property
    def worker(self) -> asyncio.Task[None] | None:
        return self._worker

    @property
    def busy(self) -> bool:
        return bool(self._queue)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while queue:
            due, tid, unit, pdu = queue[0]
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not queue or self.transport is None:
                return
            queue.popleft()
            reply = self.server._execute(unit, pdu)
            if reply is not None:
                self.send(tid, unit, reply)


class _RtuConnection(_Connection):
    """RTU framing over the stream: unit id, PDU, CRC; no header, no transaction id.

    A request's length follows from its function code. A frame with a bad CRC, or one
    with a function code whose length is unknown, is judged on everything buffered
    (a serial device would wait for the 3.5-character gap): an intact frame of an
    unknown function gets exception 1, anything damaged is dropped without a reply.
    """

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        server = self.server
        pos = 0
        size = len(buf)
        while size - pos >= 4:  # the shortest frame: unit, function, CRC
            fc = buf[pos + 1]
            length = _RTU_FIXED.get(fc)
            if length is None:
                if fc in (15, 16):
                    if size - pos < _RTU_MULTI_HEADER:
                        break
                    length = _RTU_MULTI_HEADER + buf[pos + 6] + 2
                else:
                    length = size - pos
            end = pos + length
            if end > size:
                break
            body = bytes(buf[pos : end - 2])
            if crc16(body) != int.from_bytes(buf[end - 2 : end], "little"):
                log.debug("sim: RTU frame with a bad CRC, dropping %d bytes", size - pos)
                pos = size
                break
            pos = end
            server._on_request(self, 0, body[0], body[1:])
        if pos:
            del buf[:pos]

    def send(self, tid: int, unit: int, pdu: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            frame = bytes((unit,)) + pdu
            crc = crc16(frame)
            if unit in self.server.corrupt_units:
                crc ^= 0x5A5A  # line noise: the frame arrives, its CRC does not match
            self.write(frame + crc.to_bytes(2, "little"))
            self.server.responses_total += 1


class _DeviceTransport(asyncio.Transport):
    """A serial device file (a pty end) as an asyncio transport for `_RtuConnection`."""

    def __init__(self, fd: int, protocol: _RtuConnection) -> None:
        super().__init__()
        self._fd = fd
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._loop.add_reader(fd, self._read_ready)

    def _read_ready(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError:  # EIO: the other end of the cable is gone
            data = b""
        if not data:
            self.close()
            return
        self._protocol.data_received(data)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(bytes(data))
        while view and not self._closed:
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                time.sleep(0.001)  # a pty buffer is large; a full one empties at once
            except OSError:
                self.close()

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._protocol.connection_lost(None)

    def abort(self) -> None:
        self.close()


class SimSerial:
    """The units of `server` as Modbus RTU devices on the serial device at `path`.

    The server's units, fault switches, counters and request log apply (each open of
    the device counts as a connection). The device is put in raw mode; a pty ignores
    the baud rate, so RTU timing is not simulated.
    """

    def __init__(self, server: SimServer, path: str) -> None:
        self.server = server
        self.path = path
        self._transport: _DeviceTransport | None = None

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def start(self) -> None:
        if self.open:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(fd, termios.TCSANOW)
        connection = _RtuConnection(self.server)
        self._transport = _DeviceTransport(fd, connection)
        connection.connection_made(self._transport)

    async def stop(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        await asyncio.sleep(0)


class SimPty:
    """The units of `server` as Modbus RTU devices behind a new pseudo-terminal: a
    serial port that exists while this runs, at `path` (``/dev/pts/N``), for a client to
    open as it would a USB RS485 adapter (like `SimSerial` on one end of a ``socat``
    pair, without socat). The other end stays open here, so a client may close and
    reopen the port."""

    def __init__(self, server: SimServer) -> None:
        self.server = server
        self.path = ""
        self._peer: int | None = None  # the port's own end, held open
        self._transport: _DeviceTransport | None = None

    async def start(self) -> None:
        if self._transport is not None:
            return
        ours, peer = os.openpty()
        tty.setraw(peer, termios.TCSANOW)
        os.set_blocking(ours, False)
        self.path = os.ttyname(peer)
        self._peer = peer
        connection = _RtuConnection(self.server)
        self._transport = _DeviceTransport(ours, connection)
        connection.connection_made(self._transport)

    async def stop(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        peer, self._peer = self._peer, None
        if peer is not None:
            os.close(peer)
        await asyncio.sleep(0)


class SimServer:
    """A Modbus TCP server holding one `SimUnit` per unit id.

    `framing` is ``"tcp"`` (MBAP, the default) or ``"rtu"`` (RTU frames over TCP, as a
    serial gateway in transparent mode passes them; see `_RtuConnection`).

    Fault switches may be changed at any time:

    - `silent_units`, `silent_all`: requests for these units (or all) get no reply.
    - `delay`, `per_unit_delay`: reply this many seconds after the request arrived
      (a per-unit value replaces `delay`). Replies on one connection keep request order,
      so a slow unit also holds up later requests on that connection. The request is
      executed when its reply is due.
    - `max_connections`: connections beyond this many open ones are closed at once.
    - `refuse`: close every new connection at once (the listener keeps accepting;
      `stop()` makes the port refuse connections).
    - `unknown_unit_exception`: None (default) ignores requests for unknown unit ids, as
      a gateway whose target does not answer; 11 (or 10) answers with that code.
    - `exception_hook(unit, function, address, count)`: return an exception code to
      answer with instead of executing the request.
    - `corrupt_units` (RTU framing): replies from these units carry a wrong CRC.
    - `drip`: send replies one byte at a time, this many seconds apart (as a slow
      serial line delivers them; 0 sends each reply in one write).

    `write_hook(unit, table, address, count)` is called after each write that a unit
    carried out (a device that mirrors a command into a status register uses it).
    """

    def __init__(
        self,
        units: Iterable[int] | Mapping[int, SimUnit] = (1,),
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        unknown_unit_exception: int | None = None,
        request_log_size: int = REQUEST_LOG_SIZE,
        framing: str = "tcp",
    ) -> None:
        if framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {', '.join(FRAMINGS)}, got {framing!r}")
        self.framing = framing
        self._protocol: type[_Connection] = _RtuConnection if framing == "rtu" else _Connection
        if isinstance(units, Mapping):
            self.units: dict[int, SimUnit] = dict(units)
        else:
            self.units = {uid: SimUnit() for uid in units}
        for uid in self.units:
            if not 0 <= uid <= 255:
                raise ValueError(f"unit id {uid} outside 0..255")
        self.host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

        # Fault switches.
        self.silent_units: set[int] = set()
        self.silent_all = False
        self.delay = 0.0
        self.per_unit_delay: dict[int, float] = {}
        self.max_connections: int | None = None
        self.refuse = False
        self.unknown_unit_exception = unknown_unit_exception
        self.exception_hook: ExceptionHook | None = None
        self.corrupt_units: set[int] = set()
        self.drip = 0.0
        self.write_hook: WriteHook | None = None

        # Counters.
        self.connections_total = 0  # connections admitted since creation
        self.connections_refused = 0  # closed at once by `refuse` or `max_connections`
        self.requests_total = 0  # frames received, answered or not
        self.responses_total = 0
        self.request_log: deque[RequestRecord] = deque(maxlen=request_log_size)

    # -- lifecycle -------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port (the one bound by the first `start()` when created with 0)."""
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def connections_open(self) -> int:
        return len(self._connections)

    def unit(self, unit_id: int) -> SimUnit:
        return self.units[unit_id]

    async def start(self) -> None:
        """Listen; after `stop()` this listens again on the same port."""
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: self._protocol(self),
            self.host,
            self._port,
            reuse_address=True,
        )
        self._port = self._server.sockets[0].getsockname()[1]
        log.debug("sim: listening on %s:%d", self.host, self._port)

    async def stop(self) -> None:
        """Close the listener and every client connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        connections = list(self._connections)
        self.drop_all()
        if server is not None:
            await server.wait_closed()
        # Let the transports run connection_lost, then reap the reply workers it cancelled.
        await asyncio.sleep(0)
        workers = [c.worker for c in connections if c.worker is not None]
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def drop_all(self) -> int:
        """Abort every open client connection; return how many."""
        connections = list(self._connections)
        for conn in connections:
            conn.abort()
        return len(connections)

    def clear_log(self) -> None:
        self.request_log.clear()

    # -- connection bookkeeping (called by _Connection) --------------------------------

    def _admit(self, conn: _Connection) -> None:
        limit = self.max_connections
        if self.refuse or (limit is not None and len(self._connections) >= limit):
            self.connections_refused += 1
            conn.abort()
            return
        self.connections_total += 1
        conn.serial = self.connections_total
        self._connections.add(conn)

    def _release(self, conn: _Connection) -> None:
        self._connections.discard(conn)

    # -- request path --------------------------------------------------------------------

    def _on_request(self, conn: _Connection, tid: int, unit: int, pdu: bytes) -> None:
        self.requests_total += 1
        self.request_log.append(_record(conn.serial, tid, unit, pdu))
        if self.silent_all or unit in self.silent_units:
            return
        delay = self.per_unit_delay.get(unit, self.delay)
        if delay <= 0 and not conn.busy:
            reply = self._execute(unit, pdu)
            if reply is not None:
                conn.send(tid, unit, reply)
            return
        conn.enqueue(asyncio.get_running_loop().time() + delay, tid, unit, pdu)

    def _execute(self, unit_id: int, pdu: bytes) -> bytes | None:
        """Run one request; return the response PDU, or None for no reply."""
        if not pdu:
            return None
        fc = pdu[0]
        unit = self.units.get(unit_id)
        if unit is None:
            code = self.unknown_unit_exception
            return None if code is None else bytes((fc | 0x80, code))
        handler = _HANDLERS.get(fc)
        if handler is None:
            return _exc(fc, ILLEGAL_FUNCTION)
        try:
            reply = handler(self, unit_id, unit, pdu)
        except struct.error:  # PDU too short for its function code
            return _exc(fc, ILLEGAL_VALUE)
        hook = self.write_hook
        if hook is not None and fc in _WRITES and reply[0] == fc:
            address, count = _ADDR_COUNT.unpack_from(pdu, 1)
            hook(unit_id, _WRITES[fc], address, count if fc in (15, 16) else 1)
        return reply

    def _hook(self, unit_id: int, fc: int, address: int, count: int) -> int | None:
        hook = self.exception_hook
        return None if hook is None else hook(unit_id, fc, address, count)


def _record(conn: int, tid: int, unit: int, pdu: bytes) -> RequestRecord:
    fc = pdu[0] if pdu else 0
    address: int | None = None
    count: int | None = None
    values: tuple[int, ...] | None = None
    try:
        if fc in _READS:
            address, count = _ADDR_COUNT.unpack_from(pdu, 1)
        elif fc == 5:
            address, raw = _ADDR_COUNT.unpack_from(pdu, 1)
            count, values = 1, (1 if raw == 0xFF00 else 0,)
        elif fc == 6:
            address, raw = _ADDR_COUNT.unpack_from(pdu, 1)
            count, values = 1, (raw,)
        elif fc == 15:
            address, count, _ = _MULTI.unpack_from(pdu, 1)
            data = pdu[6:]
            values = tuple((data[i >> 3] >> (i & 7)) & 1 for i in range(min(count, 8 * len(data))))
        elif fc == 16:
            address, count, _ = _MULTI.unpack_from(pdu, 1)
            n = min(count, (len(pdu) - 6) // 2)
            values = struct.unpack_from(f">{n}H", pdu, 6)
        elif fc == 22:
            address, and_mask, or_mask = _MASK.unpack_from(pdu, 1)
            count, values = 1, (and_mask, or_mask)
    except struct.error:
        pass
    return RequestRecord(time.monotonic(), unit, fc, address, count, values, tid, conn)


# -- function code handlers: (server, unit id, unit, pdu) -> response pdu ------------------


def _exc(fc: int, code: int) -> bytes:
    return bytes((fc | 0x80, code))


def _read(server: SimServer, uid: int, unit: SimUnit, pdu: bytes) -> bytes:
    fc = pdu[0]
    table, cap = _READS[fc]
    address, count = _ADDR_COUNT.unpack_from(pdu, 1)
    code = server._hook(uid, fc, address, count)
    if code is not None:
        return _exc(fc, code)
    if not 1 <= count <= cap:
        return _exc(fc, ILLEGAL_VALUE)
    if not unit.is_valid(table, address, count):
        return _exc(fc, ILLEGAL_ADDRESS)
    if fc <= 2:
        data = unit._read_bits_bytes(table, address, count)
    else:
        data = unit._read_registers_bytes(table, address, count)
    return bytes((fc, len(data))) + data


def _write_coil(server: SimServer, uid: int, unit: SimUnit, pdu: bytes) -> bytes:
    address, raw = _ADDR_COUNT.unpack_from(pdu, 1)
    code = server._hook(uid, 5, address, 1)
    if code is not None:
        return _exc(5, code)
    if raw not in (0x0000, 0xFF00):
        return _exc(5, ILLEGAL_VALUE)
    if not unit.is_valid("coils", address, 1):
        return _exc(5, ILLEGAL_ADDRESS)
    unit._bit_bank("coils")[address] = 1 if raw else 0
    return pdu[:5]


def _write_register(server: SimServer, uid: int, unit: SimUnit, pdu: bytes) -> bytes:
    address, value = _ADDR_COUNT.unpack_from(pdu, 1)
    code = server._hook(uid, 6, address, 1)
    if code is not None:
        return _exc(6, code)
    if not unit.is_valid("holding", address, 1):
        return _exc(6, ILLEGAL_ADDRESS)
    unit._register_bank("holding")[address] = value
    return pdu[:5]


def _write_coils(server: SimServer, uid: int, unit: SimUnit, pdu: bytes) -> bytes:
    address, count, nbytes = _MULTI.unpack_from(pdu, 1)
    code = server._hook(uid, 15, address, count)
    if code is not None:
        return _exc(15, code)
    if not 1 <= count <= 1968 or nbytes != (count + 7) // 8 or len(pdu) != 6 + nbytes:
        return _exc(15, ILLEGAL_VALUE)
    if not unit.is_valid("coils", address, count):
        return _exc(15, ILLEGAL_ADDRESS)
    data = pdu[6:]
    bank = unit._bit_bank("coils")
    bank[address : address + count] = bytes((data[i >> 3] >> (i & 7)) & 1 for i in range(count))
    return pdu[:5]


def _write_registers(server: SimServer, uid: int, unit: SimUnit, pdu: bytes) -> bytes:
    address, count, nbytes = _MULTI.unpack_from(pdu, 1)
    code = server._hook(uid, 16, address, count)
    if code is not None:
        return _exc(16, code)
    if not 1 <= count <= 123 or nbytes != 2 * count or len(pdu) != 6 + nbytes:
        return _exc(16, ILLEGAL_VALUE)
    if not unit.is_valid("holding", address, count):
        return _exc(16, ILLEGAL_ADDRESS)
    values = array("H", pdu[6:])
    values.byteswap()
    unit._register_bank("holding")[address : address + count] = values
    return pdu[:5]


def _mask_write(server: SimServer, uid: int, unit: SimUnit, pdu: bytes) -> bytes:
    address, and_mask, or_mask = _MASK.unpack_from(pdu, 1)
    code = server._hook(uid, 22, address, 1)
    if code is not None:
        return _exc(22, code)
    if not unit.is_valid("holding", address, 1):
        return _exc(22, ILLEGAL_ADDRESS)
    bank = unit._register_bank("holding")
    bank[address] = (bank[address] & and_mask) | (or_mask & ~and_mask & 0xFFFF)
    return pdu[:7]


_Handler = Callable[[SimServer, int, SimUnit, bytes], bytes]
_HANDLERS: Final[dict[int, _Handler]] = {
    1: _read,
    2: _read,
    3: _read,
    4: _read,
    5: _write_coil,
    6: _write_register,
    15: _write_coils,
    16: _write_registers,
    22: _mask_write,
}
