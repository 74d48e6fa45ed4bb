"""The MQTT link. The only module that imports aiomqtt.

`MqttLink.publish()` never blocks and never raises: it records the newest payload
per topic in a pending map that a sender task drains while connected. The map
holds at most one entry per topic, so a long broker outage costs no memory
growth, and a value that changed ten times while offline is sent once.

`run()` owns the connection: connect, announce `online` (the last will says
`offline`), let the owner re-queue its full state, subscribe to command topics,
then send and receive until the broker goes away; back off and repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.backoff import full_jitter
from bridge.model import Mqtt
from bridge.payloads import OFFLINE, ONLINE, Incoming
from bridge.topics import Topics

__all__ = ["Incoming", "MqttLink", "build_tls_context"]

log = logging.getLogger("bridge.mqtt")

SEND_CONCURRENCY = 64  # publishes in flight at once
MAX_ONE_OFF = 1000  # non-coalescing messages (command results) waiting while offline
MAX_HANDLERS = 256  # commands being handled at once; more are dropped (flood guard)
STABLE_AFTER = 10.0  # seconds a connection must last before the backoff resets


@dataclass(frozen=True)
class _Pending:
    payload: bytes
    retain: bool
    correlation_data: bytes | None = None


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
    tls = settings.tls
    if tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    if tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class MqttLink:
    """One broker connection for the whole bridge, kept alive with backoff."""

    def __init__(
        self,
        settings: Mqtt,
        topics: Topics,
        *,
        on_connected: Callable[[], None] | None = None,
        on_message: Callable[[Incoming], Coroutine[Any, Any, None]] | None = None,
        subscriptions: Iterable[str] = (),
        backoff_max: float = 30.0,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self._on_connected = on_connected
        self._on_message = on_message
        self._subscriptions = tuple(subscriptions)
        self._backoff_max = backoff_max
        # Keyed by topic (state: newest wins) or by (topic, n) for messages that must
        # each be delivered (command results). Bounded by topics + MAX_ONE_OFF.
        self._pending: dict[str | tuple[str, int], _Pending] = {}
        self._one_off = 0
        self._wake = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()
        self._inflight: set[asyncio.Task[None]] = set()  # publishes awaiting the broker's ack
        self.connects = 0
        self.dropped = 0  # publishes lost because the link went down mid-send
        self.dropped_commands = 0  # commands dropped by the flood guard

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def pending(self) -> int:
        return len(self._pending)

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
    ) -> None:
        """Queue `payload` for `topic`.

        With `coalesce` (state), an unsent older payload for the topic is replaced.
        Without it (command results) every message is kept, up to MAX_ONE_OFF
        waiting; beyond that the oldest is dropped and counted.
        """
        key: str | tuple[str, int]
        if coalesce:
            key = topic
            self._pending.pop(key, None)  # re-insert at the end: oldest first stays fair
        else:
            self._one_off += 1
            key = (topic, self._one_off)
            waiting = [k for k in self._pending if isinstance(k, tuple)]
            if len(waiting) >= MAX_ONE_OFF:
                del self._pending[waiting[0]]
                self.dropped += 1
        self._pending[key] = _Pending(payload, retain, correlation_data)
        self._wake.set()

    def _make_client(self) -> aiomqtt.Client:
        s = self.settings
        protocol = aiomqtt.ProtocolVersion.V5 if s.protocol == 5 else aiomqtt.ProtocolVersion.V311
        will = aiomqtt.Will(self.topics.bridge_state, OFFLINE.encode(), qos=1, retain=True)
        client = aiomqtt.Client(
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
            # Session state is not kept: we republish everything after a reconnect.
            clean_session=True if protocol != aiomqtt.ProtocolVersion.V5 else None,
        )
        # We bound concurrency ourselves (SEND_CONCURRENCY); silence its warning below that.
        client.pending_calls_threshold = SEND_CONCURRENCY + 16
        return client

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff. Returns only when cancelled.

        Every failed attempt logs one line (no traceback) naming the broker, the
        reason (refused, bad credentials, certificate) and the next retry. The
        backoff only resets after a connection stayed up STABLE_AFTER seconds, so
        a broker that accepts and then drops us (a duplicate client id) is no storm.
        """
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            error = ""
            connected_at: float | None = None
            try:
                client = self._make_client()  # inside: a missing CA file is a retryable error
                self._client = client
                async with client:
                    connected_at = loop.time()
                    self.connects += 1
                    await client.publish(
                        self.topics.bridge_state, ONLINE.encode(), qos=1, retain=True
                    )
                    for flt in self._subscriptions:
                        await client.subscribe(flt, qos=1)
                    self._connected.set()
                    log.info("MQTT connected to %s:%d", self.settings.host, self.settings.port)
                    if self._on_connected:
                        self._on_connected()
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._sender(client))
                        group.create_task(self._receiver(client))
            except* (aiomqtt.MqttError, OSError, ssl.SSLError) as group_exc:
                error = "; ".join(_describe(e) for e in group_exc.exceptions)
            except* Exception as group_exc:
                # Not a network error: a bug. Keep the link alive, but say so loudly.
                log.error("MQTT link failed unexpectedly", exc_info=group_exc)
                error = "; ".join(repr(e) for e in group_exc.exceptions)
            finally:
                self._connected.clear()
                self._client = None
            if connected_at is not None and loop.time() - connected_at >= STABLE_AFTER:
                failures = 0
            failures += 1
            wait = full_jitter(failures, low=0.5, high=self._backoff_max)
            if connected_at is not None:
                up = loop.time() - connected_at
                hint = (
                    f" (dropped after {up:.1f}s: is another client using client_id "
                    f"{self.settings.client_id!r}?)"
                    if up < STABLE_AFTER and failures > 2
                    else ""
                )
                log.warning("MQTT connection lost: %s%s; reconnecting in %.1fs", error, hint, wait)
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

    async def _sender(self, client: aiomqtt.Client) -> None:
        limit = asyncio.Semaphore(SEND_CONCURRENCY)
        inflight = self._inflight
        failed: list[BaseException] = []

        async def send_one(key: str | tuple[str, int], item: _Pending) -> None:
            topic = key if isinstance(key, str) else key[0]
            try:
                await client.publish(
                    topic,
                    item.payload,
                    qos=self.settings.qos,
                    retain=item.retain,
                    properties=self._properties(item),
                )
            except aiomqtt.MqttError as exc:
                self.dropped += 1
                failed.append(exc)
            finally:
                limit.release()

        while True:
            if failed:
                raise failed[0]
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            key = next(iter(self._pending))
            item = self._pending.pop(key)
            await limit.acquire()
            task = asyncio.create_task(send_one(key, item))
            inflight.add(task)
            task.add_done_callback(inflight.discard)

    def _properties(self, item: _Pending) -> Properties | None:
        if item.correlation_data is None or self.settings.protocol != 5:
            return None
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.CorrelationData = item.correlation_data
        return props

    async def _receiver(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if self._on_message is None:
                continue
            props = message.properties
            response_topic = getattr(props, "ResponseTopic", None) if props else None
            correlation = getattr(props, "CorrelationData", None) if props else None
            payload = message.payload
            raw = payload if isinstance(payload, bytes | bytearray) else str(payload).encode()
            incoming = Incoming(str(message.topic), bytes(raw), response_topic, correlation)
            if len(self._handlers) >= MAX_HANDLERS:
                # A flood of commands: drop instead of growing without bound.
                self.dropped_commands += 1
                if self.dropped_commands == 1 or self.dropped_commands % 1000 == 0:
                    log.warning(
                        "%d commands waiting; dropped %d (last on %s)",
                        len(self._handlers),
                        self.dropped_commands,
                        incoming.topic,
                    )
                continue
            task = asyncio.create_task(self._on_message(incoming))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def flush(self, timeout: float) -> None:
        """Wait until everything queued is sent and acknowledged (or `timeout`), e.g. before
        shutdown: a QoS 1 publish cut off by the disconnect may never reach subscribers."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self._pending or self._inflight) and self.connected and loop.time() < deadline:  # noqa: ASYNC110
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
