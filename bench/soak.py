"""Soak run: the real daemon against 3 simulated gateways with 80 meters each, for minutes.

    .venv/bin/python bench/soak.py [--duration 600] [--devices-per-host 80] [--hosts 3]

This process runs the `SimServer`s (values change every second), a Mosquitto on a free
loopback port (tests/broker.py) and a subscriber; the bridge runs as a child process
(`python -m bridge run`), as in production. At the end it checks the last published
values, stops the bridge with SIGTERM and prints a Markdown report: sockets per host
(server side and health), TIME_WAIT sockets, RSS at start and end, missed cycles,
errors, requests, latency and the shutdown time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import aiomqtt  # noqa: E402
import yaml  # noqa: E402
from broker import Broker  # noqa: E402  (tests/broker.py)
from sockets import connections_to, time_wait_to  # noqa: E402  (tests/sockets.py)

from bridge.sim import SimServer  # noqa: E402

BASE = "soak"
POINTS: list[dict[str, Any]] = [
    {"name": "voltage", "table": "holding", "address": 0, "type": "float32", "unit": "V"},
    {"name": "energy", "table": "holding", "address": 2, "type": "uint32", "scale": 0.1,
     "precision": 1, "unit": "kWh"},
    {"name": "status", "table": "holding", "address": 4, "type": "uint16"},
    {"name": "power", "table": "input", "address": 0, "type": "int32", "unit": "W"},
    {"name": "temp", "table": "input", "address": 2, "type": "int16", "scale": 0.1,
     "precision": 1},
]  # fmt: skip


# -- the simulated meters ---------------------------------------------------------------------


def _words(fmt: str, value: float) -> list[int]:
    raw = struct.pack(">" + fmt, value)
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def expected(host: int, unit: int, gen: int) -> dict[str, Any]:
    """The engineering values of meter (`host`, `unit`) at generation `gen`."""
    return {
        "voltage": 220.0 + host + unit / 8 + (gen % 16) * 0.25,  # exact in float32
        "energy": round((unit * 10_000 + gen) * 0.1, 1),
        "status": (unit + gen) % 4,
        "power": (-1) ** gen * (host * 100_000 + unit * 100 + gen % 100),
        "temp": round((200 + unit + gen % 50) * 0.1, 1),
    }


def load(server: SimServer, host: int, unit: int, gen: int) -> None:
    e = expected(host, unit, gen)
    u = server.unit(unit)
    u.set_registers(
        "holding",
        0,
        _words("f", e["voltage"]) + _words("I", unit * 10_000 + gen) + [e["status"]],
    )
    u.set_registers("input", 0, _words("i", e["power"]) + _words("h", 200 + unit + gen % 50))


def matches(doc: dict[str, Any], want: dict[str, Any]) -> bool:
    for key, value in want.items():
        got = doc.get(key)
        if not isinstance(got, int | float) or isinstance(got, bool):
            return False
        if abs(got - value) > 1e-6 * max(1.0, abs(value)):
            return False
    return True


# -- the subscriber -----------------------------------------------------------------------------


@dataclass
class Subscriber:
    """Keeps the newest message per topic, counts state messages, keeps health reports."""

    port: int
    latest: dict[str, bytes] = field(default_factory=dict)
    state_messages: dict[str, int] = field(default_factory=dict)
    health: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    messages: int = 0
    connects: int = 0

    async def run(self, ready: asyncio.Event) -> None:
        client = aiomqtt.Client("127.0.0.1", self.port, identifier="soak-watcher")
        while True:
            try:
                async with client:
                    await client.subscribe(f"{BASE}/#", qos=1)
                    self.connects += 1
                    ready.set()
                    async for message in client.messages:
                        self._record(str(message.topic), message.payload)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    def _record(self, topic: str, payload: Any) -> None:
        data = payload if isinstance(payload, bytes) else str(payload).encode()
        self.messages += 1
        self.latest[topic] = data
        if topic == f"{BASE}/bridge/health":
            self.health.append((time.monotonic(), json.loads(data)))
        elif topic.count("/") == 1 and not topic.startswith(f"{BASE}/bridge"):
            self.state_messages[topic] = self.state_messages.get(topic, 0) + 1

    def available(self, device: str) -> bool:
        return self.latest.get(f"{BASE}/{device}/availability") == b"online"


# -- the run ------------------------------------------------------------------------------------


def vm_rss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def bridge_config(args: argparse.Namespace, broker: Broker, servers: list[SimServer]) -> Any:
    return {
        "version": 1,
        "health_interval": f"{args.health_interval:g}s",
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": "soak-bridge",
                 "base_topic": BASE, "qos": 1, "retain": True, "output": "json"},
        "hosts": [{"name": f"gw{h}", "address": "127.0.0.1", "port": s.port, "timeout": 1.0}
                  for h, s in enumerate(servers)],
        "devices": [{"name": f"h{h}-{{unit}}", "host": f"gw{h}",
                     "units": f"1-{args.devices_per_host}", "interval": f"{args.interval:g}s",
                     "points": POINTS} for h in range(len(servers))],
    }  # fmt: skip


def start_bridge(config_path: Path, log_path: Path, level: str) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge", "--log-level", level, "run", "-c", str(config_path)],
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


async def wait_until(predicate: Any, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


async def soak(args: argparse.Namespace, workdir: Path) -> str:
    hosts, per_host = args.hosts, args.devices_per_host
    devices = [(h, u) for h in range(hosts) for u in range(1, per_host + 1)]
    names = {(h, u): f"h{h}-{u}" for h, u in devices}

    broker = Broker(workdir / "mosquitto")
    broker.start()
    servers = [SimServer(range(1, per_host + 1)) for _ in range(hosts)]
    for server in servers:
        await server.start()
    gen = 0
    for h, u in devices:
        load(servers[h], h, u, gen)

    sub = Subscriber(broker.port)
    ready = asyncio.Event()
    sub_task = asyncio.create_task(sub.run(ready))
    await asyncio.wait_for(ready.wait(), 10)

    config_path = workdir / "bridge.yaml"
    config_path.write_text(yaml.safe_dump(bridge_config(args, broker, servers), sort_keys=False))
    log_path = workdir / "bridge.log"
    proc = start_bridge(config_path, log_path, args.log_level)
    try:
        started = time.monotonic()
        if not await wait_until(lambda: all(sub.available(n) for n in names.values()), 60):
            missing = [n for n in names.values() if not sub.available(n)]
            raise SystemExit(f"{len(missing)} devices never came online, e.g. {missing[:5]}")
        online_after = time.monotonic() - started
        await wait_until(lambda: bool(sub.health), args.health_interval + 10)
        rss_start_proc = vm_rss(proc.pid)
        health_start = sub.health[-1][1] if sub.health else {}
        progress(f"all {len(devices)} devices online after {online_after:.1f}s; soaking "
                 f"{args.duration:g}s")  # fmt: skip

        # Values change every `change_every` seconds for the whole run.
        t0 = time.monotonic()
        next_change = t0
        next_report = t0 + 60
        modbus_ports = {s.port for s in servers}
        time_wait_max = 0
        while (now := time.monotonic()) < t0 + args.duration:
            if now >= next_change:
                gen += 1
                for h, u in devices:
                    load(servers[h], h, u, gen)
                next_change += args.change_every
            if now >= next_report:
                next_report += 60
                progress(summary_line(now - t0, sub, servers))
            time_wait_max = max(time_wait_max, time_wait_to(modbus_ports))
            await asyncio.sleep(max(0.0, min(next_change, next_report) - time.monotonic()))
        soaked = time.monotonic() - t0

        # Final values: stop changing, then every device must show the last generation.
        gen += 1
        for h, u in devices:
            load(servers[h], h, u, gen)

        def wrong() -> list[str]:
            bad = []
            for (h, u), name in names.items():
                payload = sub.latest.get(f"{BASE}/{name}")
                if payload is None or not matches(json.loads(payload), expected(h, u, gen)):
                    bad.append(name)
            return bad

        await wait_until(lambda: not wrong(), 3 * args.interval + 5)
        wrong_values = wrong()
        reports = len(sub.health)
        await wait_until(lambda: len(sub.health) > reports, args.health_interval + 5)
        health_end = sub.health[-1][1]
        rss_end_proc = vm_rss(proc.pid)
        established = connections_to(proc.pid, modbus_ports)
        time_wait_max = max(time_wait_max, time_wait_to(modbus_ports))
        time_wait_mqtt = time_wait_to({broker.port})

        # SIGTERM, as systemd stops it.
        t_sig = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        while proc.poll() is None and time.monotonic() - t_sig < 10:
            await asyncio.sleep(0.01)
        stop_seconds = time.monotonic() - t_sig
        if proc.poll() is None:
            proc.kill()
        exit_code = proc.wait()
        await asyncio.sleep(0.3)
        offline = sum(
            1 for n in names.values()
            if sub.latest.get(f"{BASE}/{n}/availability") == b"offline"
        )  # fmt: skip
        time_wait_after = time_wait_to(modbus_ports)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sub_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sub_task
        for server in servers:
            await server.stop()
        broker.stop()

    log_text = log_path.read_text(errors="replace")
    return report(
        args=args,
        soaked=soaked,
        changes=gen,
        servers=servers,
        health_start=health_start,
        health_end=health_end,
        rss_proc=(rss_start_proc, rss_end_proc),
        established=established,
        time_wait=(time_wait_max, time_wait_after, time_wait_mqtt),
        wrong_values=wrong_values,
        sub=sub,
        names=list(names.values()),
        shutdown=(exit_code, stop_seconds, offline),
        log_text=log_text,
        workdir=workdir,
    )


def summary_line(elapsed: float, sub: Subscriber, servers: list[SimServer]) -> str:
    doc = sub.health[-1][1] if sub.health else {}
    hosts = doc.get("hosts", {})
    missed = sum(d.get("missed_cycles", 0) for d in doc.get("devices", {}).values())
    return (
        f"t={elapsed:5.0f}s rss={mib(doc.get('rss_bytes'))} missed={missed} "
        f"requests={[h.get('requests') for h in hosts.values()]} "
        f"errors={[h.get('errors') for h in hosts.values()]} "
        f"connections={[s.connections_total for s in servers]}"
    )


def report(
    *,
    args: argparse.Namespace,
    soaked: float,
    changes: int,
    servers: list[SimServer],
    health_start: dict[str, Any],
    health_end: dict[str, Any],
    rss_proc: tuple[int | None, int | None],
    established: int,
    time_wait: tuple[int, int, int],
    wrong_values: list[str],
    sub: Subscriber,
    names: list[str],
    shutdown: tuple[int, float, int],
    log_text: str,
    workdir: Path,
) -> str:
    hosts_end = health_end.get("hosts", {})
    devs = health_end.get("devices", {})
    missed = sum(d.get("missed_cycles", 0) for d in devs.values())
    cycles = sum(d.get("cycles", 0) for d in devs.values())
    dev_errors = sum(d.get("errors", 0) for d in devs.values())
    unavailable = [n for n, d in devs.items() if not d.get("available")]
    uptime = health_end.get("uptime_s", 0.0)
    per_device = [sub.state_messages.get(f"{BASE}/{n}", 0) for n in names]
    exit_code, stop_seconds, offline = shutdown
    levels = {lvl: log_text.count(f" {lvl} ") for lvl in ("WARNING", "ERROR")}

    lines = [
        f"Soak: {len(names)} devices on {len(servers)} hosts, every {args.interval:g}s, "
        f"values changing every {args.change_every:g}s, {soaked:.0f}s soaked "
        f"(bridge uptime {uptime:.0f}s at the last health report).",
        "",
        "| host | sockets opened (server) | sockets opened (health) | reconnects | requests "
        "| requests/s | errors | timeouts | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for h, server in enumerate(servers):
        doc = hosts_end.get(f"gw{h}", {})
        rate = doc.get("requests", 0) / uptime if uptime else 0.0
        lines.append(
            f"| gw{h} | {server.connections_total} | {doc.get('sockets_opened')} "
            f"| {doc.get('reconnects')} | {doc.get('requests')} | {rate:.1f} "
            f"| {doc.get('errors')} | {doc.get('timeouts')} "
            f"| {doc.get('latency_p50_ms')} | {doc.get('latency_p99_ms')} |"
        )
    rss_h0, rss_h1 = health_start.get("rss_bytes"), health_end.get("rss_bytes")
    rows = [
        ("Modbus sockets held by the bridge at the end (established)", str(established)),
        ("TIME_WAIT towards the Modbus ports, max during the run", str(time_wait[0])),
        ("TIME_WAIT towards the Modbus ports after the bridge exited", str(time_wait[1])),
        ("TIME_WAIT towards the MQTT port at the end (1 for 60 s: the broker's start probe)",
         str(time_wait[2])),
        ("RSS at start / end (health)", f"{mib(rss_h0)} / {mib(rss_h1)}"),
        ("RSS at start / end (/proc VmRSS)", f"{mib(rss_proc[0])} / {mib(rss_proc[1])}"),
        ("Poll cycles / missed cycles (health, all devices)", f"{cycles} / {missed}"),
        ("Device poll errors (health, all devices)", str(dev_errors)),
        ("Devices unavailable at the end", str(len(unavailable))),
        ("State messages per device (min / mean / max)",
         f"{min(per_device)} / {sum(per_device) / len(per_device):.1f} / {max(per_device)}"
         f" (values changed {changes} times)"),
        ("MQTT messages received", str(sub.messages)),
        ("Final values correct", f"{len(names) - len(wrong_values)} of {len(names)}"
         + (f" (wrong: {', '.join(wrong_values[:5])})" if wrong_values else "")),
        ("SIGTERM: exit code, seconds to exit", f"{exit_code}, {stop_seconds:.2f}s"),
        ("Devices `offline` after exit", f"{offline} of {len(names)}"),
        ("Bridge log warnings / errors", f"{levels['WARNING']} / {levels['ERROR']}"),
    ]  # fmt: skip
    lines += ["", "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", f"Work directory (bridge log, config): `{workdir}`"]
    return "\n".join(lines)


def progress(text: str) -> None:
    stamp = dt.datetime.now(dt.UTC).strftime("%H:%M:%S")
    print(f"[{stamp}] {text}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--devices-per-host", type=int, default=80)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval, seconds")
    parser.add_argument("--change-every", type=float, default=1.0, help="seconds between changes")
    parser.add_argument("--health-interval", type=float, default=10.0)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    parser.add_argument("--workdir", type=Path, help="keep the bridge log and config here")
    args = parser.parse_args()
    if not 1 <= args.devices_per_host <= 247:
        parser.error("--devices-per-host must be 1..247 (Modbus unit ids)")
    logging.basicConfig(level=logging.WARNING)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bridge-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    print(asyncio.run(soak(args, workdir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
