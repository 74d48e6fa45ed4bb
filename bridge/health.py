"""The health report published on `<base>/bridge/health`. Pure, except `rss_bytes`."""

from __future__ import annotations

import resource
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bridge.payloads import iso_utc

if TYPE_CHECKING:  # type names only: importing this module must not load pymodbus
    from bridge.scheduler import PollStats
    from bridge.session import SessionStats
    from bridge.state import DeviceState


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
) -> dict[str, Any]:
    """The health document: per host, per device, and the process."""
    return {
        "time": iso_utc(now),
        "uptime_s": round(now - started, 1),
        "rss_bytes": rss,
        "hosts": {
            name: {
                "connected": connected,
                "sockets_opened": s.sockets_opened,
                "reconnects": s.reconnects,
                "requests": s.requests,
                "errors": s.errors,
                "timeouts": s.timeouts,
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
