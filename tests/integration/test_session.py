"""HostSession against our simulator on loopback: the socket rules, in-process."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from bridge.errors import BadReply, HostUnavailable, ModbusRequestError, RequestTimeout
from bridge.model import Framer, Host, Table, TcpLink
from bridge.session import HostSession
from bridge.sim import SimServer

pytestmark = pytest.mark.integration


def _host(port: int, *, framer: Framer = Framer.TCP, pause: float = 0.0, **link: Any) -> Host:
    tcp = TcpLink("127.0.0.1", port=port, **link)
    return Host(name="gw", link=tcp, timeout=0.3, pause=pause, framer=framer)


async def _connected(session: HostSession, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not session.connected:
            await asyncio.sleep(0.01)


async def test_keepalive_is_set_on_the_modbus_socket(sim_servers) -> None:
    server: SimServer = await sim_servers([1])
    session = HostSession(
        _host(server.port, keepalive_idle=17, keepalive_interval=4, keepalive_count=2)
    )
    await session.start()
    try:
        await _connected(session)
        sock = session._wire._client.ctx.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 17
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 4
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 2
    finally:
        await session.stop()


async def test_many_concurrent_readers_share_one_socket(sim_servers) -> None:
    server: SimServer = await sim_servers(range(1, 21))
    for unit in range(1, 21):
        server.unit(unit).set_registers("holding", 0, [unit, unit * 2])
    session = HostSession(_host(server.port), units=20)
    await session.start()
    try:
        results = await asyncio.gather(
            *(session.read(u, Table.HOLDING, 0, 2) for u in range(1, 21) for _ in range(10))
        )
        assert results == [[u, u * 2] for u in range(1, 21) for _ in range(10)]
        assert server.connections_total == 1
        assert session.stats.sockets_opened == 1
    finally:
        await session.stop()


async def test_refused_then_up_connects_exactly_once(sim_servers) -> None:
    server: SimServer = await sim_servers([1])
    port = server.port
    await server.stop()  # the port now refuses connections
    session = HostSession(_host(port), backoff_min=0.05, backoff_max=0.2)
    await session.start()
    try:
        with pytest.raises(HostUnavailable):
            await asyncio.wait_for(session.read(1, Table.HOLDING, 0, 1), 2)
        await asyncio.sleep(0.5)
        assert server.connections_total == 0
        assert session.open_error == f"cannot connect to 127.0.0.1:{port}: Connection refused"
        await server.start()
        await _connected(session)
        assert await session.read(1, Table.HOLDING, 0, 1) == [0]
        await asyncio.sleep(0.5)
        assert server.connections_total == 1
        assert session.stats.sockets_opened == 1
    finally:
        await session.stop()


async def test_timeout_of_one_unit_keeps_the_socket(sim_servers) -> None:
    server: SimServer = await sim_servers([1, 2])
    server.silent_units.add(2)
    session = HostSession(_host(server.port), units=2)
    await session.start()
    try:
        for _ in range(5):  # more than pymodbus's own close-after-3 rule
            with pytest.raises(RequestTimeout):
                await session.read(2, Table.HOLDING, 0, 1)
            assert await session.read(1, Table.HOLDING, 0, 1) == [0]
        assert session.connected
        assert server.connections_total == 1
    finally:
        await session.stop()


async def test_peer_restart_gives_one_new_connection(sim_servers) -> None:
    server: SimServer = await sim_servers([1])
    session = HostSession(_host(server.port), backoff_min=0.05, backoff_max=0.2)
    await session.start()
    try:
        await _connected(session)
        await session.read(1, Table.HOLDING, 0, 1)
        await server.stop()
        with pytest.raises(HostUnavailable):
            await session.read(1, Table.HOLDING, 0, 1)
        await server.start()
        await _connected(session)
        assert await session.read(1, Table.HOLDING, 0, 1) == [0]
        await asyncio.sleep(0.3)
        assert server.connections_total == 2
        assert session.stats.reconnects == 1
    finally:
        await session.stop()


# -- RTU framing over TCP: no transaction id, so the session drains after a failure ---------


@pytest.mark.parametrize("framer", [Framer.TCP, Framer.RTU])
async def test_late_reply_of_one_unit_is_never_taken_for_the_next(
    sim_servers, framer: Framer
) -> None:
    server: SimServer = await sim_servers([1, 2], framing=framer.value)
    server.unit(1).set_registers("holding", 0, [101, 102])
    server.unit(2).set_registers("holding", 0, [201, 202])
    server.per_unit_delay[2] = 0.45  # past the 0.3 s timeout
    session = HostSession(_host(server.port, framer=framer), units=2)
    await session.start()
    try:
        for _ in range(4):
            with pytest.raises(RequestTimeout):
                await session.read(2, Table.HOLDING, 0, 2)
            # Same function, address and count: only the unit tells the replies apart.
            assert await session.read(1, Table.HOLDING, 0, 2) == [101, 102]
        assert server.responses_total == 8  # every late reply did arrive, and was dropped
        assert session.stats.drains == (4 if framer is Framer.RTU else 0)
        assert session.connected
        assert server.connections_total == 1
        assert session.stats.sockets_opened == 1
    finally:
        await session.stop()


async def test_rtu_late_reply_is_drained_before_the_same_unit_asks_again(sim_servers) -> None:
    server: SimServer = await sim_servers([2], framing="rtu")
    server.unit(2).set_registers("holding", 0, [201, 202])
    server.unit(2).set_registers("holding", 10, [211, 212])
    session = HostSession(_host(server.port, framer=Framer.RTU))
    await session.start()
    try:
        for _ in range(3):
            server.per_unit_delay[2] = 0.45
            with pytest.raises(RequestTimeout):
                await session.read(2, Table.HOLDING, 0, 2)
            server.per_unit_delay.clear()
            # Without the drain, the late reply for 0+2 is taken as the answer for 10+2.
            assert await session.read(2, Table.HOLDING, 10, 2) == [211, 212]
        assert session.stats.drains == 3
        assert server.connections_total == 1
    finally:
        await session.stop()


async def test_rtu_reply_to_another_request_is_discarded(sim_servers) -> None:
    server: SimServer = await sim_servers([2], framing="rtu")
    server.unit(2).set_registers("holding", 0, [201, 202])
    session = HostSession(_host(server.port, framer=Framer.RTU))
    await session.start()
    try:
        # Later than timeout + quiet period (0.3 s + 0.3 s): it meets the next request.
        server.per_unit_delay[2] = 0.75
        with pytest.raises(RequestTimeout):
            await session.write_registers(2, 5, [7], multiple=False)
        server.per_unit_delay.clear()
        with pytest.raises(BadReply, match="did not match"):
            await session.read(2, Table.HOLDING, 0, 1)  # meets the FC6 echo: one register, too
        assert await session.read(2, Table.HOLDING, 0, 1) == [201]  # its own reply was drained
        assert await session.read(2, Table.HOLDING, 5, 1) == [7]
        assert session.stats.drains == 2
        assert session.connected
        assert server.connections_total == 1
    finally:
        await session.stop()


async def test_a_request_failing_unexpectedly_does_not_kill_the_worker(sim_servers) -> None:
    server: SimServer = await sim_servers([1])
    server.unit(1).set_registers("holding", 0, [42])
    session = HostSession(_host(server.port))
    await session.start()
    try:
        await _connected(session)

        async def broken() -> None:
            raise IndexError("reply with no registers")

        with pytest.raises(ModbusRequestError, match="unexpected IndexError"):
            await asyncio.wait_for(session.submit(1, broken), 2)
        # Every other request on the host still runs, on the same socket.
        assert await asyncio.wait_for(session.read(1, Table.HOLDING, 0, 1), 2) == [42]
        assert server.connections_total == 1
    finally:
        await session.stop()


async def test_stop_fails_queued_requests_instead_of_leaving_them_hanging(sim_servers) -> None:
    server: SimServer = await sim_servers([1])
    server.delay = 0.2
    session = HostSession(_host(server.port, pause=0.0))
    await session.start()
    await _connected(session)
    reads = [asyncio.create_task(session.read(1, Table.HOLDING, 0, 1)) for _ in range(5)]
    await asyncio.sleep(0.05)
    await session.stop()
    results = await asyncio.wait_for(asyncio.gather(*reads, return_exceptions=True), 2)
    assert all(isinstance(r, HostUnavailable) for r in results), results
