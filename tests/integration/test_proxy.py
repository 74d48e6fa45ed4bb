"""The Modbus TCP proxy in-process: a HostSession on a simulated gateway that takes one
connection, a HostProxy on it, and real clients (pymodbus's, and raw sockets for what a
library would never send)."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient

from bridge import proxy as proxy_module
from bridge.model import Host, Proxy, Table, TcpLink
from bridge.proxy import HostProxy
from bridge.proxy_rules import ProxyRequest
from bridge.session import HostSession
from bridge.sim import SimServer

pytestmark = pytest.mark.integration


@dataclass
class Rig:
    sim: SimServer
    session: HostSession
    proxy: HostProxy
    written: list[ProxyRequest] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.proxy.port


async def _connected(session: HostSession, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not session.connected:
            await asyncio.sleep(0.01)


@pytest.fixture
async def rig(sim_servers) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    made: list[Rig] = []

    async def make(*, units: tuple[int, ...] = (1, 2), **settings: Any) -> Rig:
        sim: SimServer = await sim_servers([1, 2, 3])
        sim.max_connections = 1  # a gateway that takes one connection
        host = Host(name="gw", link=TcpLink("127.0.0.1", port=sim.port), timeout=0.3)
        session = HostSession(host, units=2, backoff_min=0.05, backoff_max=0.2)
        await session.start()
        await _connected(session)
        settings.setdefault("port", 0)
        rig = Rig(sim, session, None)  # type: ignore[arg-type]
        rig.proxy = HostProxy(
            "gw", Proxy(**settings), lambda: session, units, on_write=rig.written.append
        )
        await rig.proxy.start()
        made.append(rig)
        return rig

    yield make
    for r in made:
        await r.proxy.stop()
        await r.session.stop()


def _mbap(tid: int, unit: int, pdu: bytes, *, length: int | None = None) -> bytes:
    n = len(pdu) + 1 if length is None else length
    return struct.pack(">HHHB", tid, 0, n, unit) + pdu


class Raw:
    """A Modbus TCP client on a plain socket: it sends whatever it is told to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Raw:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def frame(self, timeout: float = 3.0) -> tuple[int, int, bytes]:
        """The next answer: (transaction id, unit, PDU)."""
        async with asyncio.timeout(timeout):
            head = await self.reader.readexactly(7)
            tid, pid, length, unit = struct.unpack(">HHHB", head)
            assert pid == 0
            return tid, unit, await self.reader.readexactly(length - 1)

    async def ask(self, tid: int, unit: int, pdu: bytes) -> bytes:
        self.send(_mbap(tid, unit, pdu))
        got_tid, got_unit, reply = await self.frame()
        assert (got_tid, got_unit) == (tid, unit)
        return reply

    async def closed(self, timeout: float = 3.0) -> bool:
        """Whether the proxy closes the connection (EOF or reset) within `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True

    def close(self) -> None:
        self.writer.close()


async def test_a_client_reads_through_the_one_session_with_its_own_transaction_id(rig) -> None:
    r = await rig()
    r.sim.unit(1).set_registers("holding", 10, [0x1234, 0xBEEF])
    r.sim.unit(2).set_bits("coils", 0, [True, False, True])
    client = await Raw.connect(r.port)
    try:
        reply = await client.ask(0xABCD, 1, struct.pack(">BHH", 3, 10, 2))
        assert reply == b"\x03\x04\x12\x34\xbe\xef"
        assert await client.ask(7, 2, struct.pack(">BHH", 1, 0, 3)) == b"\x01\x01\x05"
    finally:
        client.close()
    # The gateway saw the bridge's transaction ids, on its one connection.
    tids = [rec.transaction_id for rec in r.sim.request_log]
    assert 0xABCD not in tids and 7 not in tids
    assert r.sim.connections_total == 1 and r.sim.connections_refused == 0
    assert r.proxy.stats.requests["answered"] == 2


async def test_a_proxied_request_queues_as_a_poll_behind_the_bridge_s_writes(rig) -> None:
    """On a busy link a client's request waits in the host's queue with the polls, in
    arrival order, and a write of the bridge's own (an MQTT command) queued after it
    still goes out first. (The request the session's worker has already taken for the
    link goes first whatever its class: a write waits behind at most that one.)"""
    r = await rig()
    r.sim.delay = 0.2  # each request holds the link for 200 ms: the others queue
    on_wire = asyncio.create_task(r.session.read(1, Table.HOLDING, 0, 1))
    await asyncio.sleep(0.05)
    taken = asyncio.create_task(r.session.read(1, Table.HOLDING, 1, 1))  # the worker's next
    await asyncio.sleep(0.01)
    client = await Raw.connect(r.port)
    try:
        client.send(_mbap(0x4242, 2, struct.pack(">BHH", 3, 7, 1)))
        await asyncio.sleep(0.05)  # the proxied read waits in the queue
        later_poll = asyncio.create_task(r.session.read(1, Table.HOLDING, 2, 1))
        await asyncio.sleep(0.01)
        write = asyncio.create_task(r.session.write_registers(1, 5, [9], multiple=False))
        tid, unit, reply = await client.frame(timeout=5.0)
        await asyncio.gather(on_wire, taken, later_poll, write)
    finally:
        client.close()
    assert (tid, unit, reply) == (0x4242, 2, b"\x03\x02\x00\x00")
    sent = [(rec.unit, rec.function, rec.address) for rec in r.sim.request_log]
    assert sent == [(1, 3, 0), (1, 3, 1), (1, 6, 5), (2, 3, 7), (1, 3, 2)]
    assert r.sim.connections_total == 1


async def test_pymodbus_reads_through_the_proxy_and_may_not_write(rig) -> None:
    r = await rig()
    r.sim.unit(1).set_registers("input", 0, [1, 2, 3])
    client = AsyncModbusTcpClient("127.0.0.1", port=r.port, timeout=2, retries=0)
    await client.connect()
    try:
        rr = await client.read_input_registers(0, count=3, device_id=1)
        assert rr.registers == [1, 2, 3]
        wr = await client.write_register(5, 99, device_id=1)
        assert wr.isError() and wr.exception_code == 1  # reads only: illegal function
        assert r.sim.unit(1).get_registers("holding", 5) == [0]
        wr = await client.read_holding_registers(0, count=1, device_id=3)
        assert wr.isError() and wr.exception_code == 0x0B  # unit 3 is not proxied
    finally:
        client.close()
    assert r.written == []
    assert r.proxy.stats.requests == {"answered": 1, "exception": 0, "refused": 2, "failed": 0}


async def test_writes_when_allowed_reach_the_device_and_are_reported(rig) -> None:
    r = await rig(writes=True)
    client = AsyncModbusTcpClient("127.0.0.1", port=r.port, timeout=2, retries=0)
    await client.connect()
    try:
        assert not (await client.write_register(5, 99, device_id=1)).isError()
        assert not (await client.write_registers(10, [1, 2, 3], device_id=1)).isError()
        assert not (await client.write_coil(3, True, device_id=2)).isError()
        assert not (await client.write_coils(8, [True, False, True], device_id=2)).isError()
        mask = await client.mask_write_register(
            address=5, and_mask=0x00F0, or_mask=0x0003, device_id=1
        )
        assert not mask.isError()
    finally:
        client.close()
    unit1, unit2 = r.sim.unit(1), r.sim.unit(2)
    assert unit1.get_registers("holding", 5) == [(99 & 0x00F0) | 0x0003]
    assert unit1.get_registers("holding", 10, 3) == [1, 2, 3]
    assert unit2.get_bits("coils", 3) == [True]
    assert unit2.get_bits("coils", 8, 3) == [True, False, True]
    assert [(w.function, w.unit, w.address, w.count) for w in r.written] == [
        (6, 1, 5, 1),
        (16, 1, 10, 3),
        (5, 2, 3, 1),
        (15, 2, 8, 3),
        (22, 1, 5, 1),
    ]
    assert r.proxy.stats.writes == 5


async def test_bad_requests_are_answered_by_the_proxy_not_the_device(rig) -> None:
    r = await rig()
    client = await Raw.connect(r.port)
    try:
        before = r.sim.requests_total
        for count in (0, 200):  # a traceback in pymodbus's server
            assert await client.ask(1, 1, struct.pack(">BHH", 3, 0, count)) == b"\x83\x03"
        assert await client.ask(2, 1, bytes([8, 0, 0, 0, 0])) == b"\x88\x01"
        assert await client.ask(3, 1, struct.pack(">BHH", 3, 65535, 2)) == b"\x83\x02"
        assert await client.ask(4, 9, struct.pack(">BHH", 3, 0, 1)) == b"\x83\x0b"
        assert r.sim.requests_total == before
        # and the connection goes on
        assert await client.ask(5, 1, struct.pack(">BHH", 3, 0, 1)) == b"\x03\x02\x00\x00"
    finally:
        client.close()


async def test_a_device_exception_is_passed_on_and_silence_is_0x0b(rig) -> None:
    r = await rig()
    r.sim.exception_hook = lambda unit, fc, address, count: 2 if address == 100 else None
    client = await Raw.connect(r.port)
    try:
        assert await client.ask(1, 1, struct.pack(">BHH", 3, 100, 1)) == b"\x83\x02"
        r.sim.silent_units.add(2)
        assert await client.ask(2, 2, struct.pack(">BHH", 4, 0, 1)) == b"\x84\x0b"
        asked = r.sim.requests_total
        # Asked again at once: answered without holding the line for another timeout.
        started = time.monotonic()
        assert await client.ask(3, 2, struct.pack(">BHH", 4, 0, 1)) == b"\x84\x0b"
        assert r.sim.requests_total == asked
        assert time.monotonic() - started < 0.3
    finally:
        client.close()
    assert r.proxy.stats.requests["exception"] == 1
    assert r.proxy.stats.requests["failed"] == 2


async def test_a_host_that_is_down_is_answered_0x0a(rig) -> None:
    r = await rig()
    await r.sim.stop()  # the gateway goes away; the session cannot reopen
    client = await Raw.connect(r.port)
    try:
        # The session finds the connection closed (0x0A), then cannot reopen it (0x0A).
        assert await client.ask(1, 1, struct.pack(">BHH", 3, 0, 1)) == b"\x83\x0a"
        assert not r.session.connected
        assert await client.ask(2, 1, struct.pack(">BHH", 3, 0, 1)) == b"\x83\x0a"
    finally:
        client.close()


# -- hostile clients --------------------------------------------------------------------------


async def _reader_keeps_going(r: Rig, stop: asyncio.Event) -> list[float]:
    """A well-behaved client reading all along: its answers' latencies."""
    client = await Raw.connect(r.port)
    latencies: list[float] = []
    tid = 0
    try:
        while not stop.is_set():
            tid = (tid + 1) & 0xFFFF
            started = time.monotonic()
            assert await client.ask(tid, 1, struct.pack(">BHH", 3, 0, 2)) == b"\x03\x04" + bytes(4)
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.005)
    finally:
        client.close()
    return latencies


async def _polls(r: Rig, stop: asyncio.Event, interval: float = 0.05) -> list[float]:
    """The bridge's polls all along, on their deadlines: how late each one ended."""
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    deadline = loop.time()
    while not stop.is_set():
        await r.session.read(2, Table.HOLDING, 0, 10)
        lags.append(loop.time() - deadline)
        deadline += interval
        await asyncio.sleep(max(0.0, deadline - loop.time()))
    return lags


async def test_garbage_and_oversized_frames_close_only_that_client(rig) -> None:
    r = await rig()
    stop = asyncio.Event()
    others = asyncio.gather(_reader_keeps_going(r, stop), _polls(r, stop))
    try:
        garbage = await Raw.connect(r.port)
        garbage.send(bytes(range(7, 200)) * 3)  # a protocol id that is not 0
        assert await garbage.closed()
        oversized = await Raw.connect(r.port)
        oversized.send(_mbap(1, 1, bytes([16]) + bytes(300), length=302))  # an ADU of 309 bytes
        assert await oversized.closed()
        await asyncio.sleep(0.2)
    finally:
        stop.set()
        latencies, lags = await others
    assert r.proxy.stats.closed["out_of_step"] == 2
    assert latencies and lags  # the others were answered all along
    assert r.session.stats.reconnects == 0 and r.sim.connections_total == 1


async def test_a_slow_drip_is_closed_on_its_own(rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy_module, "FRAME_TIMEOUT", 0.3)
    r = await rig()
    frame = _mbap(1, 1, struct.pack(">BHH", 3, 0, 1))
    drip = await Raw.connect(r.port)
    other = await Raw.connect(r.port)
    try:
        for byte in frame[:5]:
            drip.send(bytes([byte]))
            await asyncio.sleep(0.1)
            # meanwhile another client is answered at once
            assert await other.ask(byte, 1, struct.pack(">BHH", 3, 0, 1)) == b"\x03\x02\x00\x00"
        assert await drip.closed(timeout=2.0)
    finally:
        other.close()
    assert r.proxy.stats.closed["slow"] == 1


async def test_a_thousand_requests_at_once_wait_their_turn(rig) -> None:
    r = await rig()
    r.sim.delay = 0.001  # each answer takes a millisecond: the flood takes a second or more
    stop = asyncio.Event()
    others = asyncio.gather(_reader_keeps_going(r, stop), _polls(r, stop))
    flood = await Raw.connect(r.port)
    try:
        await asyncio.sleep(0.1)
        flood.send(b"".join(_mbap(i, 1, struct.pack(">BHH", 3, 0, 2)) for i in range(1000)))
        answers = [await flood.frame() for _ in range(1000)]
    finally:
        stop.set()
        latencies, lags = await others
        flood.close()
    # Every request answered, in order, with its own transaction id.
    assert [tid for tid, _, _ in answers] == list(range(1000))
    assert all(pdu == b"\x03\x04" + bytes(4) for _, _, pdu in answers)
    # The flood took turns with the other client and the polls: each waited behind one
    # request of the flood at most, not behind the thousand.
    assert len(latencies) > 50 and len(lags) > 10
    assert max(latencies) < 0.1, max(latencies)
    assert max(lags) < 0.1, max(lags)
    assert r.session.stats.reconnects == 0 and r.sim.connections_total == 1


async def test_clients_beyond_the_limit_are_closed_at_once(rig) -> None:
    r = await rig(clients=2)
    first, second = await Raw.connect(r.port), await Raw.connect(r.port)
    try:
        assert await first.ask(1, 1, struct.pack(">BHH", 3, 0, 1))
        assert await second.ask(1, 1, struct.pack(">BHH", 3, 0, 1))
        third = await Raw.connect(r.port)
        assert await third.closed()
        assert await first.ask(2, 1, struct.pack(">BHH", 3, 0, 1))
    finally:
        first.close()
        second.close()
    assert r.proxy.stats.closed["limit"] == 1
    assert r.proxy.stats.connections == 3


async def test_answers_left_unread_close_the_client(rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy_module, "UNREAD_TIMEOUT", 0.3)
    r = await rig()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", r.port))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    request = _mbap(1, 1, struct.pack(">BHH", 3, 0, 125))  # 259 bytes of answer each
    try:
        async with asyncio.timeout(20):
            while r.proxy.stats.closed["unread"] == 0:
                try:
                    await asyncio.wait_for(loop.sock_sendall(sock, request * 100), 1.0)
                except (TimeoutError, ConnectionError):
                    await asyncio.sleep(0.05)
    finally:
        sock.close()
    assert r.proxy.clients == 0
