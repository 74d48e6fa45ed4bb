"""Carries out MQTT commands: the I/O half of `bridge.commands`.

For each message on a command topic `CommandHandler.handle`:

1. parses and validates the whole command (`bridge.commands`); anything wrong is
   answered with an error and nothing is written;
2. refuses at once when the bridge is shutting down, the host session is not
   connected, the device is offline, or the device's `write_rate` is exceeded
   (a token bucket; rejected, never queued);
3. runs the writes of one command in order, under a per-device lock, through
   the host session (writes pass queued polls; one request on the socket at a
   time). A write still waiting for the host after `write_timeout` is withdrawn:
   the session asks a `Claim` before sending, so it can never go out later;
4. reads the written points back (only those registers) and publishes them as
   state through the same callback as polls, then answers on
   ``<device>/set/result`` (and on the MQTT v5 response topic, if any) with the
   confirmed values.

`get` commands read the asked points at write priority and answer the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from bridge.codec import CodecError
from bridge.commands import (
    RateLimiter,
    WriteCommand,
    WriteKind,
    WriteOp,
    parse_get,
    parse_set,
    transaction_of,
)
from bridge.errors import (
    BadReply,
    CommandError,
    ExceptionReply,
    HostUnavailable,
    ModbusRequestError,
    RequestTimeout,
    Transaction,
)
from bridge.logs import Throttle
from bridge.messages import Incoming
from bridge.model import BridgeConfig, Device, Point
from bridge.payloads import Value, result_payload
from bridge.planner import decode_block, plan_device, with_scale_points
from bridge.session import Claim, HostSession, Priority
from bridge.state import StateCache
from bridge.stats import CommandStats
from bridge.topics import Topics

log = logging.getLogger("bridge.commands")  # the commands' log, whichever module

T = TypeVar("T")

MAX_RETAINED_SEEN = 1024  # retained commands remembered, so each is answered once

OnRead = Callable[[Device, dict[str, Value], ModbusRequestError | None], None]
"""The poll callback (`Bridge._on_poll`): read values and the error that stopped the read."""


class Publish(Protocol):
    """`MqttLink.publish`."""

    def __call__(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool,
        coalesce: bool = True,
        correlation_data: bytes | None = None,
    ) -> None: ...


class _Expired(Exception):
    """A request waited longer than `write_timeout` for the host and was withdrawn."""


class _Reply:
    """Answers one command, exactly once, on set/result and the v5 response topic."""

    def __init__(self, handler: CommandHandler, device: str, message: Incoming) -> None:
        self.handler = handler
        self.device = device
        self.message = message
        self.transaction: Transaction | None = None
        self.sent = False
        self.response_topic = message.response_topic
        self.response_problem: str | None = None
        if self.response_topic is not None:
            self.response_problem = handler.topics.response_topic_problem(
                self.response_topic, handler.fleet
            )
            if self.response_problem is not None:
                handler.throttle.log(
                    logging.WARNING,
                    ("response topic", self.response_topic),
                    f"commands with response topic {self.response_topic!r}",
                    "%s: not answering on the response topic %r: %s",
                    message.topic,
                    self.response_topic,
                    self.response_problem,
                )

    def _note(self, warning: str | None) -> str | None:
        """`warning`, plus why the response topic was not used."""
        if self.response_problem is None:
            return warning
        note = f"not answered on response topic {self.response_topic!r}: {self.response_problem}"
        return note if warning is None else f"{warning}; {note}"

    def ok(self, data: Mapping[str, Value], warning: str | None = None) -> None:
        if not self.sent:
            self.handler.stats.ok += 1
        self._send(
            result_payload("ok", data, transaction=self.transaction, warning=self._note(warning))
        )

    def error(self, reason: str, data: Mapping[str, Value] | None = None) -> None:
        self._send(
            result_payload(
                "error",
                data or {},
                error=reason,
                transaction=self.transaction,
                warning=self._note(None),
            )
        )

    def _send(self, payload: bytes) -> None:
        if self.sent:
            return
        self.sent = True
        self.handler.publish(
            self.handler.topics.set_result(self.device), payload, retain=False, coalesce=False
        )
        if self.response_topic is None or self.response_problem is not None:
            return
        self.handler.publish(
            self.response_topic,
            payload,
            retain=False,
            coalesce=False,
            correlation_data=self.message.correlation_data,
        )


class CommandHandler:
    """Executes `set` and `get` commands; one instance per bridge."""

    def __init__(
        self,
        config: BridgeConfig,
        topics: Topics,
        sessions: Mapping[str, HostSession],
        state: StateCache,
        *,
        publish: Publish,
        on_read: OnRead,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.topics = topics
        self.sessions = sessions
        self.state = state
        self.publish = publish
        self.on_read = on_read
        self.clock = clock
        self.devices = {d.name: d for d in config.devices}
        self._set_fleet(config)
        self.limiters = {
            d.name: RateLimiter(d.write_rate) for d in config.devices if d.write_rate is not None
        }
        self.stats = CommandStats()
        self.throttle = Throttle(log)
        self._locks: dict[str, asyncio.Lock] = {}
        self._inflight: dict[asyncio.Task[Any], str] = {}  # command tasks -> their device
        self._closing = False
        self._held: set[str] = set()  # devices a reload is changing: commands refused
        self._interrupted: dict[asyncio.Task[Any], str] = {}  # cancelled tasks -> why
        # Retained commands already answered: (topic, hash of payload), oldest first.
        self._retained_seen: OrderedDict[tuple[str, int], None] = OrderedDict()

    def _set_fleet(self, config: BridgeConfig) -> None:
        # One shard of a fleet (--shard) answers the commands of its own devices only:
        # those of a device another shard runs are that shard's, and a device that no
        # shard runs is answered ("unknown device") by shard 1 alone, so every command
        # gets exactly one answer. `fleet` (every device of the file) also keeps answers
        # off another shard's state topics (response topics).
        self.fleet = frozenset(self.devices) | config.elsewhere
        self._answers_unknown = config.shard is None or config.shard.index == 1

    def ours(self, device: str) -> bool:
        """Whether this bridge answers commands for `device`."""
        if device in self.devices:
            return True
        return self._answers_unknown and device not in self.fleet

    # -- entry points ------------------------------------------------------

    async def handle(self, message: Incoming) -> None:
        """Answer one message from a command topic. Never raises (but CancelledError)."""
        parsed = self.topics.parse_command(message.topic)
        if parsed is None:
            log.debug("ignored message on %s", message.topic)
            return
        device, point, verb = parsed
        if not self.ours(device):
            log.debug("%s: for a device of another shard: not answered here", message.topic)
            return
        if verb == "set" and not message.payload:
            # `mosquitto_pub -r -n`: how a retained command is cleared from the broker,
            # which passes the empty message on to live subscribers. Not a command.
            log.debug("%s: empty payload (a retained command cleared): ignored", message.topic)
            return
        reply = _Reply(self, device, message)
        if message.retained:
            self._refuse_retained(reply)
            return
        task = asyncio.current_task()
        if task is not None:
            self._inflight[task] = device
        try:
            if verb == "get":
                await self._get(reply, device, message.payload)
            else:
                await self._set(reply, device, point, message.payload)
        except asyncio.CancelledError:
            if not reply.sent:
                self.stats.failed += 1
                why = "the bridge is shutting down"
                if task is not None:
                    why = self._interrupted.pop(task, why)
                reason = (
                    f"interrupted: {why} (a write in progress may or may not have been applied)"
                )
                log.warning("%s: %s", message.topic, reason)
                reply.error(reason)
            raise
        except Exception as exc:  # the bridge keeps running, whatever a command does
            log.exception("%s: command failed unexpectedly", message.topic)
            reply.error(f"internal error: {type(exc).__name__}: {exc}")
        finally:
            if task is not None:
                self._inflight.pop(task, None)
                self._interrupted.pop(task, None)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def drain(self, timeout: float) -> None:
        """Shutdown: refuse new commands, give running ones `timeout` seconds, then
        cancel the rest (each still gets an error answer)."""
        self._closing = True
        tasks = set(self._inflight)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=0.5)

    # -- reload (see app.Bridge.apply) ----------------------------------------

    def hold(self, devices: Collection[str]) -> None:
        """A reload is about to change or remove `devices`: refuse new commands for them
        (answered: retry) until `release`."""
        self._held.update(devices)

    def release(self, devices: Collection[str]) -> None:
        self._held.difference_update(devices)

    async def settle(self, devices: Collection[str], timeout: float, why: str) -> None:
        """Give commands in flight for `devices` `timeout` seconds to finish, then
        interrupt the rest: each is answered with an error saying `why`."""
        names = set(devices)
        tasks = {t for t, device in self._inflight.items() if device in names}
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            self._interrupted[task] = why
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=0.5)

    def reconfigure(self, config: BridgeConfig, topics: Topics, state: StateCache) -> None:
        """Serve the devices of `config` from now on (a reload). A device's `write_rate`
        budget carries over while its rate is unchanged."""
        old = self.devices
        self.config = config
        self.topics = topics
        self.state = state
        self.devices = {d.name: d for d in config.devices}
        self._set_fleet(config)
        self.limiters = {
            d.name: (
                self.limiters[d.name]
                if d.name in self.limiters and old[d.name].write_rate == d.write_rate
                else RateLimiter(d.write_rate)
            )
            for d in config.devices
            if d.write_rate is not None
        }
        for name in set(self._locks) - set(self.devices):
            if not self._locks[name].locked():
                del self._locks[name]

    def _refuse_retained(self, reply: _Reply) -> None:
        """A command the broker replayed from its retained store is never executed: it
        would run again on every reconnect. Answered once per distinct message."""
        message = reply.message
        key = (message.topic, hash(message.payload))
        if key in self._retained_seen:
            return
        self._retained_seen[key] = None
        if len(self._retained_seen) > MAX_RETAINED_SEEN:
            self._retained_seen.popitem(last=False)
        self.stats.retained += 1
        reply.transaction = transaction_of(message.payload)
        reason = (
            "not executed: this command is a retained message replayed by the broker, and a "
            "retained command would run again on every reconnect; publish commands without "
            f"the retain flag, and clear this one (an empty retained message on {message.topic})"
        )
        self.throttle.log(
            logging.WARNING,
            ("retained", reply.device),
            f"retained commands refused for {reply.device}",
            "%s: %s",
            message.topic,
            reason,
        )
        reply.error(reason)

    def refuse_overloaded(self, message: Incoming) -> None:
        """Answer a command the flood guard turned away (nothing was written)."""
        parsed = self.topics.parse_command(message.topic)
        if parsed is None or not self.ours(parsed[0]):
            return
        if parsed[2] == "set" and not message.payload:
            return  # a retained command cleared: not a command (see `handle`)
        self.stats.overloaded += 1
        reply = _Reply(self, parsed[0], message)
        reply.transaction = transaction_of(message.payload)
        reply.error(
            "refused: the bridge is overloaded with commands (too many in progress); "
            "nothing was written, retry later"
        )

    # -- set -----------------------------------------------------------------

    def _reject(self, reply: _Reply, reason: str) -> None:
        self.stats.rejected += 1
        self.throttle.log(
            logging.WARNING,
            ("rejected", reply.device),
            f"commands rejected for {reply.device}",
            "%s: command rejected: %s",
            reply.message.topic,
            reason,
        )
        reply.error(reason)

    async def _set(self, reply: _Reply, name: str, point: str | None, payload: bytes) -> None:
        device = self.devices.get(name)
        known = self.state.devices.get(name)
        try:
            command = parse_set(
                name if device is None else device,
                point,
                payload,
                read_only=self.config.read_only,
                scales=None if known is None else known.values,
            )
        except CommandError as exc:
            reply.transaction = exc.transaction
            self._reject(reply, exc.reason)
            return
        reply.transaction = command.transaction
        why = self._refusal(command.device)
        if why is not None:
            self._reject(reply, why)
            return
        lock = await self._acquire(reply, name)
        if lock is None:
            return
        try:
            await self._execute(reply, command)
        finally:
            lock.release()

    async def _acquire(self, reply: _Reply, name: str) -> asyncio.Lock | None:
        """The device's command lock (commands of one device run one after the other),
        or None (answered) when earlier commands hold it longer than `write_timeout`."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        try:
            async with asyncio.timeout(self.config.write_timeout):
                await lock.acquire()
        except TimeoutError:
            self._reject(
                reply,
                f"device {name} is busy with earlier commands: not started within "
                f"write_timeout ({self.config.write_timeout:g}s)",
            )
            return None
        return lock

    def _refusal(self, device: Device) -> str | None:
        """Why a command for `device` is refused before it is queued, or None."""
        if self._closing:
            return "the bridge is shutting down"
        if device.name in self._held:
            return (
                f"device {device.name} is being reconfigured (configuration reload); "
                "nothing was written, retry in a moment"
            )
        session = self.sessions.get(device.host)
        if session is None or not session.connected:
            return f"host {device.host} of device {device.name} is not connected"
        st = self.state.devices.get(device.name)
        if st is not None and st.available is False:
            return f"device {device.name} is offline"
        limiter = self.limiters.get(device.name)
        if limiter is not None:
            now = self.clock()
            if not limiter.allow(now):
                return (
                    f"write_rate of device {device.name} ({limiter.rate:g}/s) exceeded; "
                    f"command rejected, retry in {limiter.wait_time(now):.2f}s"
                )
        return None

    async def _execute(self, reply: _Reply, command: WriteCommand) -> None:
        device = command.device
        session = self.sessions[device.host]
        topic = reply.message.topic
        written: list[Point] = []
        failure: str | None = None
        for op in command.ops:
            claim = Claim()
            maybe = "the write may or may not have been applied"
            try:
                await self._write(session, device, op, claim)
            except _Expired as exc:
                failure = f"{op.point.name}: {exc}"
            except RequestTimeout:
                failure = (
                    f"{op.point.name}: no answer from host {device.host} unit {device.unit} "
                    f"within its timeout; {maybe}"
                )
            except BadReply as exc:
                failure = f"{op.point.name}: {exc.reason}; {maybe}"
            except ExceptionReply as exc:
                failure = f"{op.point.name}: the device refused the write: {exc.reason}"
            except HostUnavailable as exc:
                if claim.state == "sent":  # the device may have acted before the link died
                    failure = (
                        f"{op.point.name}: the connection to host {device.host} was lost while "
                        f"the write was on the wire; {maybe}"
                    )
                else:
                    failure = f"{op.point.name}: {exc}"
            except ModbusRequestError as exc:
                failure = f"{op.point.name}: {exc}"
            if failure is not None:
                break
            written.append(op.point)
            self.stats.writes += 1
            log.info(
                "%s: wrote %s.%s = %r (%s)",
                topic,
                device.name,
                op.point.name,
                op.value,
                op.describe(),
            )

        data: dict[str, Value] = {}
        warning: str | None = None
        if written:
            values, read_error = await self._read(device, written)
            data = {p.name: values[p.name] for p in written if p.name in values}
            if read_error is not None:
                warning = f"written, but the read-back failed: {read_error}"
                log.warning("%s: %s", topic, warning)
        if failure is None:
            reply.ok(data, warning)
            return
        if written:
            failure += f" (already written: {', '.join(p.name for p in written)})"
        self.stats.failed += 1
        self.throttle.log(
            logging.WARNING,
            ("failed", device.name),
            f"failed commands for {device.name}",
            "%s: command failed: %s",
            topic,
            failure,
        )
        reply.error(failure, data)

    async def _write(self, session: HostSession, device: Device, op: WriteOp, claim: Claim) -> None:
        request: Coroutine[Any, Any, None]
        if op.kind is WriteKind.COIL:
            request = session.write_coil(
                device.unit, op.address, op.state, multiple=op.multiple, claim=claim
            )
        elif op.kind is WriteKind.REGISTERS:
            request = session.write_registers(
                device.unit, op.address, op.registers, multiple=op.multiple, claim=claim
            )
        else:
            request = session.write_bit(
                device.unit,
                op.address,
                op.bit,
                op.state,
                mask_write=op.kind is WriteKind.MASK,
                multiple=op.multiple,
                claim=claim,
            )
        await self._queued(request, device, claim)

    async def _queued(
        self, request: Coroutine[Any, Any, T], device: Device, claim: Claim | None = None
    ) -> T:
        """Await a session request; withdraw it if it waits more than `write_timeout`.

        A write (with `claim`) that the session has already sent is waited for: the
        host's own timeout bounds that. A read has no claim; it gets the host's
        timeout on top of `write_timeout` to be answered.
        """
        timeout = self.config.write_timeout
        if claim is None:
            timeout += self.sessions[device.host].host.timeout
        task = asyncio.ensure_future(request)
        task.add_done_callback(_consume)
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done and (claim is None or claim.abandon()):
                task.cancel()  # its queue entry is skipped by the host worker
                if claim is None:
                    raise _Expired(f"no answer from host {device.host} within {timeout:g}s")
                raise _Expired(
                    f"not sent: host {device.host} did not take the write within "
                    f"write_timeout ({timeout:g}s)"
                )
            return await task
        except asyncio.CancelledError:
            if claim is not None:
                claim.abandon()
            task.cancel()
            raise

    # -- reads (read-back and get) ------------------------------------------

    async def _read(
        self, device: Device, points: Sequence[Point]
    ) -> tuple[dict[str, Value], str | None]:
        """Read just `points` now and publish them like a poll; (values, error or None)."""
        # Only the asked registers (no gap bridging), whatever their poll intervals.
        # A scaled point is read with its scale factor point.
        subset = dataclasses.replace(
            device,
            points=tuple(
                dataclasses.replace(p, interval=device.interval)
                for p in with_scale_points(device, points)
            ),
            max_gap=0,
        )
        session = self.sessions[device.host]
        values: dict[str, Value] = {}
        for block in plan_device(subset):
            read = session.read(
                block.unit, block.table, block.start, block.count, priority=Priority.WRITE
            )
            try:
                data = await self._queued(read, device)
                values.update(decode_block(block, data))
            except _Expired as exc:
                if values:  # what was read is published, so answer and state agree
                    self.on_read(device, values, None)
                return values, str(exc)
            except ExceptionReply as exc:
                # The device answered: it is online, only this read is refused.
                if values:
                    self.on_read(device, values, None)
                return values, exc.reason
            except ModbusRequestError as exc:
                self.on_read(device, values, exc)
                return values, exc.reason
            except CodecError as exc:
                error = ModbusRequestError(device.host, device.unit, f"bad reply: {exc}")
                self.on_read(device, values, error)
                return values, error.reason
        self.on_read(device, values, None)
        return values, None

    async def reread(self, device: Device, points: Sequence[Point]) -> None:
        """Read `points` of `device` again now and publish them like a poll (after a
        write through a host's proxy, `bridge.proxy`). A device or host a reload
        removed meanwhile is skipped; a failure is logged by the read's own path."""
        if self.devices.get(device.name) != device or device.host not in self.sessions:
            return
        await self._read(device, points)

    async def _get(self, reply: _Reply, name: str, payload: bytes) -> None:
        device = self.devices.get(name)
        try:
            points = parse_get(name if device is None else device, payload)
        except CommandError as exc:
            self._reject(reply, exc.reason)
            return
        assert device is not None
        why = self._refusal(device)
        if why is not None:
            self._reject(reply, why)
            return
        lock = await self._acquire(reply, name)
        if lock is None:
            return
        try:
            values, error = await self._read(device, points)
        finally:
            lock.release()
        if error is None:
            log.info("%s: read %d point(s) of %s", reply.message.topic, len(values), name)
            reply.ok(values)
        else:
            self.stats.failed += 1
            log.warning("%s: read failed: %s", reply.message.topic, error)
            reply.error(f"read failed: {error}", values)


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of a request nobody awaits any more (no 'never retrieved' noise)."""
    if not task.cancelled():
        with contextlib.suppress(BaseException):
            task.exception()
