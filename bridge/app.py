"""The composition root: wires config, plan, sessions, scheduler, state and MQTT.

It owns start-up and shutdown order:
start:    compile the plan -> open Modbus sessions -> start the MQTT link -> start polling
shutdown: stop polling -> publish every device and the bridge `offline` ->
          disconnect MQTT -> close Modbus sockets, all under one hard deadline.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from bridge.discovery import Discovery
from bridge.errors import ConfigError, HostUnavailable, ModbusRequestError
from bridge.figures import (
    Figures,
    config_figures,
    device_polls,
    host_figures,
    mqtt_figures,
)
from bridge.health import build_health, fit_health, rss_bytes
from bridge.logs import Throttle
from bridge.model import BridgeConfig, Device, Metrics
from bridge.mqtt import MAX_INCOMING_PACKET, MqttLink, publish_packet_size
from bridge.payloads import OFFLINE, ONLINE, Gate, Incoming, Subscription, Value
from bridge.planner import ReadBlock, plan_device
from bridge.process import bounded, cancel
from bridge.reload import ReloadPlan, discovery_changes, dropped_points, plan_reload
from bridge.scheduler import Scheduler, group_blocks
from bridge.session import HostSession
from bridge.shard import layout_refusal
from bridge.state import Message, StateCache
from bridge.stats import ReloadStats, SessionStats
from bridge.topics import Topics, topics_of
from bridge.writer import CommandHandler

if TYPE_CHECKING:
    from bridge.metrics import MetricsServer

log = logging.getLogger("bridge")

SHUTDOWN_DEADLINE = 4.0  # seconds; SIGTERM to exit must stay under 5 s
LAYOUT_WAIT = 3.0  # seconds polling waits at start for the shard layout check (first connect)
RELOAD_READ_TIMEOUT = 30.0  # seconds a reload may take to read and check the file
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
        self.sessions: dict[str, HostSession] = {
            host.name: self._make_session(config, host.name)
            for host in config.hosts
            if config.devices_on(host.name)
        }
        self.state = self._make_state(config, self.topics)
        # Home Assistant discovery, an optional feature: the messages are built once.
        self.discovery = Discovery(config) if config.homeassistant.enabled else None
        self._announced = _announced(self.discovery)
        self.link = self._make_link(config, self.topics)
        # MQTT write/get commands (see bridge.writer); drained at shutdown by drain_writes().
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
        self._link_task: asyncio.Task[None] | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._reload_task: asyncio.Task[None] | None = None
        self._reconfiguring = asyncio.Lock()  # a reload applies; shutdown waits for it
        self._stopping = False
        self.reloads = ReloadStats()
        self._retired: dict[str, SessionStats] = {}  # counters of hosts a reload closed
        self._fatal = asyncio.Event()
        self.failed = False  # a task that must not end did: exit non-zero
        self.refused: str | None = None  # why the bridge must not run here: exit 2
        self._failing: dict[str, ModbusRequestError] = {}  # offline devices and why
        # Devices offline only because their host is down: logged per host, not per device.
        self._host_down: dict[str, set[str]] = {}
        self._host_back: dict[str, int] = {}
        self._throttle = Throttle(log)
        self.started_at = time.time()

    # -- building the parts (at start; a reload builds again what changed) --

    @staticmethod
    def _make_session(
        config: BridgeConfig, host: str, stats: SessionStats | None = None
    ) -> HostSession:
        units = len({d.unit for d in config.devices_on(host)})
        return HostSession(config.host(host), units=units, stats=stats)

    @staticmethod
    def _make_state(config: BridgeConfig, topics: Topics) -> StateCache:
        m = config.mqtt
        return StateCache(config.devices, topics, output=m.output, retain=m.retain)

    def _make_link(self, config: BridgeConfig, topics: Topics) -> MqttLink:
        routes: dict[str, Callable[[Incoming], None]] = {}
        if self.discovery is not None:
            routes[config.homeassistant.status_topic] = self._on_ha_status
            if self._can_receive_discovery(config):
                routes[self.discovery.filter] = self._on_old_discovery
        return MqttLink(
            config.mqtt,
            topics,
            on_connected=self._republish,
            on_message=self._on_message,  # commands
            on_overload=self._on_overload,
            # Commands must be live: the broker is asked not to replay retained ones.
            subscriptions=[Subscription(f, retained=False) for f in topics.command_filters],
            routes=routes,  # Home Assistant: its status and our earlier discovery
            gate=_layout_gate(config, topics),  # no other shard layout under the base
            on_gate_closed=self._refuse_to_run,
        )

    def _make_metrics(self, config: BridgeConfig) -> MetricsServer | None:
        return None if config.metrics is None else _metrics_server(config.metrics, self.figures)

    # -- wiring ----------------------------------------------------------

    def _send(self, messages: list[Message]) -> None:
        for m in messages:
            self.link.publish(m.topic, m.payload, retain=m.retain)

    def _republish(self) -> None:
        """After every (re)connect, and when Home Assistant comes online: discovery (if
        enabled), then all retained state again (the link dropped it offline)."""
        if self.discovery is not None:
            for topic, payload in self._announced.items():
                self.link.publish(topic, payload, retain=True)
        self._send(self.state.full())

    def _can_receive_discovery(self, config: BridgeConfig) -> bool:
        """Whether the bridge may subscribe to its own discovery topics. It also receives
        what it publishes there, and on MQTT 3.1.1 a packet larger than it accepts drops
        the connection (MQTT 5 brokers just do not send it), so a device too large for
        that means no clean-up of stale discovery, with a warning."""
        if config.mqtt.protocol == 5:
            return True
        for topic, payload in self._announced.items():
            size = publish_packet_size(topic, len(payload), qos=config.mqtt.qos, v5=False)
            if size > MAX_INCOMING_PACKET:
                log.warning(
                    "Home Assistant: the discovery on %s is %d bytes, more than the %d this "
                    "bridge accepts on MQTT 3.1.1: stale discovery is not cleared at start "
                    "(use protocol 5, or fewer points per device)",
                    topic,
                    size,
                    MAX_INCOMING_PACKET,
                )
                return False
        return True

    def _on_ha_status(self, message: Incoming) -> None:
        """Home Assistant's birth (`online`; its last will says `offline`): it may have
        restarted and lost what it had, so it gets discovery and state again."""
        if message.payload.strip() == ONLINE.encode():
            self._throttle.log(  # a flood of births is one line, then a count
                logging.INFO,
                "ha-birth",
                "Home Assistant births",
                "Home Assistant is online: publishing discovery and state again",
            )
            self._republish()

    def _on_old_discovery(self, message: Incoming) -> None:
        """A discovery message under this bridge's client id (the broker replays the
        retained ones when the link subscribes): clear it if it is stale."""
        if self.discovery is None:
            return
        fix = self.discovery.repair(message.topic, message.payload, self._announced)
        if fix is None:
            return
        if fix.payload:
            log.info("Home Assistant: removing points no longer configured (%s)", fix.topic)
        else:
            log.info("Home Assistant: removing a device no longer configured (%s)", fix.topic)
        self.link.publish(fix.topic, fix.payload, retain=True)

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
            self._log_online(device)
        else:
            messages += self.state.set_available(device.name, False)
            self._log_offline(device, error)
        if values or error is None:
            # A poll whose registers did not change brings no values, yet it is a read:
            # `last_seen` moves and a due heartbeat goes out.
            messages += self.state.update(device.name, values, time.time())
        self._send(messages)

    def _log_offline(self, device: Device, error: ModbusRequestError) -> None:
        """Once per state change, not on every poll. A device that is offline because
        its host is down is not logged one by one (the session logs the host once);
        a device-level reason is, at WARNING when it is new."""
        previous = self._failing.get(device.name)
        self._failing[device.name] = error
        if isinstance(error, HostUnavailable):
            self._host_down.setdefault(device.host, set()).add(device.name)
            level = logging.DEBUG
        else:
            self._leave_host_down(device)
            if previous is not None and previous.reason == error.reason:
                return
            new = previous is None or isinstance(previous, HostUnavailable)
            level = logging.WARNING if new else logging.DEBUG
        if previous is None or previous.reason != error.reason:
            log.log(
                level,
                "device %s (host %s, unit %d) offline: %s",
                device.name,
                device.host,
                device.unit,
                error.reason,
            )

    def _log_online(self, device: Device) -> None:
        if self._failing.pop(device.name, None) is None:
            return
        down = self._host_down.get(device.host)
        if down is not None and device.name in down:
            self._host_back[device.host] = self._host_back.get(device.host, 0) + 1
            self._leave_host_down(device)
            return
        log.info(
            "device %s (host %s, unit %d) is back online", device.name, device.host, device.unit
        )

    def _leave_host_down(self, device: Device) -> None:
        """`device` no longer waits for its host; when none does, one line for the host."""
        down = self._host_down.get(device.host)
        if down is None or device.name not in down:
            return
        down.discard(device.name)
        if down:
            return
        del self._host_down[device.host]
        back = self._host_back.pop(device.host, 0)
        if back:
            log.info("host %s: %d device(s) back online", device.host, back)

    def _on_overload(self, message: Incoming) -> None:
        self.commands.refuse_overloaded(message)

    async def _on_message(self, message: Incoming) -> None:
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
        self.scheduler.start()
        self._start_health()
        self._start_metrics()
        m = self.config.mqtt
        # The user name is logged as written; a secret one shows as *** (logs.Redactor).
        log.info(
            "MQTT broker %s:%d%s, client id %s",
            m.host,
            m.port,
            f" as user {m.username}" if m.username else "",
            m.client_id,
        )
        shard = self.config.shard
        log.info(
            "bridge started: %d hosts, %d devices, %d read blocks (event loop: %s)%s",
            len(self.sessions),
            len(self.config.devices),
            sum(len(b) for b in self.plan.values()),
            type(asyncio.get_running_loop()).__module__.split(".")[0],
            "" if shard is None else f"; shard {shard}, bridge topics {self.topics.bridge_state}",
        )
        if shard is not None and not self.sessions:
            log.warning(
                "shard %s has no hosts with devices: it only reports itself online "
                "(check --shards shows how the hosts are split)",
                shard,
            )
        # What start-up built (configuration, plan, sessions, state) lives as long as
        # the process: out of the collector's way, so its full passes stay short.
        gc.collect()
        gc.freeze()

    def _start_health(self) -> None:
        self._health_task = self._watch(asyncio.create_task(self._health_loop(), name="health"))

    def _start_metrics(self) -> None:
        """Serve /metrics. An address that cannot be bound is logged, and the bridge runs
        on without metrics: moving data matters more than being watched (the scrape
        target shows down in the monitoring)."""
        if self.metrics is None:
            return
        where = self.metrics.settings.describe()
        try:
            self.metrics.start()
        except OSError as exc:
            log.error("metrics: cannot listen on %s (%s); running without metrics", where, exc)
            self.metrics = None
            return
        log.info("metrics on http://%s/metrics", where)
        if not self.metrics.settings.loopback:
            log.warning(
                "metrics: %s is reachable from other machines, without authentication "
                "(metrics.listen); use a loopback address unless that is intended",
                where,
            )

    async def _layout_checked(self) -> bool:
        """Wait (at most LAYOUT_WAIT) for the MQTT link's first connect attempt, which
        checks that no other shard layout runs under the base topic, so a process that
        must not run opens no Modbus socket (a gateway that takes one connection would
        drop the other layout's). False when it must not run; True, too, when the
        broker is not reachable: the check then comes at the first connect."""
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
        if self._health_task is not None:
            self._health_task.cancel()
        await bounded(self.scheduler.stop(), left(1.0), "shutdown: stop polling")
        # In-flight writes finish (or are cancelled) and are answered before offline.
        await bounded(self.drain_writes(left(1.0)), left(1.2), "shutdown: drain writes")
        if self.link.connected:
            self._send(self.state.offline_all())
            self.link.publish(self.topics.bridge_state, OFFLINE.encode(), retain=True)
            await bounded(self.link.flush(left(2.0)), left(2.0), "shutdown: MQTT flush")
        await cancel(self._link_task, left(1.0), "shutdown: MQTT disconnect")
        if self.sessions:
            await bounded(_stop_all(self.sessions.values()), left(1.0), "shutdown: Modbus close")
        if self.metrics is not None:
            await bounded(self.metrics.stop(), left(1.0), "shutdown: metrics")
        log.info("bridge stopped")

    # -- reload ------------------------------------------------------------

    async def _reload_loop(self, requests: asyncio.Event, load: Loader) -> None:
        """Each request: read the file again (in a thread: a large file takes a while
        to check); an invalid one changes nothing, a valid one is applied."""
        loop = asyncio.get_running_loop()
        while True:
            await requests.wait()
            requests.clear()
            reading = loop.run_in_executor(None, load)
            done, _ = await asyncio.wait({reading}, timeout=RELOAD_READ_TIMEOUT)
            if not done:  # a file system that hangs: that thread is left behind
                self.reloads.invalid += 1
                log.error(
                    "reload: reading the configuration took more than %gs; still running "
                    "the previous one",
                    RELOAD_READ_TIMEOUT,
                )
                continue
            try:
                config = reading.result()
            except ConfigError as exc:
                self.reloads.invalid += 1
                n = len(exc.problems)
                log.error(
                    "reload: %d problem%s in the configuration; still running the previous one",
                    n,
                    "s" if n != 1 else "",
                )
                for problem in exc.problems:
                    log.error("  %s", problem)
                continue
            await self.apply(plan_reload(self.config, config), config)

    async def apply(self, plan: ReloadPlan, config: BridgeConfig) -> None:
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
            log.info("reload: %s", plan.summary())
            await self._apply(plan, config)
            self.reloads.ok += 1
            self.reloads.last = time.time()
            log.info(
                "reload done: %d hosts, %d devices",
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
        await bounded(self.scheduler.remove(stopped), 1.0, "reload: stop polling")
        # 2. Hosts that go or change: their sessions close (queued requests fail).
        closing = {n: self.sessions.pop(n) for n in plan.hosts_removed + plan.hosts_reopened}
        for name, session in closing.items():
            self._retired[name] = session.stats  # counters go on if the host comes back
        if closing:
            await bounded(_stop_all(closing.values()), 1.5, "reload: close hosts")
        # 3. A changed broker connection closes before the new one opens.
        topics = topics_of(config)
        discovery = Discovery(config) if config.homeassistant.enabled else None
        announced = _announced(discovery)
        stale, fresh = discovery_changes(self._announced, announced)
        if plan.mqtt_changed:
            await self._close_link(moved=plan.mqtt_moved, stale=stale)
        # 4. The new configuration takes over (no await until the messages are queued).
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
        self.discovery, self._announced = discovery, announced
        self.commands.reconfigure(config, topics, state)
        for name in plan.devices_removed:
            self._forget_device(name)
        if plan.mqtt_changed:
            self._open_link()  # on connect: discovery and the full state
            if not plan.mqtt_moved:  # same broker and topics: tidy up there
                self._send(messages + stale)
        else:
            self._send(messages + stale + fresh)
        # 5. New sessions, then polling.
        for name in plan.hosts_added + plan.hosts_reopened:
            # A reopened host's counters carry on.
            session = self._make_session(config, name, self._retired.pop(name, None))
            self.sessions[name] = session
            await session.start()
        for name in plan.hosts_kept:
            self.sessions[name].set_units(len({d.unit for d in config.devices_on(name)}))
        started = set(plan.started)
        self.scheduler.add(
            group_blocks(
                [d for d in config.devices if d.name in started], self.plan, _together(config)
            )
        )
        self.commands.release(stopped)
        # 6. The rest.
        if plan.metrics_changed:
            if self.metrics is not None:
                await bounded(self.metrics.stop(), 1.5, "reload: metrics")
            self.metrics = self._make_metrics(config)
            self._start_metrics()
        if plan.health_changed and self._health_task is not None:
            await cancel(self._health_task, 0.5, "reload: health")
            self._start_health()

    async def _close_link(self, *, moved: bool, stale: list[Message]) -> None:
        """End the broker connection before a new one opens. When the topics move (another
        broker or base topic), what the bridge leaves behind there says `offline` first."""
        link = self.link
        if link.connected:
            if moved:
                self._send(self.state.offline_all())
                self._send(stale)
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

    def _forget_device(self, name: str) -> None:
        """A device a reload removed: no more log bookkeeping for it."""
        self._failing.pop(name, None)
        for host in list(self._host_down):
            self._host_down[host].discard(name)
            if not self._host_down[host]:
                del self._host_down[host]
                self._host_back.pop(host, None)

    # -- health ------------------------------------------------------------

    def figures(self) -> Figures:
        """One snapshot of every counter (bridge.figures): what the health report and
        the metrics show. Called on the event loop."""
        now = asyncio.get_running_loop().time()
        units: dict[str, set[int]] = {}
        for device in self.config.devices:
            units.setdefault(device.host, set()).add(device.unit)
        return Figures(
            time=time.time(),
            started=self.started_at,
            rss=rss_bytes(),
            hosts=tuple(
                host_figures(
                    name,
                    connected=s.connected,
                    stats=s.stats,
                    queue_depth=s.queue_depth,
                    units=units.get(name, ()),
                )
                for name, s in self.sessions.items()
            ),
            devices=device_polls(
                self.state.devices,
                self.scheduler.stats,
                lambda name: self.scheduler.backoff_left(name, now),
            ),
            config=config_figures(self.reloads, self.config.shard),
            mqtt=mqtt_figures(
                connected=self.link.connected,
                link=self.link.stats,
                commands=self.commands.stats,
                pending=self.link.pending,
                max_packet_size=self.link.max_packet_size,
            ),
        )

    def health(self) -> dict[str, Any]:
        return build_health(self.figures())

    def _publish_health(self) -> None:
        topic = self.topics.bridge_health
        payload = fit_health(self.health(), self.link.payload_limit(topic))
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
        self.link.publish(topic, payload, retain=True)

    async def _health_loop(self) -> None:
        """Retained health report every `health_interval`, on monotonic deadlines."""
        loop = asyncio.get_running_loop()
        interval = self.config.health_interval
        deadline = loop.time() + min(interval, 5.0)  # a first report soon after start
        while True:
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            self._publish_health()
            for throttled in (self._throttle, self.commands.throttle):
                throttled.flush()
            self.link.flush_logs()
            deadline += interval
            deadline = max(deadline, loop.time())

    # -- introspection (tests, health) -------------------------------------

    @property
    def sockets_opened(self) -> Mapping[str, int]:
        return {name: s.stats.sockets_opened for name, s in self.sessions.items()}


def _layout_gate(config: BridgeConfig, topics: Topics) -> Gate:
    """At the first connect of each link (start, and a reload that reconnects): the
    retained bridge states under the base; another layout's `online` closes the gate."""

    def judge(states: list[Incoming]) -> str | None:
        online = [
            label
            for m in states
            if (label := topics.bridge_label(m.topic)) is not None
            and m.payload.strip() == ONLINE.encode()
        ]
        return layout_refusal(config.shard, topics.base, online)

    return Gate(topics.layout_filters, judge)


def _together(config: BridgeConfig) -> set[str]:
    """Hosts whose devices poll together (`spread: false`)."""
    return {h.name for h in config.hosts if not h.spread}


def _announced(discovery: Discovery | None) -> dict[str, bytes]:
    """Topic -> payload of every discovery message (none without Home Assistant)."""
    return {} if discovery is None else {m.topic: m.payload for m in discovery.messages()}


async def _stop_all(sessions: Iterable[HostSession]) -> None:
    await asyncio.gather(*(s.stop() for s in sessions), return_exceptions=True)
