"""One snapshot of the bridge's figures: what `bridge/health` and `/metrics` show. Pure.

The counters live where things happen: `SessionStats` (with `UnitStats`) in each
host session, `PollStats` and the backoffs in the scheduler, the state cache's
availability and `last_seen`, `LinkStats` of the MQTT link and the command handler's
`CommandStats`. The composition root (`app.Bridge.figures`) copies them into these
frozen dataclasses at one moment, with the builders below; the health report and
the metrics endpoint render the snapshot, never the live objects.

Each figure declares how it is shown (`Shown`, in the field's metadata): its key in
the health report and its Prometheus metric. The renderers (`health.py`,
`metrics.py`) walk the declarations, so a new figure is one field here plus its line
in the builder (mypy names a builder that misses one).

Metric names follow Prometheus conventions (base units, `_total` for counters,
`_seconds`, `_bytes`); `metrics.py` adds the `modbus_bridge_` prefix. Label values
come from the configuration (host, device and unit names) or from the fixed sets
declared here, never from what a device or a broker sends.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from bridge.payloads import iso_utc
from bridge.stats import (
    LATENCY_BUCKETS,
    BufferStats,
    CommandStats,
    LinkStats,
    PollStats,
    ProxyStats,
    ReloadStats,
    ReportStats,
    SessionStats,
)

if TYPE_CHECKING:
    from bridge.model import Shard
    from bridge.state import DeviceState

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"


def _same(value: Any) -> Any:
    return value


def _sample(value: Any) -> float | None:
    """A sample value; None (unknown) leaves the sample out."""
    return None if value is None else float(value)


@dataclass(frozen=True)
class Shown:
    """How one figure is shown."""

    help: str
    health: str | None = ""  # its key in the health report ("": the field's name; None: not in it)
    # how the health report writes the value (milliseconds, ISO time, ...)
    to_health: Callable[[Any], Any] = _same
    records: bool = False  # the value is a tuple of records, each with its own figures
    metric: str | None = None  # its Prometheus metric, without the prefix (None: not one)
    kind: str = COUNTER  # COUNTER, GAUGE or HISTOGRAM
    # Fixed labels: several figures are samples of one metric (dropped messages by reason).
    labels: tuple[tuple[str, str], ...] = ()
    label: str | None = None  # the value is a mapping: one sample per key, under this label
    to_metric: Callable[[Any], float | None] = _sample


_SHOWN = "shown"


def shown(
    help: str,
    *,
    health: str | None = "",
    to_health: Callable[[Any], Any] = _same,
    records: bool = False,
    metric: str | None = None,
    kind: str = COUNTER,
    labels: Mapping[str, str] | None = None,
    label: str | None = None,
    to_metric: Callable[[Any], float | None] = _sample,
) -> Any:
    """A figure's field, declaring how it is shown."""
    spec = Shown(
        help,
        health=health,
        to_health=to_health,
        records=records,
        metric=metric,
        kind=kind,
        labels=tuple((labels or {}).items()),
        label=label,
        to_metric=to_metric,
    )
    return field(metadata={_SHOWN: spec})


def shown_fields(record: object) -> tuple[tuple[str, Shown], ...]:
    """(field name, how it is shown) of each figure of a snapshot record, in declaration
    order, with `health` resolved to the key the report uses."""
    return _shown_fields(type(record) if not isinstance(record, type) else record)


@functools.cache
def _shown_fields(cls: type) -> tuple[tuple[str, Shown], ...]:
    # Once per record class: a health report of 1,000 devices walks these 13,000 times.
    out = []
    for f in fields(cls):
        spec: Shown | None = f.metadata.get(_SHOWN)
        if spec is not None:
            out.append((f.name, spec if spec.health != "" else replace(spec, health=f.name)))
    return tuple(out)


def health_key(record: type, name: str) -> str:
    """The health report's key for the figure `name` of a record class (Home Assistant
    reads the report by these keys: bridge.discovery)."""
    for field_name, spec in shown_fields(record):
        if field_name == name and spec.health is not None:
            return spec.health
    raise KeyError(f"{record.__name__}.{name} is not in the health report")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


@dataclass(frozen=True)
class Latency:
    """A latency histogram: answered requests per upper bound (seconds), cumulative as
    Prometheus counts them, and the sum of their latencies."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]  # one per bound, then the count of all (+Inf)
    total: float


@dataclass(frozen=True)
class UnitFigures:
    """Line faults of one unit id behind a host."""

    host: str
    unit: int
    timeouts: int = shown(
        "Requests to the unit that got no answer in time.", metric="unit_timeouts_total"
    )
    crc_errors: int = shown(
        "RTU replies from the unit whose CRC did not match.", metric="unit_crc_errors_total"
    )
    bad_replies: int = shown(
        "Replies from the unit that did not fit the request.", metric="unit_bad_replies_total"
    )

    @property
    def key(self) -> str:
        return str(self.unit)


@dataclass(frozen=True)
class HostFigures:
    """One Modbus host (a TCP endpoint or a serial port) and its session."""

    name: str
    connected: bool = shown(
        "1 while the host's session (socket or serial port) is open.",
        metric="host_connected",
        kind=GAUGE,
    )
    sockets_opened: int = shown(
        "Sockets (or serial ports) opened; one per host unless sessions were lost.",
        metric="host_sockets_opened_total",
    )
    reconnects: int = shown("Sessions reopened after a loss.", metric="host_reconnects_total")
    requests: int = shown("Modbus requests sent.", metric="host_requests_total")
    errors: int = shown("requests that failed (by kind: failed_by)")
    failed_by: Mapping[str, int] = shown(
        "Modbus requests that failed, by kind: exception (an exception reply), timeout, "
        "bad_reply (an answer that did not fit the request), connection, other.",
        health=None,
        metric="host_request_errors_total",
        label="kind",
    )
    timeouts: int = shown("requests that got no answer in time (failed_by timeout)")
    bad_replies: int = shown("malformed or mismatched replies")
    stray_frames: int = shown(
        "Late replies that no request waited for (dropped).", metric="host_stray_frames_total"
    )
    drains: int = shown(
        "Waits for a quiet line after a failed request (RTU).", metric="host_line_drains_total"
    )
    crc_errors: int = shown("RTU replies whose CRC did not match.", metric="host_crc_errors_total")
    queue_depth: int = shown(
        "Requests waiting for the host's session.", metric="host_queue_depth", kind=GAUGE
    )
    probes: int = shown(
        "Reads sent, in the link's idle time, to units that back off: are they back?",
        metric="host_probes_total",
    )
    probe_timeouts: int = shown(
        "Probes unanswered (not counted as errors: the unit was known to be silent).",
        metric="host_probe_timeouts_total",
    )
    probes_cut: int = shown(
        "Probes cut short by a request that arrived meanwhile.", metric="host_probes_cut_total"
    )
    # The health report lists only the units that had a fault (health._doc).
    units: tuple[UnitFigures, ...] = shown("per unit id", records=True)
    latency_p50: float | None = shown(
        "median latency of the last 1000 answered requests", health="latency_p50_ms", to_health=_ms
    )
    latency_p99: float | None = shown(
        "99th percentile of the same", health="latency_p99_ms", to_health=_ms
    )
    latency: Latency = shown(  # noqa: RUF009 - shown() is a dataclasses.field
        "Time from sending a Modbus request to its answer (answered requests).",
        health=None,
        metric="host_request_duration_seconds",
        kind=HISTOGRAM,
    )


@dataclass(frozen=True)
class DeviceFigures:
    """One device (a unit id on a host) and its polling."""

    name: str
    host: str
    unit: int
    available: bool | None = shown(
        "1 while the device's last poll succeeded (0: failed, or no poll yet).",
        metric="device_available",
        kind=GAUGE,
        to_metric=lambda v: 1.0 if v else 0.0,
    )
    last_seen: float | None = shown(
        "When values were last read from the device (Unix time).",
        to_health=lambda t: None if t is None else iso_utc(t),
        metric="device_last_read_timestamp_seconds",
        kind=GAUGE,
    )
    failures: int = shown("Polls that failed.", health="errors", metric="device_poll_errors_total")
    cycles: int = shown("Poll cycles run.", metric="device_poll_cycles_total")
    skipped: int = shown(
        "Poll cycles not run, by reason: overrun (the previous poll overran its interval), "
        "backoff (the device backs off after failures).",
        health="missed_cycles",
        metric="device_skipped_cycles_total",
        labels={"reason": "overrun"},
    )
    backoff_skips: int = shown(
        "cycles not polled while the device backs off",
        health="backoff_cycles",
        metric="device_skipped_cycles_total",
        labels={"reason": "backoff"},
    )
    probes: int = shown(
        "Cycles on which the device, backing off, was probed in its link's idle time.",
        metric="device_probes_total",
    )
    backoff: float = shown(
        "Seconds until a device that backs off is polled again (0: polled as usual).",
        health="backoff_s",
        to_health=lambda s: round(s, 1),
        metric="device_backoff_seconds",
        kind=GAUGE,
    )
    skipped_ranges: tuple[str, ...] = shown(
        "Address ranges the device refused, skipped now.",
        to_health=list,
        metric="device_skipped_ranges",
        kind=GAUGE,
        to_metric=len,
    )


@dataclass(frozen=True)
class MqttFigures:
    """The broker connection and the write commands received over it."""

    connected: bool = shown(
        "1 while the broker connection is up.",
        to_health=int,
        metric="mqtt_connected",
        kind=GAUGE,
    )
    connects: int = shown("Connections made to the broker.", metric="mqtt_connects_total")
    published: int = shown(
        "Messages the broker took (acknowledged, or written at QoS 0).",
        metric="mqtt_messages_published_total",
    )
    pending: int = shown(
        "Messages waiting to be sent (newest per topic).",
        metric="mqtt_pending_messages",
        kind=GAUGE,
    )
    dropped: int = shown(
        "Messages given up, by reason: queue_full (answers waiting for the broker "
        "overflowed), oversize (larger than the broker takes), refused (the broker "
        "answered with a failure reason code).",
        metric="mqtt_messages_dropped_total",
        labels={"reason": "queue_full"},
    )
    requeued: int = shown(
        "Messages cut off by a disconnect and sent again.", metric="mqtt_messages_requeued_total"
    )
    oversize: int = shown(
        "messages larger than the broker takes",
        metric="mqtt_messages_dropped_total",
        labels={"reason": "oversize"},
    )
    refused: int = shown(
        "publishes the broker refused",
        metric="mqtt_messages_dropped_total",
        labels={"reason": "refused"},
    )
    max_packet_size: int = shown(
        "The largest packet the broker takes.", metric="mqtt_max_packet_size_bytes", kind=GAUGE
    )
    commands_ok: int = shown(
        "Write and read commands received over MQTT, by result: ok, rejected (refused "
        "before anything was sent), failed (while executing), retained (replayed by the "
        "broker: never executed), overloaded (refused by the flood guard).",
        metric="mqtt_commands_total",
        labels={"result": "ok"},
    )
    commands_written: int = shown("Points written by commands.", metric="points_written_total")
    commands_rejected: int = shown(
        "commands refused before sending",
        metric="mqtt_commands_total",
        labels={"result": "rejected"},
    )
    commands_failed: int = shown(
        "commands that failed while executing",
        metric="mqtt_commands_total",
        labels={"result": "failed"},
    )
    commands_retained: int = shown(
        "retained commands refused",
        metric="mqtt_commands_total",
        labels={"result": "retained"},
    )
    commands_overloaded: int = shown(
        "commands refused by the flood guard",
        metric="mqtt_commands_total",
        labels={"result": "overloaded"},
    )


@dataclass(frozen=True)
class ConfigFigures:
    """The configuration the bridge runs, and its reloads (SIGHUP)."""

    shard: str | None = shown("this process's shard of the fleet, e.g. 2/4 (none: the whole)")
    reloads: int = shown(
        "Configuration reloads (SIGHUP), by result: ok (the new file was applied), invalid "
        "(the file had problems: nothing changed).",
        metric="config_reloads_total",
        labels={"result": "ok"},
    )
    reloads_invalid: int = shown(
        "reloads refused: the file had problems",
        metric="config_reloads_total",
        labels={"result": "invalid"},
    )
    last_reload: float | None = shown(
        "When a reload last applied a configuration (Unix time; none yet: no sample).",
        to_health=lambda t: None if t is None else iso_utc(t),
        metric="config_last_reload_timestamp_seconds",
        kind=GAUGE,
    )


@dataclass(frozen=True)
class ReportFigures:
    """How the previous health report held the event loop: built in slices that yield
    to the loop, so a poll or a change that arrives meanwhile waits for one slice."""

    longest_slice: float = shown(
        "The longest the previous health report held the event loop at once (seconds).",
        health="longest_slice_ms",
        to_health=lambda s: round(s * 1000, 2),
        metric="health_report_longest_slice_seconds",
        kind=GAUGE,
    )
    longest_slice_cpu: float = shown(
        "the most CPU time one slice used: its own work, without the time the machine gave "
        "to other processes meanwhile",
        health="longest_slice_cpu_ms",
        to_health=lambda s: round(s * 1000, 2),
    )
    slices: int = shown("slices the previous report was built in")
    held: float = shown(
        "its slices together: how long the report would hold the loop built at once",
        health="held_ms",
        to_health=lambda s: round(s * 1000, 2),
    )
    took: float = shown(
        "Seconds the previous health report took, from its first slice to its publish.",
        health="took_ms",
        to_health=lambda s: round(s * 1000, 2),
        metric="health_report_duration_seconds",
        kind=GAUGE,
    )


@dataclass(frozen=True)
class ProxyFigures:
    """One host's Modbus TCP proxy: its clients and their requests."""

    host: str
    listening: bool = shown(
        "1 while the host's proxy accepts Modbus TCP clients.",
        metric="proxy_listening",
        kind=GAUGE,
    )
    clients: int = shown(
        "Modbus TCP clients connected to the proxy.", metric="proxy_clients", kind=GAUGE
    )
    connections: int = shown(
        "Client connections accepted by the proxy.", metric="proxy_connections_total"
    )
    closed: Mapping[str, int] = shown(
        "Client connections the proxy closed, by reason: limit (over proxy.clients), "
        "out_of_step (a header that cannot be framed: garbage, a frame beyond 260 bytes), "
        "slow (a frame not completed in time), idle (no request for long), unread (answers "
        "left unread).",
        to_health=dict,
        metric="proxy_connections_closed_total",
        label="reason",
    )
    requests: Mapping[str, int] = shown(
        "Client requests, by how they were answered: answered (the device's reply), "
        "exception (the device's exception reply), refused (an exception from the proxy: "
        "a unit, function or size it does not forward), failed (0x0A: the host's session "
        "is down; 0x0B: no usable answer).",
        to_health=dict,
        metric="proxy_requests_total",
        label="result",
    )
    writes: int = shown("Writes forwarded and answered.", metric="proxy_writes_total")
    waiting: int = shown(
        "Client requests waiting for their turn on the host's session.",
        metric="proxy_requests_waiting",
        kind=GAUGE,
    )
    in_flight: int = shown(
        "Client requests on the host's session (queued with the polls, or on the wire).",
        metric="proxy_requests_in_flight",
        kind=GAUGE,
    )


@dataclass(frozen=True)
class BufferFigures:
    """The store-and-forward buffer (`buffer:`), when it is on."""

    records: int = shown(
        "Changes in the buffer, waiting for the broker.",
        metric="buffer_records",
        kind=GAUGE,
    )
    bytes: int = shown(
        "What the buffered changes cost on disk (estimated).", metric="buffer_bytes", kind=GAUGE
    )
    appended: int = shown(
        "Changes buffered while the broker was away.", metric="buffer_appended_total"
    )
    replayed: int = shown(
        "Buffered changes replayed and acknowledged by the broker.",
        metric="buffer_replayed_total",
    )
    dropped: int = shown(
        "Buffered changes dropped, the oldest first, past max_bytes or max_age.",
        metric="buffer_dropped_total",
    )
    dropped_age: int = shown("of them past max_age", health="dropped_max_age")
    commits: int = shown(
        "Writes to the disk (one transaction each).", metric="buffer_commits_total"
    )


@dataclass(frozen=True)
class SparkplugFigures:
    """The Sparkplug B edge node (`sparkplug:`), when it is on."""

    commands: int = shown(
        "NCMD and DCMD messages received by the Sparkplug edge node.",
        metric="sparkplug_commands_total",
    )
    refused: int = shown(
        "Sparkplug commands refused by the node itself (an unknown device or metric, a "
        "payload that does not decode, a retained command); a refused value is counted "
        "with the other commands.",
        metric="sparkplug_commands_refused_total",
    )


def buffer_figures(stats: BufferStats) -> BufferFigures:
    return BufferFigures(
        records=stats.records,
        bytes=stats.bytes,
        appended=stats.appended,
        replayed=stats.replayed,
        dropped=stats.dropped,
        dropped_age=stats.dropped_age,
        commits=stats.commits,
    )


@dataclass(frozen=True)
class Figures:
    """Everything the health report and the metrics show, at one moment."""

    time: float  # Unix time of the snapshot
    started: float  # Unix time the bridge started
    rss: int  # resident memory, bytes
    hosts: tuple[HostFigures, ...]
    devices: tuple[DeviceFigures, ...]
    mqtt: MqttFigures
    config: ConfigFigures
    proxies: tuple[ProxyFigures, ...] = ()  # the hosts with a proxy
    report: ReportFigures | None = None  # the previous health report (none yet: None)
    buffer: BufferFigures | None = None  # store and forward, when it is on
    sparkplug: SparkplugFigures | None = None  # the Sparkplug B edge node, when it is on


def config_figures(reloads: ReloadStats, shard: Shard | None = None) -> ConfigFigures:
    """`shard`: the shard of a fleet this process runs, if it is one (shown as ``2/4``)."""
    return ConfigFigures(
        shard=None if shard is None else str(shard),
        reloads=reloads.ok,
        reloads_invalid=reloads.invalid,
        last_reload=reloads.last,
    )


# -- builders: live objects -> snapshot (called by the composition root) ------------


def report_figures(stats: ReportStats) -> ReportFigures:
    return ReportFigures(
        longest_slice=stats.longest_slice,
        longest_slice_cpu=stats.longest_slice_cpu,
        slices=stats.slices,
        held=stats.held,
        took=stats.took,
    )


def host_figures(
    name: str,
    *,
    connected: bool,
    stats: SessionStats,
    queue_depth: int,
    units: Iterable[int] = (),
) -> HostFigures:
    """`units`: the unit ids configured on the host; each gets a record (zeros until it
    has a fault), as does any other unit the session counted."""
    ids = sorted(set(units) | set(stats.units))
    faults = stats.units
    return HostFigures(
        name=name,
        connected=connected,
        sockets_opened=stats.sockets_opened,
        reconnects=stats.reconnects,
        requests=stats.requests,
        errors=stats.errors,
        failed_by=dict(stats.failed_by),
        timeouts=stats.timeouts,
        bad_replies=stats.bad_replies,
        stray_frames=stats.stray_frames,
        drains=stats.drains,
        crc_errors=stats.crc_errors,
        queue_depth=queue_depth,
        probes=stats.probes,
        probe_timeouts=stats.probe_timeouts,
        probes_cut=stats.probes_cut,
        units=tuple(
            UnitFigures(
                host=name,
                unit=u,
                timeouts=faults[u].timeouts if u in faults else 0,
                crc_errors=faults[u].crc_errors if u in faults else 0,
                bad_replies=faults[u].bad_replies if u in faults else 0,
            )
            for u in ids
        ),
        latency_p50=stats.percentile(0.50),
        latency_p99=stats.percentile(0.99),
        latency=Latency(
            LATENCY_BUCKETS, tuple(itertools.accumulate(stats.latency_counts)), stats.latency_sum
        ),
    )


def device_figures(state: DeviceState, polls: PollStats | None, backoff: float) -> DeviceFigures:
    device = state.device
    return DeviceFigures(
        name=device.name,
        host=device.host,
        unit=device.unit,
        available=state.available,
        last_seen=state.last_seen,
        failures=polls.failures if polls else 0,
        cycles=polls.cycles if polls else 0,
        skipped=polls.skipped if polls else 0,
        backoff_skips=polls.backoff_skips if polls else 0,
        probes=polls.probes if polls else 0,
        backoff=backoff,
        skipped_ranges=tuple(polls.skipped_ranges) if polls else (),
    )


def mqtt_figures(
    *,
    connected: bool,
    link: LinkStats,
    commands: CommandStats,
    pending: int,
    max_packet_size: int,
) -> MqttFigures:
    return MqttFigures(
        connected=connected,
        connects=link.connects,
        published=link.published,
        pending=pending,
        dropped=link.dropped,
        requeued=link.requeued,
        oversize=link.oversize,
        refused=link.refused,
        max_packet_size=max_packet_size,
        commands_ok=commands.ok,
        commands_written=commands.writes,
        commands_rejected=commands.rejected,
        commands_failed=commands.failed,
        commands_retained=commands.retained,
        commands_overloaded=commands.overloaded,
    )


def device_polls(
    states: Mapping[str, DeviceState],
    polls: Mapping[str, PollStats],
    backoff: Callable[[str], float] = lambda _name: 0.0,
) -> tuple[DeviceFigures, ...]:
    """Every device of the state cache, with its poll statistics when it has any and
    `backoff(name)`: seconds until it is polled again when it backs off."""
    return tuple(device_figures(st, polls.get(name), backoff(name)) for name, st in states.items())


def proxy_figures(host: str, stats: ProxyStats) -> ProxyFigures:
    return ProxyFigures(
        host=host,
        listening=stats.listening,
        clients=stats.clients,
        connections=stats.connections,
        closed=dict(stats.closed),
        requests=dict(stats.requests),
        writes=stats.writes,
        waiting=stats.waiting,
        in_flight=stats.in_flight,
    )
