"""The Sparkplug B edge node, wired as a feature (`sparkplug:`; off unless configured).

`bridge.sparkplug.EdgeNode` (pure) decides what to publish and `bridge.sparkplug_pb`
encodes it; this module carries it to and from the broker.

* A connection of its own (client id `<mqtt.client_id>-sparkplug`, the rest of `mqtt:`
  as the bridge's): its will is the NDEATH with this connection's `bdSeq`, which MQTT
  cannot give the bridge's own connection (its will says `offline` on the bridge
  state). The JSON topics, Home Assistant discovery and the commands on `set` go on
  unchanged on the bridge's connection.
* Every Sparkplug message belongs to one connection (`MqttLink.publish(session=True)`):
  one cut off by a disconnect is never sent on the next, which starts with births.
* Each connect: NBIRTH, then a DBIRTH for every device that is online. A poll that
  changed what a device publishes: DDATA with only the metrics that changed (against
  what this node last sent for it; deadbands apply as on the JSON topics); DDEATH when
  it goes offline, DBIRTH when it is back. The count of devices online goes out as
  NDATA.
* NCMD `Node Control/Rebirth` true: NBIRTH and the DBIRTHs again. DCMD: the metrics are
  turned into a `set` command (`{"point": value, ...}` on `<base>/<device>/set`) and run
  through the bridge's validated write path (`Hub.command`): range and type checks,
  one command at a time per device, read-back. The read-back shows as DDATA; the
  answer goes to `<base>/<device>/set/result`, a refusal is logged and counted with
  the other commands. A DCMD naming an unknown device or metric is refused here,
  logged, and writes nothing.
* `primary_host_id`: the node subscribes to `spBv1.0/STATE/<host>` and publishes only
  while that host says online; when it comes back, births. When it goes offline: an
  NDEATH, then the connection is closed and opened again (a new `bdSeq`), silent until
  the host is online again.
* `bdSeq` across restarts (`BdSeqFile`): before each CONNECT the bdSeq its will
  carries is written to `sparkplug.state_file` (atomically, synced; only when it
  changed), and a new process starts from the one after it, so that a host never
  sees a bdSeq again that the broker may still deliver a will for. A file that
  cannot be read or written is said once in the log; the node runs on, counting
  from memory (from 0 when nothing could be read).
* Shutdown: an NDEATH before the connection closes. A kill -9 leaves that to the will.
  With `mqtt.protocol: 5` the DISCONNECT says "Disconnect with will message" (3.0
  asks it), so the broker publishes the will too: a second NDEATH with the same
  bdSeq, which hosts ignore.
* A reload that changes `sparkplug:`, `mqtt:` or the devices closes the node's
  connection (NDEATH) and opens a new one with births for the new configuration.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence

from bridge import __version__
from bridge.feature import Changes, Feature, Hub
from bridge.messages import Incoming, Message, Subscription, Will
from bridge.model import BridgeConfig, Sparkplug
from bridge.mqtt import MqttLink
from bridge.payloads import Value
from bridge.process import cancel
from bridge.reload import ReloadPlan
from bridge.sparkplug import (
    DeviceView,
    EdgeNode,
    Kind,
    Refused,
    Sent,
    SparkplugTopics,
    WriteRequest,
    bd_seq_text,
    next_bd_seq,
    parse_bd_seq,
)
from bridge.sparkplug import Value as MetricValue
from bridge.sparkplug_pb import PayloadError, decode, encode
from bridge.state import DeviceState

__all__ = ["CLIENT_SUFFIX", "BdSeqFile", "SparkplugNode"]

log = logging.getLogger("bridge.sparkplug")

CLIENT_SUFFIX = "-sparkplug"  # the edge node's connection: the bridge's client id + this
CLOSE_FLUSH = 1.0  # seconds an NDEATH may take to be acknowledged before a disconnect


def _now_ms() -> int:
    return int(time.time() * 1000)


_MISSING = object()


def _same(old: object, new: object) -> bool:
    if type(old) is not type(new):
        return False
    if isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new):
        return True
    return bool(old == new)


def changes(sent: Mapping[str, object], now: Mapping[str, object]) -> dict[str, object]:
    """The values of `now` that differ from what was `sent`."""
    return {k: v for k, v in now.items() if not _same(sent.get(k, _MISSING), v)}


class BdSeqFile:
    """The bdSeq of the edge node's latest MQTT CONNECT, in a small file that survives a
    restart, a kill -9 and a power cut (written to a temporary file, synced, renamed
    over the old one, the folder synced). Problems are logged once per path and
    never stop the node."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._saved: int | None = None  # what the file holds, as far as we know
        self._warned = False

    def load(self) -> int | None:
        """The bdSeq kept, or None (no file yet, or one that cannot be read)."""
        try:
            with open(self.path, encoding="ascii", errors="replace") as f:
                text = f.read(64)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._warn(f"cannot be read ({exc.strerror or exc}): starting from bdSeq 0")
            return None
        value = parse_bd_seq(text)
        if value is None:
            self._warn(f"holds no bdSeq ({text[:20]!r}): starting from bdSeq 0")
        self._saved = value
        return value

    def save(self, value: int) -> bool:
        """Keep `value`, durably, before the CONNECT that carries it. True when kept."""
        if value == self._saved:
            return True
        folder = os.path.dirname(self.path) or "."
        tmp = f"{self.path}.tmp"
        try:
            os.makedirs(folder, mode=0o750, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            try:
                os.write(fd, bd_seq_text(value).encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            self._warn(
                f"cannot be written ({exc.strerror or exc}): after a restart the node "
                "may use a bdSeq again; set sparkplug.state_file to a writable place"
            )
            return False
        self._saved = value
        return True

    def _warn(self, what: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("Sparkplug B: the bdSeq state file %s %s", self.path, what)


class SparkplugNode(Feature):
    """See the module's docstring."""

    name = "sparkplug"

    def __init__(self, hub: Hub, *, buffered: Callable[[], int] = lambda: 0) -> None:
        super().__init__(hub)
        self.settings: Sparkplug | None = hub.config.sparkplug
        self.node: EdgeNode | None = None
        self.link: MqttLink | None = None
        self._task: asyncio.Task[None] | None = None
        self._sent: dict[str, dict[str, object]] = {}  # per device: values as last sent
        self._node_sent: dict[str, MetricValue] = {}
        self.buffered = buffered  # records waiting in the store-and-forward buffer
        self._restart: bool = False  # a reload changes what the node is
        self._changing: asyncio.Task[None] | None = None
        self._stopping = False
        self.bd_seq = 0  # of the next connection (carried over when the node is rebuilt)
        self.state: BdSeqFile | None = None  # where the bdSeq survives a restart
        self.commands = 0  # NCMD and DCMD received
        self.refused = 0  # of which refused here (unknown device or metric, unreadable)

    # -- life ------------------------------------------------------------

    async def start(self) -> None:
        if self.settings is not None:
            self._keep_in(self.settings)
            self._open(self.settings)

    def _keep_in(self, settings: Sparkplug) -> None:
        """The state file of these settings. The first one read gives the bdSeq to start
        from; after that the count in memory is the newest (a file moved by a reload
        goes on from it)."""
        path = settings.state_file
        if path is None or (self.state is not None and self.state.path == path):
            return
        first = self.state is None
        self.state = BdSeqFile(path)
        if first:
            self.bd_seq = next_bd_seq(self.state.load())

    async def stop(self) -> None:
        self._stopping = True
        if self._changing is not None:
            await cancel(self._changing, 0.2, "sparkplug: reconnect")
        await self._close(flush=0.3)

    def _open(self, settings: Sparkplug) -> None:
        config = self.hub.config
        node = EdgeNode(
            SparkplugTopics(settings.group_id, settings.edge_node_id),
            config.devices,
            settings.primary_host_id,
            bd_seq=self.bd_seq,
        )
        self.node = node
        routes: dict[str, Callable[[Incoming], None]] = {}
        if settings.primary_host_id is not None:
            routes[SparkplugTopics.state(settings.primary_host_id)] = self._on_state
        mqtt = dataclasses.replace(config.mqtt, client_id=config.mqtt.client_id + CLIENT_SUFFIX)
        self.link = MqttLink(
            mqtt,
            self.hub.topics,
            on_connected=self._on_connected,
            on_message=self._on_command,
            subscriptions=[Subscription(f, retained=False) for f in node.topics.command_filters],
            routes=routes,
            will=self._will,
            announce=False,
            on_disconnected=self._on_disconnected,
        )
        self._task = asyncio.create_task(self.link.run(), name="sparkplug")
        log.info(
            "Sparkplug B: edge node %s/%s (client id %s)%s",
            settings.group_id,
            settings.edge_node_id,
            mqtt.client_id,
            ""
            if settings.primary_host_id is None
            else f", publishing while primary host {settings.primary_host_id} is online",
        )

    async def _close(self, *, flush: float) -> None:
        """NDEATH (when born), then the connection closes."""
        link, node = self.link, self.node
        if link is None or node is None:
            return
        if link.connected and node.born:
            self._send([Sent(node.topics.node(Kind.NDEATH), node.will().payload, qos=1)])
            node.born = False
            await link.flush(flush)
        await cancel(self._task, 0.5, "sparkplug: disconnect")
        self._task = None
        self.link = None

    def _will(self) -> Will:
        """The NDEATH for the CONNECT about to be sent; its bdSeq kept on disk first."""
        assert self.node is not None
        if self.state is not None:
            self.state.save(self.node.bd_seq)
        death = self.node.will()
        # on_close: on MQTT 5 a DISCONNECT asks for the will too, as Sparkplug 3.0 asks
        return Will(death.topic, encode(death.payload), qos=death.qos, on_close=True)

    def _on_disconnected(self, _since: float | None) -> None:
        if self.node is not None:
            self.node.on_disconnect()
            self.bd_seq = self.node.bd_seq

    # -- what the node is told -------------------------------------------------

    def _views(self) -> list[DeviceView]:
        return [
            DeviceView(name, bool(st.available), dict(st.published))
            for name, st in self.hub.state.devices.items()
        ]

    def _node_values(self) -> dict[str, MetricValue]:
        devices = self.hub.state.devices.values()
        return {
            "Node Info/Version": __version__,
            "Node Info/Devices": len(devices),
            "Node Info/Devices Online": sum(1 for st in devices if st.available),
            "Node Info/Buffered Records": self.buffered(),
        }

    def _send(self, messages: Sequence[Sent]) -> None:
        link, node = self.link, self.node
        if link is None or node is None:
            return
        for m in messages:
            link.publish(
                m.topic,
                encode(m.payload),
                retain=False,
                coalesce=False,
                qos=m.qos,
                session=True,
            )
            if m.topic == node.topics.node(Kind.NBIRTH):
                self._node_sent = {x.name: x.value for x in m.payload.metrics if x.name}
            elif m.device is not None and m.topic == node.topics.device(Kind.DBIRTH, m.device):
                st = self.hub.state.devices.get(m.device)
                self._sent[m.device] = {} if st is None else dict(st.published)

    def _births(self, messages: list[Sent] | None) -> None:
        if messages:
            log.info("Sparkplug B: births (bdSeq %d)", self.node.bd_seq if self.node else -1)
        self._send(messages or [])

    def _on_connected(self) -> None:
        if self.node is None:
            return
        self._births(self.node.on_connect(_now_ms(), self._node_values(), self._views()))
        if not self.node.publishing:
            log.info(
                "Sparkplug B: connected; waiting for primary host %s to be online",
                self.node.primary_host_id,
            )

    def device_changed(self, state: DeviceState, messages: Sequence[Message]) -> None:
        node = self.node
        if node is None or self.link is None or not node.publishing:
            return
        name = state.device.name
        view = DeviceView(name, bool(state.available), dict(state.published))
        now = _now_ms()
        changed = changes(self._sent.get(name, {}), view.values) if node.is_born(name) else {}
        sent = node.device_changed(view, changed, now)
        self._send(sent)
        if any(m.topic == node.topics.device(Kind.DDATA, name) for m in sent):
            self._sent.setdefault(name, {}).update(changed)
        online = self._node_values()["Node Info/Devices Online"]
        if self._node_sent.get("Node Info/Devices Online") != online:
            out = node.node_data(now, {"Node Info/Devices Online": online})
            if out:
                self._node_sent["Node Info/Devices Online"] = online
                self._send(out)

    @property
    def ready(self) -> bool:
        """Whether births went out on a connection that is up (history can follow)."""
        node, link = self.node, self.link
        return node is not None and link is not None and link.connected and node.born

    def history(self, device: str, records: Sequence[tuple[int, Mapping[str, object]]]) -> bool:
        """Buffered changes of `device` as one DDATA (each metric historical, with its
        original time in ms). False when they cannot go out now (the node is not
        publishing, or the device is not born)."""
        node = self.node
        if node is None or self.link is None:
            return False
        sent = node.history(device, records)
        if sent is None:
            return False
        self._send([sent])
        return True

    # -- the primary host --------------------------------------------------------

    def _on_state(self, message: Incoming) -> None:
        node, settings = self.node, self.settings
        if node is None or settings is None or settings.primary_host_id is None:
            return
        was = node.publishing
        out = node.on_host_state(
            settings.primary_host_id,
            message.payload,
            _now_ms(),
            self._node_values(),
            self._views(),
        )
        if out is None:
            return
        if node.publishing and not was:
            log.info("Sparkplug B: primary host %s is online", settings.primary_host_id)
            self._births(out)
            return
        self._send(out)
        if was and not node.publishing:
            log.warning(
                "Sparkplug B: primary host %s went offline: NDEATH, reconnecting",
                settings.primary_host_id,
            )
            self._reconnect()

    def _reconnect(self) -> None:
        if self._stopping or (self._changing is not None and not self._changing.done()):
            return
        self._changing = asyncio.create_task(self._reopen(), name="sparkplug-reconnect")

    async def _reopen(self) -> None:
        link = self.link
        if link is not None:
            await link.flush(CLOSE_FLUSH)  # the NDEATH out first
        await cancel(self._task, 1.0, "sparkplug: disconnect")
        self._task = self.link = None
        self.node = None
        if self.settings is not None and not self._stopping:
            self._open(self.settings)

    # -- commands ----------------------------------------------------------

    async def _on_command(self, message: Incoming) -> None:
        node = self.node
        if node is None:
            return
        self.commands += 1
        if message.retained:
            self._refuse(message.topic, "a retained command (commands must be live): ignored")
            return
        try:
            payload = decode(message.payload)
        except PayloadError as exc:
            self._refuse(message.topic, str(exc))
            return
        result = node.command(message.topic, payload)
        if result is None:
            return
        if result is True:
            log.info("Sparkplug B: rebirth asked by %s", message.topic)
            self._births(node.rebirth(_now_ms(), self._node_values(), self._views()))
            return
        if isinstance(result, Refused):
            self._refuse(result.topic, result.reason)
            return
        if isinstance(result, WriteRequest):
            await self._write(message.topic, result)

    async def _write(self, topic: str, request: WriteRequest) -> None:
        body: dict[str, Value] = {}
        for point, value in request.values:
            if value is None or isinstance(value, bytes):
                self._refuse(topic, f"DCMD for {request.device}: {point} has no usable value")
                return
            body[point] = value
        await self.hub.command(
            Incoming(self.hub.topics.set(request.device), json.dumps(body).encode())
        )

    def _refuse(self, topic: str, reason: str) -> None:
        self.refused += 1
        self.hub.throttle.log(
            logging.WARNING,
            ("sparkplug refused", topic),
            f"Sparkplug commands refused on {topic}",
            "Sparkplug B: %s: %s; nothing written",
            topic,
            reason,
        )

    # -- reload ------------------------------------------------------------

    def reload(self, old: BridgeConfig, new: BridgeConfig, plan: ReloadPlan) -> Changes:
        self._restart = (
            old.sparkplug != new.sparkplug or old.mqtt != new.mqtt or old.devices != new.devices
        )
        return Changes()

    def reloaded(self) -> None:
        if not self._restart:
            return
        self._restart = False
        self.settings = self.hub.config.sparkplug
        if self.settings is not None:
            self._keep_in(self.settings)
        if self._stopping:
            return
        self._changing = asyncio.create_task(self._rebuild(), name="sparkplug-reload")

    async def _rebuild(self) -> None:
        await self._close(flush=CLOSE_FLUSH)
        self.node = None
        self._sent.clear()
        if self.settings is not None and not self._stopping:
            self._open(self.settings)
