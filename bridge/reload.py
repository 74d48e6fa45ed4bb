"""A configuration reload as a difference between two configurations. Pure: no I/O.

`plan_reload(old, new)` says what a running bridge must do to go from `old` to `new`
while leaving alone everything that did not change; `app.Bridge.apply` carries it out.

- Hosts are the ones with a session: a host with at least one device. A host whose
  settings are equal keeps its session and socket; one whose settings changed is
  reopened (its session stopped, a new one started); others are added or removed.
- A host's `proxy:` is no setting of its session: a change to it restarts the proxy's
  listener (`proxies_changed`), never the session. A host reopened for its own
  settings keeps its proxy and the proxy's clients (their requests meanwhile are
  answered 0x0A).
- Devices are compared whole (points, interval, unit, host, ...): a changed device
  restarts its poll groups; an unchanged device on a reopened host is restarted too
  (its requests went to the old session), but keeps its published state.
- `mqtt:` or `homeassistant:` changes mean one new broker connection (the command and
  Home Assistant subscriptions are made at connect). When the broker or the base topic
  changes, the topics the bridge published move: the old ones are left `offline`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from bridge.messages import Message
from bridge.model import BridgeConfig, Device, Host, Output
from bridge.topics import Topics


@dataclass(frozen=True)
class ReloadPlan:
    """What a reload changes. Names in the order of the configuration."""

    hosts_kept: tuple[str, ...] = ()
    hosts_reopened: tuple[str, ...] = ()
    hosts_added: tuple[str, ...] = ()
    hosts_removed: tuple[str, ...] = ()
    devices_added: tuple[str, ...] = ()
    devices_removed: tuple[str, ...] = ()
    devices_changed: tuple[str, ...] = ()
    devices_restarted: tuple[str, ...] = ()  # unchanged, on a reopened host
    mqtt_changed: bool = False  # reconnect once (mqtt: or homeassistant: changed)
    mqtt_moved: bool = False  # the broker or the base topic changed: old topics go offline
    metrics_changed: bool = False
    health_changed: bool = False  # health_interval
    commands_changed: bool = False  # read_only, write_timeout
    proxies_changed: tuple[str, ...] = ()  # hosts whose proxy is added, removed or changed

    @property
    def stopped(self) -> tuple[str, ...]:
        """Devices whose polling (and commands in flight) stop first."""
        return self.devices_removed + self.devices_changed + self.devices_restarted

    @property
    def started(self) -> tuple[str, ...]:
        """Devices whose polling starts at the end."""
        return self.devices_added + self.devices_changed + self.devices_restarted

    @property
    def unchanged(self) -> bool:
        return not (
            self.hosts_reopened
            or self.hosts_added
            or self.hosts_removed
            or self.devices_added
            or self.devices_removed
            or self.devices_changed
            or self.mqtt_changed
            or self.metrics_changed
            or self.health_changed
            or self.commands_changed
            or self.proxies_changed
        )

    def summary(self) -> str:
        """One line for the log."""
        if self.unchanged:
            return "nothing changed"
        parts = [f"hosts: {len(self.hosts_kept)} kept"]
        for what, names in (
            ("reopened", self.hosts_reopened),
            ("added", self.hosts_added),
            ("removed", self.hosts_removed),
        ):
            if names:
                parts[-1] += f", {what} {', '.join(names)}"
        devices = []
        for what, names in (
            ("added", self.devices_added),
            ("removed", self.devices_removed),
            ("changed", self.devices_changed),
            ("restarted", self.devices_restarted),
        ):
            if names:
                devices.append(f"{what} {_few(names)}")
        parts.append("devices: " + ("; ".join(devices) if devices else "unchanged"))
        if self.mqtt_changed:
            parts.append("MQTT: reconnecting" + (" (topics move)" if self.mqtt_moved else ""))
        for flag, what in (
            (self.metrics_changed, "metrics endpoint"),
            (self.health_changed, "health interval"),
            (self.commands_changed, "command settings"),
        ):
            if flag:
                parts.append(f"{what} changed")
        if self.proxies_changed:
            parts.append(f"proxy restarted: {_few(self.proxies_changed)}")
        return "; ".join(parts)


def _few(names: tuple[str, ...], shown: int = 5) -> str:
    if len(names) <= shown:
        return ", ".join(names)
    return f"{', '.join(names[:shown])} and {len(names) - shown} more"


def active_hosts(config: BridgeConfig) -> dict[str, Host]:
    """The hosts that get a session: those with at least one device or a proxy."""
    used = {d.host for d in config.devices}
    return {h.name: h for h in config.hosts if h.name in used or h.proxy is not None}


def _session_settings(host: Host) -> Host:
    """What a host's session is opened with: everything but its proxy."""
    return host if host.proxy is None else replace(host, proxy=None)


def plan_reload(old: BridgeConfig, new: BridgeConfig) -> ReloadPlan:
    """What must change to run `new` where `old` runs."""
    old_hosts, new_hosts = active_hosts(old), active_hosts(new)
    old_sessions = {n: _session_settings(h) for n, h in old_hosts.items()}
    new_sessions = {n: _session_settings(h) for n, h in new_hosts.items()}
    kept = tuple(n for n, h in new_sessions.items() if old_sessions.get(n) == h)
    reopened = tuple(
        n for n, h in new_sessions.items() if n in old_sessions and old_sessions[n] != h
    )
    old_proxies = {n: h.proxy for n, h in old_hosts.items() if h.proxy is not None}
    new_proxies = {n: h.proxy for n, h in new_hosts.items() if h.proxy is not None}
    proxies_changed = tuple(
        n for n in {**old_proxies, **new_proxies} if old_proxies.get(n) != new_proxies.get(n)
    )
    old_devices = {d.name: d for d in old.devices}
    new_devices = {d.name: d for d in new.devices}
    changed = tuple(n for n, d in new_devices.items() if n in old_devices and old_devices[n] != d)
    restarted = tuple(
        n for n, d in new_devices.items() if old_devices.get(n) == d and d.host in reopened
    )
    return ReloadPlan(
        hosts_kept=kept,
        hosts_reopened=reopened,
        hosts_added=tuple(n for n in new_hosts if n not in old_hosts),
        hosts_removed=tuple(n for n in old_hosts if n not in new_hosts),
        devices_added=tuple(n for n in new_devices if n not in old_devices),
        devices_removed=tuple(n for n in old_devices if n not in new_devices),
        devices_changed=changed,
        devices_restarted=restarted,
        mqtt_changed=old.mqtt != new.mqtt or old.homeassistant != new.homeassistant,
        mqtt_moved=_where(old) != _where(new),
        metrics_changed=old.metrics != new.metrics,
        health_changed=old.health_interval != new.health_interval,
        commands_changed=(old.read_only, old.write_timeout) != (new.read_only, new.write_timeout),
        proxies_changed=proxies_changed,
    )


def _where(config: BridgeConfig) -> tuple[str, int, str]:
    m = config.mqtt
    return (m.host, m.port, m.base_topic)


def discovery_changes(
    old: Mapping[str, bytes], new: Mapping[str, bytes]
) -> tuple[list[Message], list[Message]]:
    """(stale, fresh) Home Assistant discovery messages between two announced sets
    (topic -> payload): an empty retained message for each topic no longer announced
    (Home Assistant removes that device), and each new or changed message."""
    stale = [Message(topic, b"", True) for topic in old if topic not in new]
    fresh = [Message(t, p, True) for t, p in new.items() if old.get(t) != p]
    return stale, fresh


def dropped_points(old: Device, new: Device, topics: Topics, output: Output) -> list[Message]:
    """Empty retained messages for the per-point topics of points a changed device no
    longer has (attribute output), so no value is left there that is never updated."""
    if output is Output.JSON:
        return []
    kept = {p.name for p in new.points}
    return [
        Message(topics.attribute(old.name, p.name), b"", True)
        for p in old.points
        if p.name not in kept
    ]
