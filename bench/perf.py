"""CPU, memory and timing of the bridge against the floor a bare pymodbus loop sets.

    .venv/bin/python bench/perf.py [--quick] [--sections cycle,fleet,steady,small,throughput]

Every measured program is a process of its own, measured from outside over a window
after a warm-up: the devices (bench/perfsim.py: `SimServer`s, whose CPU is not
counted), a Mosquitto on a free loopback port (tests/broker.py), the real bridge
(`python -m bridge run -c ...`), the floor (bench/perffloor.py) and, for the small
fleet, 50 modbus4mqtt processes. They run one after the other, never side by side.

Sections (issue 10):
  cycle       1, 2  floor and bridge per device cycle (13 points in 6 blocks)
  fleet       1, 3, 6, 7  1,000 devices (10 hosts x 100 units, 15 points in 3 blocks) at
              1 s: CPU, per read against the floor, RSS, lag, skipped cycles, sockets;
              latency change -> MQTT message; start-up to the first full state
  steady      8  the fleet with values that never change and changing every poll
  small       4  50 devices x 4 points at 1 s, and 50 modbus4mqtt processes
  throughput  5  the most reads/s one bridge sustains with no skipped cycle
  scaling     issue 19: 10, 100, 1,000 and 5,000 devices, each against the flat-out
              floor on the same devices: CPU per read, RSS, schedule lag; drawn with
              matplotlib (the `bench` extra) to bench/scaling.png

It prints one Markdown table (targets beside the figures; beside each run the load
average and the CPU that other processes used meanwhile; a run they disturbed is
measured again) and appends it with date, versions and machine to bench/RESULTS.md
(`--no-record` does not). bench/README.md explains the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import aiomqtt  # noqa: E402
import yaml  # noqa: E402
from broker import Broker  # noqa: E402  (tests/broker.py)
from perfkit import (  # noqa: E402
    CYCLE,
    FLEET,
    SMALL,
    Profile,
    Row,
    Schedule,
    cpu_seconds,
    fmt,
    loadavg,
    machine_busy,
    markdown_table,
    percentile,
    schedule,
    speedscope_groups,
    top_functions,
)
from soak import progress, start_bridge, vm_rss, wait_until  # noqa: E402  (bench/soak.py)
from sockets import connections_to  # noqa: E402  (tests/sockets.py)

SECTIONS = ("cycle", "fleet", "steady", "small", "throughput", "scaling")
BY_NUMBER = {
    "1": "cycle",
    "2": "cycle",
    "3": "fleet",
    "4": "small",
    "5": "throughput",
    "6": "fleet",
    "7": "fleet",
    "8": "steady",
}
M4M_DEFAULT = Path("/work/helpers/m4m-venv/bin/modbus4mqtt")

# Shapes of the runs (devices = hosts x units).
CYCLE_SHAPE = (4, 50)  # 200 devices at 1 s: 200 cycles/s, 1,200 reads/s
FLEET_SHAPE = (10, 100)
SMALL_SHAPE = (1, 50)
THROUGHPUT_RATES = (1500, 2000, 2500, 3000, 4000, 5000, 6000, 7500, 10000)  # reads/s
# The scaling run (issue 19): (hosts, units per host, interval s), fleet profile. 5,000
# devices poll every 5 s: 3,000 reads/s as 1,000 at 1 s (one core cannot read 15,000
# blocks a second, see the throughput section).
SCALING_SHAPES = ((2, 5, 1.0), (4, 25, 1.0), (10, 100, 1.0), (20, 250, 5.0))
SCALING_PNG = BENCH / "scaling.png"


# -- the devices process --------------------------------------------------------------------------


class Devices:
    """bench/perfsim.py in its own process, driven over its stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process, ports: list[int]) -> None:
        self.proc = proc
        self.ports = ports

    @classmethod
    async def start(cls, hosts: int, units: int, profile: Profile, fraction: float) -> Devices:
        argv = ["--hosts", hosts, "--units", units, "--profile", profile.name, "--change", fraction]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(BENCH / "perfsim.py"),
            *map(str, argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            limit=2**26,
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if not line:
            raise SystemExit("perfsim.py did not start")
        return cls(proc, list(json.loads(line)["ports"]))

    async def call(self, cmd: str, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}).encode() + b"\n")
        await self.proc.stdin.drain()
        answer: dict[str, Any] = json.loads(await self.proc.stdout.readline())
        return answer

    async def starts(self, since: float, until: float) -> dict[str, list[float]]:
        doc = await self.call("starts", since=since, until=until)
        return dict(doc["starts"])

    async def stop(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.proc.stdin.write(b'{"cmd":"quit"}\n')
                await self.proc.stdin.drain()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def server_cpu_pct(s0: dict[str, Any], s1: dict[str, Any]) -> float:
    return 100 * (s1["cpu"] - s0["cpu"]) / max(1e-9, s1["t"] - s0["t"])


# -- the MQTT side --------------------------------------------------------------------------------


@dataclass
class Watch:
    """A subscriber: first state per device, first sight of each `seq`, health reports."""

    port: int
    filters: Sequence[str]
    device_of: Callable[[str], str | None]
    health_topic: str | None = None
    first_state: dict[str, float] = field(default_factory=dict)
    seen: dict[tuple[str, int], float] = field(default_factory=dict)
    health: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    messages: int = 0

    def __post_init__(self) -> None:
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 10)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._task

    async def _run(self) -> None:
        client = aiomqtt.Client("127.0.0.1", self.port, identifier=f"perf-watch-{id(self)}")
        async with client:
            for topic in self.filters:
                await client.subscribe(topic, qos=0)
            if self.health_topic:
                await client.subscribe(self.health_topic, qos=0)
            self._ready.set()
            async for message in client.messages:
                self._record(time.monotonic(), str(message.topic), message.payload)

    def _record(self, now: float, topic: str, payload: Any) -> None:
        self.messages += 1
        if topic == self.health_topic:
            self.health.append((now, json.loads(payload)))
            return
        device = self.device_of(topic)
        if device is None or not payload:
            return
        self.first_state.setdefault(device, now)
        seq = json.loads(payload).get("seq")
        if isinstance(seq, int):
            self.seen.setdefault((device, seq), now)

    async def next_health(self, timeout: float) -> tuple[float, dict[str, Any]]:
        """The first health report that arrives from now on."""
        count = len(self.health)
        if not await wait_until(lambda: len(self.health) > count, timeout, step=0.005):
            raise SystemExit("no health report from the bridge")
        return self.health[count]


# -- results --------------------------------------------------------------------------------------


@dataclass
class Floor:
    profile: str
    devices: int
    interval: float  # 0: flat out
    reads: int
    cycles: int
    cpu: float
    wall: float
    server_pct: float
    load: str
    others_pct: float

    @property
    def us_per_read(self) -> float:
        return 1e6 * self.cpu / max(1, self.reads)

    @property
    def us_per_cycle(self) -> float:
        return 1e6 * self.cpu / max(1, self.cycles)

    @property
    def noise(self) -> str:
        return noise(self.load, self.others_pct)


@dataclass
class Run:
    """One measured window of a bridge (or of the modbus4mqtt processes)."""

    name: str
    devices: int
    interval: float
    fraction: float
    cpu: float  # seconds of CPU in the window
    wall: float
    reads: int  # requests the server answered in the window
    sched: Schedule  # cycles, skipped and lag, from the server's cycle starts
    rss: int  # bytes
    max_open: list[int]  # most connections open at once, per host (server side)
    opened: list[int]  # connections accepted during the run, per host
    server_pct: float
    load: str
    others_pct: float
    established: int = 0  # the bridge's own established Modbus sockets at the end
    health_missed: int | None = None  # missed_cycles in the window (bridge health)
    health_cycles: int | None = None
    health_errors: int | None = None
    startup: float | None = None  # launch -> first state of every device
    rtt_ms: tuple[float | None, float | None] = (None, None)  # worst host's p50, p99 (health)
    latencies: list[float] = field(default_factory=list)
    latency_missing: int = 0
    profile: Path | None = None  # py-spy speedscope file of the window
    # The bridge's own account of its health reports in the window (`report` in each):
    # the longest slice (wall time; CPU time), the slices together, how many reports.
    report_hold_ms: tuple[float | None, float | None, float | None, int] = (None, None, None, 0)

    @property
    def cpu_pct(self) -> float:
        return 100 * self.cpu / self.wall

    @property
    def us_per_read(self) -> float:
        return 1e6 * self.cpu / max(1, self.reads)

    @property
    def us_per_cycle(self) -> float:
        return 1e6 * self.cpu / max(1, self.sched.cycles)

    @property
    def reads_per_s(self) -> float:
        return self.reads / self.wall

    @property
    def skipped(self) -> int:
        return max(self.sched.skipped, self.health_missed or 0)

    @property
    def noise(self) -> str:
        return noise(self.load, self.others_pct)


def noise(load: str, others_pct: float) -> str:
    """What else ran: load average at the start, CPU of processes outside the bench."""
    return f"{load}; others {others_pct:.0f} %"


@dataclass
class Meter:
    """Machine-wide busy CPU over a window, less what the bench's own processes used."""

    broker_pid: int | None
    busy: float = 0.0
    own: float = 0.0

    def __post_init__(self) -> None:
        self.busy, self.own = machine_busy(), self._own()

    def _own(self) -> float:
        broker = cpu_seconds(self.broker_pid) if self.broker_pid else 0.0
        return cpu_seconds() + broker

    def others_pct(self, measured: float, wall: float) -> float:
        """% of one core used by processes other than ours; `measured` is the CPU
        seconds of the measured process(es) and the device server in the window."""
        others = machine_busy() - self.busy - (self._own() - self.own) - measured
        return max(0.0, 100 * others / wall)


@dataclass
class Ctx:
    args: argparse.Namespace
    broker: Broker
    workdir: Path
    runs: int = 0

    def base(self, name: str) -> str:
        """A fresh base topic per run: no retained message of an earlier run counts."""
        self.runs += 1
        return f"perf{self.runs}-{name}"


M = TypeVar("M", Floor, Run)


async def wait_quiet(args: argparse.Namespace) -> None:
    """With --quiet-below: wait until other processes leave the machine idle enough."""
    if args.quiet_below is None:
        return
    deadline = time.monotonic() + args.quiet_timeout
    while True:
        busy0 = machine_busy()
        await asyncio.sleep(3)
        pct = 100 * (machine_busy() - busy0) / 3
        if pct <= args.quiet_below:
            return
        if time.monotonic() > deadline:
            progress(f"machine still busy ({pct:.0f} % of a core); measuring anyway")
            return
        progress(f"waiting for a quieter machine: {pct:.0f} % of a core busy")


# -- the floor ------------------------------------------------------------------------------------


async def run_floor(
    ctx: Ctx, profile: Profile, shape: tuple[int, int], interval: float = 0.0
) -> Floor:
    """The bare pymodbus loop on the shape's devices: flat out, or paced at `interval`."""
    a = ctx.args
    hosts, units = shape
    await wait_quiet(a)
    load = loadavg()
    devices = await Devices.start(hosts, units, profile, 0.0)
    try:
        ports = ",".join(map(str, devices.ports))
        argv = ["--ports", ports, "--units", units, "--profile", profile.name,
                "--interval", interval, "--warmup", a.floor_warmup,
                "--seconds", a.floor_seconds]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(BENCH / "perffloor.py"), *map(str, argv), stdout=subprocess.PIPE
        )
        await asyncio.sleep(a.floor_warmup)
        s0 = await devices.call("stats")
        out, _ = await proc.communicate()
        s1 = await devices.call("stats")
    finally:
        await devices.stop()
    if proc.returncode != 0:
        raise SystemExit(f"perffloor.py failed ({proc.returncode})")
    doc = json.loads(out.decode().strip().splitlines()[-1])
    server_pct = server_cpu_pct(s0, s1)
    others = doc["busy"] - doc["cpu"] - server_pct / 100 * doc["wall"]  # broker, bench: idle
    floor = Floor(
        profile=profile.name,
        devices=hosts * units,
        interval=interval,
        reads=doc["reads"],
        cycles=doc["cycles"],
        cpu=doc["cpu"],
        wall=doc["wall"],
        server_pct=server_pct,
        load=load,
        others_pct=max(0.0, 100 * others / doc["wall"]),
    )
    progress(
        f"floor {profile.name} {'paced' if interval else 'flat out'}: "
        f"{floor.us_per_read:.1f} µs/read, "
        f"{floor.us_per_cycle:.1f} µs/cycle, {floor.reads / floor.wall:,.0f} reads/s, "
        f"server {floor.server_pct:.0f} %, load {floor.noise}"
    )
    return floor


# -- the bridge -----------------------------------------------------------------------------------


def device_name(host: int, unit: int) -> str:
    return f"g{host}-u{unit}"


def bridge_config(
    base: str,
    broker: Broker,
    ports: Sequence[int],
    units: int,
    profile: Profile,
    *,
    interval: float,
    health: float,
    spread: bool = True,
) -> dict[str, Any]:
    """The bridge's defaults apart from addresses: QoS 1, retained JSON state (and, with
    `spread` False, hosts whose devices poll together: `spread: false`)."""
    return {
        "version": 1,
        "health_interval": health,
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "client_id": f"{base}-bridge",
            "base_topic": base,
        },
        "hosts": [
            {"name": f"gw{h}", "address": "127.0.0.1", "port": p, "timeout": 1.0}
            | ({} if spread else {"spread": False})
            for h, p in enumerate(ports)
        ],
        "devices": [
            {
                "name": f"g{h}-u{{unit}}",
                "host": f"gw{h}",
                "units": f"1-{units}",
                "interval": interval,
                "points": list(profile.points),
            }
            for h in range(len(ports))
        ],
    }


def _health_sums(doc: dict[str, Any]) -> tuple[int, int, int]:
    devs = doc.get("devices", {}).values()
    return (
        sum(d.get("cycles", 0) for d in devs),
        sum(d.get("missed_cycles", 0) for d in devs),
        sum(d.get("errors", 0) for d in devs),
    )


async def run_bridge(
    ctx: Ctx,
    name: str,
    profile: Profile,
    shape: tuple[int, int],
    *,
    interval: float = 1.0,
    fraction: float,
    window: float,
    warmup: float,
    profile_out: Path | None = None,
) -> Run:
    a = ctx.args
    hosts, units = shape
    await wait_quiet(a)
    load = loadavg()
    devices = await Devices.start(hosts, units, profile, fraction)
    base = ctx.base(name)
    prefix = base + "/"

    def device_of(topic: str) -> str | None:
        rest = topic[len(prefix) :]
        return rest if "/" not in rest and rest != "bridge" else None

    watch = Watch(ctx.broker.port, [f"{base}/+"], device_of, f"{base}/bridge/health")
    await watch.start()
    config = ctx.workdir / f"{base}.yaml"
    doc = bridge_config(
        base,
        ctx.broker,
        devices.ports,
        units,
        profile,
        interval=interval,
        health=a.health,
        spread=not a.no_spread,
    )
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    log = ctx.workdir / f"{base}.log"
    launched = time.monotonic()
    proc = start_bridge(config, log, "warning")
    spy: subprocess.Popen[bytes] | None = None
    try:
        n = hosts * units
        if not await wait_until(lambda: len(watch.first_state) >= n, 120, step=0.005):
            raise SystemExit(f"{name}: only {len(watch.first_state)} of {n} devices published")
        startup = max(watch.first_state.values()) - launched
        await asyncio.sleep(warmup)
        t0, h0 = await watch.next_health(a.health * 3)
        cpu0, meter = cpu_seconds(proc.pid), Meter(ctx.broker.pid)
        s0 = await devices.call("stats")
        if profile_out is not None:
            profile_out = profile_out.with_name(f"{profile_out.stem}-{base}{profile_out.suffix}")
            spy = start_py_spy(a.py_spy, proc.pid, profile_out, window)
        await asyncio.sleep(max(0.0, window - a.health / 2))
        t1, h1 = await watch.next_health(a.health * 3)
        cpu1 = cpu_seconds(proc.pid)
        s1 = await devices.call("stats")
        others = meter.others_pct(cpu1 - cpu0 + s1["cpu"] - s0["cpu"], t1 - t0)
        rss = vm_rss(proc.pid) or 0
        established = connections_to(proc.pid, devices.ports)
        sched = schedule(await devices.starts(t0, t1), interval)
        changes = (await devices.call("changes", since=t0, until=t1 - 0.5))["changes"]
        await asyncio.sleep(0.5)  # the last changes' messages
        if spy is not None:
            spy.wait(timeout=window + 60)
    finally:
        stop_process(proc)
        await watch.stop()
        await devices.stop()
    c0, m0, e0 = _health_sums(h0)
    c1, m1, e1 = _health_sums(h1)
    reports = [doc["report"] for t, doc in watch.health if t0 < t <= t1 and "report" in doc]
    lat, missing = [], 0
    for host, unit, gen, t_change in changes:
        t_rx = watch.seen.get((device_name(host, unit), gen))
        if t_rx is None:
            missing += 1
        else:
            lat.append(t_rx - t_change)
    run = Run(
        name=name,
        devices=hosts * units,
        interval=interval,
        fraction=fraction,
        cpu=cpu1 - cpu0,
        wall=t1 - t0,
        reads=sum(s1["requests"]) - sum(s0["requests"]),
        sched=sched,
        rss=rss,
        max_open=s1["max_open"],
        opened=s1["connections_total"],
        server_pct=server_cpu_pct(s0, s1),
        load=load,
        others_pct=others,
        established=established,
        health_missed=m1 - m0,
        health_cycles=c1 - c0,
        health_errors=e1 - e0,
        startup=startup,
        latencies=lat,
        latency_missing=missing,
        rtt_ms=worst_rtt(h1),
        profile=profile_out,
        report_hold_ms=(
            max((r["longest_slice_ms"] for r in reports), default=None),
            max(
                (r.get("longest_slice_cpu_ms", r["longest_slice_ms"]) for r in reports),
                default=None,
            ),
            max((r["held_ms"] for r in reports), default=None),
            len(reports),
        ),
    )
    progress(summary(run))
    return run


def worst_rtt(health: dict[str, Any]) -> tuple[float | None, float | None]:
    """The slowest host's request latency p50 and p99 (ms) in a health report."""
    hosts = health.get("hosts", {}).values()
    p50 = [h["latency_p50_ms"] for h in hosts if h.get("latency_p50_ms") is not None]
    p99 = [h["latency_p99_ms"] for h in hosts if h.get("latency_p99_ms") is not None]
    return (max(p50, default=None), max(p99, default=None))


def summary(run: Run) -> str:
    return (
        f"{run.name}: {run.devices} devices, CPU {run.cpu_pct:.1f} % "
        f"({run.us_per_read:.1f} µs/read, {run.us_per_cycle:.1f} µs/cycle), "
        f"{run.reads_per_s:,.0f} reads/s, skipped {run.sched.skipped}/{run.health_missed}, "
        f"RSS {(run.rss or 0) / 2**20:.1f} MiB, server {run.server_pct:.0f} %, "
        f"Modbus p50/p99 {run.rtt_ms[0]}/{run.rtt_ms[1]} ms, "
        f"lag p50/p99 {ms(percentile(run.sched.lags, 0.5), 2)}/"
        f"{ms(percentile(run.sched.lags, 0.99), 2)}, "
        f"change → MQTT p50/p99 {ms(percentile(run.latencies, 0.5), 2)}/"
        f"{ms(percentile(run.latencies, 0.99), 2)}, load {run.noise}"
    )


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_py_spy(exe: str, pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes]:
    argv = [exe, "record", "--pid", pid, "--duration", int(seconds), "--rate", 200,
            "--format", "speedscope", "--output", out, "--nonblocking"]  # fmt: skip
    return subprocess.Popen(
        list(map(str, argv)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


# -- modbus4mqtt ----------------------------------------------------------------------------------


def m4m_config(port: int, unit: int) -> dict[str, Any]:
    """One device in modbus4mqtt's format: the small profile's block (6 registers from
    0, `scan_batching` 6), published together as one retained JSON document."""
    registers = [
        {"pub_topic": "state", "json_key": p["name"], "retain": True, "table": p["table"],
         "address": p["address"], "type": p["type"]}
        for p in SMALL.points
    ]  # fmt: skip
    return {"ip": "127.0.0.1", "port": port, "device_address": unit, "update_rate": 1,
            "scan_batching": 6, "registers": registers}  # fmt: skip


async def run_m4m(ctx: Ctx, exe: Path, fraction: float) -> Run:
    """50 modbus4mqtt processes, one per device, as it is meant to run."""
    a = ctx.args
    hosts, units = SMALL_SHAPE
    await wait_quiet(a)
    load = loadavg()
    devices = await Devices.start(hosts, units, SMALL, fraction)
    base = ctx.base("m4m")

    def device_of(topic: str) -> str | None:
        parts = topic.split("/")
        return parts[1] if len(parts) == 3 and parts[2] == "state" else None

    watch = Watch(ctx.broker.port, [f"{base}/+/state"], device_of)
    await watch.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with (ctx.workdir / f"{base}.log").open("ab") as log:
            for unit in range(1, units + 1):
                config = ctx.workdir / f"{base}-{unit}.yaml"
                config.write_text(yaml.safe_dump(m4m_config(devices.ports[0], unit)))
                topic = f"{base}/{device_name(0, unit)}/"
                argv = [exe, "--hostname", "127.0.0.1", "--port", ctx.broker.port,
                        "--config", config, "--mqtt_topic_prefix", topic]  # fmt: skip
                proc = subprocess.Popen(list(map(str, argv)), stdout=log, stderr=log)  # noqa: ASYNC220
                procs.append(proc)
        if not await wait_until(lambda: len(watch.first_state) >= units, 120):
            raise SystemExit(f"modbus4mqtt: only {len(watch.first_state)} of {units} published")
        await asyncio.sleep(a.warmup)
        t0, s0 = time.monotonic(), await devices.call("stats")
        cpu0, meter = sum(cpu_seconds(p.pid) for p in procs), Meter(ctx.broker.pid)
        await asyncio.sleep(a.window)
        t1, s1 = time.monotonic(), await devices.call("stats")
        cpu1 = sum(cpu_seconds(p.pid) for p in procs)
        others = meter.others_pct(cpu1 - cpu0 + s1["cpu"] - s0["cpu"], t1 - t0)
        rss = sum(vm_rss(p.pid) or 0 for p in procs)
        starts = await devices.starts(t0, t1)
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in procs:
            stop_process(p)
        await watch.stop()
        await devices.stop()
    cycles = sum(len(ts) for ts in starts.values())
    run = Run(
        name="modbus4mqtt",
        devices=units,
        interval=1.0,
        fraction=fraction,
        cpu=cpu1 - cpu0,
        wall=t1 - t0,
        reads=sum(s1["requests"]) - sum(s0["requests"]),
        sched=Schedule(cycles, 0, []),
        rss=rss,
        max_open=s1["max_open"],
        opened=s1["connections_total"],
        server_pct=server_cpu_pct(s0, s1),
        load=load,
        others_pct=others,
    )
    progress(summary(run))
    return run


# -- the sections ---------------------------------------------------------------------------------


@dataclass
class Results:
    floors: dict[str, Floor] = field(default_factory=dict)  # paced as the bridge polls
    flat: dict[str, Floor] = field(default_factory=dict)  # flat out
    cycle: Run | None = None
    fleet: Run | None = None
    steady: Run | None = None
    changing: Run | None = None
    small: Run | None = None
    m4m: Run | None = None
    m4m_note: str = ""
    throughput: list[tuple[int, Run, bool]] = field(default_factory=list)
    scaling: list[tuple[Floor, Run]] = field(default_factory=list)  # flat-out floor, bridge


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def passes(run: Run, rate: float) -> bool:
    return run.skipped == 0 and not run.health_errors and run.reads_per_s >= 0.97 * rate


async def quietest(ctx: Ctx, measure: Callable[[], Awaitable[M]]) -> M:
    """Measure; while other processes used more than --noisy % of a core in the window,
    measure again, --repeats times at most in all, and keep the quietest run."""
    a = ctx.args
    best = await measure()
    for _ in range(a.repeats - 1):
        if best.others_pct <= a.noisy:
            break
        progress(f"others used {best.others_pct:.0f} % of a core in the quietest run: again")
        again = await measure()
        if again.others_pct < best.others_pct:
            best = again
    return best


async def measure(ctx: Ctx, sections: Sequence[str]) -> Results:
    a = ctx.args
    res = Results()

    async def floors(key: str, profile: Profile, shape: tuple[int, int]) -> None:
        res.flat[key] = await quietest(ctx, lambda: run_floor(ctx, profile, shape))
        res.floors[key] = await quietest(ctx, lambda: run_floor(ctx, profile, shape, 1.0))

    async def bridge(name: str, profile: Profile, shape: tuple[int, int], change: float) -> Run:
        out = a.profile_out if name == "fleet" else None
        return await quietest(ctx, lambda: run_bridge(
            ctx, name, profile, shape, fraction=change, window=a.window, warmup=a.warmup,
            profile_out=out))  # fmt: skip

    if "cycle" in sections:
        await floors("cycle", CYCLE, CYCLE_SHAPE)
        res.cycle = await bridge("cycle", CYCLE, CYCLE_SHAPE, 1.0)
    if {"fleet", "steady"} & set(sections):
        await floors("fleet", FLEET, FLEET_SHAPE)
    if "fleet" in sections:
        res.fleet = await bridge("fleet", FLEET, FLEET_SHAPE, a.change)
    if "steady" in sections:
        res.steady = await bridge("steady", FLEET, FLEET_SHAPE, 0.0)
        res.changing = await bridge("changing", FLEET, FLEET_SHAPE, 1.0)
    if "small" in sections:
        await floors("small", SMALL, SMALL_SHAPE)
        res.small = await bridge("small", SMALL, SMALL_SHAPE, a.change)
        exe = Path(a.m4m)
        if os.access(exe, os.X_OK):
            res.m4m = await quietest(ctx, lambda: run_m4m(ctx, exe, a.change))
        else:
            res.m4m_note = f"modbus4mqtt not found at {exe} (see bench/README.md)"
            progress(res.m4m_note)
    if "throughput" in sections:
        hosts, units = FLEET_SHAPE
        per_cycle = hosts * units * len(FLEET.blocks)
        for rate in a.rates:
            run = await quietest(ctx, lambda rate=rate: run_bridge(
                ctx, f"tput{rate}", FLEET, FLEET_SHAPE, interval=per_cycle / rate,
                fraction=a.change, window=a.throughput_window, warmup=a.warmup))  # fmt: skip
            ok = passes(run, rate)
            res.throughput.append((rate, run, ok))
            if not ok:
                break
    if "scaling" in sections:
        for hosts, units, interval in a.scaling:
            shape = (hosts, units)
            flat = await quietest(ctx, lambda shape=shape: run_floor(ctx, FLEET, shape))
            name = f"scale{hosts * units}"
            run = await quietest(ctx, lambda shape=shape, interval=interval, name=name: run_bridge(
                ctx, name, FLEET, shape, interval=interval, fraction=a.change, window=a.window,
                warmup=a.warmup))  # fmt: skip
            res.scaling.append((flat, run))
    return res


# -- the table ------------------------------------------------------------------------------------


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def ms(seconds: float | None, digits: int = 1) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.{digits}f} ms"


def floor_ratio(value: float, paced: Floor | None, flat: Floor | None, per: str) -> str:
    """`value` µs against the paced floor (the target's reference) and the flat-out one."""
    ref = {"read": lambda f: f.us_per_read, "cycle": lambda f: f.us_per_cycle}[per]
    r_paced = ratio(value, ref(paced) if paced else None)
    r_flat = ratio(value, ref(flat) if flat else None)
    return f"{fmt(value, ' µs')}; {fmt(r_paced, ' ×', 2)} (flat out: {fmt(r_flat, ' ×', 2)})"


def fleet_rows(sec: str, run: Run, res: Results, key: str, *, targets: bool) -> list[Row]:
    """The figures of sections 3 and 4: CPU, per read, RSS, lag, skipped, sockets."""
    paced, flat = res.floors.get(key), res.flat.get(key)
    per_read = ratio(run.us_per_read, paced.us_per_read if paced else None)
    p50, p99 = percentile(run.sched.lags, 0.5), percentile(run.sched.lags, 0.99)
    sockets = f"max open {max(run.max_open)}, opened {max(run.opened)} (per host, server side)"
    if run.established:
        sockets += f"; the bridge holds {run.established} for {len(run.opened)} hosts"
    one_socket = max(run.max_open) == 1 and max(run.opened) == 1

    def row(measure: str, figure: str, target: str = "", met: bool | None = None) -> Row:
        return Row(sec, measure, figure, target if targets else "",
                   met if targets else None, run.noise)  # fmt: skip

    rtt = f"{fmt(run.rtt_ms[0], ' ms', 2)} / {fmt(run.rtt_ms[1], ' ms', 2)}"
    return [
        row(f"CPU, % of one core ({run.devices:,} devices, {run.reads_per_s:,.0f} reads/s)",
            fmt(run.cpu_pct, " %")),
        row("CPU per read; ratio to the floor paced as the bridge",
            floor_ratio(run.us_per_read, paced, flat, "read"),
            "≤ 1.5 ×", per_read is not None and per_read <= 1.5),
        row("CPU per device cycle", fmt(run.us_per_cycle, " µs")),
        row("RSS", mib(run.rss), "≤ 100 MB", run.rss <= 100e6),
        row("schedule lag at the device, p50 / p99", f"{ms(p50, 2)} / {ms(p99, 2)}",
            "p99 ≤ 50 ms", p99 is not None and p99 <= 0.050),
        row("skipped cycles (server grid / bridge health)",
            f"{run.sched.skipped} / {run.health_missed} of {run.sched.cycles:,} cycles",
            "0", run.skipped == 0),
        row("sockets per host", sockets, "1", one_socket),
        row("Modbus request time p50 / p99, slowest host (bridge health)", rtt),
        row("device server CPU (it must keep up)", fmt(run.server_pct, " %")),
    ]  # fmt: skip


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def floor_rows(res: Results) -> list[Row]:
    out = []
    for key, prof in (("cycle", CYCLE), ("fleet", FLEET), ("small", SMALL)):
        paced, flat = res.floors.get(key), res.flat.get(key)
        if paced is None or flat is None:
            continue
        figures = [
            f"{label}: {fmt(f.us_per_read, ' µs')} / {fmt(f.us_per_cycle, ' µs')} "
            f"({f.reads / f.wall:,.0f} reads/s, server {f.server_pct:.0f} %)"
            for label, f in (("paced", paced), ("flat out", flat))
        ]
        out.append(Row("1", f"floor, {prof.name} profile ({paced.devices:,} devices, "
                       f"{len(prof.points)} points in {plural(len(prof.blocks), 'block')}): "
                       "CPU per read / per device cycle",
                       "; ".join(figures), load=f"{paced.noise}; {flat.noise}"))  # fmt: skip
    return out


def rows(res: Results) -> list[Row]:
    out = floor_rows(res)
    if res.cycle is not None:
        c = res.cycle
        paced = res.floors.get("cycle")
        r = ratio(c.us_per_cycle, paced.us_per_cycle if paced else None)
        out.append(Row("2", f"bridge per device cycle ({c.devices} devices, 13 points in 6 "
                       "blocks, values change every poll); ratio to the paced floor",
                       floor_ratio(c.us_per_cycle, paced, res.flat.get("cycle"), "cycle")
                       + f" (CPU {c.cpu_pct:.1f} %)",
                       "≤ 1.25 ×", r is not None and r <= 1.25, c.noise))  # fmt: skip
    if res.fleet is not None:
        out += fleet_rows("3", res.fleet, res, "fleet", targets=True)
    if res.small is not None:
        s = res.small
        out += fleet_rows("4", s, res, "small", targets=False)
        if res.m4m is not None:
            m = res.m4m
            by_pct, by_cycle = ratio(m.cpu_pct, s.cpu_pct), ratio(m.us_per_cycle, s.us_per_cycle)
            out.append(Row("4", "modbus4mqtt, 50 processes: CPU, per device cycle, RSS, sockets",
                           f"{fmt(m.cpu_pct, ' %')}, {fmt(m.us_per_cycle, ' µs')}, "
                           f"{mib(m.rss)}, {max(m.max_open)} sockets "
                           f"({m.sched.cycles / m.wall / m.devices:.2f} polls/s per device)",
                           load=m.noise))  # fmt: skip
            out.append(Row("4", "modbus4mqtt ÷ bridge: CPU per device cycle (CPU %)",
                           f"{fmt(by_cycle, ' ×', 2)} ({fmt(by_pct, ' ×', 2)})", "≥ 3 ×",
                           by_cycle is not None and by_cycle >= 3, m.noise))  # fmt: skip
        elif res.m4m_note:
            out.append(Row("4", "modbus4mqtt", res.m4m_note, "≥ 3 ×", None))
    if res.throughput:
        passed = [rate for rate, _, ok in res.throughput if ok]
        best = max(passed) if passed else None
        steps = ", ".join(
            f"{rate:,}: {run.reads_per_s:,.0f} reads/s, CPU {run.cpu_pct:.0f} %, "
            f"skipped {run.skipped}, others {run.others_pct:.0f} %{'' if ok else ' ✗'}"
            for rate, run, ok in res.throughput
        )
        load = res.throughput[-1][1].noise
        out.append(Row("5", "throughput: most reads/s with no skipped cycle (1,000 devices, "
                       "interval shortened per step)",
                       f"{best:,} tx/s" if best else "below the first step",
                       "≥ 5,000 tx/s", best is not None and best >= 5000, load))  # fmt: skip
        out.append(Row("5", "steps (reads/s asked: done, bridge CPU, skipped, others)", steps))
    if res.fleet is not None:
        f = res.fleet
        p50, p99 = percentile(f.latencies, 0.5), percentile(f.latencies, 0.99)
        out.append(Row("6", "latency: value changed at the poll → MQTT subscriber, p50 / p99",
                       f"{ms(p50, 2)} / {ms(p99, 2)} ({len(f.latencies):,} changes; "
                       f"{f.latency_missing} not seen)",
                       "p99 ≤ 5 ms", p99 is not None and p99 <= 0.005, f.noise))  # fmt: skip
        longest, cpu, held, count = f.report_hold_ms
        out.append(Row("6", "health report (every --health s, 1,000 devices): longest hold of the "
                       "event loop, wall time (its CPU time: the report's own work); the whole "
                       "report's work, as one piece would hold it",
                       f"{fmt(longest, ' ms', 2)} ({fmt(cpu, ' ms', 2)} CPU); "
                       f"{fmt(held, ' ms', 2)} ({count} reports)"
                       if count else "not reported by this bridge (no `report` in its health)",
                       "≤ 2 ms", cpu is not None and cpu <= 2.0, f.noise))  # fmt: skip
        out.append(Row("7", "start-up: launch → first state of all 1,000 devices",
                       fmt(f.startup, " s", 2), "≤ 2 s",
                       f.startup is not None and f.startup <= 2.0, f.noise))  # fmt: skip
    out += scaling_rows(res)
    if res.steady is not None and res.changing is not None:
        st, ch = res.steady, res.changing
        r = ratio(st.us_per_read, ch.us_per_read)
        mid = (f"; on {res.fleet.fraction:g} of polls (§3): {fmt(res.fleet.us_per_read, ' µs')}"
               if res.fleet else "")  # fmt: skip
        out.append(Row("8", "fleet CPU per read: values never change / change every poll",
                       f"{fmt(st.us_per_read, ' µs')} ({st.cpu_pct:.1f} %) / "
                       f"{fmt(ch.us_per_read, ' µs')} ({ch.cpu_pct:.1f} %){mid}",
                       load=f"{st.noise}; {ch.noise}"))  # fmt: skip
        out.append(Row("8", "steady ÷ changing", fmt(r, " ×", 2),
                       "visibly cheaper (≤ 0.85 ×)", r is not None and r <= 0.85,
                       f"{st.noise}; {ch.noise}"))  # fmt: skip
    return out


def scaling_rows(res: Results) -> list[Row]:
    """Issue 19, item 5: how CPU per read, memory and lag grow with the fleet."""
    out = []
    for flat, run in res.scaling:
        p50, p99 = percentile(run.sched.lags, 0.5), percentile(run.sched.lags, 0.99)
        hosts = len(run.opened)
        r = fmt(ratio(run.us_per_read, flat.us_per_read), " ×", 2)
        out.append(Row(
            "S", f"scaling: {run.devices:,} devices ({plural(hosts, 'host')}, "
            f"every {run.interval:g} s, {run.reads_per_s:,.0f} reads/s): CPU per read "
            "(÷ flat-out floor), RSS, lag p50 / p99, skipped",
            f"{fmt(run.us_per_read, ' µs')} ({r} of {fmt(flat.us_per_read, ' µs')}), "
            f"CPU {run.cpu_pct:.1f} %; {mib(run.rss)}; {ms(p50, 2)} / {ms(p99, 2)}; {run.skipped}",
            "p99 ≤ 50 ms, 0 skipped",
            p99 is not None and p99 <= 0.050 and run.skipped == 0,
            f"{run.noise}; floor {flat.noise}"))  # fmt: skip
    big = [run for _, run in res.scaling if run.devices >= 100]
    if len(big) >= 2:
        per_read = [run.us_per_read for run in big]
        spread = max(per_read) / min(per_read)
        out.append(Row("S", f"scaling: CPU per read from {big[0].devices:,} to "
                       f"{big[-1].devices:,} devices, highest ÷ lowest",
                       fmt(spread, " ×", 2), "≤ 1.25 ×", spread <= 1.25))  # fmt: skip
    if len(res.scaling) >= 2:
        first, last = res.scaling[0][1], res.scaling[-1][1]
        per_device = (last.rss - first.rss) / max(1, last.devices - first.devices)
        rss = f"{per_device / 1024:.1f} KiB ({mib(first.rss)} → {mib(last.rss)})"
        out.append(Row("S", f"scaling: RSS per device ({first.devices:,} → {last.devices:,} "
                       "devices, 15 points each)", rss))  # fmt: skip
    return out


def plot_scaling(res: Results, path: Path, label: str) -> bool:
    """Draw the scaling run (CPU per read, RSS, lag against devices) to `path`; False
    without matplotlib (`pip install -e '.[bench]'`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        progress("matplotlib is not installed (the bench extra): no picture")
        return False
    devices = [run.devices for _, run in res.scaling]
    fig, (cpu, mem, lag) = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    cpu.plot(devices, [run.us_per_read for _, run in res.scaling], "o-", label="bridge")
    cpu.plot(devices, [f.us_per_read for f, _ in res.scaling], "s--",
             label="bare pymodbus loop, flat out")  # fmt: skip
    cpu.set_ylabel("CPU per read (µs)")
    cpu.set_ylim(bottom=0)
    cpu.legend()
    mem.plot(devices, [run.rss / 2**20 for _, run in res.scaling], "o-")
    mem.set_ylabel("RSS (MiB)")
    mem.set_ylim(bottom=0)
    for q, style in ((0.5, "o-"), (0.99, "s--")):
        values = [1000 * (percentile(run.sched.lags, q) or 0.0) for _, run in res.scaling]
        lag.plot(devices, values, style, label=f"p{round(q * 100)}")
    lag.axhline(50, color="grey", linewidth=0.8, linestyle=":", label="target p99")
    lag.set_ylabel("schedule lag at the device (ms)")
    lag.set_ylim(bottom=0)
    lag.legend()
    for ax in (cpu, mem, lag):
        ax.set_xscale("log")
        ax.set_xlabel("devices (15 points in 3 blocks each)")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(label or "bench/perf.py --sections scaling")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        mem = f"{int(fh.readline().split()[1]) / 2**20:.0f} GiB"
    return f"{os.cpu_count()} CPUs ({model}), {mem}, Linux {platform.release()}"


def versions() -> str:
    def v(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    try:
        out = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, check=False)
        mosq = out.stdout.splitlines()[0].split()[-1]
    except (OSError, IndexError):
        mosq = "?"
    return (
        f"Python {platform.python_version()}, pymodbus {v('pymodbus')}, aiomqtt {v('aiomqtt')}, "
        f"paho-mqtt {v('paho-mqtt')}, Mosquitto {mosq}"
    )


def report(res: Results, args: argparse.Namespace, started: float, load0: str) -> str:
    took = time.monotonic() - started
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = f"## {args.label}" if args.label else "## Run"
    notes = [
        f"- Date: {stamp}; the whole run took {took / 60:.1f} min",
        f"- Machine: {machine()}; load average 1/5/15 min at the start: {load0}",
        f"- Versions: {versions()}",
        f"- Command: `{shlex.join(['.venv/bin/python', 'bench/perf.py', *sys.argv[1:]])}`",
        f"- Windows: bridge {args.window:g} s after {args.warmup:g} s warm-up (aligned to its "
        f"health reports, every {args.health:g} s), floor {args.floor_seconds:g} s, throughput "
        f"steps {args.throughput_window:g} s; values change on {args.change:g} of polls unless "
        "the row says otherwise",
        (
            f"- Noise: a run during which others used more than {args.noisy:g} % of a core was "
            f"measured again, {args.repeats} times at most, and the quietest kept"
            if args.repeats > 1
            else "- Noise: no run was repeated (`--repeats 1`)"
        ),
    ]
    return "\n".join([title, "", *notes, "", markdown_table(rows(res)), ""])


def profile_summary(path: Path) -> str:
    """Where the bridge's time goes: samples per owner group, and the top functions."""
    doc = json.loads(path.read_text())
    owned, total = speedscope_groups(doc)
    lines = [
        f"Profile `{path.name}`: {total:,.1f} s of samples",
        "",
        "| owner (innermost frame that owns the time) | share |",
        "|---|---|",
    ]
    for group, weight in sorted(owned.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {group} | {100 * weight / total:.1f} % |")
    lines += ["", "| top functions (self) | share |", "|---|---|"]
    lines += [f"| `{name}` | {100 * w / total:.1f} % |" for name, w in top_functions(doc, 20)]
    return "\n".join(lines)


def record(text: str, path: Path) -> None:
    header = "# Performance (bench/perf.py)"
    existing = path.read_text() if path.exists() else ""
    with path.open("a") as fh:
        if header not in existing:
            fh.write(f"\n\n{header}\n\nHow to read it: bench/README.md.\n")
        fh.write("\n" + text)


# -- main -----------------------------------------------------------------------------------------


def parse_sections(text: str) -> list[str]:
    out: list[str] = []
    for word in (w.strip() for w in text.split(",") if w.strip()):
        name = BY_NUMBER.get(word, word)
        if name not in SECTIONS:
            raise argparse.ArgumentTypeError(f"unknown section {word!r}")
        if name not in out:
            out.append(name)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[2:4]),
    )
    parser.add_argument("--quick", action="store_true", help="short windows: a smoke run")
    parser.add_argument(
        "--sections",
        type=parse_sections,
        default=list(SECTIONS),
        help="comma-separated names or issue numbers 1-8 (default: all)",
    )
    parser.add_argument(
        "--change",
        type=float,
        default=0.25,
        help="fraction of polls on which a device's values change (default 0.25)",
    )
    parser.add_argument(
        "--no-spread",
        action="store_true",
        help="the bridge's hosts poll their devices together (spread: false); the floor "
        "stays paced as the bridge's default",
    )
    parser.add_argument("--window", type=float, help="bridge window, s (30; quick 4)")
    parser.add_argument("--warmup", type=float, help="s before a window (5; quick 2)")
    parser.add_argument("--health", type=float, help="bridge health interval, s (5; quick 2)")
    parser.add_argument("--floor-seconds", type=float, help="floor window, s (10; quick 3)")
    parser.add_argument("--throughput-window", type=float, help="per step, s (10; quick 4)")
    parser.add_argument(
        "--rates",
        type=lambda s: [int(x) for x in s.split(",")],
        default=list(THROUGHPUT_RATES),
        help="throughput steps, reads/s",
    )
    parser.add_argument(
        "--scaling",
        type=lambda text: [
            tuple(float(x) if i == 2 else int(x) for i, x in enumerate(shape.split("x")))
            for shape in text.split(",")
        ],
        default=list(SCALING_SHAPES),
        help="scaling shapes HOSTSxUNITSxINTERVAL, comma-separated "
        "(default 2x5x1,4x25x1,10x100x1,20x250x5)",
    )
    parser.add_argument("--plot", type=Path, default=SCALING_PNG, help="the scaling picture")
    parser.add_argument(
        "--m4m",
        default=os.environ.get("M4M", str(M4M_DEFAULT)),
        help=f"modbus4mqtt executable (default $M4M or {M4M_DEFAULT})",
    )
    parser.add_argument(
        "--profile-out",
        type=Path,
        help="record py-spy speedscope profiles of the fleet window: PATH-<run>.json",
    )
    parser.add_argument("--py-spy", default="py-spy", help="py-spy executable")
    parser.add_argument(
        "--quiet-below",
        type=float,
        help="before each run, wait until the machine is busy less than this %% of one core",
    )
    parser.add_argument("--quiet-timeout", type=float, default=300.0, help="s (default 300)")
    parser.add_argument(
        "--noisy",
        type=float,
        default=40.0,
        help="measure a run again when others used more than this %% of a core (default 40)",
    )
    parser.add_argument("--repeats", type=int, help="runs at most per measurement (3; quick 1)")
    parser.add_argument("--label", default="", help="heading of the section in RESULTS.md")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--results", type=Path, default=BENCH / "RESULTS.md")
    parser.add_argument("--workdir", type=Path, help="configs and logs (default: a temp dir)")
    args = parser.parse_args()
    quick = args.quick
    for name, full, short in (
        ("repeats", 3, 1),
        ("window", 30, 4),
        ("warmup", 5, 2),
        ("health", 5, 2),
        ("floor_seconds", 10, 3),
        ("throughput_window", 10, 4),
    ):
        if getattr(args, name) is None:
            setattr(args, name, short if quick else full)
    args.floor_warmup = 1.0 if quick else 2.0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bridge-perf-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started, load0 = time.monotonic(), Path("/proc/loadavg").read_text().split()[:3]

    async def go() -> Results:
        broker = Broker(workdir / "mosquitto")
        await broker.astart()
        try:
            return await measure(Ctx(args, broker, workdir), args.sections)
        finally:
            await broker.astop()

    res = asyncio.run(go())
    text = report(res, args, started, " ".join(load0))
    print(text)
    profile = res.fleet.profile if res.fleet else None
    if profile is not None and profile.exists():
        print("\n" + profile_summary(profile))
    if res.scaling and plot_scaling(res, args.plot, args.label):
        progress(f"scaling picture: {args.plot}")
    if not args.no_record:
        record(text, args.results)
        progress(f"appended to {args.results}")
    progress(f"configs and logs in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
