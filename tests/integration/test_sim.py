"""The simulated Modbus TCP device, checked against pymodbus's client and raw frames.

pymodbus is an independent implementation: if its client reads back what we stored,
our framing and encoding are right. Raw-socket tests cover what pymodbus refuses to
send (illegal counts, pipelining, split frames).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
from pymodbus import FramerType
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException

from bridge.model import Table
from bridge.sim import RequestRecord, SimServer, SimUnit, crc16

pytestmark = pytest.mark.integration

MakeSim = Callable[..., Awaitable[SimServer]]

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


@asynccontextmanager
async def modbus_client(
    server: SimServer, timeout: float = 1.0, framer: FramerType = FramerType.SOCKET
) -> AsyncIterator[Any]:
    client = AsyncModbusTcpClient(
        server.host,
        port=server.port,
        framer=framer,
        timeout=timeout,
        retries=0,
        reconnect_delay=0,
    )
    assert await client.connect()
    try:
        yield client
    finally:
        client.close()


class RawClient:
    """Bare MBAP frames over a stream, for what pymodbus will not send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    @staticmethod
    def frame(tid: int, unit: int, pdu: bytes, protocol: int = 0) -> bytes:
        return struct.pack(">HHHB", tid, protocol, len(pdu) + 1, unit) + pdu

    async def send(self, tid: int, unit: int, pdu: bytes) -> None:
        self.writer.write(self.frame(tid, unit, pdu))
        await self.writer.drain()

    async def recv(self, timeout: float = 1.0) -> tuple[int, int, bytes]:
        async with asyncio.timeout(timeout):
            header = await self.reader.readexactly(7)
            tid, protocol, length, unit = struct.unpack(">HHHB", header)
            assert protocol == 0
            pdu = await self.reader.readexactly(length - 1)
        return tid, unit, pdu

    async def no_reply(self, wait: float = 0.2) -> bool:
        try:
            async with asyncio.timeout(wait):
                data = await self.reader.read(1)
        except TimeoutError:
            return True
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError):
            await self.writer.wait_closed()


@pytest.fixture
async def raw_client() -> AsyncIterator[Callable[[int], Awaitable[RawClient]]]:
    clients: list[RawClient] = []

    async def connect(port: int) -> RawClient:
        client = await RawClient.connect(port)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.close()


async def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# -- SimUnit -----------------------------------------------------------------------------


def test_unit_banks_default_to_zero_and_store_values() -> None:
    unit = SimUnit()
    assert unit.get_registers("holding", 65530, 6) == [0] * 6
    assert unit.get_bits("coils", 0, 3) == [False] * 3
    unit.set_registers("holding", 10, [1, 0xFFFF, 42])
    unit.set_registers("input", 10, [7])
    unit.set_bits("coils", 3, [True, 0, 1])
    unit.set_bits("discrete", 65535, [True])
    assert unit.get_registers("holding", 9, 5) == [0, 1, 0xFFFF, 42, 0]
    assert unit.get_registers("input", 10) == [7]
    assert unit.get_bits("coils", 2, 5) == [False, True, False, True, False]
    assert unit.get_bits("discrete", 65535) == [True]


def test_unit_accepts_table_aliases_and_model_enum() -> None:
    unit = SimUnit()
    unit.set_registers(Table.HOLDING, 0, [5])  # type: ignore[arg-type]
    assert unit.get_registers("holding_registers", 0) == [5]
    unit.set_bits(Table.COIL, 0, [True])  # type: ignore[arg-type]
    assert unit.get_bits("coil", 0) == [True]
    assert unit.get_bits(Table.DISCRETE, 0) == [False]  # type: ignore[arg-type]


def test_unit_rejects_bad_input() -> None:
    unit = SimUnit(size=100)
    with pytest.raises(ValueError, match=r"outside 0\.\.65535"):
        unit.set_registers("holding", 0, [65536])
    with pytest.raises(ValueError, match=r"outside 0\.\.65535"):
        unit.set_registers("holding", 0, [-1])
    with pytest.raises(IndexError):
        unit.set_registers("holding", 99, [1, 2])
    with pytest.raises(IndexError):
        unit.get_bits("coils", 100)
    with pytest.raises(ValueError, match="bit table"):
        unit.set_registers("coils", 0, [1])
    with pytest.raises(ValueError, match="register table"):
        unit.get_bits("input", 0)
    with pytest.raises(ValueError, match="unknown table"):
        unit.get_registers("eeprom", 0)
    with pytest.raises(ValueError, match="bad range"):
        SimUnit(size=100, valid={"holding": [(0, 101)]})


def test_unit_valid_ranges_are_half_open() -> None:
    unit = SimUnit(valid={"holding": [(0, 100), (200, 210)]})
    assert unit.is_valid("holding", 0, 100)
    assert not unit.is_valid("holding", 99, 2)
    assert unit.is_valid("holding", 205, 5)
    assert not unit.is_valid("holding", 150, 1)
    assert not unit.is_valid("holding", 95, 110)  # spans two ranges and the gap
    assert unit.is_valid("input", 65535, 1)  # no ranges: whole bank
    assert not unit.is_valid("input", 65535, 2)


# -- function codes through pymodbus ----------------------------------------------------------


async def test_reads_all_four_tables(sim_servers: MakeSim) -> None:
    server = await sim_servers([1, 7])
    unit = server.unit(7)
    unit.set_registers("holding", 100, [1, 2, 0xFFFF])
    unit.set_registers("input", 0, list(range(125)))
    unit.set_bits("coils", 5, [True, False, True, True, False, False, False, False, True])
    unit.set_bits("discrete", 0, [True] * 2000)
    async with modbus_client(server) as client:
        rr = await client.read_holding_registers(100, count=3, device_id=7)
        assert not rr.isError()
        assert rr.registers == [1, 2, 0xFFFF]
        assert rr.dev_id == 7
        rr = await client.read_input_registers(0, count=125, device_id=7)
        assert rr.registers == list(range(125))
        rr = await client.read_coils(5, count=9, device_id=7)
        assert rr.bits[:9] == [True, False, True, True, False, False, False, False, True]
        rr = await client.read_discrete_inputs(0, count=2000, device_id=7)
        assert rr.bits[:2000] == [True] * 2000
        rr = await client.read_holding_registers(100, count=3, device_id=1)
        assert rr.registers == [0, 0, 0]  # units are independent
    assert [r.function for r in server.request_log] == [3, 4, 1, 2, 3]


async def test_writes_single_and_multiple(sim_servers: MakeSim) -> None:
    server = await sim_servers([3])
    unit = server.unit(3)
    async with modbus_client(server) as client:
        assert not (await client.write_coil(10, True, device_id=3)).isError()
        assert not (await client.write_register(20, 0xBEEF, device_id=3)).isError()
        rr = await client.write_coils(30, [True, False, True] * 5, device_id=3)
        assert not rr.isError()
        rr = await client.write_registers(40, [1, 2, 3, 4], device_id=3)
        assert not rr.isError()
        assert (await client.write_coil(10, False, device_id=3)).isError() is False
        assert not (await client.write_coil(11, True, device_id=3)).isError()
    assert unit.get_bits("coils", 10, 2) == [False, True]
    assert unit.get_registers("holding", 20) == [0xBEEF]
    assert unit.get_bits("coils", 30, 15) == [True, False, True] * 5
    assert unit.get_registers("holding", 39, 6) == [0, 1, 2, 3, 4, 0]
    log = list(server.request_log)
    assert [(r.function, r.address, r.count) for r in log] == [
        (5, 10, 1),
        (6, 20, 1),
        (15, 30, 15),
        (16, 40, 4),
        (5, 10, 1),
        (5, 11, 1),
    ]
    assert log[1].values == (0xBEEF,)
    assert log[2].values == (1, 0, 1) * 5
    assert log[3].values == (1, 2, 3, 4)
    assert log[4].values == (0,)
    assert all(r.unit == 3 for r in log)


async def test_a_32_bit_write_is_one_fc16_request(sim_servers: MakeSim) -> None:
    server = await sim_servers([1])
    async with modbus_client(server) as client:
        await client.write_registers(0, [0x4049, 0x0FDB], device_id=1)
    (record,) = server.request_log
    assert isinstance(record, RequestRecord)
    assert (record.function, record.address, record.count) == (16, 0, 2)
    assert record.values == (0x4049, 0x0FDB)
    assert record.connection == 1


@pytest.mark.parametrize(
    ("current", "and_mask", "or_mask"),
    [
        (0x12, 0xF2, 0x25),
        (0xFFFF, 0x0000, 0x0000),
        (0x0000, 0x0000, 0xFFFF),
        (0xA5A5, 0xFFFF, 0x5A5A),
    ],
)
async def test_mask_write(sim_servers: MakeSim, current: int, and_mask: int, or_mask: int) -> None:
    server = await sim_servers([1])
    server.unit(1).set_registers("holding", 4, [current])
    async with modbus_client(server) as client:
        rr = await client.mask_write_register(
            address=4, and_mask=and_mask, or_mask=or_mask, device_id=1
        )
        assert not rr.isError()
    expected = (current & and_mask) | (or_mask & ~and_mask & 0xFFFF)
    assert server.unit(1).get_registers("holding", 4) == [expected]
    assert server.request_log[-1].values == (and_mask, or_mask)


async def test_mask_write_example_from_spec(sim_servers: MakeSim) -> None:
    server = await sim_servers([1])
    server.unit(1).set_registers("holding", 4, [0x12])
    async with modbus_client(server) as client:
        await client.mask_write_register(address=4, and_mask=0xF2, or_mask=0x25, device_id=1)
    assert server.unit(1).get_registers("holding", 4) == [0x17]


# -- exception replies ---------------------------------------------------------------------


async def test_unknown_function_is_exception_1(sim_servers: MakeSim) -> None:
    server = await sim_servers([1])
    async with modbus_client(server) as client:
        rr = await client.read_exception_status(device_id=1)  # FC 7, not implemented
    assert rr.isError()
    assert rr.exception_code == 1


async def test_address_outside_valid_range_is_exception_2(sim_servers: MakeSim) -> None:
    unit = SimUnit(valid={"holding": [(0, 100)], "coils": [(0, 8)]})
    server = await sim_servers({1: unit})
    async with modbus_client(server) as client:
        assert not (await client.read_holding_registers(90, count=10, device_id=1)).isError()
        rr = await client.read_holding_registers(95, count=10, device_id=1)
        assert rr.isError()
        assert rr.exception_code == 2
        rr = await client.write_register(100, 1, device_id=1)
        assert rr.exception_code == 2
        rr = await client.write_registers(99, [1, 2], device_id=1)
        assert rr.exception_code == 2
        rr = await client.mask_write_register(address=200, device_id=1)
        assert rr.exception_code == 2
        rr = await client.write_coils(4, [True] * 5, device_id=1)
        assert rr.exception_code == 2
        rr = await client.write_coil(8, True, device_id=1)
        assert rr.exception_code == 2
        assert not (await client.read_input_registers(5000, count=1, device_id=1)).isError()
        rr = await client.read_input_registers(65535, count=2, device_id=1)
        assert rr.exception_code == 2  # past the end of the bank
    assert unit.get_registers("holding", 99) == [0]  # rejected writes change nothing


@pytest.mark.parametrize(
    ("fc", "body"),
    [
        (3, struct.pack(">HH", 0, 0)),
        (3, struct.pack(">HH", 0, 126)),
        (4, struct.pack(">HH", 0, 126)),
        (1, struct.pack(">HH", 0, 2001)),
        (2, struct.pack(">HH", 0, 0)),
        (16, struct.pack(">HHB", 0, 124, 248) + bytes(240)),  # 248 bytes would overflow the ADU
        (16, struct.pack(">HHB", 0, 0, 0)),
        (16, struct.pack(">HHB", 0, 2, 3) + bytes(3)),  # byte count does not match
        (15, struct.pack(">HHB", 0, 1969, 247) + bytes(247)),
        (15, struct.pack(">HHB", 0, 9, 1) + bytes(1)),
        (5, struct.pack(">HH", 0, 0x1234)),  # coil value must be FF00 or 0000
        (3, struct.pack(">H", 0)),  # truncated PDU
    ],
)
async def test_illegal_values_are_exception_3(
    sim_servers: MakeSim,
    raw_client: Callable[[int], Awaitable[RawClient]],
    fc: int,
    body: bytes,
) -> None:
    server = await sim_servers([1])
    client = await raw_client(server.port)
    await client.send(0x4242, 1, bytes((fc,)) + body)
    assert await client.recv() == (0x4242, 1, bytes((fc | 0x80, 3)))


async def test_largest_legal_requests(
    sim_servers: MakeSim, raw_client: Callable[[int], Awaitable[RawClient]]
) -> None:
    server = await sim_servers([1])
    client = await raw_client(server.port)
    await client.send(1, 1, b"\x10" + struct.pack(">HHB", 0, 123, 246) + bytes(range(246)))
    assert await client.recv() == (1, 1, b"\x10" + struct.pack(">HH", 0, 123))
    await client.send(2, 1, b"\x0f" + struct.pack(">HHB", 0, 1968, 246) + b"\xff" * 246)
    assert await client.recv() == (2, 1, b"\x0f" + struct.pack(">HH", 0, 1968))
    await client.send(3, 1, b"\x03" + struct.pack(">HH", 0, 125))
    tid, _, pdu = await client.recv()
    assert (tid, pdu[:2]) == (3, b"\x03\xfa")
    assert struct.unpack(">2H", pdu[2:6]) == (0x0001, 0x0203)
    assert server.unit(1).get_bits("coils", 1967, 2) == [True, False]


async def test_exception_hook(sim_servers: MakeSim) -> None:
    server = await sim_servers([1, 2])
    calls: list[tuple[int, int, int, int]] = []

    def hook(unit: int, fc: int, address: int, count: int) -> int | None:
        calls.append((unit, fc, address, count))
        return 6 if unit == 2 and address + count > 10 else None

    server.exception_hook = hook
    async with modbus_client(server) as client:
        assert not (await client.read_holding_registers(10, count=2, device_id=1)).isError()
        assert not (await client.read_holding_registers(0, count=2, device_id=2)).isError()
        rr = await client.read_holding_registers(8, count=4, device_id=2)
        assert (rr.isError(), rr.exception_code) == (True, 6)
        rr = await client.write_registers(10, [1, 2], device_id=2)
        assert rr.exception_code == 6
    assert calls[-1] == (2, 16, 10, 2)
    assert server.unit(2).get_registers("holding", 10) == [0]
    server.exception_hook = None
    async with modbus_client(server) as client:
        assert not (await client.read_holding_registers(10, count=2, device_id=2)).isError()


async def test_unknown_unit_gets_no_reply_by_default(sim_servers: MakeSim) -> None:
    server = await sim_servers([1])
    async with modbus_client(server, timeout=0.3) as client:
        with pytest.raises(ModbusIOException):
            await client.read_holding_registers(0, count=1, device_id=2)
        # the connection stays usable for the known unit
        assert not (await client.read_holding_registers(0, count=1, device_id=1)).isError()
    assert server.requests_total == 2
    assert server.responses_total == 1
    assert server.request_log[0].unit == 2


async def test_unknown_unit_can_answer_gateway_exception(sim_servers: MakeSim) -> None:
    server = await sim_servers([1], unknown_unit_exception=11)
    async with modbus_client(server) as client:
        rr = await client.read_holding_registers(0, count=1, device_id=5)
    assert (rr.isError(), rr.exception_code) == (True, 11)


# -- fault switches ----------------------------------------------------------------------------


async def test_silent_unit_times_out_while_others_answer(sim_servers: MakeSim) -> None:
    server = await sim_servers([1, 2])
    server.silent_units.add(2)
    async with modbus_client(server, timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(ModbusIOException):
            await client.read_holding_registers(0, count=1, device_id=2)
        assert time.monotonic() - started >= 0.25
        assert not (await client.read_holding_registers(0, count=1, device_id=1)).isError()
        server.silent_units.clear()
        assert not (await client.read_holding_registers(0, count=1, device_id=2)).isError()


async def test_silent_all(sim_servers: MakeSim) -> None:
    server = await sim_servers([1])
    server.silent_all = True
    async with modbus_client(server, timeout=0.2) as client:
        with pytest.raises(ModbusIOException):
            await client.write_register(0, 5, device_id=1)
        server.silent_all = False
        assert not (await client.read_holding_registers(0, count=1, device_id=1)).isError()
    assert server.unit(1).get_registers("holding", 0) == [0]  # unanswered write not executed


async def test_delay_answers_late(sim_servers: MakeSim) -> None:
    server = await sim_servers([1])
    server.unit(1).set_registers("holding", 0, [99])
    server.delay = 0.25
    async with modbus_client(server, timeout=1.0) as client:
        started = time.monotonic()
        rr = await client.read_holding_registers(0, count=1, device_id=1)
        elapsed = time.monotonic() - started
    assert rr.registers == [99]
    assert 0.24 <= elapsed < 0.9


async def test_late_reply_keeps_its_transaction_id(sim_servers: MakeSim) -> None:
    """A reply arriving after the client gave up must not be taken for the next one."""
    server = await sim_servers([1])
    server.unit(1).set_registers("holding", 0, [111, 222])
    server.delay = 0.6
    async with modbus_client(server, timeout=0.4) as client:
        with pytest.raises(ModbusIOException):
            await client.read_holding_registers(0, count=1, device_id=1)
        server.delay = 0.0
        # Queued behind the late reply (due at 0.6 s, while this one waits until 0.8 s);
        # pymodbus skips the stale transaction id and takes the right answer.
        rr = await client.read_holding_registers(1, count=1, device_id=1)
        assert rr.registers == [222]
    first, second = server.request_log
    assert first.transaction_id != second.transaction_id
    assert server.responses_total == 2


async def test_delayed_replies_keep_order_and_ids(
    sim_servers: MakeSim, raw_client: Callable[[int], Awaitable[RawClient]]
) -> None:
    server = await sim_servers([1, 2])
    server.unit(1).set_registers("holding", 0, [1])
    server.unit(2).set_registers("holding", 0, [2])
    server.per_unit_delay[1] = 0.2
    client = await raw_client(server.port)
    read = b"\x03" + struct.pack(">HH", 0, 1)
    # pipelined in one write: slow unit 1 first, then fast unit 2
    client.writer.write(client.frame(0xAAAA, 1, read) + client.frame(0xBBBB, 2, read))
    started = time.monotonic()
    first = await client.recv()
    second = await client.recv()
    assert time.monotonic() - started >= 0.18
    assert first == (0xAAAA, 1, b"\x03\x02\x00\x01")
    assert second == (0xBBBB, 2, b"\x03\x02\x00\x02")


async def test_per_unit_delay_overrides_delay(sim_servers: MakeSim) -> None:
    server = await sim_servers([1, 2])
    server.delay = 0.3
    server.per_unit_delay[2] = 0.0
    async with modbus_client(server) as client:
        started = time.monotonic()
        await client.read_holding_registers(0, count=1, device_id=2)
        assert time.monotonic() - started < 0.2
        started = time.monotonic()
        await client.read_holding_registers(0, count=1, device_id=1)
        assert time.monotonic() - started >= 0.28


async def test_connection_counting(sim_servers: MakeSim) -> None:
    server = await sim_servers([1])
    assert (server.connections_total, server.connections_open) == (0, 0)
    async with modbus_client(server) as first, modbus_client(server) as second:
        await wait_until(lambda: server.connections_open == 2)
        await first.read_holding_registers(0, count=1, device_id=1)
        await second.read_holding_registers(0, count=1, device_id=1)
        assert {r.connection for r in server.request_log} == {1, 2}
    await wait_until(lambda: server.connections_open == 0)
    assert server.connections_total == 2
    assert server.requests_total == 2


async def test_max_connections_closes_extra_ones(sim_servers: MakeSim) -> None:
    server = await sim_servers([1])
    server.max_connections = 1
    async with modbus_client(server) as first:
        extra = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=0.5, retries=0)
        try:
            await extra.connect()
            await wait_until(lambda: server.connections_refused == 1)
            await wait_until(lambda: not extra.connected)
            with pytest.raises(ConnectionException):
                await extra.read_holding_registers(0, count=1, device_id=1)
        finally:
            extra.close()
        assert not (await first.read_holding_registers(0, count=1, device_id=1)).isError()
    assert (server.connections_total, server.connections_refused) == (1, 1)
    await wait_until(lambda: server.connections_open == 0)
    async with modbus_client(server) as again:  # a slot is free again
        assert not (await again.read_holding_registers(0, count=1, device_id=1)).isError()


async def test_refuse_and_drop_all(sim_servers: MakeSim) -> None:
    server = await sim_servers([1])
    async with modbus_client(server) as client:
        await wait_until(lambda: server.connections_open == 1)
        assert server.drop_all() == 1
        await wait_until(lambda: not client.connected)
        server.refuse = True
        await client.connect()
        await wait_until(lambda: server.connections_refused == 1)
        await wait_until(lambda: not client.connected)
        server.refuse = False
        assert await client.connect()
        assert not (await client.read_holding_registers(0, count=1, device_id=1)).isError()
    assert server.connections_total == 2


async def test_stop_closes_clients_and_restarts_on_same_port(sim_servers: MakeSim) -> None:
    server = await sim_servers([1])
    server.unit(1).set_registers("holding", 0, [5])
    port = server.port
    async with modbus_client(server, timeout=0.3) as client:
        await client.read_holding_registers(0, count=1, device_id=1)
        await server.stop()
        assert not server.running
        assert server.connections_open == 0
        await wait_until(lambda: not client.connected)
        assert not await client.connect()  # nothing listens: connection refused
        await server.start()
        assert server.port == port
        assert await client.connect()
        rr = await client.read_holding_registers(0, count=1, device_id=1)
        assert rr.registers == [5]  # data survives a restart
    assert server.connections_total == 2


async def test_stop_while_replies_are_pending(sim_servers: MakeSim) -> None:
    server = await sim_servers([1])
    server.delay = 5.0
    async with modbus_client(server, timeout=0.2) as client:
        with pytest.raises(ModbusIOException):
            await client.read_holding_registers(0, count=1, device_id=1)
        started = time.monotonic()
        await server.stop()
        assert time.monotonic() - started < 1.0
    await server.start()
    server.delay = 0.0
    async with modbus_client(server) as client:
        assert not (await client.read_holding_registers(0, count=1, device_id=1)).isError()


# -- framing --------------------------------------------------------------------------------


async def test_split_and_coalesced_frames(
    sim_servers: MakeSim, raw_client: Callable[[int], Awaitable[RawClient]]
) -> None:
    server = await sim_servers([1])
    server.unit(1).set_registers("input", 0, [0x0102])
    client = await raw_client(server.port)
    request = client.frame(0x0101, 1, b"\x04" + struct.pack(">HH", 0, 1))
    for byte in request:  # one byte per segment
        client.writer.write(bytes((byte,)))
        await client.writer.drain()
        await asyncio.sleep(0.001)
    assert await client.recv() == (0x0101, 1, b"\x04\x02\x01\x02")
    batch = b"".join(
        client.frame(tid, 1, b"\x04" + struct.pack(">HH", 0, 1)) for tid in range(10, 20)
    )
    client.writer.write(batch)
    for tid in range(10, 20):
        assert (await client.recv())[0] == tid


async def test_foreign_protocol_id_is_ignored(
    sim_servers: MakeSim, raw_client: Callable[[int], Awaitable[RawClient]]
) -> None:
    server = await sim_servers([1])
    client = await raw_client(server.port)
    read = b"\x03" + struct.pack(">HH", 0, 1)
    client.writer.write(client.frame(1, 1, read, protocol=7) + client.frame(2, 1, read))
    assert (await client.recv())[0] == 2


async def test_garbage_length_closes_the_connection(
    sim_servers: MakeSim, raw_client: Callable[[int], Awaitable[RawClient]]
) -> None:
    server = await sim_servers([1])
    client = await raw_client(server.port)
    client.writer.write(struct.pack(">HHHB", 1, 0, 1000, 1) + bytes(20))
    assert await client.reader.read(10) == b""
    await wait_until(lambda: server.connections_open == 0)


async def test_request_log_is_bounded(sim_servers: MakeSim) -> None:
    server = await sim_servers([1], request_log_size=5)
    async with modbus_client(server) as client:
        for address in range(8):
            await client.read_holding_registers(address, count=1, device_id=1)
    assert server.requests_total == 8
    assert [r.address for r in server.request_log] == [3, 4, 5, 6, 7]
    server.clear_log()
    assert not server.request_log


async def test_context_manager_and_fixed_port() -> None:
    async with SimServer([1]) as first:
        port = first.port
        assert port > 0
    async with SimServer({4: SimUnit()}, port=port) as second:
        assert second.port == port
        async with modbus_client(second) as client:
            assert not (await client.read_coils(0, count=1, device_id=4)).isError()


def test_rejects_bad_unit_ids() -> None:
    with pytest.raises(ValueError, match="unit id"):
        SimServer([256])


# -- RTU framing over TCP (a serial gateway in transparent mode) ------------------------------


def rtu(unit: int, pdu: bytes) -> bytes:
    frame = bytes((unit,)) + pdu
    return frame + crc16(frame).to_bytes(2, "little")


async def rtu_recv(client: RawClient, size: int, timeout: float = 1.0) -> bytes:
    async with asyncio.timeout(timeout):
        return await client.reader.readexactly(size)


def test_crc16_modbus_check_values() -> None:
    assert crc16(b"123456789") == 0x4B37  # the CRC-16/MODBUS check value
    assert rtu(1, bytes.fromhex("030000000A")).hex() == "01030000000ac5cd"  # low byte first


async def test_rtu_reads_and_writes_through_pymodbus(sim_servers: MakeSim) -> None:
    server = await sim_servers([1, 7], framing="rtu")
    unit = server.unit(7)
    unit.set_registers("holding", 100, [1, 2, 0xFFFF])
    unit.set_registers("input", 0, list(range(125)))
    unit.set_bits("coils", 5, [True, False, True])
    unit.set_bits("discrete", 0, [True] * 2000)
    async with modbus_client(server, framer=FramerType.RTU) as client:
        rr = await client.read_holding_registers(100, count=3, device_id=7)
        assert (rr.registers, rr.dev_id) == ([1, 2, 0xFFFF], 7)
        assert (await client.read_input_registers(0, count=125, device_id=7)).registers == list(
            range(125)
        )
        assert (await client.read_coils(5, count=3, device_id=7)).bits[:3] == [True, False, True]
        assert (await client.read_discrete_inputs(0, count=2000, device_id=7)).bits[:2000] == [
            True
        ] * 2000
        assert (await client.read_holding_registers(100, count=3, device_id=1)).registers == [0] * 3
        rr = await client.write_register(10, 0xBEEF, device_id=7)
        assert (rr.address, rr.registers) == (10, [0xBEEF])
        rr = await client.write_registers(20, [1, 2, 3], device_id=7)
        assert (rr.address, rr.count) == (20, 3)
        await client.write_coil(0, True, device_id=7)
        await client.write_coils(8, [True, True, False, True], device_id=7)
        await client.mask_write_register(address=10, and_mask=0x00FF, or_mask=0x1200, device_id=7)
        server.exception_hook = lambda unit, fc, address, count: 2 if address == 999 else None
        rr = await client.read_holding_registers(999, count=1, device_id=7)
        assert (rr.isError(), rr.exception_code, rr.dev_id) == (True, 2, 7)
    assert unit.get_registers("holding", 10) == [0x12EF]
    assert unit.get_registers("holding", 20, 3) == [1, 2, 3]
    assert unit.get_bits("coils", 8, 4) == [True, True, False, True]
    assert unit.get_bits("coils", 0) == [True]
    assert {r.transaction_id for r in server.request_log} == {0}
    assert [r.function for r in server.request_log][5:10] == [6, 16, 5, 15, 22]


async def test_rtu_frames_on_the_wire(
    sim_servers: MakeSim, raw_client: Callable[[int], Awaitable[RawClient]]
) -> None:
    server = await sim_servers([1], framing="rtu")
    server.unit(1).set_registers("holding", 0, [0x0102, 0x0304])
    client = await raw_client(server.port)
    client.writer.write(rtu(1, b"\x03" + struct.pack(">HH", 0, 2)))
    reply = await rtu_recv(client, 9)
    assert reply == rtu(1, b"\x03\x04\x01\x02\x03\x04")
    assert crc16(reply[:-2]) == int.from_bytes(reply[-2:], "little")
    client.writer.write(rtu(1, b"\x10" + struct.pack(">HHB", 5, 2, 4) + b"\x00\x07\x00\x08"))
    assert await rtu_recv(client, 8) == rtu(1, b"\x10" + struct.pack(">HH", 5, 2))
    client.writer.write(rtu(1, b"\x2b\x0e\x01\x00"))  # FC43: not served, length unknown
    assert await rtu_recv(client, 5) == rtu(1, b"\xab\x01")
    assert server.unit(1).get_registers("holding", 5, 2) == [7, 8]


async def test_rtu_bad_crc_gets_no_reply(
    sim_servers: MakeSim, raw_client: Callable[[int], Awaitable[RawClient]]
) -> None:
    server = await sim_servers([1], framing="rtu")
    client = await raw_client(server.port)
    good = rtu(1, b"\x06" + struct.pack(">HH", 3, 9))
    client.writer.write(good[:-1] + bytes((good[-1] ^ 0xFF,)))
    assert await client.no_reply()
    assert server.unit(1).get_registers("holding", 3) == [0]
    client.writer.write(good)
    assert await rtu_recv(client, 8) == good  # FC6 echoes the request
    assert server.unit(1).get_registers("holding", 3) == [9]


async def test_rtu_split_and_coalesced_frames(
    sim_servers: MakeSim, raw_client: Callable[[int], Awaitable[RawClient]]
) -> None:
    server = await sim_servers([1, 2], framing="rtu")
    server.unit(2).set_registers("input", 0, [0x0102])
    client = await raw_client(server.port)
    write = rtu(2, b"\x10" + struct.pack(">HHB", 0, 1, 2) + b"\x00\x05")
    for byte in write:  # one byte per segment, through the byte count
        client.writer.write(bytes((byte,)))
        await client.writer.drain()
        await asyncio.sleep(0.001)
    assert await rtu_recv(client, 8) == rtu(2, b"\x10" + struct.pack(">HH", 0, 1))
    read = b"\x04" + struct.pack(">HH", 0, 1)
    client.writer.write(rtu(1, read) + rtu(2, read) + write + rtu(1, read))
    assert await rtu_recv(client, 7) == rtu(1, b"\x04\x02\x00\x00")
    assert await rtu_recv(client, 7) == rtu(2, b"\x04\x02\x01\x02")
    assert await rtu_recv(client, 8) == rtu(2, b"\x10" + struct.pack(">HH", 0, 1))
    assert await rtu_recv(client, 7) == rtu(1, b"\x04\x02\x00\x00")


async def test_rtu_late_replies_keep_order_and_silent_units_stay_silent(
    sim_servers: MakeSim, raw_client: Callable[[int], Awaitable[RawClient]]
) -> None:
    server = await sim_servers([1, 2, 3], framing="rtu")
    server.unit(1).set_registers("holding", 0, [1])
    server.unit(2).set_registers("holding", 0, [2])
    server.per_unit_delay[1] = 0.2
    server.silent_units.add(3)
    client = await raw_client(server.port)
    read = b"\x03" + struct.pack(">HH", 0, 1)
    client.writer.write(rtu(1, read) + rtu(3, read) + rtu(2, read))
    started = time.monotonic()
    assert await rtu_recv(client, 7) == rtu(1, b"\x03\x02\x00\x01")
    assert time.monotonic() - started >= 0.18
    assert await rtu_recv(client, 7) == rtu(2, b"\x03\x02\x00\x02")
    assert await client.no_reply()
    assert [r.unit for r in server.request_log] == [1, 3, 2]


async def test_rtu_late_reply_through_pymodbus(sim_servers: MakeSim) -> None:
    server = await sim_servers([1], framing="rtu")
    server.unit(1).set_registers("holding", 0, [99])
    server.delay = 0.25
    async with modbus_client(server, framer=FramerType.RTU) as client:
        started = time.monotonic()
        rr = await client.read_holding_registers(0, count=1, device_id=1)
        assert rr.registers == [99]
        assert time.monotonic() - started >= 0.24


def test_rejects_unknown_framing() -> None:
    with pytest.raises(ValueError, match="framing"):
        SimServer([1], framing="ascii")
