"""The health report published on `<base>/bridge/health`. Pure, except `rss_bytes`.

It renders a `bridge.figures.Figures` snapshot: every figure that declares a health
key, in declaration order.

`health_payload` renders it in steps (a generator that yields after every host and
every few devices): the composition root gives the event loop back between slices
of steps, so a report of thousands of devices never holds the loop for long
(`app.Bridge._health_steps`). It gives the same bytes as `fit_health(build_health())`.
"""

from __future__ import annotations

import resource
from collections.abc import Generator, Mapping
from typing import Any

from bridge.figures import Figures, shown_fields
from bridge.payloads import iso_utc, json_doc

TRIMMED = "details left out: the full report is larger than the broker's maximum packet size"
DEVICES_PER_STEP = 10  # devices rendered between two chances to give the loop back


def rss_bytes() -> int:
    """Resident set size now (Linux /proc), else the peak from getrusage."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _doc(record: object) -> dict[str, Any]:
    """A snapshot record as the report shows it. A field holding records (a host's
    units) becomes a mapping by their `key` of those with a figure other than zero:
    a bus with 200 healthy units stays short."""
    doc: dict[str, Any] = {}
    for name, spec in shown_fields(record):
        if spec.health is None:
            continue
        value = getattr(record, name)
        if spec.records:
            doc[spec.health] = {
                item.key: inner for item in value if any((inner := _doc(item)).values())
            }
        else:
            doc[spec.health] = spec.to_health(value)
    return doc


def build_health(figures: Figures) -> dict[str, Any]:
    """The health document: per host, per device, MQTT and the process."""
    return {
        "time": iso_utc(figures.time),
        "uptime_s": round(figures.time - figures.started, 1),
        "rss_bytes": figures.rss,
        "mqtt": _doc(figures.mqtt),
        "hosts": {host.name: _doc(host) for host in figures.hosts},
        "devices": {device.name: _doc(device) for device in figures.devices},
        **_tail(figures),
    }


def _tail(figures: Figures) -> dict[str, Any]:
    """What follows the devices in the report: the configuration, and the parts that are
    there only when they are on (proxies, the previous report, buffer, Sparkplug)."""
    return {
        "config": _doc(figures.config),
        **({"proxies": {p.host: _doc(p) for p in figures.proxies}} if figures.proxies else {}),
        **({"report": _doc(figures.report)} if figures.report is not None else {}),
        **({"buffer": _doc(figures.buffer)} if figures.buffer is not None else {}),
        **({"sparkplug": _doc(figures.sparkplug)} if figures.sparkplug is not None else {}),
    }


def health_payload(figures: Figures, limit: int) -> Generator[None, None, bytes | None]:
    """`fit_health(build_health(figures), limit)` in steps: yields after each host,
    each DEVICES_PER_STEP devices and the head; returns the payload (None: it cannot
    fit).

    The devices, the bulk of a large report, are encoded to JSON a step at a time and
    the pieces joined; only a report too large for the broker is trimmed all at once
    (`fit_health`).
    """
    hosts: dict[str, Any] = {}
    for host in figures.hosts:
        hosts[host.name] = _doc(host)
        yield
    devices: dict[str, Any] = {}
    pieces: list[bytes] = []
    everything = figures.devices
    for start in range(0, len(everything), DEVICES_PER_STEP):
        step = {d.name: _doc(d) for d in everything[start : start + DEVICES_PER_STEP]}
        devices.update(step)
        pieces.append(json_doc(step)[1:-1])
        yield
    head = {
        "time": iso_utc(figures.time),
        "uptime_s": round(figures.time - figures.started, 1),
        "rss_bytes": figures.rss,
        "mqtt": _doc(figures.mqtt),
        "hosts": hosts,
    }
    opening = json_doc(head)[:-1] + b',"devices":{'
    yield
    # One copy of the whole (about 180 kB at 1,000 devices): a buffer that large is
    # fresh memory from the kernel each time, page by page.
    parts = [opening]
    for piece in pieces:
        if piece:
            parts += (piece, b",")
    if len(parts) > 1:
        parts.pop()
    tail = _tail(figures)
    parts += (b"},", json_doc(tail)[1:])
    payload = b"".join(parts)
    if len(payload) <= limit:
        return payload
    return fit_health({**head, "devices": devices, **tail}, limit)


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
