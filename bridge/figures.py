"""One snapshot of the bridge's figures: what `bridge/health` shows. Pure.

The counters live where things happen: `SessionStats` (with `UnitStats`) in each
host session, `PollStats` in the scheduler, the state cache's availability and
`last_seen`, `LinkStats` of the MQTT link and the command handler's `CommandStats`.
The composition root (`app.Bridge.figures`) copies them into these frozen
dataclasses at one moment, with the builders below; the health report renders the
snapshot, never the live objects.

Each figure declares how it is shown (`Shown`, in the field's metadata): its key in
the health report. A renderer walks the declarations, so a new figure is one field
here plus its line in the builder (mypy names a builder that misses one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from bridge.payloads import iso_utc

if TYPE_CHECKING:  # type names only: importing this module must not load pymodbus
    from bridge.mqtt import LinkStats
    from bridge.scheduler import PollStats
    from bridge.session import SessionStats
    from bridge.state import DeviceState
    from bridge.writer import CommandStats


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Shown:
    """How one figure is shown."""

    help: str
    health: str | None = ""  # its key in the health report ("": the field's name; None: not in it)
    # how the health report writes the value (milliseconds, ISO time, ...)
    to_health: Callable[[Any], Any] = _same
    records: bool = False  # the value is a tuple of records, each with its own figures


_SHOWN = "shown"


def shown(
    help: str,
    *,
    health: str | None = "",
    to_health: Callable[[Any], Any] = _same,
    records: bool = False,
) -> Any:
    """A figure's field, declaring how it is shown."""
    spec = Shown(help, health=health, to_health=to_health, records=records)
    return field(metadata={_SHOWN: spec})


def shown_fields(record: object) -> Iterator[tuple[str, Shown]]:
    """(field name, how it is shown) of each figure of a snapshot record, in declaration
    order, with `health` resolved to the key the report uses."""
    for f in fields(record):  # type: ignore[arg-type]
        spec: Shown | None = f.metadata.get(_SHOWN)
        if spec is not None:
            yield f.name, spec if spec.health != "" else replace(spec, health=f.name)


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
class UnitFigures:
    """Line faults of one unit id behind a host."""

    host: str
    unit: int
    timeouts: int = shown("requests to the unit that got no answer in time")
    crc_errors: int = shown("RTU replies from the unit whose CRC did not match")
    bad_replies: int = shown("replies from the unit that did not fit the request")

    @property
    def key(self) -> str:
        return str(self.unit)


@dataclass(frozen=True)
class HostFigures:
    """One Modbus host (a TCP endpoint or a serial port) and its session."""

    name: str
    connected: bool = shown("whether the host's session is open")
    sockets_opened: int = shown("sockets (or serial ports) opened")
    reconnects: int = shown("sessions reopened after a loss")
    requests: int = shown("requests sent")
    errors: int = shown("requests that failed")
    timeouts: int = shown("requests that got no answer in time")
    bad_replies: int = shown("malformed or mismatched replies")
    stray_frames: int = shown("late replies no request waited for")
    drains: int = shown("waits for a quiet line after a failed request (RTU)")
    crc_errors: int = shown("RTU replies whose CRC did not match")
    # The health report lists only the units that had a fault (health._doc).
    units: tuple[UnitFigures, ...] = shown("per unit id", records=True)
    latency_p50: float | None = shown(
        "median latency of the last 1000 answered requests", health="latency_p50_ms", to_health=_ms
    )
    latency_p99: float | None = shown(
        "99th percentile of the same", health="latency_p99_ms", to_health=_ms
    )


@dataclass(frozen=True)
class DeviceFigures:
    """One device (a unit id on a host) and its polling."""

    name: str
    host: str
    unit: int
    available: bool | None = shown("whether the last poll succeeded (None before the first)")
    last_seen: float | None = shown(
        "when values were last read (Unix time)",
        to_health=lambda t: None if t is None else iso_utc(t),
    )
    failures: int = shown("polls that failed", health="errors")
    cycles: int = shown("poll cycles run")
    skipped: int = shown("cycles missed: a poll overran its interval", health="missed_cycles")
    skipped_ranges: tuple[str, ...] = shown(
        "address ranges the device refused, skipped now", to_health=list
    )


@dataclass(frozen=True)
class MqttFigures:
    """The broker connection and the write commands received over it."""

    connected: bool = shown("whether the broker connection is up", to_health=int)
    connects: int = shown("connections made to the broker")
    published: int = shown("messages the broker took")
    dropped: int = shown("queued messages given up (queue full)")
    requeued: int = shown("messages sent again after a disconnect")
    oversize: int = shown("messages larger than the broker takes")
    refused: int = shown("publishes the broker refused")
    max_packet_size: int = shown("largest packet the broker takes")
    commands_written: int = shown("points written by commands")
    commands_rejected: int = shown("commands refused before sending")
    commands_failed: int = shown("commands that failed while executing")
    commands_retained: int = shown("retained commands refused")
    commands_overloaded: int = shown("commands refused by the flood guard")


@dataclass(frozen=True)
class Figures:
    """Everything the health report shows, at one moment."""

    time: float  # Unix time of the snapshot
    started: float  # Unix time the bridge started
    rss: int  # resident memory, bytes
    hosts: tuple[HostFigures, ...]
    devices: tuple[DeviceFigures, ...]
    mqtt: MqttFigures


# -- builders: live objects -> snapshot (called by the composition root) ------------


def host_figures(
    name: str, *, connected: bool, stats: SessionStats, units: Iterable[int] = ()
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
        timeouts=stats.timeouts,
        bad_replies=stats.bad_replies,
        stray_frames=stats.stray_frames,
        drains=stats.drains,
        crc_errors=stats.crc_errors,
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
    )


def device_figures(state: DeviceState, polls: PollStats | None) -> DeviceFigures:
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
        skipped_ranges=tuple(polls.skipped_ranges) if polls else (),
    )


def mqtt_figures(
    *, connected: bool, link: LinkStats, commands: CommandStats, max_packet_size: int
) -> MqttFigures:
    return MqttFigures(
        connected=connected,
        connects=link.connects,
        published=link.published,
        dropped=link.dropped,
        requeued=link.requeued,
        oversize=link.oversize,
        refused=link.refused,
        max_packet_size=max_packet_size,
        commands_written=commands.writes,
        commands_rejected=commands.rejected,
        commands_failed=commands.failed,
        commands_retained=commands.retained,
        commands_overloaded=commands.overloaded,
    )


def device_polls(
    states: Mapping[str, DeviceState], polls: Mapping[str, PollStats]
) -> tuple[DeviceFigures, ...]:
    """Every device of the state cache, with its poll statistics when it has any."""
    return tuple(device_figures(st, polls.get(name)) for name, st in states.items())
