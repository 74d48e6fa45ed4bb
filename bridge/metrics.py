"""Prometheus metrics on `/metrics` (`metrics.listen`); the only module importing
prometheus_client.

Nothing is counted here. At each scrape the endpoint takes one
`bridge.figures.Figures` snapshot on the event loop and renders every figure that
declares a metric (`families`, pure), plus the client library's process, platform and
GC collectors, in the exposition format the scraper asks for (prometheus_client).

The HTTP endpoint (`MetricsServer`) is the bridge's own, on the event loop: a port
anyone on the machine can open must not cost the bridge a thread or an unbounded
number of file descriptors. Connections are capped (`connection_cap`), a client has
HEAD_TIMEOUT to send its request head, malformed and oversized heads are refused
(`read_head`: 400, 405, 414, 431), and the text is rendered in one worker thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gzip
import logging
import re
import resource
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder, gzip_accepted

from bridge import __version__
from bridge.errors import describe_os_error
from bridge.figures import COUNTER, GAUGE, HISTOGRAM, Figures, Latency, Shown, shown_fields
from bridge.logs import Throttle
from bridge.model import Metrics

log = logging.getLogger("bridge.metrics")

PREFIX = "modbus_bridge_"


def _family(name: str, spec: Shown, labels: Sequence[str]) -> Metric:
    if spec.kind == COUNTER:
        return CounterMetricFamily(name, spec.help, labels=labels)
    if spec.kind == GAUGE:
        return GaugeMetricFamily(name, spec.help, labels=labels)
    if spec.kind == HISTOGRAM:
        return HistogramMetricFamily(name, spec.help, labels=labels)
    raise ValueError(f"unknown metric kind {spec.kind!r}")


def _buckets(latency: Latency) -> list[tuple[str, float]]:
    bounds = [repr(float(b)) for b in latency.bounds] + ["+Inf"]
    return [(le, float(n)) for le, n in zip(bounds, latency.cumulative, strict=True)]


class _Families:
    """Metric families filled record by record: a family is created at its first
    sample, with the identity labels of that record plus the figure's own labels."""

    def __init__(self) -> None:
        self.by_name: dict[str, Metric] = {}

    def add(self, record: object, identity: Sequence[tuple[str, str]]) -> None:
        for name, spec in shown_fields(record):
            if spec.metric is None:
                continue
            value = getattr(record, name)
            label_names = [k for k, _ in identity] + [k for k, _ in spec.labels]
            label_values = [v for _, v in identity] + [v for _, v in spec.labels]
            if spec.label is not None:
                label_names.append(spec.label)
            full = PREFIX + spec.metric
            family = self.by_name.get(full)
            if family is None:
                family = self.by_name[full] = _family(full, spec, label_names)
            if spec.kind == HISTOGRAM:
                assert isinstance(family, HistogramMetricFamily)
                family.add_metric(label_values, _buckets(value), value.total)
            elif spec.label is not None:
                for key, number in sorted(value.items()):
                    family.add_metric([*label_values, key], float(number))  # type: ignore[attr-defined]
            else:
                number = spec.to_metric(value)
                if number is not None:
                    family.add_metric(label_values, number)  # type: ignore[attr-defined]


def families(figures: Figures) -> list[Metric]:
    """Every metric of one snapshot. Label values are names from the configuration
    (host, device, unit) or the fixed values the figures declare."""
    out = _Families()
    for host in figures.hosts:
        out.add(host, [("host", host.name)])
        for unit in host.units:
            out.add(unit, [("host", host.name), ("unit", str(unit.unit))])
    for device in figures.devices:
        out.add(device, [("device", device.name), ("host", device.host)])
    out.add(figures.mqtt, [])
    out.add(figures.config, [])
    for proxy in figures.proxies:
        out.add(proxy, [("host", proxy.host)])
    if figures.report is not None:
        out.add(figures.report, [])
    if figures.buffer is not None:
        out.add(figures.buffer, [])
    if figures.sparkplug is not None:
        out.add(figures.sparkplug, [])
    build = {"version": __version__}
    if figures.config.shard is not None:
        build["shard"] = figures.config.shard  # which process of a sharded fleet this is
    info = InfoMetricFamily(
        PREFIX + "build", "The bridge's version, and its shard of the fleet.", value=build
    )
    return [info, *out.by_name.values()]


class _Collector:
    """Renders a snapshot at every scrape."""

    def __init__(self, snapshot: Callable[[], Figures | None]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        figures = self._snapshot()
        if figures is not None:
            yield from families(figures)

    def describe(self) -> list[Metric]:
        return []  # registering must not take a snapshot


def registry_for(snapshot: Callable[[], Figures | None]) -> CollectorRegistry:
    """A registry with the bridge's metrics and the usual process collectors."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(_Collector(snapshot))
    return registry


# -- the HTTP endpoint ----------------------------------------------------------------

HEAD_TIMEOUT = 5.0  # seconds a client has to send its whole request head
ANSWER_TIMEOUT = 30.0  # seconds a client has to take the answer
MAX_REQUEST_LINE = 8 * 1024  # bytes; longer: 414
MAX_HEAD = 16 * 1024  # bytes of request line and headers; more: 431
MAX_HEADERS = 100  # header lines; more: 431
MAX_CONNECTIONS = 64  # open at once, never more than a sixteenth of the descriptor limit
BACKLOG = 1024  # connections the kernel queues while the bridge is busy (was 5)
EVICT_AFTER = 0.25  # seconds without a whole request head after which a connection may be
# dropped for a newer one (a scraper sends its head at once)
ACCEPT_PAUSE = 1.0  # seconds without accepting after the process ran out of descriptors
_REASONS = {
    200: "OK",
    400: "Bad Request",
    405: "Method Not Allowed",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}
_ALLOW = "GET, HEAD, OPTIONS"
_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e]")  # a request line is printable ASCII


def connection_cap(nofile: int) -> int:
    """Connections the endpoint holds at once under a soft descriptor limit of `nofile`:
    MAX_CONNECTIONS, and never more than a sixteenth of the limit, so the bridge's own
    links (one per host, the broker) always find a descriptor."""
    return max(2, min(MAX_CONNECTIONS, nofile // 16))


@dataclass(frozen=True)
class Request:
    """A request head that the endpoint answers."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]  # names in lower case; a repeated header: the last one


@dataclass(frozen=True)
class Refusal:
    """A request head the endpoint refuses, with the status it answers."""

    status: int
    why: str


def read_head(data: bytes) -> Request | Refusal | None:
    """The request head at the start of `data`: a `Request`, a `Refusal` as soon as the
    bytes so far cannot become an acceptable head (a TLS handshake, an HTTP/0.9 request,
    a line too long), or None while more bytes may complete it. Pure."""
    end = data.find(b"\n")
    line = data if end < 0 else data[:end]
    if len(line) > MAX_REQUEST_LINE:
        return Refusal(414, "request line too long")
    if _NOT_PRINTABLE.search(line.rstrip(b"\r")):
        return Refusal(400, "not an HTTP request")
    if end < 0:
        return None
    parts = line.rstrip(b"\r").decode("ascii").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return Refusal(400, "bad request line")  # HTTP/0.9 has no version: refused too
    method, target, _version = parts
    head_end = _head_end(data)
    if head_end is None:
        if len(data) > MAX_HEAD:
            return Refusal(431, "request head too large")
        if data.count(b"\n") > MAX_HEADERS + 1:
            return Refusal(431, "too many header lines")
        return None
    if head_end > MAX_HEAD:
        return Refusal(431, "request head too large")
    lines = data[:head_end].split(b"\n")[1:]
    headers: dict[str, str] = {}
    count = 0
    for raw in lines:
        text = raw.rstrip(b"\r")
        if not text:
            continue
        count += 1
        if count > MAX_HEADERS:
            return Refusal(431, "too many header lines")
        name, sep, value = text.partition(b":")
        if not sep or not name or name != name.strip() or b" " in name:
            return Refusal(400, "bad header line")
        headers[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
    path, _, query = target.partition("?")
    if method not in ("GET", "HEAD", "OPTIONS"):
        return Refusal(405, f"method {method} not allowed")
    return Request(method, path, query, headers)


def _head_end(data: bytes) -> int | None:
    """The offset just past the blank line ending the head, or None."""
    ends = [i + n for i, n in ((data.find(b"\r\n\r\n"), 4), (data.find(b"\n\n"), 2)) if i >= 0]
    return min(ends) if ends else None


def _answer(status: int, headers: Sequence[tuple[str, str]], body: bytes, *, head: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + (b"" if head else body)


def _refusal_answer(refusal: Refusal) -> bytes:
    headers = [("Content-Type", "text/plain; charset=utf-8")]
    if refusal.status == 405:
        headers.append(("Allow", _ALLOW))
    return _answer(refusal.status, headers, f"{refusal.why}\n".encode(), head=False)


_Key = tuple[str, bool, tuple[str, ...]]  # content type, gzip, name[] filter


class _Only:
    """The samples of `registry` named in `names` (`?name[]=...`). The library's
    `restricted_registry` knows only what collectors describe, and ours describes
    nothing (describing would take a snapshot)."""

    def __init__(self, registry: CollectorRegistry, names: Sequence[str]) -> None:
        self._registry = registry
        self._names = frozenset(names)

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            samples = [s for s in metric.samples if s.name in self._names]
            if samples:
                only = Metric(metric.name, metric.documentation, metric.type, metric.unit)
                only.samples = samples
                yield only


async def _readable(sock: socket.socket) -> None:
    """Until `sock` is readable (a listening socket: a connection waits to be accepted)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


class _Connection(asyncio.Protocol):
    """One client: its request head is read within HEAD_TIMEOUT, then it is answered
    once and closed (no keep-alive, as the library's server)."""

    def __init__(self, server: MetricsServer, opened: float) -> None:
        self.server = server
        self.opened = opened  # loop time of the accept
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.answering = False  # the head was read: never evicted from now on
        self.timer: asyncio.TimerHandle | None = None

    def itself(self) -> _Connection:
        """The protocol factory of this one connection."""
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._arm(self.server.head_timeout)

    def _arm(self, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(seconds, self.abort)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.answering:
            return
        first = not self.buffer
        self.buffer += data
        if not first and b"\n" not in data and len(self.buffer) <= MAX_REQUEST_LINE:
            return  # a line goes on: nothing new to decide (a slow client costs no parsing)
        head = read_head(bytes(self.buffer))
        if head is None:
            return
        self.answering = True
        self.buffer = bytearray()
        if self.transport is not None:
            self.transport.pause_reading()
        self._arm(self.server.answer_timeout)
        if isinstance(head, Refusal):
            self.send(_refusal_answer(head))
        else:
            self.server.serve(self, head)

    def eof_received(self) -> bool:
        return False  # the client is done sending before its head was complete: close

    def send(self, answer: bytes) -> None:
        """Write the answer, then close once it is sent (`ANSWER_TIMEOUT` bounds that)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(answer)
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None
        self.server.gone(self)


class MetricsServer:
    """The HTTP endpoint, on the event loop: no thread per connection.

    At most `max_connections` clients at once (`connection_cap` of the descriptor
    limit): past that, the connection that has waited longest for its request head
    (at least EVICT_AFTER) is dropped for a new one, and while every slot is in use
    new connections wait in the kernel's listen queue (BACKLOG). A client has HEAD_TIMEOUT
    to send its request head and ANSWER_TIMEOUT to take the answer. Each scrape takes a
    `Figures` snapshot on the loop (`figures`); the text is rendered by
    prometheus_client in one worker thread, and scrapes that arrive while a render of
    the same kind runs share it.
    """

    def __init__(
        self,
        settings: Metrics,
        figures: Callable[[], Figures],
        *,
        max_connections: int | None = None,
        head_timeout: float = HEAD_TIMEOUT,
        answer_timeout: float = ANSWER_TIMEOUT,
    ) -> None:
        self.settings = settings
        self.head_timeout = head_timeout
        self.answer_timeout = answer_timeout
        self._figures = figures
        self.max_connections = max_connections
        self._current: Figures | None = None  # the snapshot being rendered
        self._registry = registry_for(lambda: self._current)
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._connections: dict[_Connection, None] = {}  # oldest first
        self._room = asyncio.Event()
        self._renders: dict[_Key, asyncio.Future[bytes]] = {}
        self._answers: set[asyncio.Task[None]] = set()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._throttle = Throttle(log)
        self.evicted = 0  # connections dropped for a newer one while waiting for their head

    @property
    def connections(self) -> int:
        return len(self._connections)

    def start(self) -> None:
        """Listen now (on the event loop); raises OSError when the address cannot be
        bound."""
        loop = asyncio.get_running_loop()
        if self.max_connections is None:
            self.max_connections = connection_cap(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        family, kind, proto, _, address = socket.getaddrinfo(
            self.settings.address,
            self.settings.port,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._listener = sock
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "bridge-metrics")
        self._acceptor = loop.create_task(self._accept(sock), name="metrics")

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await _readable(sock)  # someone is waiting in the listen queue
            await self._make_room()
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                self._throttle.log(
                    logging.ERROR,
                    "accept",
                    "failed accepts on the metrics port",
                    "metrics: cannot accept a connection: %s; pausing %gs",
                    describe_os_error(exc),
                    ACCEPT_PAUSE,
                )
                await asyncio.sleep(ACCEPT_PAUSE)
                continue
            connection = _Connection(self, loop.time())
            self._connections[connection] = None
            try:
                await loop.connect_accepted_socket(connection.itself, conn)
            except OSError:
                conn.close()
                self._connections.pop(connection, None)

    async def _make_room(self) -> None:
        """Until a connection may be accepted: below the cap, or after dropping the
        connection that has waited longest for its request head, once it has waited
        EVICT_AFTER (a scrape sends its head at once: an idle or slow client is making
        the others wait). While every slot is being answered, new connections wait in
        the listen queue, costing the bridge nothing."""
        loop = asyncio.get_running_loop()
        cap = self.max_connections or MAX_CONNECTIONS
        while len(self._connections) >= cap:
            waiting = next((c for c in self._connections if not c.answering), None)
            wait: float | None = None
            if waiting is not None:
                wait = waiting.opened + EVICT_AFTER - loop.time()
                if wait <= 0:
                    self.evicted += 1
                    waiting.abort()
                    self._connections.pop(waiting, None)
                    continue
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), wait)

    def gone(self, connection: _Connection) -> None:
        self._connections.pop(connection, None)
        self._room.set()

    def serve(self, connection: _Connection, request: Request) -> None:
        """Answer one request head (the library's server did the same: OPTIONS and the
        favicon empty, every other path the metrics)."""
        if request.method == "OPTIONS":
            connection.send(_answer(200, [("Allow", _ALLOW)], b"", head=False))
            return
        if request.path == "/favicon.ico":
            connection.send(_answer(200, [], b"", head=request.method == "HEAD"))
            return
        task = asyncio.ensure_future(self._answer(connection, request))
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    async def _answer(self, connection: _Connection, request: Request) -> None:
        try:
            encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        except Exception:  # an Accept header the library cannot read: the default format
            encoder, content_type = choose_encoder("")
        compress = gzip_accepted(request.headers.get("accept-encoding", ""))
        names = tuple(sorted(set(parse_qs(request.query).get("name[]", []))))
        try:
            body = await self._rendered((content_type, compress, names), encoder)
        except Exception as exc:
            self._throttle.log(
                logging.ERROR,
                "render",
                "failed scrapes",
                "metrics: a scrape failed: %s",
                f"{type(exc).__name__}: {exc}",
            )
            connection.send(_refusal_answer(Refusal(500, "the metrics could not be rendered")))
            return
        headers = [("Content-Type", content_type)]
        if compress:
            headers.append(("Content-Encoding", "gzip"))
        connection.send(_answer(200, headers, body, head=request.method == "HEAD"))

    def _rendered(
        self, key: _Key, encoder: Callable[[CollectorRegistry], bytes]
    ) -> asyncio.Future[bytes]:
        """The exposition of a fresh snapshot; a render of the same kind still running
        is shared (its snapshot is at most one render old)."""
        running = self._renders.get(key)
        if running is not None:
            return asyncio.shield(running)
        figures = self._figures()  # on the loop: no other thread reads live counters
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._bake, figures, encoder, key)
        self._renders[key] = future

        def done(_: asyncio.Future[bytes]) -> None:
            if self._renders.get(key) is future:
                del self._renders[key]

        future.add_done_callback(done)
        return asyncio.shield(future)

    def _bake(
        self, figures: Figures, encoder: Callable[[CollectorRegistry], bytes], key: _Key
    ) -> bytes:
        """In the render thread (one at a time)."""
        _, compress, names = key
        self._current = figures
        registry: Any = self._registry if not names else _Only(self._registry, names)
        output = encoder(registry)
        return gzip.compress(output) if compress else output

    async def stop(self) -> None:
        """Stop listening; clients still waiting for their head are dropped, answers
        being written finish (each within ANSWER_TIMEOUT)."""
        if self._acceptor is not None:
            self._acceptor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._acceptor
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for connection in list(self._connections):
            if not connection.answering:
                connection.abort()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
