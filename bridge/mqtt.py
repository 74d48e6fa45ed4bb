"""The MQTT link. The only module that imports aiomqtt.

`MqttLink.publish()` never blocks and never raises: it records the newest payload
per topic in a pending map that a sender task drains while connected. The map
holds at most one entry per topic, so a long broker outage costs no memory
growth, and a value that changed ten times while offline is sent once.

`run()` owns the connection: connect, announce `online` (the last will says
`offline`), let the owner re-queue its full state, subscribe to command topics,
then send and receive until the broker goes away; back off and repeat.

Broker limits are respected rather than discovered by being disconnected: a
message larger than the broker's maximum packet size (MQTT 5 CONNACK, or
`mqtt.max_packet_size`) is skipped with one log line, and the bridge tells the
broker the largest packet it accepts itself (MQTT 5 CONNECT), with a hard cap on
incoming packets for MQTT 3.1.1. A publish the broker refuses (MQTT 5 PUBACK
reason code 0x80 or above, e.g. an ACL) is logged and counted, not retried.

Incoming messages are routed by topic: a message on one of the `routes` filters goes
to that route's handler at once (Home Assistant's status, retained discovery); every
other message is a command for `on_message`, one task each, behind the flood guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiomqtt
from aiomqtt.exceptions import MqttCodeError, MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.backoff import full_jitter
from bridge.errors import describe_os_error, out_of_descriptors
from bridge.logs import Throttle
from bridge.messages import Gate, Incoming, Subscription, Will
from bridge.model import Mqtt
from bridge.packets import coalesce, publish_packet_size
from bridge.payloads import OFFLINE, ONLINE
from bridge.stats import LinkStats
from bridge.tls import TlsSetupError, tls_context
from bridge.topics import Topics

__all__ = [
    "Incoming",
    "MqttLink",
    "Subscription",
    "Will",
    "build_tls_context",
]

log = logging.getLogger("bridge.mqtt")
T = TypeVar("T")

SEND_CONCURRENCY = 64  # publishes in flight at once
MAX_ONE_OFF = 10_000  # non-coalescing messages (command results) waiting; ~200 bytes each
MAX_HANDLERS = 256  # commands being handled at once; more are refused (flood guard)
STABLE_AFTER = 10.0  # seconds a connection must last before the backoff resets
# The largest packet the bridge takes from the broker: a command is at most 64 KiB
# (commands.MAX_PAYLOAD) plus its topic. Announced in the MQTT 5 CONNECT, so the broker
# never sends more; enforced on MQTT 3.1.1 by dropping the connection before reading it.
MAX_INCOMING_PACKET = 128 * 1024
PROTOCOL_MAX_PACKET = 268_435_455 + 5  # remaining length limit plus the fixed header
GATE_QUIET = 0.15  # seconds without a retained message after which the replay is over
GATE_MAX = 2.0  # seconds the gate waits for retained messages at most
SESSION_TAKEN_OVER = 142  # MQTT 5 DISCONNECT reason: another client used our client id


Done = Callable[[bool], None]
"""Told once what became of a message: True when the broker acknowledged it (QoS 1/2)
or it was written (QoS 0), False when it was given up (cut off by a disconnect,
replaced by a newer payload, dropped by an overflow, too large)."""


@dataclass(frozen=True)
class _Pending:
    payload: bytes
    retain: bool
    correlation_data: bytes | None = None
    qos: int | None = None  # None: mqtt.qos
    on_done: Done | None = None
    session: bool = False  # given up, not sent again, when the connection ends
    queued: float = 0.0  # wall-clock time it was first queued (oldest of those it replaced)


def _finish(item: _Pending, ok: bool) -> None:
    if item.on_done is not None:
        try:
            item.on_done(ok)
        except Exception:  # a callback's bug must not take the link down
            log.exception("a publish callback failed")


# CONNACK codes that mean "your credentials": MQTT 3.1.1 (4, 5) and MQTT 5 (134, 135).
# Only for MqttConnectError: other MqttCodeErrors carry paho's MQTT_ERR_* numbers (where
# 4 is "not connected"), which aiomqtt also uses to word an integer CONNACK code.
_AUTH_CODES = {
    4: "bad user name or password",
    5: "not authorised",
    134: "bad user name or password",
    135: "not authorized",
}


def _cause(exc: BaseException) -> BaseException:
    """The innermost cause: aiomqtt re-raises socket and TLS errors as a bare
    `MqttError(str(exc)) from None`, which hides the type but keeps `__context__`."""
    seen = {id(exc)}
    while True:
        inner = exc.__cause__ or exc.__context__
        if inner is None or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def _describe(exc: BaseException) -> str:
    """A one-line reason a person can act on."""
    root = _cause(exc)
    if isinstance(root, OSError) and out_of_descriptors(root):
        return describe_os_error(root)
    if isinstance(root, ssl.SSLCertVerificationError):
        return (
            f"TLS certificate not trusted ({root.verify_message}); "
            "set mqtt.tls.ca_file (or insecure: true to skip verification)"
        )
    text = str(exc) or type(exc).__name__
    code = _code(exc.rc) if isinstance(exc, MqttConnectError) else None
    if code is not None and code in _AUTH_CODES:
        return (
            f"broker refused the login ({_AUTH_CODES[code]}, code {code}): "
            "check mqtt.username and mqtt.password"
        )
    if isinstance(root, OSError) and root is not exc:
        inner = f"{type(root).__name__}: {root}"
        return inner if str(root) == text else f"{text} ({inner})"
    return f"{type(exc).__name__}: {text}" if isinstance(exc, OSError) else text


def _code(rc: object) -> int | None:
    value = getattr(rc, "value", rc)
    return value if isinstance(value, int) else None


def build_tls_context(settings: Mqtt) -> ssl.SSLContext | None:
    """The TLS context of `settings` (bridge.tls); an error names the file it could not
    use (it was removed or changed after `check`)."""
    return None if settings.tls is None else tls_context(settings.tls)


def _incoming(message: aiomqtt.Message) -> Incoming:
    props = message.properties
    response_topic = getattr(props, "ResponseTopic", None) if props else None
    correlation = getattr(props, "CorrelationData", None) if props else None
    payload = message.payload
    raw = payload if isinstance(payload, bytes | bytearray) else str(payload).encode()
    return Incoming(
        str(message.topic), bytes(raw), response_topic, correlation, bool(message.retain)
    )


class _PahoSocketErrors(logging.Filter):
    """paho logs a socket error that ends a connection ("failed to receive on socket:
    [Errno 104] Connection reset by peer") before the link knows the connection ended;
    the link says it in its own line (`_Client.socket_error`), once, with the reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_PAHO_SOCKET_MESSAGES)


_PAHO_SOCKET_MESSAGES = ("failed to receive on socket", "failed to send on socket",
                         "timeout on socket")  # fmt: skip
_PAHO_LOG = logging.getLogger("bridge.mqtt.client")  # aiomqtt's and paho's own lines
_PAHO_LOG.addFilter(_PahoSocketErrors())


class _Client(aiomqtt.Client):
    """aiomqtt's client, plus what aiomqtt does not pass on: the CONNACK properties
    (the broker's maximum packet size), PUBACK failure reason codes, and a cap on
    the size of incoming packets; and its writes batched (`_on_socket_register_write`).

    Built on aiomqtt 2.5 / paho-mqtt 2.2 internals (`_client`, `_in_packet`, `_sock_recv`,
    `_out_messages`, `_out_packet`); `aiomqtt>=2.5,<3` is pinned for that reason and
    tests/integration/test_hostile_mqtt.py exercises each hook against Mosquitto.
    """

    def __init__(
        self,
        *args: Any,
        on_refused: Callable[[str, int, str], None],
        on_acked: Callable[[int], None],
        max_incoming: int,
        will_on_close: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.connack: Properties | None = None
        self.disconnect_reason: int | None = None  # the broker's DISCONNECT reason (MQTT 5)
        self.oversize_in: int | None = None  # size of an incoming packet over the cap
        # The socket error that ended the connection: paho only logs it (on its own
        # logger, where _PahoSocketErrors drops it) and reports "connection lost".
        self.socket_error: OSError | None = None
        self._on_refused = on_refused
        self._on_acked = on_acked
        paho = self._client
        receive = paho._sock_recv
        send = paho._sock_send

        def capped_receive(bufsize: int) -> bytes:
            packet = paho._in_packet
            if packet["have_remaining"] and packet["remaining_length"] > max_incoming:
                # Dropping the connection costs a reconnect; reading the packet would
                # cost its whole size in memory. (MQTT 5 brokers never send it.)
                self.oversize_in = int(packet["remaining_length"])
                return b""  # paho: connection lost
            try:
                data: bytes = receive(bufsize)
            except BlockingIOError:
                raise
            except OSError as exc:
                self.socket_error = exc
                raise
            return data

        def recorded_send(buf: bytes | bytearray) -> int:
            try:
                sent: int = send(buf)
            except BlockingIOError:
                raise
            except OSError as exc:
                self.socket_error = exc
                raise
            return sent

        paho._sock_recv = capped_receive  # type: ignore[method-assign]
        paho._sock_send = recorded_send  # type: ignore[method-assign]
        if will_on_close:  # aiomqtt closes with reason 0; 4: "Disconnect with will message"
            with_will = ReasonCode(PacketTypes.DISCONNECT, identifier=4)
            paho.disconnect = lambda close=paho.disconnect: close(with_will)  # type: ignore

    @property
    def broker_max_packet(self) -> int | None:
        value = getattr(self.connack, "MaximumPacketSize", None) if self.connack else None
        return value if isinstance(value, int) and value > 0 else None

    def _on_connect(
        self,
        client: Any,
        userdata: Any,
        flags: Any,
        reason_code: Any,
        properties: Properties | None = None,
    ) -> None:
        self.connack = properties
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def _on_disconnect(
        self,
        client: Any,
        userdata: Any,
        flags: Any,
        reason_code: Any,
        properties: Properties | None = None,
    ) -> None:
        self.disconnect_reason = _code(reason_code)
        super()._on_disconnect(client, userdata, flags, reason_code, properties)
        # Mark the error as seen: aiomqtt replaces this future unawaited when the drop
        # comes during connect, and asyncio would then log "Future exception was never
        # retrieved" with a traceback. Whoever awaits it still gets the error.
        future = self._disconnected
        if future.done() and not future.cancelled():
            future.exception()

    async def unless_dropped(self, awaitable: Coroutine[Any, Any, T]) -> T:
        """Await `awaitable`, or raise MqttError as soon as the connection drops: aiomqtt
        would otherwise wait out its 10 s timeout for an acknowledgement that cannot
        come any more."""
        task = asyncio.ensure_future(awaitable)
        waits: set[asyncio.Future[Any]] = {task, self._disconnected}
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await task
        raise aiomqtt.MqttError("the connection dropped")

    def _on_socket_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        """paho has bytes to write. As aiomqtt does, but cheaper, and a socket closed
        before the loop gets to it is skipped (aiomqtt's own version then makes asyncio
        log "Exception in callback ... add_writer" with a traceback when the broker
        drops the connection).

        On the event loop's thread (every publish) the write is tried once on the next
        turn of the loop, with everything paho queued meanwhile in one socket write
        (`packets.coalesce`); only what the socket does not take waits for it to be
        writable. aiomqtt registers a writer, and wakes the loop through its self-pipe,
        for every batch, and paho sends packet by packet: on loopback each send also
        runs the broker's side of TCP. From the connect's executor thread: as aiomqtt."""
        loop = self._loop

        def write() -> None:
            try:
                coalesce(client._out_packet)
                client.loop_write()
            except Exception as exc:
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def register() -> None:
            fileno = sock.fileno()
            if fileno == -1:
                return
            with contextlib.suppress(OSError, ValueError):
                loop.add_writer(fileno, write)

        def flush() -> None:
            if sock.fileno() == -1:
                return
            write()
            # paho keeps its "registered" flag while bytes are left: the writer is ours.
            if client._sock is sock and client.want_write():
                register()

        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            loop.call_soon(flush)
        else:
            loop.call_soon_threadsafe(register)

    def _on_publish(
        self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        code = _code(reason_code)
        if code is not None and code >= 0x80:
            message = self._client._out_messages.get(mid)
            topic = getattr(message, "topic", "?")
            self._on_refused(topic, code, str(reason_code))
        self._on_acked(mid)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    def send(self, topic: str, payload: bytes, qos: int, retain: bool, props: Any) -> int | None:
        """Hand a message to paho without waiting (the link tracks the acknowledgement
        through `on_acked`): the message id for QoS 1/2, None for QoS 0. aiomqtt's
        `publish` would cost a future, a timer and a scan of its pending calls each."""
        info = self._client.publish(topic, payload, qos, retain, props)
        if info.rc != 0:
            raise MqttCodeError(info.rc, "Could not publish message")
        return int(info.mid) if qos > 0 else None


class _Outbox:
    """What waits for the broker, and what it has not acknowledged yet.

    Waiting messages are keyed by topic (state: the newest payload wins) or by
    (topic, n) for messages that must each be delivered (command results, history,
    Sparkplug), bounded by the topics plus MAX_ONE_OFF. Sent ones wait for their PUBACK
    by message id, at most SEND_CONCURRENCY (`window`). `wake` is set when something is
    queued.
    """

    def __init__(self, stats: LinkStats, throttle: Throttle) -> None:
        self.stats = stats
        self.throttle = throttle
        self.pending: dict[str | tuple[str, int], _Pending] = {}
        self.one_off = 0
        self.one_off_waiting = 0
        self.wake = asyncio.Event()
        # Handed to the broker, not yet acknowledged: message id -> (key, message).
        self.unacked: dict[int, tuple[str | tuple[str, int], _Pending]] = {}
        self.unacked_size: dict[int, int] = {}  # message id -> packet bytes
        self.acked_max = 0  # the largest packet the broker acknowledged on this connection
        self.qos0_max = 0  # the largest packet sent at QoS 0 (never acknowledged) on it
        self.window = asyncio.Event()  # set while fewer than SEND_CONCURRENCY are unacked
        self.window.set()

    def put(self, key: str | tuple[str, int] | None, topic: str, item: _Pending) -> None:
        if isinstance(key, str):
            self.pending.pop(key, None)  # re-insert at the end: oldest first stays fair
        else:
            if key is None:
                self.one_off += 1
                key = (topic, self.one_off)
            if self.one_off_waiting >= MAX_ONE_OFF:
                oldest = next(k for k in self.pending if isinstance(k, tuple))
                _finish(self.pending.pop(oldest), False)
                self.one_off_waiting -= 1
                self.stats.dropped += 1
                self.throttle.log(
                    logging.WARNING,
                    "one-off overflow",
                    "unsent answers dropped",
                    "%d answers waiting for the broker: dropped the oldest (on %s)",
                    MAX_ONE_OFF,
                    oldest[0],
                )
            self.one_off_waiting += 1
        self.pending[key] = item
        self.wake.set()

    def take(self) -> tuple[str | tuple[str, int], _Pending]:
        key = next(iter(self.pending))
        item = self.pending.pop(key)
        if isinstance(key, tuple):
            self.one_off_waiting -= 1
        return key, item

    def sent(self, mid: int, key: str | tuple[str, int], item: _Pending, size: int) -> None:
        self.unacked[mid] = (key, item)
        self.unacked_size[mid] = size

    def acked(self, mid: int) -> None:
        size = self.unacked_size.pop(mid, 0)
        entry = self.unacked.pop(mid, None)
        if entry is not None:
            self.acked_max = max(self.acked_max, size)
            self.stats.published += 1
            if len(self.unacked) < SEND_CONCURRENCY:
                self.window.set()
            _finish(entry[1], True)

    def requeue(self, key: str | tuple[str, int], topic: str, item: _Pending) -> None:
        # Cut off by a disconnect: send it again after the reconnect (a newer payload
        # for the same topic, queued meanwhile, wins). A session message is given up.
        if item.session:
            _finish(item, False)
        elif not (isinstance(key, str) and key in self.pending):
            self.stats.requeued += 1
            self.put(key, topic, item)
        else:
            _finish(item, False)

    def requeue_unacked(self) -> None:
        """The connection ended: what it did not acknowledge goes out again after the
        reconnect (the new client knows nothing of the old one's messages)."""
        self.acked_max = self.qos0_max = 0
        unacked, self.unacked = self.unacked, {}
        self.unacked_size = {}
        for key, item in unacked.values():
            self.requeue(key, key if isinstance(key, str) else key[0], item)
        for key in [k for k, item in self.pending.items() if item.session]:
            item = self.pending.pop(key)
            if isinstance(key, tuple):
                self.one_off_waiting -= 1
            _finish(item, False)
        self.window.set()

    def undelivered_since(self) -> float | None:
        times = [item.queued for item in self.pending.values()]
        times += [item.queued for _, item in self.unacked.values()]
        return min(times, default=None)

    def oversize_in_flight(self) -> int:
        """The largest message in flight when it is larger than any acknowledged; else 0."""
        largest = max(self.unacked_size.values(), default=0)
        return largest if largest > self.acked_max else 0


def _drop_hint(
    client_id: str,
    up: float,
    *,
    taken_over: bool,
    short_sessions: int,
    limit_drops: int = 0,
    in_flight: int = 0,
    unverified: int = 0,
) -> str:
    """A hint about a duplicate client id or a broker's packet limit, only where the
    evidence points there."""
    if taken_over:
        return f" (another client connected with client_id {client_id!r})"
    if limit_drops >= 2 and in_flight:
        return (
            f" (dropped {limit_drops} times in a row while a {in_flight}-byte message, "
            "larger than any the broker accepted, was in flight: an MQTT 3.1.1 broker "
            "with a packet size limit drops a client without saying why; set "
            "mqtt.max_packet_size to the broker's limit)"
        )
    if short_sessions >= 2:
        # Most brokers (Mosquitto 2.0 included) just close the socket: sessions dropped
        # right after connecting, again and again, look like a duplicate client id, or
        # (QoS 0 being never acknowledged, not told apart) like a packet limit.
        limit = f" Or a packet limit? Set mqtt.max_packet_size ({unverified} B)" * (unverified > 0)
        return (
            f" (dropped after {up:.1f}s, {short_sessions} times in a row right after "
            f"connecting: is another client using client_id {client_id!r}?{limit})"
        )
    return ""


class MqttLink:
    """One broker connection for the whole bridge, kept alive with backoff."""

    def __init__(
        self,
        settings: Mqtt,
        topics: Topics,
        *,
        on_connected: Callable[[], None] | None = None,
        on_message: Callable[[Incoming], Coroutine[Any, Any, None]] | None = None,
        on_overload: Callable[[Incoming], None] | None = None,
        subscriptions: Iterable[Subscription] = (),
        routes: Mapping[str, Callable[[Incoming], None]] | None = None,
        gate: Gate | None = None,
        on_gate_closed: Callable[[str], None] | None = None,
        backoff_max: float = 30.0,
        will: Callable[[], Will] | None = None,
        announce: bool = True,
        on_disconnected: Callable[[float | None], None] | None = None,
    ) -> None:
        self.settings = settings
        # Checked at the first connect only (`_pass_gate`): when it gives a reason, the
        # link says `offline` on the bridge state, calls `on_gate_closed` and waits
        # there, subscribed to nothing, until it is cancelled.
        self._gate = gate
        self._on_gate_closed = on_gate_closed
        # The first connect attempt is over: connected and subscribed with the gate
        # passed, the gate closed, or the broker could not be reached (the gate then
        # waits for the next connect). The owner starts polling after it, so the first
        # values go out live, not into the store-and-forward buffer as if the broker
        # were away.
        self.first_attempt = asyncio.Event()
        if gate is None:
            self.first_attempt.set()
        self.topics = topics
        self._on_connected = on_connected
        self._on_message = on_message
        self._on_overload = on_overload
        # filter -> handler. Unlike commands, these want retained messages replayed (the
        # discovery of an earlier run; a birth message some setups retain).
        self._routes = dict(routes or {})
        self._subscriptions = (*subscriptions, *(Subscription(f) for f in self._routes))
        self._backoff_max = backoff_max
        # The will of each connection (asked again before every connect), whether to
        # announce `online` on the bridge's state topic, and who to tell when a
        # connection ends (with the time of the oldest message it had not delivered).
        self._will = will
        self._announce = announce
        self._on_disconnected = on_disconnected
        self.stats = LinkStats()
        self._throttle = Throttle(log)
        self._outbox = _Outbox(self.stats, self._throttle)  # waiting, and unacknowledged
        self._client: _Client | None = None
        self._connected = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()
        self._broker_max: int | None = None  # from the last CONNACK (MQTT 5)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def connects(self) -> int:
        return self.stats.connects

    @property
    def pending(self) -> int:
        return len(self._outbox.pending)

    @property
    def max_packet_size(self) -> int:
        """The largest packet the broker takes: the smaller of `mqtt.max_packet_size` and
        what the broker announced at the last connect (MQTT 5)."""
        limits = [PROTOCOL_MAX_PACKET]
        if self.settings.max_packet_size is not None:
            limits.append(self.settings.max_packet_size)
        if self._broker_max is not None:
            limits.append(self._broker_max)
        return min(limits)

    def payload_limit(self, topic: str) -> int:
        """The largest payload that fits in one packet on `topic` (for trimming reports)."""
        v5 = self.settings.protocol == 5
        overhead = publish_packet_size(topic, 0, qos=self.settings.qos, v5=v5)
        return max(0, self.max_packet_size - overhead)

    async def wait_connected(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout)
        return self.connected

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool,
        coalesce: bool = True,
        correlation_data: bytes | None = None,
        qos: int | None = None,
        on_done: Done | None = None,
        session: bool = False,
    ) -> None:
        """Queue `payload` for `topic`.

        With `coalesce` (state), an unsent older payload for the topic is replaced.
        Without it (command results, history, Sparkplug) every message is kept, in
        order, up to MAX_ONE_OFF waiting; beyond that the oldest is dropped and counted.
        `qos` overrides `mqtt.qos`; `on_done` learns what became of the message (the
        broker's PUBACK). A `session` message belongs to this connection: published
        while disconnected, or still unacknowledged when the connection ends, it is
        given up (`on_done(False)`), never sent on a later connection.
        """
        now = time.time()
        item = _Pending(payload, retain, correlation_data, qos, on_done, session, now)
        if session and not self.connected:
            _finish(item, False)
            return
        if coalesce:
            old = self._outbox.pending.get(topic)
            if old is not None:
                item = dataclasses.replace(item, queued=min(old.queued, now))
                _finish(old, False)
        self._outbox.put(topic if coalesce else None, topic, item)

    def _make_client(self) -> _Client:
        s = self.settings
        v5 = s.protocol == 5
        protocol = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
        w = (
            self._will()
            if self._will is not None
            else Will(self.topics.bridge_state, OFFLINE.encode(), qos=1, retain=True)
        )
        will = aiomqtt.Will(w.topic, w.payload, qos=w.qos, retain=w.retain)
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.MaximumPacketSize = MAX_INCOMING_PACKET
        client = _Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password,
            identifier=s.client_id,
            protocol=protocol,
            will=will,
            keepalive=s.keepalive,
            timeout=10.0,
            tls_context=build_tls_context(s),
            properties=properties,
            # Session state is not kept: we republish everything after a reconnect.
            clean_session=None if v5 else True,
            on_refused=self._refused,
            on_acked=self._outbox.acked,
            max_incoming=MAX_INCOMING_PACKET,
            will_on_close=v5 and w.on_close,
            logger=_PAHO_LOG,
        )
        # We bound concurrency ourselves (SEND_CONCURRENCY); silence its warning below that.
        client.pending_calls_threshold = SEND_CONCURRENCY + 16
        client._client.max_inflight_messages_set(SEND_CONCURRENCY)
        return client

    async def _pass_gate(self, client: _Client) -> None:
        """The first connect: the retained messages on the gate's filters, judged. Passed,
        the gate is gone; closed, the bridge state says `offline` again and the link
        waits (connected, silent) until the owner, told why, cancels it."""
        gate = self._gate
        assert gate is not None
        seen = await client.unless_dropped(self._retained_on(client, gate.filters))
        reason = gate.judge(seen)
        if reason is None:
            self._gate = None  # `run` sets first_attempt once subscribed
            return
        await client.unless_dropped(
            client.publish(self.topics.bridge_state, OFFLINE.encode(), qos=1, retain=True)
        )
        if self._on_gate_closed is not None:
            self._on_gate_closed(reason)
        self.first_attempt.set()
        await asyncio.Event().wait()  # until cancelled

    @staticmethod
    async def _retained_on(client: _Client, filters: Sequence[str]) -> list[Incoming]:
        """Subscribe to `filters`, gather what the broker replays (until nothing came for
        GATE_QUIET, at most GATE_MAX), unsubscribe. Read from aiomqtt's queue without
        waiting on it, so no message is lost to a cancelled wait; nothing else is
        subscribed yet."""
        loop = asyncio.get_running_loop()
        for flt in filters:
            await client.subscribe(flt, qos=1)
        started = last = loop.time()
        seen: list[Incoming] = []
        queue = client._queue
        while True:
            while not queue.empty():
                message = queue.get_nowait()
                if any(message.topic.matches(f) for f in filters):
                    seen.append(_incoming(message))
                last = loop.time()
            now = loop.time()
            if now - last >= GATE_QUIET or now - started >= GATE_MAX:
                break
            await asyncio.sleep(0.02)
        for flt in filters:
            await client.unsubscribe(flt)
        return seen

    async def _subscribe(self, client: _Client) -> None:
        v5 = self.settings.protocol == 5
        for sub in self._subscriptions:
            options = None
            if v5 and not sub.retained:
                options = SubscribeOptions(
                    qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND
                )
            if options is None:
                granted = await client.subscribe(sub.filter, qos=1)
            else:  # paho takes the QoS from the options then
                granted = await client.subscribe(sub.filter, options=options)
            codes = [_code(g) for g in granted]
            if any(c is not None and c >= 0x80 for c in codes):
                log.error(
                    "the broker refused the subscription to %s (%s): messages there will "
                    "not arrive; check the broker's ACL for client %r",
                    sub.filter,
                    ", ".join(str(g) for g in granted),
                    self.settings.client_id,
                )

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff. Returns only when cancelled.

        Every failed attempt logs one line (no traceback) naming the broker, the
        reason (refused, bad credentials, certificate) and the next retry. The
        backoff only resets after a connection stayed up STABLE_AFTER seconds, so
        a broker that accepts and then drops us (a duplicate client id) is no storm.
        """
        loop = asyncio.get_running_loop()
        failures = 0
        short_sessions = 0  # dropped soon after a successful connect, in a row
        limit_drops = 0  # dropped with an unusually large message in flight, in a row
        if self.settings.tls is not None and self.settings.tls.insecure:
            log.warning(
                "mqtt.tls.insecure is true: the broker's certificate is NOT verified, so "
                "anyone on the network path can pose as the broker"
            )
        while True:
            error = ""
            connected_at: float | None = None
            taken_over = False
            client: _Client | None = None
            try:
                client = self._make_client()  # inside: a missing CA file is a retryable error
                self._client = client
                async with client:
                    connected_at = loop.time()
                    self.stats.connects += 1
                    self._broker_max = client.broker_max_packet
                    if self._announce:
                        await client.unless_dropped(
                            client.publish(
                                self.topics.bridge_state, ONLINE.encode(), qos=1, retain=True
                            )
                        )
                    if self._gate is not None:
                        await self._pass_gate(client)
                    await client.unless_dropped(self._subscribe(client))
                    self._connected.set()
                    log.info("MQTT connected to %s:%d", self.settings.host, self.settings.port)
                    if self._on_connected:
                        self._on_connected()
                    self.first_attempt.set()
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._sender(client))
                        group.create_task(self._receiver(client))
            except* (aiomqtt.MqttError, OSError, ssl.SSLError, TlsSetupError) as group_exc:
                error = "; ".join(_describe(e) for e in group_exc.exceptions)
            except* Exception as group_exc:
                # Not a network error: a bug. Keep the link alive, but say so loudly.
                log.error("MQTT link failed unexpectedly", exc_info=group_exc)
                error = "; ".join(repr(e) for e in group_exc.exceptions)
            finally:
                self._connected.clear()
                self._client = None
                since = self.undelivered_since()
                oversize_out = self._oversize_in_flight()
                unverified = 0 if oversize_out is None else self._outbox.qos0_max
                # Publishes still waiting for an acknowledgement would otherwise wait out
                # aiomqtt's 10 s timeout on a dead connection: hand them back now, to be
                # sent after the reconnect.
                self._outbox.requeue_unacked()
                if connected_at is not None and self._on_disconnected is not None:
                    try:
                        self._on_disconnected(since)
                    except Exception:
                        log.exception("the disconnect callback failed")
            if client is not None and client.disconnect_reason == SESSION_TAKEN_OVER:
                taken_over = True
                error = "the broker ended the session: another client connected with its id"
            if client is not None and client.socket_error is not None and connected_at:
                error = describe_os_error(client.socket_error)
            if client is not None and client.oversize_in is not None:
                error = (
                    f"the broker sent a packet of {client.oversize_in} bytes, more than the "
                    f"{MAX_INCOMING_PACKET} this bridge accepts; connection dropped unread "
                    "(with mqtt.protocol 5 the broker is told the limit and never sends it)"
                )
            self.first_attempt.set()
            up = None if connected_at is None else loop.time() - connected_at
            if up is not None and up >= STABLE_AFTER:
                failures = 0
            failures += 1
            short_sessions = short_sessions + 1 if up is not None and up < STABLE_AFTER else 0
            limit_drops = limit_drops + 1 if oversize_out and up is not None else 0
            wait = full_jitter(failures, low=0.5, high=self._backoff_max)
            if up is not None:
                log.warning(
                    "MQTT connection lost: %s%s; reconnecting in %.1fs",
                    error,
                    _drop_hint(
                        self.settings.client_id,
                        up,
                        taken_over=taken_over,
                        short_sessions=short_sessions,
                        limit_drops=limit_drops,
                        in_flight=oversize_out or 0,
                        unverified=unverified,
                    ),
                    wait,
                )
            else:
                log.error(
                    "MQTT cannot connect to %s:%d (attempt %d): %s; retrying in %.1fs",
                    self.settings.host,
                    self.settings.port,
                    failures,
                    error,
                    wait,
                )
            await asyncio.sleep(wait)

    def _refused(self, topic: str, code: int, reason: str) -> None:
        self.stats.refused += 1
        self._throttle.log(
            logging.WARNING,
            ("refused", topic),
            f"refused publishes to {topic}",
            "the broker refused the publish to %s: %s (reason code %d); check its ACL for "
            "client %r",
            topic,
            reason,
            code,
            self.settings.client_id,
        )

    def _too_large(self, topic: str, size: int) -> bool:
        limit = self.max_packet_size
        if size <= limit:
            return False
        self.stats.oversize += 1
        self._throttle.log(
            logging.WARNING,
            ("oversize", topic),
            f"oversize messages on {topic}",
            "not publishing %s: %d bytes, more than the broker's maximum packet size of %d",
            topic,
            size,
            limit,
        )
        return True

    async def _sender(self, client: _Client) -> None:
        """Hand queued messages to paho, at most SEND_CONCURRENCY unacknowledged."""
        default_qos = self.settings.qos
        v5 = self.settings.protocol == 5
        outbox = self._outbox
        pending, unacked = outbox.pending, outbox.unacked
        while True:
            if not pending:
                outbox.wake.clear()
                await outbox.wake.wait()
                continue
            if len(unacked) >= SEND_CONCURRENCY:
                outbox.window.clear()
                await outbox.window.wait()
                continue
            key, item = outbox.take()
            topic = key if isinstance(key, str) else key[0]
            qos = default_qos if item.qos is None else item.qos
            size = publish_packet_size(
                topic, len(item.payload), qos=qos, v5=v5, correlation_data=item.correlation_data
            )
            if self._too_large(topic, size):
                _finish(item, False)
                continue
            try:
                mid = client.send(topic, item.payload, qos, item.retain, self._properties(item))
            except aiomqtt.MqttError:
                outbox.requeue(key, topic, item)
                raise
            if mid is None:
                self.stats.published += 1
                outbox.qos0_max = max(outbox.qos0_max, size)
                _finish(item, True)
            else:
                outbox.sent(mid, key, item, size)

    def undelivered_since(self) -> float | None:
        """When the oldest message not yet delivered (waiting, or sent and not
        acknowledged) was first queued; None when everything was delivered. What a
        connection that ends now may have lost happened after this."""
        return self._outbox.undelivered_since()

    def _oversize_in_flight(self) -> int | None:
        """At a drop on MQTT 3.1.1 without `max_packet_size`: `_Outbox.oversize_in_flight`
        (a broker with a limit drops the client silently); None where the limit is known."""
        if self.settings.protocol == 5 or self.settings.max_packet_size is not None:
            return None
        return self._outbox.oversize_in_flight()

    def _properties(self, item: _Pending) -> Properties | None:
        if item.correlation_data is None or self.settings.protocol != 5:
            return None
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.CorrelationData = item.correlation_data
        return props

    def _route(self, topic: aiomqtt.Topic) -> Callable[[Incoming], None] | None:
        for flt, handler in self._routes.items():
            if topic.matches(flt):
                return handler
        return None

    async def _receiver(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            route = self._route(message.topic)
            if route is None and self._on_message is None:
                continue
            incoming = _incoming(message)
            if route is not None:
                try:
                    route(incoming)
                except Exception:  # a handler's bug must not take the link down
                    log.exception("handling a message on %s failed", incoming.topic)
                continue
            if self._on_message is None:
                continue
            if len(self._handlers) >= MAX_HANDLERS:
                # A flood of commands: refuse (and answer) instead of growing without bound.
                self._throttle.log(
                    logging.WARNING,
                    "overloaded",
                    "commands refused by the flood guard",
                    "%d commands in progress: refusing new ones until they finish (first: %s)",
                    len(self._handlers),
                    incoming.topic,
                )
                if self._on_overload is not None:
                    self._on_overload(incoming)
                continue
            task = asyncio.create_task(self._on_message(incoming))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    def flush_logs(self) -> None:
        """Summarise throttled log lines whose window has ended."""
        self._throttle.flush()

    async def flush(self, timeout: float) -> None:
        """Wait until everything queued is sent and acknowledged (or `timeout`), e.g. before
        shutdown: a QoS 1 publish cut off by the disconnect may never reach subscribers."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        outbox = self._outbox
        while (outbox.pending or outbox.unacked) and self.connected and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    async def publish_now(
        self, topic: str, payload: bytes, *, retain: bool, timeout: float
    ) -> bool:
        """Publish directly (used at shutdown); False if not connected or it failed."""
        client = self._client
        if client is None or not self.connected:
            return False
        try:
            await asyncio.wait_for(
                client.publish(topic, payload, qos=1, retain=retain), timeout=timeout
            )
        except (aiomqtt.MqttError, TimeoutError):
            return False
        return True
