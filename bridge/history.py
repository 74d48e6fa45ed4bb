"""Store and forward, wired as a feature (`buffer:`; off unless configured).

While the broker cannot be reached, every change of a device's state (the points whose
published value changed, and its availability) is kept with its time in
`bridge.buffer.BufferStore` (SQLite, WAL), which runs on one worker thread of its own:
the event loop only collects, and every `flush_interval` one transaction writes what
was collected and deletes what was acknowledged (an SD card sees one commit per
interval, not one per value).

* When: while the bridge's MQTT link is down (at start too, until the first connect).
  A connection that ends tells the time of the oldest message it had not delivered
  (`Feature.disconnected`); the changes published live since then, kept in memory for
  `RECENT` seconds, go to the store as well: they may never have reached the broker.
* After a reconnect the retained state goes out first (the root's `republish`); then
  the buffered changes, oldest first (in order per device, across restarts: ids only
  grow), at most `replay_rate` a second and `IN_FLIGHT` unacknowledged at a time, so
  live data is not starved. Each is published on `<base>/<device>/history` (JSON, QoS 1,
  not retained, with its time) and, when the Sparkplug node is on and the device born,
  as a DDATA whose metrics are flagged historical with their original timestamps
  (QoS 0, as Sparkplug sends data). A record is deleted once the broker acknowledged
  its history message (PUBACK); one cut off by a disconnect is sent again after the
  next connect, so a kill -9 between PUBACK and the delete gives at most one duplicate,
  as QoS 1 redelivery may.
* Bounded by `max_bytes` and `max_age`: the oldest records go, counted in the health
  report and the metrics (`buffer`), said once in the log per outage.
* A kill -9 loses only what was collected since the last flush (at most
  `flush_interval`); what the store committed survives it and a power cut. After a
  restart the first read of each device is a change (the bridge cannot know what the
  device did while it was down): its value may repeat the last buffered one.
* A reload does not move or resize the buffer: a changed `buffer:` takes effect at the
  next restart (said in the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from bridge.buffer import BufferStore, Record, StoreError
from bridge.feature import Changes, Feature, Hub
from bridge.messages import Message
from bridge.model import BridgeConfig, Buffer
from bridge.payloads import iso_utc, json_doc
from bridge.reload import ReloadPlan
from bridge.spnode import SparkplugNode, changes
from bridge.state import DeviceState
from bridge.stats import BufferStats

__all__ = ["History", "history_payload"]

log = logging.getLogger("bridge.buffer")
T = TypeVar("T")

RECENT = 30.0  # seconds of live changes kept in memory, for a connection that drops
RECENT_MAX = 100_000  # at most this many of them
IN_FLIGHT = 256  # history messages waiting for their PUBACK at most
BATCH = 500  # records read from the store at a time
TICK = 0.05  # seconds between two replay steps
SPARKPLUG_WAIT = 10.0  # seconds a replay waits for the Sparkplug births


def _finite(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def history_payload(at: float, body: Mapping[str, Any]) -> bytes:
    """One buffered change: its time, the values that changed and/or the availability."""
    doc: dict[str, object] = {"time": iso_utc(at)}
    values = body.get("values")
    if values:
        doc["values"] = {k: _finite(v) for k, v in values.items()}
    if "available" in body:
        doc["available"] = body["available"]
    return json_doc(doc)


class History(Feature):
    """See the module's docstring."""

    name = "history"
    clock = staticmethod(time.time)  # when a change was queued (tests set their own)

    def __init__(self, hub: Hub, *, sparkplug: SparkplugNode | None = None) -> None:
        super().__init__(hub)
        self.settings: Buffer | None = hub.config.buffer
        self.sparkplug = sparkplug
        self.stats = BufferStats()
        self.store: BufferStore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._collected: list[tuple[str, float, dict[str, Any]]] = []
        self._acks: list[int] = []
        self._acked: set[int] = set()  # acknowledged, deleted at the next flush
        self._in_flight: set[int] = set()
        self._seen: dict[str, dict[str, object]] = {}  # per device: values last seen
        self._available: dict[str, bool | None] = {}
        self._recent: deque[tuple[float, str, float, dict[str, Any]]] = deque(maxlen=RECENT_MAX)
        self._tasks: list[asyncio.Task[None]] = []
        self._replay = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._warned = False  # the drops of this outage were logged

    # -- life ------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        if s is None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")
        store = BufferStore(Path(s.path), s.max_bytes, s.max_age, stats=self.stats)
        try:
            await self._run(store.open)
        except StoreError as exc:
            log.error("buffer: cannot open %s (%s): running without store and forward", s.path, exc)
            return
        self.store = store
        log.info(
            "buffer: %s (%d records waiting, at most %d bytes and %gs old)",
            s.path,
            self.stats.records,
            s.max_bytes,
            s.max_age,
        )
        self._tasks = [
            asyncio.create_task(self._flusher(s.flush_interval), name="buffer-flush"),
            asyncio.create_task(self._replayer(s.replay_rate), name="buffer-replay"),
        ]
        if self.hub.mqtt_connected:
            self._replay.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        store = self.store
        if store is not None:
            self.store = None
            with contextlib.suppress(StoreError):
                await self._run(self._write, self._take(), store)
                await self._run(store.close)
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    async def _run(self, fn: Any, *args: Any) -> Any:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def reload(self, old: BridgeConfig, new: BridgeConfig, plan: ReloadPlan) -> Changes:
        if old.buffer != new.buffer:
            log.warning("buffer: a changed buffer section takes effect at the next restart")
        return Changes()

    # -- what changed ------------------------------------------------------

    def device_changed(self, state: DeviceState, messages: Sequence[Message]) -> None:
        if self.store is None:
            return
        name = state.device.name
        body: dict[str, Any] = {}
        changed = changes(self._seen.get(name, {}), state.published)
        if changed:
            body["values"] = changed
            self._seen[name] = dict(state.published)
        if state.available is not None and state.available != self._available.get(name):
            body["available"] = state.available
            self._available[name] = state.available
        if not body:
            return
        now = self.clock()
        at = state.last_seen if changed and state.last_seen is not None else now
        if self.hub.mqtt_connected:
            recent = self._recent
            recent.append((now, name, at, body))
            while recent and recent[0][0] < now - RECENT:
                recent.popleft()
        else:
            self._collected.append((name, at, body))

    def disconnected(self, since: float | None) -> None:
        """The link dropped; what it queued from `since` on may not have arrived."""
        if self.store is not None and since is not None:
            kept = [(n, at, b) for queued, n, at, b in self._recent if queued >= since]
            self._collected[:0] = kept
        self._recent.clear()

    def connected(self) -> None:
        if self.store is not None:
            self._replay.set()  # runs after the root's full state is queued

    # -- the store ---------------------------------------------------------------

    def _take(self) -> tuple[list[tuple[str, float, dict[str, Any]]], list[int]]:
        collected, self._collected = self._collected, []
        acks, self._acks = self._acks, []
        return collected, acks

    def _write(
        self,
        work: tuple[list[tuple[str, float, dict[str, Any]]], list[int]],
        store: BufferStore,
    ) -> int:
        """On the worker thread: one transaction."""
        collected, acks = work
        for device, at, body in collected:
            store.append(device, at, body)
        for record_id in acks:
            store.ack(record_id)
        return store.flush()

    async def _flush(self) -> None:
        store = self.store
        if store is None:
            return
        async with self._flush_lock:
            work = self._take()
            try:
                evicted = await self._run(self._write, work, store)
            except StoreError as exc:
                self.hub.throttle.log(
                    logging.ERROR,
                    "buffer write",
                    "buffer writes failed",
                    "buffer: cannot write %s: %s (kept in memory, retried)",
                    store.path,
                    exc,
                )
                return
            self._acked.difference_update(work[1])
        if evicted and not self._warned:
            self._warned = True
            assert self.settings is not None
            log.warning(
                "buffer: full (max_bytes %d, max_age %gs): dropping the oldest changes "
                "(%d so far; counted in health and metrics as buffer.dropped)",
                self.settings.max_bytes,
                self.settings.max_age,
                self.stats.dropped,
            )
        if self.stats.records == 0:
            self._warned = False

    async def _flusher(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self._collected or self._acks:
                await self._flush()

    # -- replay ------------------------------------------------------------

    async def _replayer(self, rate: float) -> None:
        while True:
            await self._replay.wait()
            self._replay.clear()
            await self._flush()  # what was collected, readable now
            await self._sparkplug_ready()
            await self._replay_all(rate)

    async def _sparkplug_ready(self) -> None:
        """With the Sparkplug node on, give its connection up to SPARKPLUG_WAIT to send
        births, so that history goes out there too (it reconnects on its own)."""
        sp = self.sparkplug
        if sp is None or sp.settings is None:
            return
        loop = asyncio.get_running_loop()
        end = loop.time() + SPARKPLUG_WAIT
        while not sp.ready and loop.time() < end and self.hub.mqtt_connected:  # noqa: ASYNC110
            await asyncio.sleep(0.1)

    async def _replay_all(self, rate: float) -> None:
        store = self.store
        assert store is not None
        loop = asyncio.get_running_loop()
        cursor = 0
        budget = 0.0
        last = loop.time()
        sent = 0
        while self.hub.mqtt_connected:
            batch: list[Record] = await self._run(store.oldest, BATCH, cursor)
            if not batch:
                break
            for record in batch:
                cursor = record.id
                if record.id in self._acked or record.id in self._in_flight:
                    continue
                while True:
                    now = loop.time()
                    budget = min(rate * TICK * 2, budget + (now - last) * rate)
                    last = now
                    if budget >= 1 and len(self._in_flight) < IN_FLIGHT:
                        break
                    await asyncio.sleep(TICK)
                    if not self.hub.mqtt_connected:
                        return
                budget -= 1
                self._send(record)
                sent += 1
        if sent:
            log.info("buffer: %d buffered changes replayed", sent)

    def _send(self, record: Record) -> None:
        self._in_flight.add(record.id)

        def done(ok: bool, record_id: int = record.id) -> None:
            self._in_flight.discard(record_id)
            if ok:
                self._acked.add(record_id)
                self._acks.append(record_id)

        self.hub.publish_acked(
            self.hub.topics.history(record.device),
            history_payload(record.time, record.values),
            on_done=done,
        )
        values = record.values.get("values")
        if self.sparkplug is not None and values:
            self.sparkplug.history(record.device, [(int(record.time * 1000), values)])
