"""The metrics endpoint (`bridge.metrics.MetricsServer`) over real loopback sockets: what
it answers and refuses, how long it waits for a request head, how many connections it
holds, and that no connection costs it a thread."""

from __future__ import annotations

import asyncio
import gzip
import resource
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from broker import free_port
from prometheus_client.parser import text_string_to_metric_families

from bridge.app import Bridge
from bridge.config import parse_config
from bridge.figures import Figures
from bridge.metrics import BACKLOG, MetricsServer
from bridge.model import Metrics

pytestmark = pytest.mark.integration

CONFIG = """\
version: 1
hosts: [{name: gw, address: 127.0.0.1, port: 1}]
devices: [{name: d, host: gw, unit: 1, points: [{name: a, table: coil, address: 0}]}]
"""


@pytest.fixture
async def figures() -> Callable[[], Figures]:
    """A real bridge's snapshot (built, not started: nothing connects)."""
    return Bridge(parse_config(CONFIG, env={})).figures


@pytest.fixture
async def serve(
    figures: Callable[[], Figures],
) -> AsyncIterator[Callable[..., MetricsServer]]:
    servers: list[MetricsServer] = []

    def make(**options: Any) -> MetricsServer:
        server = MetricsServer(Metrics(port=free_port()), figures, **options)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


async def _exchange(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send `data`, then read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def _closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server closed the connection without an answer."""
    try:
        return await asyncio.wait_for(reader.read(), 2.0) == b""
    except ConnectionError:
        return True


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _body(answer: bytes) -> bytes:
    return answer.split(b"\r\n\r\n", 1)[1]


def _header(answer: bytes, name: str) -> str | None:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        key, _, value = line.decode().partition(":")
        if key.lower() == name.lower():
            return value.strip()
    return None


async def test_a_scrape_in_each_format(serve: Callable[..., MetricsServer]) -> None:
    port = serve().settings.port
    answer = await _exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status(answer) == 200
    assert _header(answer, "Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
    assert int(_header(answer, "Content-Length") or 0) == len(_body(answer))
    names = {f.name for f in text_string_to_metric_families(_body(answer).decode())}
    assert {"modbus_bridge_host_connected", "modbus_bridge_build_info", "process_open_fds"} <= names

    answer = await _exchange(
        port,
        b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0\r\n"
        b"Accept-Encoding: gzip\r\n\r\n",
    )
    assert _status(answer) == 200
    assert (_header(answer, "Content-Type") or "").startswith("application/openmetrics-text")
    assert _header(answer, "Content-Encoding") == "gzip"
    assert gzip.decompress(_body(answer)).endswith(b"# EOF\n")

    answer = await _exchange(
        port, b"GET /metrics?name[]=modbus_bridge_host_connected HTTP/1.1\r\n\r\n"
    )
    assert _body(answer).decode().count("# TYPE") == 1

    answer = await _exchange(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert _status(answer) == 200 and _body(answer) == b""
    answer = await _exchange(port, b"OPTIONS * HTTP/1.1\r\n\r\n")
    assert _status(answer) == 200 and _header(answer, "Allow") == "GET, HEAD, OPTIONS"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"b" * 70_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431),
        (b"GARBAGE\r\n\r\n", 400),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"PUT /metrics HTTP/1.1\r\n\r\n", 405),
    ],
    ids=["414 line", "431 header", "431 count", "400", "405 POST", "405 PUT"],
)
async def test_malformed_and_oversize_requests_are_refused(
    serve: Callable[..., MetricsServer], data: bytes, status: int
) -> None:
    answer = await _exchange(serve().settings.port, data)
    assert _status(answer) == status
    if status == 405:
        assert _header(answer, "Allow") == "GET, HEAD, OPTIONS"


@pytest.mark.parametrize(
    "data",
    [b"GET /metrics\r\n", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32)],
    ids=["HTTP/0.9", "TLS ClientHello"],
)
async def test_requests_that_used_to_hold_a_connection_forever_are_refused_at_once(
    serve: Callable[..., MetricsServer], data: bytes
) -> None:
    server = serve(head_timeout=60.0)  # the answer comes long before the timeout
    answer = await _exchange(server.settings.port, data, timeout=5.0)
    assert _status(answer) == 400


async def test_a_client_gets_a_few_seconds_to_send_its_request_head(
    serve: Callable[..., MetricsServer],
) -> None:
    server = serve(head_timeout=0.5)
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.settings.port)
    started = loop.time()
    writer.write(b"GET /metrics HTTP/1.1\r\n")
    try:
        for _ in range(100):  # a header byte every 50 ms: a slowloris
            await asyncio.sleep(0.05)
            writer.write(b"X")
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5.0)
    except ConnectionError:
        answer = b""
    assert answer == b""  # dropped, no answer
    assert loop.time() - started < 3.0
    writer.close()
    await asyncio.sleep(0.1)
    assert server.connections == 0


async def test_idle_connections_beyond_the_cap_make_room_for_a_scrape(
    serve: Callable[..., MetricsServer],
) -> None:
    server = serve(max_connections=4, head_timeout=60.0)
    port = server.settings.port
    threads = threading.active_count()
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(50)]
    await asyncio.sleep(0.2)
    assert server.connections == 4  # the others wait in the listen queue
    # A scrape: idle connections that waited EVICT_AFTER are dropped to let it in.
    answer = await _exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n", timeout=30.0)
    assert _status(answer) == 200
    assert server.evicted >= 46
    assert server.connections <= 4
    assert await _closed(idle[0][0])  # the oldest were dropped
    assert threading.active_count() <= threads + 1  # the render thread, nothing per connection
    for _reader, writer in idle:
        writer.close()


async def test_scrapes_beyond_the_cap_wait_in_the_listen_queue(
    serve: Callable[..., MetricsServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When every slot is answering a scrape, the next connections are not accepted
    (nor reset) until one ends: the kernel queues them."""
    server = serve(max_connections=2)
    slow = server._bake

    def bake(*args: Any) -> bytes:
        threading.Event().wait(0.3)  # a slow render: the slots stay busy
        return slow(*args)

    monkeypatch.setattr(server, "_bake", bake)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, server.connections)
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    paths = [f"/metrics?name[]=m{i}".encode() for i in range(6)]  # distinct: no sharing
    answers = await asyncio.gather(
        *(_exchange(server.settings.port, b"GET " + p + b" HTTP/1.1\r\n\r\n") for p in paths)
    )
    watcher.cancel()
    assert [_status(a) for a in answers] == [200] * 6
    assert peak <= 2 + 1


async def test_a_thousand_simultaneous_scrapes_are_all_answered(
    serve: Callable[..., MetricsServer],
) -> None:
    """The library's server listened with a backlog of 5: 544 of 1,000 were reset."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 2200:
        pytest.skip(f"needs 2,200 file descriptors (hard limit {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2200), hard))
    server = serve()
    assert BACKLOG >= 1000
    request = b"GET /metrics HTTP/1.1\r\n\r\n"
    try:
        answers = await asyncio.gather(
            *(_exchange(server.settings.port, request, timeout=30.0) for _ in range(1000)),
            return_exceptions=True,
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    statuses = [a if isinstance(a, BaseException) else _status(a) for a in answers]
    assert statuses == [200] * 1000


async def test_a_failing_snapshot_is_a_500_and_one_log_line(
    serve: Callable[..., MetricsServer], monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    server = serve()

    def broken() -> Figures:
        raise RuntimeError("no snapshot")

    monkeypatch.setattr(server, "_figures", broken)
    for _ in range(3):
        answer = await _exchange(server.settings.port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert _status(answer) == 500
    lines = [r for r in caplog.records if "scrape failed" in r.getMessage()]
    assert len(lines) == 1 and "no snapshot" in lines[0].getMessage()
    assert lines[0].exc_info is None


async def test_stopping_with_a_request_held_open_closes_it_quietly(
    serve: Callable[..., MetricsServer], caplog: Any
) -> None:
    server = serve(head_timeout=60.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.settings.port)
    writer.write(b"GET /metrics HTTP/1.1\r\n")
    await asyncio.sleep(0.1)
    await server.stop()
    assert await _closed(reader)
    writer.close()
    assert not [r for r in caplog.records if r.levelno >= 30 or r.exc_info]
