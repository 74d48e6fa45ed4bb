"""Helpers of bench/perf.py: device profiles, register values, statistics, the table.

Pure apart from the /proc readers at the end, so tests/unit/test_perfkit.py covers it
without sockets or processes.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import struct
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# -- device profiles ------------------------------------------------------------------------------

Point = dict[str, Any]


@dataclass(frozen=True)
class Profile:
    """The points of one simulated device, in the bridge's configuration format.

    `blocks` is what the bridge's planner makes of them (max_gap 10): the floor
    reads exactly these. The first block's read marks the start of a device cycle
    on the server; the point named `seq` carries the value generation, so a
    subscriber can tell which change a state message shows.
    """

    name: str
    points: tuple[Point, ...]
    blocks: tuple[tuple[str, int, int], ...]  # (table, start, count)

    @property
    def first(self) -> tuple[str, int]:
        table, start, _ = self.blocks[0]
        return table, start


def _p(name: str, table: str, address: int, type_: str, **extra: Any) -> Point:
    return {"name": name, "table": table, "address": address, "type": type_, **extra}


# 13 points in 6 blocks: the per-cycle comparison of issue 10.
CYCLE = Profile(
    "cycle",
    (
        _p("voltage", "holding", 0, "float32", unit="V"),
        _p("current", "holding", 2, "float32", unit="A"),
        _p("status", "holding", 4, "uint16"),
        _p("energy", "holding", 100, "uint32", scale=0.1, precision=1, unit="kWh"),
        _p("power", "holding", 102, "int32", unit="W"),
        _p("temp", "holding", 200, "int16", scale=0.1, precision=1),
        _p("mode", "holding", 201, "uint16"),
        _p("reactive", "input", 0, "int32"),
        _p("pf", "input", 2, "int16", scale=0.001, precision=3),
        _p("alarms", "input", 100, "uint16"),
        _p("frequency", "input", 101, "float32", unit="Hz"),
        _p("seq", "input", 200, "uint32"),
        _p("runtime", "input", 202, "uint16"),
    ),
    (
        ("holding", 0, 5),
        ("holding", 100, 4),
        ("holding", 200, 2),
        ("input", 0, 3),
        ("input", 100, 3),
        ("input", 200, 3),
    ),
)

# 15 points in 3 blocks: the 1,000-meter fleet.
FLEET = Profile(
    "fleet",
    (
        _p("voltage_l1", "holding", 0, "float32", unit="V"),
        _p("voltage_l2", "holding", 2, "float32", unit="V"),
        _p("voltage_l3", "holding", 4, "float32", unit="V"),
        _p("current", "holding", 6, "float32", unit="A"),
        _p("frequency", "holding", 8, "uint16", scale=0.01, precision=2, unit="Hz"),
        _p("pf", "holding", 9, "int16", scale=0.001, precision=3),
        _p("energy_in", "holding", 100, "uint32", scale=0.1, precision=1, unit="kWh"),
        _p("energy_out", "holding", 102, "uint32", scale=0.1, precision=1, unit="kWh"),
        _p("power", "holding", 104, "int32", unit="W"),
        _p("reactive", "holding", 106, "int32", unit="var"),
        _p("apparent", "holding", 108, "uint32", unit="VA"),
        _p("temp", "input", 0, "int16", scale=0.1, precision=1),
        _p("status", "input", 1, "uint16"),
        _p("alarms", "input", 2, "uint16"),
        _p("seq", "input", 3, "uint32"),
    ),
    (("holding", 0, 10), ("holding", 100, 10), ("input", 0, 5)),
)

# 4 points in 1 block, integer types only (what modbus4mqtt can read too).
SMALL = Profile(
    "small",
    (
        _p("status", "holding", 0, "uint16"),
        _p("temp", "holding", 1, "int16"),
        _p("seq", "holding", 2, "uint32"),
        _p("power", "holding", 4, "int32"),
    ),
    (("holding", 0, 6),),
)

PROFILES = {p.name: p for p in (CYCLE, FLEET, SMALL)}

_FORMATS = {"float32": "f", "uint16": "H", "int16": "h", "uint32": "I", "int32": "i"}


def point_value(point: Point, unit: int, gen: int) -> float | int:
    """The raw value of `point` of device `unit` at generation `gen` (changes with `gen`)."""
    kind = point["type"]
    if point["name"] == "seq":
        return gen % 2**32
    if kind == "float32":
        return 200.0 + unit % 64 + (gen % 512) * 0.25  # exact in float32
    if kind == "uint16":
        return (unit + gen) % 2**16
    if kind == "int16":
        return (unit + gen) % 2000 - 1000
    if kind == "uint32":
        return (unit * 100_000 + gen) % 2**32
    if kind == "int32":
        return (-1) ** gen * (unit * 1000 + gen % 1000)
    raise ValueError(f"no generator for type {kind}")


def words(point: Point, value: float | int) -> list[int]:
    raw = struct.pack(">" + _FORMATS[point["type"]], value)
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def unit_registers(profile: Profile, unit: int, gen: int) -> list[tuple[str, int, list[int]]]:
    """(table, address, registers) writes that put device `unit` at generation `gen`."""
    return [(p["table"], p["address"], words(p, point_value(p, unit, gen))) for p in profile.points]


# -- statistics -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The `q` quantile (0..1) by the nearest-rank method; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 1))  # ceil(n * q), at least 1
    return float(ordered[min(len(ordered), int(rank)) - 1])


@dataclass(frozen=True)
class Schedule:
    """What the cycle starts seen at the server say about the schedule."""

    cycles: int
    skipped: int  # grid slots without a start, between a device's first and last start
    lags: list[float]  # seconds after the device's drift-free grid


def schedule(starts: Mapping[str, Sequence[float]], interval: float) -> Schedule:
    """Cycle starts per device (server timestamps) against a drift-free grid.

    The bridge's deadlines are start + k * interval, but its phase per device is not
    visible from outside. Per device the grid is anchored at its earliest start
    (the start minus k * interval that is smallest), so a lag is how much later
    than that best case a cycle began, queueing behind other devices included.
    """
    cycles = skipped = 0
    lags: list[float] = []
    for times in starts.values():
        if not times:
            continue
        ordered = sorted(times)
        t0 = ordered[0]
        slots = [round((t - t0) / interval) for t in ordered]
        offsets = [t - t0 - k * interval for t, k in zip(ordered, slots, strict=True)]
        best = min(offsets)
        lags.extend(o - best for o in offsets)
        cycles += len(ordered)
        skipped += sum(max(0, b - a - 1) for a, b in itertools.pairwise(slots))
    return Schedule(cycles, skipped, lags)


# -- the table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    section: str
    measure: str
    figure: str
    target: str = ""
    met: bool | None = None  # None: no target
    load: str = ""


def verdict(met: bool | None) -> str:
    return "" if met is None else ("yes" if met else "**no**")


def markdown_table(rows: Iterable[Row]) -> str:
    lines = [
        "| § | measure | figure | target | met | load 1/5 min; others |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = (r.section, r.measure, r.figure, r.target, verdict(r.met), r.load)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


# -- the profile (py-spy speedscope) --------------------------------------------------------------

EVENT_LOOP = "event loop (asyncio, selectors)"
OTHER = "other (stdlib, interpreter)"
# (group, substrings of a frame's file) in order: the first match names the group.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("MQTT client (aiomqtt, paho)", ("/aiomqtt/", "/paho/")),
    ("pymodbus transaction path", ("/pymodbus/",)),
    ("logging", ("/logging/",)),
    ("entry", ("bridge/cli.py", "bridge/__main__.py", "/runpy.py")),
    ("bridge: session", ("bridge/session.py", "bridge/wire.py", "bridge/frames.py",
                         "bridge/linkhealth.py")),
    ("bridge: scheduler", ("bridge/scheduler.py",)),
    ("bridge: decoding", ("bridge/planner.py", "bridge/codec.py")),
    ("bridge: state, payloads, publish", ("bridge/state.py", "bridge/payloads.py", "bridge/app.py",
                                          "bridge/topics.py", "bridge/mqtt.py")),
    ("bridge: other", ("/bridge/",)),
    (EVENT_LOOP, ("/asyncio/", "selectors.py")),
)  # fmt: skip
# Groups that do not own the time spent under them: it goes to the nearest owner that
# called them (json.dumps called by payloads.py is the bridge's; a socket write made by
# pymodbus through an asyncio transport is pymodbus's).
NOT_OWNERS = frozenset({"entry", EVENT_LOOP, OTHER})


def frame_group(file: str) -> str:
    for group, needles in GROUPS:
        if any(n in file for n in needles):
            return group
    return OTHER


def speedscope_groups(doc: Mapping[str, Any]) -> tuple[dict[str, float], float]:
    """Sample weight per owner group from a py-spy speedscope document (stacks root first).

    A sample belongs to the innermost frame on its stack whose group owns time (see
    NOT_OWNERS); a sample with none (waiting in select, running callbacks) is the
    event loop's when an asyncio frame is on the stack. Returns (weights, total).
    """
    frames = doc["shared"]["frames"]
    groups = [frame_group(str(f.get("file") or "")) for f in frames]
    owned: Counter[str] = Counter()
    total = 0.0
    for prof in doc["profiles"]:
        for stack, weight in zip(prof["samples"], prof["weights"], strict=True):
            if not stack:
                continue
            total += weight
            chain = [groups[i] for i in reversed(stack)]
            owner = next((g for g in chain if g not in NOT_OWNERS), None)
            if owner is None:
                owner = EVENT_LOOP if EVENT_LOOP in chain else OTHER
            owned[owner] += weight
    return dict(owned), total


def short_path(file: str) -> str:
    """A frame's file without the machine's prefix: `pymodbus/...`, `asyncio/...`, `bridge/...`."""
    for marker in ("site-packages/", "/bridge/"):
        if marker in file:
            head = "bridge/" if marker == "/bridge/" else ""
            return head + file.rsplit(marker, 1)[-1]
    if "/lib/python3" in file:
        return file.rsplit("/lib/python3", 1)[-1].split("/", 1)[-1]
    return file


def top_functions(doc: Mapping[str, Any], n: int = 15) -> list[tuple[str, float]]:
    """The `n` heaviest functions by self weight (lines of a function summed)."""
    frames = doc["shared"]["frames"]
    weights: Counter[str] = Counter()
    for prof in doc["profiles"]:
        for stack, weight in zip(prof["samples"], prof["weights"], strict=True):
            if stack:
                f = frames[stack[-1]]
                weights[f"{f.get('name')} ({short_path(str(f.get('file') or '?'))})"] += weight
    return [(name, float(w)) for name, w in weights.most_common(n)]


# -- /proc readers --------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str = "self") -> float:
    """On-CPU time of all live threads of a process, from /proc/<pid>/task/*/schedstat.

    The time utime + stime of /proc/<pid>/stat counts, in nanoseconds instead of 10 ms
    ticks (50 modbus4mqtt processes use a few ticks each in a window).
    """
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy, all cores together (/proc/stat)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:8]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle) / CLK_TCK


def loadavg() -> str:
    """The 1- and 5-minute load averages, as "1.02 / 0.87"."""
    with open("/proc/loadavg") as fh:
        one, five = fh.read().split()[:2]
    return f"{one} / {five}"
