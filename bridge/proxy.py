"""A Modbus TCP proxy on a host's session (`proxy:` on a host).

A gateway that takes one connection is taken by the bridge; with a proxy, other Modbus
TCP clients (a vendor's tool, another poller) reach the units behind it through the
bridge's one session. `HostProxy` is one host's server: an asyncio listener of its own
(no pymodbus: a client's bytes never reach a library that may raise on them).

Each client's bytes are cut into frames by the frame guard (`frames.frame_requests`),
each request is checked by `proxy_rules.parse_request` (refused ones are answered at
once, with exception 1, 2, 3 or 0x0B) and the rest go out on the host's session
(`HostSession.forward`: queued with the polls, first come first served, with the
bridge's own transaction id); the answer goes back with the client's transaction id
and unit.

What keeps one client from costing the others or the polls anything:

- one request at a time per client, in the order sent (a client that pipelines a
  thousand requests waits for each answer in turn; the rest stay in its socket), and
  one proxied request at a time per host, handed to the clients in turn (a FIFO
  `asyncio.Semaphore`): a poll waits behind at most one proxied request, and every
  client gets its turn whatever another sends;
- a header that cannot be framed (garbage, a frame beyond 260 bytes) closes that
  client; so does a frame not completed within FRAME_TIMEOUT (a slow drip), no request
  for IDLE_TIMEOUT, or answers left unread for UNREAD_TIMEOUT; a client over
  `proxy.clients` is closed at once;
- a unit that did not answer a proxied request in time is answered 0x0B for SILENT_FOR
  seconds without being asked again, so a client asking a silent unit over and over
  does not hold the line for a timeout each time (the polls keep asking it).

Every figure is counted in `stats.ProxyStats`.

`Proxies` is the bridge's side of it (`app.Bridge.proxies`): one `HostProxy` per host
with `proxy:`, started after the sessions and stopped before them, restarted by a
reload only where the proxy's settings changed; and after a proxied write, the
bridge's own points it touched (`proxy_rules.touched`) are read again, a device at a
time and coalesced, so a client writing in a loop costs one read-back per device in
flight, not one per write.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence

from bridge.errors import ExceptionReply, ModbusRequestError, RequestTimeout
from bridge.figures import ProxyFigures, proxy_figures
from bridge.frames import OutOfStep, Request, frame_requests, mbap_frame
from bridge.logs import Throttle
from bridge.model import BridgeConfig, Device, Point, Proxy
from bridge.proxy_rules import (
    PATH_UNAVAILABLE,
    TARGET_FAILED,
    ProxyRequest,
    Refusal,
    answer,
    exception_pdu,
    failure_code,
    parse_request,
    touched,
)
from bridge.session import HostSession
from bridge.stats import ProxyStats

log = logging.getLogger("bridge.proxy")

FRAME_TIMEOUT = 5.0  # seconds a client has to complete a frame it began (a slow drip)
IDLE_TIMEOUT = 300.0  # seconds without a request before a client is closed
UNREAD_TIMEOUT = 5.0  # seconds a client may leave answers unread past the buffer
SILENT_FOR = 10.0  # seconds a unit that did not answer a proxied request is not asked
READ_SIZE = 4096  # bytes read from a client at a time (and at most buffered unread)
WRITE_BUFFER = 16 * 1024  # bytes of answers buffered for a client before it must read

OnWrite = Callable[[ProxyRequest], None]
"""Told of every proxied write the device accepted (the bridge reads its points again)."""

Reread = Callable[[Device, Sequence[Point]], Awaitable[object]]
"""Reads a device's points now and publishes them (`CommandHandler.reread`)."""


class HostProxy:
    """One host's proxy: its listener, its clients and their turn on the session.

    `session()`: the host's session now (None while a reload replaces it: requests
    are then answered 0x0A). `units`: the unit ids served (`set_units` on a reload).
    """

    def __init__(
        self,
        host: str,
        settings: Proxy,
        session: Callable[[], HostSession | None],
        units: Collection[int],
        *,
        on_write: OnWrite | None = None,
        throttle: Throttle | None = None,
        stats: ProxyStats | None = None,
    ) -> None:
        self.host = host
        self.settings = settings
        self.units = frozenset(units)
        self.stats = ProxyStats() if stats is None else stats
        self._session = session
        self._on_write = on_write
        self._throttle = throttle or Throttle(log)
        self._turn = asyncio.Semaphore(1)  # one proxied request on the session at a time
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._silent: dict[int, float] = {}  # unit -> until when it is not asked

    def set_units(self, units: Collection[int]) -> None:
        self.units = frozenset(units)

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def port(self) -> int:
        """The port listened on (the one bound, when `settings.port` is 0)."""
        if self._server is None or not self._server.sockets:
            return self.settings.port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen; raises OSError when the address cannot be bound."""
        self._server = await asyncio.start_server(
            self._accept,
            self.settings.address,
            self.settings.port,
            limit=READ_SIZE,
            reuse_address=True,
        )
        self.stats.listening = True

    async def stop(self) -> None:
        """Stop listening and close every client (a request on the session is
        withdrawn, or its answer dropped)."""
        server, self._server = self._server, None
        self.stats.listening = False
        if server is not None:
            server.close()
        tasks = list(self._clients)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        for writer in list(self._clients.values()):
            writer.transport.abort()

    # -- one client --------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        self.stats.connections += 1
        if len(self._clients) >= self.settings.clients or self._server is None:
            self.stats.closed["limit"] += 1
            self._throttle.log(
                logging.WARNING,
                ("proxy limit", self.host),
                f"clients refused by the proxy of host {self.host}",
                "proxy of host %s: closed a connection from %s: %d clients are connected "
                "(proxy.clients)",
                self.host,
                peer,
                len(self._clients),
            )
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._clients[task] = writer
        self.stats.clients = len(self._clients)
        writer.transport.set_write_buffer_limits(high=WRITE_BUFFER)
        self._throttle.log(  # a client that connects for every request is one line
            logging.INFO,
            ("proxy connect", self.host),
            f"client connections to the proxy of host {self.host}",
            "proxy of host %s: client %s connected",
            self.host,
            peer,
        )
        reason: str | None = None
        try:
            reason = await self._serve(reader, writer, peer)
        except (ConnectionError, OSError):
            pass  # the client went away
        except asyncio.CancelledError:
            # `stop()`: this task is asyncio's own per-connection task, whose done
            # callback (3.11) cannot take a cancelled task: end it normally.
            pass
        except Exception:
            log.exception("proxy of host %s: client %s failed unexpectedly", self.host, peer)
        finally:
            del self._clients[task]
            self.stats.clients = len(self._clients)
            if reason is not None:
                self.stats.closed[reason] += 1
            writer.transport.abort()  # nothing more to say; never wait on its reading
        if reason is not None:
            self._throttle.log(
                logging.WARNING,
                ("proxy closed", self.host, reason),
                f"clients closed by the proxy of host {self.host} ({reason})",
                "proxy of host %s: closed client %s: %s",
                self.host,
                peer,
                _WHY[reason],
            )

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> str | None:
        """Answer the client's requests in order, one at a time. Returns why the proxy
        closes the connection (a `stats.PROXY_CLOSES` reason), None when the client left."""
        loop = asyncio.get_running_loop()
        buffer = b""
        begun = 0.0  # when the frame at the start of `buffer` began to arrive
        while True:
            used, frames = frame_requests(buffer)
            buffer = buffer[used:]
            for frame in frames:
                if isinstance(frame, OutOfStep):
                    log.debug("proxy of host %s: client %s: %s", self.host, peer, frame.reason)
                    return "out_of_step"
                reply = await self._answer(frame, peer)
                if writer.transport.is_closing():
                    return None  # the client went away meanwhile
                writer.write(mbap_frame(frame.tid, frame.unit, reply))
                if writer.transport.get_write_buffer_size() > WRITE_BUFFER:
                    try:
                        async with asyncio.timeout(UNREAD_TIMEOUT):
                            await writer.drain()
                    except TimeoutError:
                        return "unread"
            if frames and buffer:
                begun = loop.time()  # the rest: its time runs from now, not while we answered
            if buffer:
                limit, why = begun + FRAME_TIMEOUT - loop.time(), "slow"
            else:
                limit, why = IDLE_TIMEOUT, "idle"
            try:
                async with asyncio.timeout(max(0.0, limit)):
                    data = await reader.read(READ_SIZE)
            except TimeoutError:
                return why
            if not data:
                return None
            if not buffer:
                begun = loop.time()
            buffer += data

    async def _answer(self, frame: Request, peer: str) -> bytes:
        """The reply PDU to one request."""
        parsed = parse_request(frame.unit, frame.pdu, units=self.units, writes=self.settings.writes)
        if isinstance(parsed, Refusal):
            self.stats.requests["refused"] += 1
            self._throttle.log(
                logging.INFO,
                ("proxy refused", self.host, peer),
                f"requests refused by the proxy of host {self.host} for {peer}",
                "proxy of host %s: refused a request of client %s with exception %d: %s",
                self.host,
                peer,
                parsed.code,
                parsed.reason,
            )
            return exception_pdu(frame.pdu[0], parsed.code)
        loop = asyncio.get_running_loop()
        if self._silent.get(parsed.unit, 0.0) > loop.time():
            self.stats.requests["failed"] += 1
            return exception_pdu(parsed.function, TARGET_FAILED)
        self.stats.waiting += 1
        waiting = True
        try:
            async with self._turn:
                self.stats.waiting -= 1
                waiting = False
                session = self._session()
                if session is None:
                    self.stats.requests["failed"] += 1
                    return exception_pdu(parsed.function, PATH_UNAVAILABLE)
                self.stats.in_flight += 1
                try:
                    result = await session.forward(parsed)
                finally:
                    self.stats.in_flight -= 1
        except ModbusRequestError as exc:
            if isinstance(exc, ExceptionReply):
                self.stats.requests["exception"] += 1
            else:
                self.stats.requests["failed"] += 1
                if isinstance(exc, RequestTimeout):
                    self._silent[parsed.unit] = loop.time() + SILENT_FOR
            return exception_pdu(parsed.function, failure_code(exc))
        finally:
            if waiting:
                self.stats.waiting -= 1
        self.stats.requests["answered"] += 1
        if parsed.writes:
            self._written(parsed, peer)
        return answer(parsed, result)

    def _written(self, request: ProxyRequest, peer: str) -> None:
        self.stats.writes += 1
        self._throttle.log(
            logging.INFO,
            ("proxy write", self.host, peer),
            f"writes through the proxy of host {self.host} by {peer}",
            "proxy of host %s: client %s wrote: %s",
            self.host,
            peer,
            request.describe(),
        )
        if self._on_write is not None:
            try:
                self._on_write(request)
            except Exception:
                log.exception("proxy of host %s: after a write", self.host)


_WHY = {
    "limit": "over the client limit",
    "out_of_step": "bytes that cannot be framed as Modbus TCP (a bad header, or a frame "
    "beyond 260 bytes)",
    "slow": f"a frame not completed within {FRAME_TIMEOUT:g}s",
    "idle": f"no request for {IDLE_TIMEOUT:g}s",
    "unread": f"answers left unread for {UNREAD_TIMEOUT:g}s",
}


class Proxies:
    """The bridge's proxies: a `HostProxy` per host of `config` with `proxy:`.

    `sessions`: the bridge's own mapping of host name to session, which a reload
    changes in place (a host being reopened is missing from it for a moment: its
    proxy answers 0x0A meanwhile). `reread`: reads points of the bridge's own again.
    Counters carry on when a proxy is restarted or its host comes back.
    """

    def __init__(
        self, config: BridgeConfig, sessions: Mapping[str, HostSession], reread: Reread
    ) -> None:
        self.config = config
        self.throttle = Throttle(log)
        self._sessions = sessions
        self._reread = reread
        self._proxies: dict[str, HostProxy] = {}
        self._stats: dict[str, ProxyStats] = {}
        self._pending: dict[str, tuple[Device, dict[str, Point]]] = {}  # device -> to read
        self._reading: dict[str, asyncio.Task[None]] = {}  # device -> its read-back

    def __getitem__(self, host: str) -> HostProxy:
        return self._proxies[host]

    def __len__(self) -> int:
        return len(self._proxies)

    async def start(self, hosts: Collection[str] | None = None) -> None:
        """Listen on every proxy of the configuration (or only those of `hosts`). An
        address that cannot be bound is logged and that proxy stays down (listening 0
        in health and metrics); the bridge runs on: moving data matters more."""
        for host in self.config.hosts:
            settings = host.proxy
            if settings is None or (hosts is not None and host.name not in hosts):
                continue
            proxy = HostProxy(
                host.name,
                settings,
                functools.partial(self._sessions.get, host.name),
                self._units(host.name),
                on_write=functools.partial(self._written, host.name),
                throttle=self.throttle,
                stats=self._stats.setdefault(host.name, ProxyStats()),
            )
            self._proxies[host.name] = proxy
            where = settings.describe()
            try:
                await proxy.start()
            except OSError as exc:
                log.error(
                    "proxy of host %s: cannot listen on %s (%s); running without it",
                    host.name,
                    where,
                    exc,
                )
                continue
            log.info(
                "proxy of host %s on %s: units %s, %s",
                host.name,
                where,
                ",".join(map(str, sorted(proxy.units))) or "none",
                "reads and writes" if settings.writes else "reads only",
            )
            if not settings.loopback:
                log.warning(
                    "proxy of host %s: %s is reachable from other machines, without "
                    "authentication (proxy.listen); use a loopback address unless that is "
                    "intended",
                    host.name,
                    where,
                )

    async def stop(self, hosts: Collection[str] | None = None) -> None:
        """Close every proxy (or those of `hosts`) and its clients; at shutdown, the
        read-backs in progress too."""
        names = list(self._proxies) if hosts is None else [h for h in hosts if h in self._proxies]
        closing = [self._proxies.pop(n) for n in names]
        await asyncio.gather(*(p.stop() for p in closing), return_exceptions=True)
        if hosts is None:
            tasks = list(self._reading.values())
            for task in tasks:
                task.cancel()
            self._pending.clear()
            if tasks:
                await asyncio.wait(tasks, timeout=1.0)

    async def reconfigure(self, config: BridgeConfig, changed: Collection[str]) -> None:
        """A reload: `changed` (`ReloadPlan.proxies_changed`) hosts' proxies restart
        (or stop, or start); the others keep their listener and clients and serve the
        units of the new configuration."""
        await self.stop(changed)
        self.config = config
        for name, proxy in self._proxies.items():
            proxy.set_units(self._units(name))
        await self.start(changed)

    def figures(self) -> tuple[ProxyFigures, ...]:
        return tuple(proxy_figures(name, p.stats) for name, p in self._proxies.items())

    def _units(self, host: str) -> frozenset[int]:
        """The units a host's proxy serves: `proxy.units`, else its devices' units."""
        settings = self.config.host(host).proxy
        if settings is not None and settings.units is not None:
            return frozenset(settings.units)
        return frozenset(d.unit for d in self.config.devices_on(host))

    def _written(self, host: str, request: ProxyRequest) -> None:
        """A proxied write was answered: the points it may have changed are read again
        (what is already waiting for a device is read once)."""
        for device, points in touched(self.config.devices_on(host), request):
            _, pending = self._pending.setdefault(device.name, (device, {}))
            pending.update((p.name, p) for p in points)
            if device.name not in self._reading:
                self._reading[device.name] = asyncio.create_task(
                    self._read_back(device.name), name=f"proxy read-back {device.name}"
                )

    async def _read_back(self, name: str) -> None:
        try:
            while name in self._pending:
                device, points = self._pending.pop(name)
                try:
                    await self._reread(device, tuple(points.values()))
                except Exception:
                    log.exception("proxy: reading %s again after a write failed", name)
        finally:
            del self._reading[name]


def _peer(writer: asyncio.StreamWriter) -> str:
    with contextlib.suppress(Exception):
        address = writer.get_extra_info("peername")
        if isinstance(address, tuple) and len(address) >= 2:
            host = f"[{address[0]}]" if ":" in str(address[0]) else str(address[0])
            return f"{host}:{address[1]}"
    return "a client"
