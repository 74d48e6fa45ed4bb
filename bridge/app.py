"""The composition root: wires config, plan, sessions, scheduler, state, MQTT and the
optional features (`bridge.feature`; Home Assistant discovery is one).

It owns start-up, shutdown and reload order:
start:    compile the plan -> open Modbus sessions -> start the MQTT link -> start the
          features -> start polling
shutdown: stop polling -> drain the writes -> the features' last words, every device and
          the bridge `offline` -> disconnect MQTT -> stop the features -> close Modbus
          sockets, all under one hard deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from bridge.command_handler import CommandHandler
from bridge.errors import ConfigError, ModbusRequestError
from bridge.feature import Changes, Feature
from bridge.figures import (
    BufferFigures,
    DeviceFigures,
    Figures,
    HostFigures,
    SparkplugFigures,
    buffer_figures,
    config_figures,
    device_polls,
    host_figures,
    mqtt_figures,
    report_figures,
)
from bridge.health import DEVICES_PER_STEP, build_health, health_payload, rss_bytes
from bridge.history import History
from bridge.homeassistant import HomeAssistant
from bridge.inventory import Inventory
from bridge.logs import OnlineLog, Throttle
from bridge.messages import Incoming, Message, Subscription
from bridge.model import BridgeConfig, Device, Metrics
from bridge.mqtt import MqttLink
from bridge.payloads import OFFLINE, Value
from bridge.planner import ReadBlock, plan_device
from bridge.process import bounded, cancel
from bridge.proxy import Proxies
from bridge.reload import ReloadPlan, active_hosts, dropped_points, plan_reload
from bridge.scheduler import Scheduler, group_blocks
from bridge.session import HostSession
from bridge.shard import layout_gate
from bridge.spnode import SparkplugNode
from bridge.state import StateCache
from bridge.stats import ReloadStats, ReportStats, SessionStats
from bridge.sunspec import Chain, with_chains
from bridge.sunspec_io import SunSpecFinder
from bridge.systemd import Systemd
from bridge.topics import Topics, topics_of

if TYPE_CHECKING:
    from bridge.metrics import MetricsServer

log = logging.getLogger("bridge")

SHUTDOWN_DEADLINE = 4.0  # seconds; SIGTERM to exit must stay under 5 s
LAYOUT_WAIT = 3.0  # seconds polling waits at start for the shard layout check (first connect)
RELOAD_READ_TIMEOUT = 30.0  # seconds a reload may take to read and check the file
# Seconds after start (or a reload) the long-lived objects are frozen at the latest, when
# some poll group has not been through a cycle by then.
FREEZE_WAIT = 120.0
RELOAD_DRAIN = 1.0  # seconds a command in flight for a device a reload changes may finish

# Reads the configuration file again (and picks this process's share of it); raises
# ConfigError listing every problem. Called in a worker thread.
Loader = Callable[[], BridgeConfig]


def _metrics_server(settings: Metrics, figures: Callable[[], Figures]) -> MetricsServer:
    # Imported here: prometheus-client loads only when metrics are switched on.
    from bridge.metrics import MetricsServer  # noqa: PLC0415

    return MetricsServer(settings, figures)


def compile_plan(config: BridgeConfig) -> dict[str, tuple[ReadBlock, ...]]:
    """The read plan of every device, compiled once at start."""
    return {d.name: plan_device(d) for d in config.devices}


class Bridge:
    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.topics = topics_of(config)
        self.plan = compile_plan(config)
        # One per host with devices or a proxy (reload.active_hosts).
        self.sessions = {name: self._make_session(config, name) for name in active_hosts(config)}
        self.state = self._make_state(config, self.topics)
        # Optional features (Home Assistant discovery, ...): each one idle while off.
        self.features: list[Feature] = self._make_features()
        self.link = self._make_link(config, self.topics)
        # MQTT set/get commands (bridge.command_handler); drained at shutdown (drain_writes).
        self.commands = CommandHandler(
            config,
            self.topics,
            self.sessions,
            self.state,
            publish=self.link.publish,
            on_read=self._on_read,
        )
        self.scheduler = Scheduler(
            group_blocks(config.devices, self.plan, _together(config)),
            self.sessions,
            on_poll=self._on_poll,
        )
        # Prometheus metrics, an optional feature: rendered from figures() at each scrape.
        self.metrics = self._make_metrics(config)
        # Modbus TCP proxies on the hosts' sessions (`proxy:` on a host).
        self.proxies = Proxies(config, self.sessions, self.commands.reread)
        # SunSpec devices: the configuration as read (`declared`); the running one has
        # their points from the chains read (`sunspec.chains`).
        self.declared = config
        self.sunspec = SunSpecFinder(self.sessions.get, self.sunspec_found)
        self._link_task: asyncio.Task[None] | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._freeze_task: asyncio.Task[None] | None = None  # `_freeze_later`
        self._reload_task: asyncio.Task[None] | None = None
        self._reconfiguring = asyncio.Lock()  # a reload applies; shutdown waits for it
        self._stopping = False
        self.reloads = ReloadStats()
        self.report = ReportStats()  # how the last health report held the loop
        self._retired: dict[str, SessionStats] = {}  # counters of hosts a reload closed
        self._fatal = asyncio.Event()
        self.failed = False  # a task that must not end did: exit non-zero
        self.refused: str | None = None  # why the bridge must not run here: exit 2
        self._online_log = OnlineLog(log.log)  # devices going offline and back, once each
        self._throttle = Throttle(log)
        self.started_at = time.time()

    # -- building the parts (at start; a reload builds again what changed) --

    @staticmethod
    def _make_session(
        config: BridgeConfig, host: str, stats: SessionStats | None = None
    ) -> HostSession:
        return HostSession(config.host(host), units=_units(config, host), stats=stats)

    @staticmethod
    def _make_state(config: BridgeConfig, topics: Topics) -> StateCache:
        m = config.mqtt
        return StateCache(config.devices, topics, output=m.output, retain=m.retain)

    def _make_features(self) -> list[Feature]:
        """Every kind of optional feature, in the order they publish on connect."""
        sparkplug = SparkplugNode(self)
        history = History(self, sparkplug=sparkplug)  # after the Sparkplug births
        sparkplug.buffered = lambda: history.stats.records
        return [HomeAssistant(self), Inventory(self), Systemd(self), sparkplug, history]

    def _make_link(self, config: BridgeConfig, topics: Topics) -> MqttLink:
        routes: dict[str, Callable[[Incoming], None]] = {}
        for feature in self.features:
            routes.update(feature.routes())
        return MqttLink(
            config.mqtt,
            topics,
            on_connected=self.republish,
            on_message=self.command,
            on_overload=self._on_overload,
            # Commands must be live: the broker is asked not to replay retained ones.
            subscriptions=[Subscription(f, retained=False) for f in topics.command_filters],
            routes=routes,  # the features' (Home Assistant: its status, our old discovery)
            gate=layout_gate(config, topics),  # no other shard layout under the base
            on_gate_closed=self._refuse_to_run,
            on_disconnected=self._disconnected,
        )

    def _make_metrics(self, config: BridgeConfig) -> MetricsServer | None:
        return None if config.metrics is None else _metrics_server(config.metrics, self.figures)

    # -- wiring ----------------------------------------------------------

    @property
    def mqtt_connected(self) -> bool:
        return self.link.connected

    @property
    def throttle(self) -> Throttle:
        return self._throttle

    def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        self.link.publish(topic, payload, retain=retain)

    def send(self, messages: Iterable[Message]) -> None:
        for m in messages:
            self.link.publish(m.topic, m.payload, retain=m.retain)

    def publish_acked(self, topic: str, payload: bytes, on_done: Callable[[bool], None]) -> None:
        self.link.publish(
            topic, payload, retain=False, coalesce=False, qos=1, on_done=on_done, session=True
        )

    def _disconnected(self, since: float | None) -> None:
        for feature in self.features:
            feature.disconnected(since)

    def republish(self) -> None:
        """After every (re)connect, and when a feature asks (Home Assistant came online):
        what each feature owns, then all retained state again (the link dropped it
        offline)."""
        for feature in self.features:
            feature.connected()
        self.send(self.state.full())

    def _on_read(
        self, device: Device, values: dict[str, Value], error: ModbusRequestError | None
    ) -> None:
        """A read outside the polls (a write's read-back, a `get`): the scheduler's
        memory of unchanged registers no longer matches the state."""
        self.scheduler.forget(device.name)
        self._on_poll(device, values, error)

    def _on_poll(
        self, device: Device, values: dict[str, Value], error: ModbusRequestError | None
    ) -> None:
        messages: list[Message] = []
        if error is None:
            # Availability first, so a subscriber sees `online` before the values.
            messages += self.state.set_available(device.name, True)
            self._online_log.online(device)
        else:
            messages += self.state.set_available(device.name, False)
            self._online_log.offline(device, error)
        if values or error is None:
            # A poll whose registers did not change brings no values, yet it is a read:
            # `last_seen` moves and a due heartbeat goes out.
            messages += self.state.update(device.name, values, time.time())
        if messages:
            self.send(messages)
            st = self.state.devices[device.name]
            for feature in self.features:
                feature.device_changed(st, messages)

    def _on_overload(self, message: Incoming) -> None:
        self.commands.refuse_overloaded(message)

    async def command(self, message: Incoming) -> None:
        """A message on a command topic (or a feature's command): the write path."""
        await self.commands.handle(message)

    async def drain_writes(self, timeout: float) -> None:
        """Shutdown: refuse new commands; let running ones finish for up to `timeout`
        seconds, then cancel them. Every command gets its result queued on the link
        (flush the link afterwards to deliver them)."""
        await self.commands.drain(timeout)

    # -- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        self._link_task = self._watch(asyncio.create_task(self.link.run(), name="mqtt"))
        if not await self._layout_checked():
            return  # another shard layout runs there: no session, no poll (exit 2)
        for session in self.sessions.values():
            await session.start()
        await self.proxies.start()
        for feature in self.features:
            await feature.start()
        self.scheduler.start()
        self.sunspec.start(self.config.devices)
        self._start_health()
        self._start_metrics()
        _log_started(self.config, self.topics, len(self.sessions), self.plan)
        gc.collect()  # what start-up built lives as long as the process: frozen
        gc.freeze()
        self._freeze_task = _freeze_later(self.scheduler, None, full=False)

    def _start_health(self) -> None:
        self._health_task = self._watch(asyncio.create_task(self._health_loop(), name="health"))

    def _start_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics = _open_metrics(self.metrics)

    async def _layout_checked(self) -> bool:
        """Wait (at most LAYOUT_WAIT) for the MQTT link's first connect attempt, which
        checks that no other shard layout runs under the base topic, so a process that
        must not run opens no Modbus socket (a gateway that takes one connection would
        drop the other layout's). False when it must not run; True, too, when the
        broker is not reachable: the check then comes at the first connect. With the
        broker there, polling starts once the link is subscribed: the first values are
        published, not buffered as changes made while the broker was away."""
        waits = {asyncio.ensure_future(e.wait()) for e in (self.link.first_attempt, self._fatal)}
        await asyncio.wait(waits, timeout=LAYOUT_WAIT, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        return self.refused is None

    def _refuse_to_run(self, reason: str) -> None:
        """Another shard layout runs under the base topic: stop (exit 2) before polling
        or answering anything. The link already set this process's bridge state
        `offline` and never connected for the rest, so the devices' states, which the
        other layout publishes, are left alone at shutdown."""
        log.error("%s", reason)
        self.refused = reason
        self._fatal.set()

    def _watch(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        """A task that must run until shutdown: if it ends otherwise, stop the bridge
        with `failed` set (exit 1), so a supervisor restarts it instead of it
        running on half-dead."""

        def done(t: asyncio.Task[None]) -> None:
            if t.cancelled():
                return
            log.error("%s ended unexpectedly; stopping", t.get_name(), exc_info=t.exception())
            self.failed = True
            self._fatal.set()

        task.add_done_callback(done)
        return task

    async def run(
        self,
        stop: asyncio.Event,
        *,
        reload: asyncio.Event | None = None,
        load: Loader | None = None,
    ) -> None:
        """Run until `stop` is set. Each time `reload` is set (SIGHUP), `load` reads the
        configuration again and the difference is applied (`apply`)."""
        await self.start()
        if reload is not None and load is not None:
            self._reload_task = self._watch(
                asyncio.create_task(self._reload_loop(reload, load), name="reload")
            )
        waits = {asyncio.create_task(stop.wait()), asyncio.create_task(self._fatal.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            await self.shutdown()

    async def shutdown(self, deadline: float = SHUTDOWN_DEADLINE) -> None:
        """Stop in order; every step is bounded so the whole stays under `deadline`."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline

        def left(share: float) -> float:
            return max(0.05, min(share, end - loop.time()))

        # A reload being applied may finish (every step of it is bounded), then none starts.
        self._stopping = True
        if self._reconfiguring.locked():
            await bounded(self._reconfiguring.acquire(), left(1.5), "shutdown: wait for the reload")
        await cancel(self._reload_task, left(0.5), "shutdown: stop reloading")
        await bounded(self.sunspec.stop(), left(0.5), "shutdown: SunSpec discovery")
        for task in (self._health_task, self._freeze_task):
            if task is not None:
                task.cancel()
        await bounded(self.scheduler.stop(), left(1.0), "shutdown: stop polling")
        # In-flight writes finish (or are cancelled) and are answered before offline.
        await bounded(self.drain_writes(left(1.0)), left(1.2), "shutdown: drain writes")
        if self.link.connected:
            for feature in self.features:
                feature.stopping()
            self.send(self.state.offline_all())
            self.link.publish(self.topics.bridge_state, OFFLINE.encode(), retain=True)
            await bounded(self.link.flush(left(2.0)), left(2.0), "shutdown: MQTT flush")
        await cancel(self._link_task, left(1.0), "shutdown: MQTT disconnect")
        for feature in self.features:
            await bounded(feature.stop(), left(0.5), f"shutdown: {feature.name}")
        await bounded(self.proxies.stop(), left(1.0), "shutdown: proxies")
        if self.sessions:
            await bounded(_stop_all(self.sessions.values()), left(1.0), "shutdown: Modbus close")
        if self.metrics is not None:
            await bounded(self.metrics.stop(), left(1.0), "shutdown: metrics")
        log.info("bridge stopped")

    # -- reload ------------------------------------------------------------

    async def _reload_loop(self, requests: asyncio.Event, load: Loader) -> None:
        """Each request: read the file again; an invalid one changes nothing, a valid one
        is applied."""
        while True:
            await requests.wait()
            requests.clear()
            config = await read_again(load)
            if config is None:
                self.reloads.invalid += 1
                continue
            # SunSpec devices keep the chains read, unless a device changed or went.
            await bounded(self.sunspec.reloading(self.declared, config), 1.5, "reload: SunSpec")
            self.declared = config
            running = with_chains(config, self.sunspec.chains)
            await self.apply(plan_reload(self.config, running), running)
            self.sunspec.start(running.devices)

    async def sunspec_found(self, name: str, chain: Chain) -> None:
        """A chain read (`sunspec_io`) that maps to other points than the device runs:
        the device is changed as a reload changes it (its plan alone compiled). Shielded:
        a reload that stops the device's watcher must not cut the change short."""
        config = self.sunspec.swap(self.declared, self.config, name, chain)
        if config is not None:
            swap = self.apply(plan_reload(self.config, config), config, why=f"SunSpec {name}")
            await asyncio.shield(swap)

    async def apply(self, plan: ReloadPlan, config: BridgeConfig, *, why: str = "reload") -> None:
        """Run `config` from now on, changing only what `plan` names (`plan_reload` of
        the running configuration and `config`).

        Order: commands and polls of the devices that change or go end first (each
        command answered), then the sessions of hosts that go or change close; a
        changed broker connection is closed before the new one opens (one at a time);
        then the new configuration's state, discovery and commands take over, new
        sessions open and polling starts. Every step that waits is bounded, as at
        shutdown; a host that is kept is never touched, so its socket stays open.
        """
        async with self._reconfiguring:
            if self._stopping:
                return
            log.info("%s: %s", why, plan.summary())
            await self._apply(plan, config)
            gc.unfreeze()  # what the old configuration left may be frozen: collectable
            self._freeze_task = _freeze_later(self.scheduler, self._freeze_task, full=True)
            if why == "reload":  # not a SunSpec device's points swapped in
                self.reloads.ok += 1
                self.reloads.last = time.time()
            log.info(
                "%s done: %d hosts, %d devices",
                why,
                len(self.sessions),
                len(self.config.devices),
            )

    async def _apply(self, plan: ReloadPlan, config: BridgeConfig) -> None:
        stopped = plan.stopped
        # 1. Commands and polls of the devices that change or go.
        self.commands.hold(stopped)
        why = "the device was changed or removed by a configuration reload"
        await bounded(
            self.commands.settle(stopped, RELOAD_DRAIN, why),
            RELOAD_DRAIN + 1.0,
            "reload: commands in flight",
        )
        # 2. Their poll groups.
        await bounded(self.scheduler.remove(stopped), 1.0, "reload: stop polling")
        # 3. Hosts that go or change: their sessions close (queued requests fail).
        closing = {n: self.sessions.pop(n) for n in plan.hosts_removed + plan.hosts_reopened}
        for name, session in closing.items():
            self._retired[name] = session.stats  # counters go on if the host comes back
        if closing:
            await bounded(_stop_all(closing.values()), 1.5, "reload: close hosts")
        # 4. A changed broker connection closes before the new one opens; what the
        #    features leave behind goes out at the old place first.
        topics = topics_of(config)
        changes = _merged(f.reload(self.config, config, plan) for f in self.features)
        if plan.mqtt_changed:
            await self._close_link(moved=plan.mqtt_moved, leaving=changes.leaving)
        # 5. The new configuration takes over (no await until the messages are queued).
        old_devices = {d.name: d for d in self.config.devices}
        messages = self.state.offline(plan.devices_removed)
        for name in plan.devices_changed:
            new = next(d for d in config.devices if d.name == name)
            messages += dropped_points(old_devices[name], new, topics, config.mqtt.output)
        state = self._make_state(config, topics)
        for name, st in self.state.devices.items():
            if name in state.devices and name not in plan.devices_changed:
                state.devices[name] = st  # values, availability and last_seen carry over
        self.plan = {
            d.name: self.plan[d.name] if old_devices.get(d.name) == d else plan_device(d)
            for d in config.devices
        }
        self.config, self.topics, self.state = config, topics, state
        for feature in self.features:
            feature.reloaded()
        self.commands.reconfigure(config, topics, state)
        for name in plan.devices_removed:
            self._online_log.forget(name)
        if plan.mqtt_changed:
            self._open_link()  # on connect: the features' messages and the full state
            if not plan.mqtt_moved:  # same broker and topics: tidy up there
                self.send(messages + changes.leaving)
        else:
            self.send(messages + changes.leaving + changes.arriving)
        # 6. New sessions, then polling.
        for name in plan.hosts_added + plan.hosts_reopened:
            # A reopened host's counters carry on.
            session = self._make_session(config, name, self._retired.pop(name, None))
            self.sessions[name] = session
            await session.start()
        for name in plan.hosts_kept:
            self.sessions[name].set_units(_units(config, name))
        # A proxy restarts only when its own settings changed.
        changed = plan.proxies_changed
        await bounded(self.proxies.reconfigure(config, changed), 2.0, "reload: proxies")
        started = set(plan.started)
        self.scheduler.add(
            group_blocks(
                [d for d in config.devices if d.name in started], self.plan, _together(config)
            )
        )
        self.commands.release(stopped)
        # 7. The rest.
        if plan.metrics_changed:
            if self.metrics is not None:
                await bounded(self.metrics.stop(), 1.5, "reload: metrics")
            self.metrics = self._make_metrics(config)
            self._start_metrics()
        if plan.health_changed and self._health_task is not None:
            await cancel(self._health_task, 0.5, "reload: health")
            self._start_health()

    async def _close_link(self, *, moved: bool, leaving: list[Message]) -> None:
        """End the broker connection before a new one opens. When the topics move (another
        broker or base topic), what the bridge leaves behind there says `offline` first."""
        link = self.link
        if link.connected:
            if moved:
                self.send(self.state.offline_all())
                self.send(leaving)
                link.publish(self.topics.bridge_state, OFFLINE.encode(), retain=True)
            await bounded(link.flush(2.0), 2.5, "reload: MQTT flush")
        await cancel(self._link_task, 1.0, "reload: MQTT disconnect")
        self._link_task = None

    def _open_link(self) -> None:
        old = self.link
        self.link = self._make_link(self.config, self.topics)
        self.link.stats = old.stats  # the counters go on across the reconnect
        self.commands.publish = self.link.publish
        self._link_task = self._watch(asyncio.create_task(self.link.run(), name="mqtt"))
        m = self.config.mqtt
        log.info("MQTT: reconnecting to %s:%d, client id %s", m.host, m.port, m.client_id)

    # -- health ------------------------------------------------------------

    def figures(self) -> Figures:
        """One snapshot of every counter (bridge.figures): what the health report and
        the metrics show. Called on the event loop."""
        return _run_all(_figure_steps(self))

    def health(self) -> dict[str, Any]:
        return build_health(self.figures())

    def _health_steps(self) -> Generator[None, None, None]:
        """One health report, snapshot to publish, in steps (`_sliced` runs them)."""
        topic = self.topics.bridge_health
        figures = yield from _figure_steps(self)
        payload = yield from health_payload(figures, self.link.payload_limit(topic))
        if payload is None:
            self._throttle.log(
                logging.WARNING,
                "health",
                "health reports not published",
                "the health report does not fit the broker's maximum packet size (%d bytes) "
                "even trimmed: not published",
                self.link.max_packet_size,
            )
            return
        yield  # handing it to the MQTT client copies it again: a slice of its own
        self.link.publish(topic, payload, retain=True)

    async def _publish_health(self) -> None:
        """Build and publish a report in slices of at most HEALTH_SLICE of steps, giving
        the loop back between them: a poll or a change that arrives meanwhile waits
        for one slice, not for the whole report. `report` records how it went."""
        started = time.perf_counter()
        self.report = await _sliced(self._health_steps(), HEALTH_SLICE)
        self.report.took = time.perf_counter() - started

    async def _health_loop(self) -> None:
        """Retained health report every `health_interval`, on monotonic deadlines."""
        loop = asyncio.get_running_loop()
        interval = self.config.health_interval
        deadline = loop.time() + min(interval, 5.0)  # a first report soon after start
        while True:
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            await self._publish_health()
            for throttled in (self._throttle, self.commands.throttle, self.proxies.throttle):
                throttled.flush()
            self.link.flush_logs()
            deadline += interval
            deadline = max(deadline, loop.time())

    # -- introspection (tests, health) -------------------------------------

    @property
    def sockets_opened(self) -> Mapping[str, int]:
        return {name: s.stats.sockets_opened for name, s in self.sessions.items()}


_T = TypeVar("_T")

# How long the health report may hold the event loop at once (issue 19: at most 2 ms
# at 1,000 devices); a slice ends at the first step past it.
HEALTH_SLICE = 0.0005


def _figure_steps(bridge: Bridge) -> Generator[None, None, Figures]:
    """`Bridge.figures` in steps: yields after each host and each few devices, so the
    health report can give the loop back between them (`Bridge._health_steps`). The
    devices and sessions are listed first: a reload meanwhile changes nothing
    here. A snapshot taken in slices spans a few milliseconds."""
    now = asyncio.get_running_loop().time()
    units: dict[str, set[int]] = {}
    for device in bridge.config.devices:
        units.setdefault(device.host, set()).add(device.unit)
    yield
    hosts: list[HostFigures] = []
    for name, s in list(bridge.sessions.items()):
        hosts.append(
            host_figures(
                name,
                connected=s.connected,
                stats=s.stats,
                queue_depth=s.queue_depth,
                units=units.get(name, ()),
            )
        )
        yield
    states = list(bridge.state.devices.items())
    polls = bridge.scheduler.stats
    devices: list[DeviceFigures] = []
    for start in range(0, len(states), DEVICES_PER_STEP):
        devices.extend(
            device_polls(
                dict(states[start : start + DEVICES_PER_STEP]),
                polls,
                lambda name: bridge.scheduler.backoff_left(name, now),
            )
        )
        yield
    return Figures(
        time=time.time(),
        started=bridge.started_at,
        rss=rss_bytes(),
        hosts=tuple(hosts),
        devices=tuple(devices),
        config=config_figures(bridge.reloads, bridge.config.shard),
        mqtt=mqtt_figures(
            connected=bridge.link.connected,
            link=bridge.link.stats,
            commands=bridge.commands.stats,
            pending=bridge.link.pending,
            max_packet_size=bridge.link.max_packet_size,
        ),
        proxies=bridge.proxies.figures(),
        report=report_figures(bridge.report) if bridge.report.slices else None,
        buffer=_buffer_figures(bridge.features),
        sparkplug=_sparkplug_figures(bridge.features),
    )


def _buffer_figures(features: Sequence[Feature]) -> BufferFigures | None:
    for feature in features:
        if isinstance(feature, History) and feature.store is not None:
            return buffer_figures(feature.stats)
    return None


def _sparkplug_figures(features: Sequence[Feature]) -> SparkplugFigures | None:
    for feature in features:
        if isinstance(feature, SparkplugNode) and feature.settings is not None:
            return SparkplugFigures(commands=feature.commands, refused=feature.refused)
    return None


def _run_all(steps: Generator[None, None, _T]) -> _T:
    """Run a generator of steps to its end, at once."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


async def _sliced(steps: Generator[None, None, None], budget: float) -> ReportStats:
    """Run a generator of steps in slices of about `budget` seconds, giving the event
    loop back between slices; returns the longest slice (wall time, and the CPU time
    of the loop's thread: on a busy machine the wall time includes other processes'
    turns), their number and their sum.

    The garbage collector waits until the last slice: the thousands of objects a
    report makes and drops then die by reference count, instead of starting
    collections inside a slice (a gen-1 pass held the loop for 7 ms of CPU at 1,000
    devices) and being promoted towards a full collection. What the rest of the loop
    allocates meanwhile is collected right after, as it would have been."""
    report = ReportStats()
    collecting = gc.isenabled()
    gc.disable()
    try:
        began, cpu = time.perf_counter(), time.thread_time()
        while True:
            try:
                next(steps)
            except StopIteration:
                done = True
            else:
                done = False
            now = time.perf_counter()
            if done or now - began >= budget:
                held = now - began
                report.longest_slice = max(report.longest_slice, held)
                report.longest_slice_cpu = max(report.longest_slice_cpu, time.thread_time() - cpu)
                report.slices += 1
                report.held += held
                if done:
                    return report
                await asyncio.sleep(0)
                began, cpu = time.perf_counter(), time.thread_time()
    finally:
        steps.close()  # cancelled: the report's objects go now, before collection resumes
        if collecting:
            gc.enable()


def _freeze_later(
    scheduler: Scheduler, task: asyncio.Task[None] | None, *, full: bool
) -> asyncio.Task[None]:
    """Freeze the long-lived objects (`gc.freeze`: the collector's full passes no longer
    walk them) once every poll group has run once (`Scheduler.first_round`): what start-up
    built is frozen before the first poll, but the first polls build more that lives as
    long, each read's request and job cached by its session (at 1,000 devices 45,000
    objects, whose walk cost 27 ms of CPU in every full collection: bench/RESULTS.md).
    `full`: after a reload, which unfroze everything, collect it all once first (what the
    old configuration left is freed). Replaces `task`, a freeze still waiting."""
    if task is not None:
        task.cancel()
    return asyncio.create_task(_freeze_when_polled(scheduler.first_round, full), name="gc")


async def _freeze_when_polled(first_round: asyncio.Event, full: bool) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(FREEZE_WAIT):
            await first_round.wait()
    # A young cycle still alive is frozen and never collected: a one-off of a few.
    gc.collect(2 if full else 1)
    gc.freeze()


def _units(config: BridgeConfig, host: str) -> int:
    """How many units a host's session speaks to: its devices', and its proxy's."""
    units = {d.unit for d in config.devices_on(host)}
    proxy = config.host(host).proxy
    if proxy is not None and proxy.units is not None:
        units.update(proxy.units)
    return max(1, len(units))


def _together(config: BridgeConfig) -> set[str]:
    """Hosts whose devices poll together (`spread: false`)."""
    return {h.name for h in config.hosts if not h.spread}


def _merged(changes: Iterable[Changes]) -> Changes:
    """The features' changes for a reload, in the features' order."""
    out = Changes()
    for c in changes:
        out.leaving += c.leaving
        out.arriving += c.arriving
    return out


def _log_started(
    config: BridgeConfig, topics: Topics, hosts: int, plan: Mapping[str, tuple[ReadBlock, ...]]
) -> None:
    """What start-up tells the log: the broker, and what runs (`hosts` with devices)."""
    m = config.mqtt
    # The user name is logged as written; a secret one shows as *** (logs.Redactor).
    log.info(
        "MQTT broker %s:%d%s, client id %s",
        m.host,
        m.port,
        f" as user {m.username}" if m.username else "",
        m.client_id,
    )
    shard = config.shard
    log.info(
        "bridge started: %d hosts, %d devices, %d read blocks (event loop: %s)%s",
        hosts,
        len(config.devices),
        sum(len(b) for b in plan.values()),
        type(asyncio.get_running_loop()).__module__.split(".")[0],
        "" if shard is None else f"; shard {shard}, bridge topics {topics.bridge_state}",
    )
    if shard is not None and not hosts:
        log.warning(
            "shard %s has no hosts with devices: it only reports itself online "
            "(check --shards shows how the hosts are split)",
            shard,
        )


async def read_again(load: Loader) -> BridgeConfig | None:
    """The configuration read again (in a thread: a large file takes a while to check),
    or None, logged: its problems, or a read that took more than RELOAD_READ_TIMEOUT."""
    reading = asyncio.get_running_loop().run_in_executor(None, load)
    done, _ = await asyncio.wait({reading}, timeout=RELOAD_READ_TIMEOUT)
    if not done:  # a file system that hangs: that thread is left behind
        log.error(
            "reload: reading the configuration took more than %gs; still running the previous one",
            RELOAD_READ_TIMEOUT,
        )
        return None
    try:
        return reading.result()
    except ConfigError as exc:
        n = len(exc.problems)
        log.error(
            "reload: %d problem%s in the configuration; still running the previous one",
            n,
            "s" if n != 1 else "",
        )
        for problem in exc.problems:
            log.error("  %s", problem)
        return None


def _open_metrics(server: MetricsServer) -> MetricsServer | None:
    """Serve /metrics. An address that cannot be bound is logged, and the bridge runs
    on without metrics (None): moving data matters more than being watched (the scrape
    target shows down in the monitoring)."""
    where = server.settings.describe()
    try:
        server.start()
    except OSError as exc:
        log.error("metrics: cannot listen on %s (%s); running without metrics", where, exc)
        return None
    log.info("metrics on http://%s/metrics", where)
    if not server.settings.loopback:
        log.warning(
            "metrics: %s is reachable from other machines, without authentication "
            "(metrics.listen); use a loopback address unless that is intended",
            where,
        )
    return server


async def _stop_all(sessions: Iterable[HostSession]) -> None:
    await asyncio.gather(*(s.stop() for s in sessions), return_exceptions=True)
