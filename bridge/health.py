"""The health report published on `<base>/bridge/health`. Pure, except `rss_bytes`."""

from __future__ import annotations

import resource
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bridge.payloads import iso_utc, json_doc

if TYPE_CHECKING:  # type names only: importing this module must not load pymodbus
    from bridge.scheduler import PollStats
    from bridge.session import SessionStats
    from bridge.state import DeviceState

TRIMMED = "details left out: the full report is larger than the broker's maximum packet size"


def rss_bytes() -> int:
    """Resident set size now (Linux /proc), else the peak from getrusage."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def build_health(
    *,
    now: float,
    started: float,
    hosts: Mapping[str, tuple[bool, SessionStats]],
    devices: Mapping[str, DeviceState],
    polls: Mapping[str, PollStats],
    rss: int,
    mqtt: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The health document: per host, per device, MQTT and the process."""
    return {
        "time": iso_utc(now),
        "uptime_s": round(now - started, 1),
        "rss_bytes": rss,
        "mqtt": dict(mqtt or {}),
        "hosts": {
            name: {
                "connected": connected,
                "sockets_opened": s.sockets_opened,
                "reconnects": s.reconnects,
                "requests": s.requests,
                "errors": s.errors,
                "timeouts": s.timeouts,
                "bad_replies": s.bad_replies,
                "stray_frames": s.stray_frames,
                "drains": s.drains,
                "crc_errors": s.crc_errors,
                # Only units that had a fault: a bus with 200 healthy units stays short.
                "units": {
                    str(unit): {
                        "timeouts": u.timeouts,
                        "crc_errors": u.crc_errors,
                        "bad_replies": u.bad_replies,
                    }
                    for unit, u in sorted(s.units.items())
                },
                "latency_p50_ms": _ms(s.percentile(0.50)),
                "latency_p99_ms": _ms(s.percentile(0.99)),
            }
            for name, (connected, s) in hosts.items()
        },
        "devices": {
            name: {
                "available": st.available,
                "last_seen": iso_utc(st.last_seen) if st.last_seen is not None else None,
                "errors": polls[name].failures if name in polls else 0,
                "cycles": polls[name].cycles if name in polls else 0,
                "missed_cycles": polls[name].skipped if name in polls else 0,
                "skipped_ranges": list(polls[name].skipped_ranges) if name in polls else [],
            }
            for name, st in devices.items()
        },
    }


def fit_health(doc: Mapping[str, Any], limit: int) -> bytes | None:
    """The health report as a payload of at most `limit` bytes, or None.

    A broker with a small maximum packet size (Mosquitto's `max_packet_size`) would
    disconnect the bridge for a report that does not fit, so it is trimmed in steps
    until it does: first the per-device details give way to counts and the names of
    the devices that are offline (as many as fit), then the per-host details to
    counts. What was left out is said in `trimmed`.
    """
    full = json_doc(doc)
    if len(full) <= limit:
        return full
    devices: Mapping[str, Mapping[str, Any]] = doc.get("devices", {})
    hosts: Mapping[str, Mapping[str, Any]] = doc.get("hosts", {})
    offline = sorted(name for name, d in devices.items() if d.get("available") is not True)
    summary = {
        "total": len(devices),
        "offline": len(offline),
        "offline_names": offline,
    }
    trimmed: dict[str, Any] = {**doc, "devices": summary, "trimmed": TRIMMED}
    # As many offline names as fit (they are what a person looks for at 3 a.m.).
    low, high = 0, len(offline)
    while low < high:
        mid = (low + high + 1) // 2
        summary["offline_names"] = offline[:mid]
        if len(json_doc(trimmed)) <= limit:
            low = mid
        else:
            high = mid - 1
    summary["offline_names"] = offline[:low]
    payload = json_doc(trimmed)
    if len(payload) <= limit:
        return payload
    trimmed["hosts"] = {
        "total": len(hosts),
        "connected": sum(1 for h in hosts.values() if h.get("connected")),
    }
    summary["offline_names"] = []
    payload = json_doc(trimmed)
    if len(payload) <= limit:
        return payload
    minimal = {
        "time": doc.get("time"),
        "uptime_s": doc.get("uptime_s"),
        "devices": {"total": len(devices), "offline": len(offline)},
        "hosts": trimmed["hosts"],
        "trimmed": "most details left out (maximum packet size)",
    }
    payload = json_doc(minimal)
    return payload if len(payload) <= limit else None
