"""Store and forward over a long outage: the broker stopped for 10 minutes while 100
devices change every second, the bridge killed (-9) and restarted half way.

    /work/tools/itest .venv/bin/python bench/store_forward.py [--outage 600] [--devices 100]

This process runs a `SimServer` (one gateway, `--devices` units; unit i changes its value
once a second, the units spread over the second: `--devices` changes per second), a
Mosquitto on a free loopback port (tests/broker.py) and a subscriber to everything; the
bridge runs as a child process with `buffer:` on. Half way through the outage the bridge
is killed with SIGKILL (changes pause for that: a change nobody reads is no change),
and started again on the same buffer file.

Measured: the writes to the store while buffering (the processes' /proc/PID/io: write
system calls and bytes sent to the disk, both processes, during the outage only; the
second process's commits from its health report), the file's largest size (file, WAL
and shared memory, sampled every second) against `max_bytes`, and after the broker is
back: every change arrived once on `<device>/history`, in order per device, with its
time (duplicates counted), and the replay's duration. Prints a Markdown report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import aiomqtt  # noqa: E402
import yaml  # noqa: E402
from broker import Broker, find_mosquitto  # noqa: E402  (tests/broker.py)

from bridge.sim import SimServer  # noqa: E402

BASE = "sf"


def progress(text: str) -> None:
    stamp = dt.datetime.now(dt.UTC).strftime("%H:%M:%S")
    print(f"[{stamp}] {text}", file=sys.stderr, flush=True)


def proc_io(pid: int) -> dict[str, int]:
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return {}
    return {k: int(v) for k, v in (line.split(": ") for line in text.splitlines())}


def disk_bytes(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            total += os.path.getsize(f"{path}{suffix}")
    return total


class Subscriber:
    """Every history message, and the newest health report."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.history: dict[str, list[tuple[float, int]]] = {}
        self.health: dict[str, Any] = {}
        self.messages = 0
        self.last_history = 0.0

    async def run(self, ready: asyncio.Event) -> None:
        client = aiomqtt.Client("127.0.0.1", self.port, identifier="sf-watcher")
        while True:
            try:
                async with client:
                    await client.subscribe(f"{BASE}/#", qos=1)
                    ready.set()
                    async for message in client.messages:
                        self._record(str(message.topic), message.payload)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    def _record(self, topic: str, payload: Any) -> None:
        data = payload if isinstance(payload, bytes) else str(payload).encode()
        self.messages += 1
        if topic.endswith("/history"):
            doc = json.loads(data)
            if "values" in doc:
                at = dt.datetime.fromisoformat(doc["time"].replace("Z", "+00:00")).timestamp()
                device = topic.split("/")[1]
                self.history.setdefault(device, []).append((at, doc["values"]["n"]))
                self.last_history = time.monotonic()
        elif topic == f"{BASE}/bridge/health":
            self.health = json.loads(data)


def config(args: argparse.Namespace, broker: Broker, server: SimServer, db: Path) -> Any:
    return {
        "version": 1,
        "health_interval": "2s",
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": "sf-bridge",
                 "base_topic": BASE, "qos": 1, "retain": True, "output": "json"},
        "buffer": {"path": str(db), "max_bytes": args.max_bytes, "flush_interval": "1s",
                   "replay_rate": f"{args.replay_rate:g}/s"},
        "hosts": [{"name": "gw", "address": "127.0.0.1", "port": server.port, "timeout": 1.0}],
        "devices": [{"name": "d{unit}", "host": "gw", "units": f"1-{args.devices}",
                     "interval": "0.5s",
                     "points": [{"name": "n", "table": "holding", "address": 0,
                                 "type": "uint16"}]}],
    }  # fmt: skip


def start_bridge(config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge", "--log-level", "info", "run", "-c", str(config_path)],
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


async def run(args: argparse.Namespace, workdir: Path) -> str:
    assert find_mosquitto() is not None, "mosquitto is needed (make mosquitto)"
    broker = Broker(workdir / "broker")
    broker.start()
    server = SimServer(range(1, args.devices + 1))
    await server.start()
    db = workdir / "buffer" / "b.db"
    config_path = workdir / "bridge.yaml"
    config_path.write_text(yaml.safe_dump(config(args, broker, server, db), sort_keys=False))
    sub = Subscriber(broker.port)
    ready = asyncio.Event()
    sub_task = asyncio.create_task(sub.run(ready))
    await ready.wait()
    log_path = workdir / "bridge.log"
    bridge = start_bridge(config_path, log_path)
    while not sub.health.get("mqtt", {}).get("connected"):
        await asyncio.sleep(0.2)
    await asyncio.sleep(2.0)  # every device read once, live
    progress(f"bridge up; stopping the broker for {args.outage:g}s")

    sent: dict[str, list[tuple[int, float]]] = {f"d{u}": [] for u in range(1, args.devices + 1)}
    gen = 0
    largest = 0
    io: list[tuple[dict[str, int], dict[str, int]]] = []
    broker.stop()
    t0 = time.monotonic()
    io_start = proc_io(bridge.pid)
    paused = 0.0
    killed = False
    loop = asyncio.get_running_loop()
    next_tick = loop.time()
    while time.monotonic() - t0 - paused < args.outage:
        gen += 1
        for u in range(1, args.devices + 1):
            # Spread over the second: unit u at u/devices of it.
            due = next_tick + (u - 1) / args.devices
            await asyncio.sleep(max(0.0, due - loop.time()))
            value = (gen * 7 + u) % 65536
            server.unit(u).set_registers("holding", 0, [value])
            sent[f"d{u}"].append((value, time.time()))
        next_tick += 1.0
        largest = max(largest, disk_bytes(db))
        if not killed and time.monotonic() - t0 - paused >= args.outage * args.kill_at:
            killed = True
            k0 = time.monotonic()
            await asyncio.sleep(2.5)  # past a flush: what was read is committed
            io.append((io_start, proc_io(bridge.pid)))
            bridge.kill()
            bridge.wait()
            progress("bridge killed (-9); starting it again")
            bridge = start_bridge(config_path, log_path)
            io_start = proc_io(bridge.pid)
            requests = server.requests_total
            while server.requests_total < requests + 2 * args.devices:
                await asyncio.sleep(0.05)
            paused += time.monotonic() - k0
            next_tick = loop.time()
        if gen % 60 == 0:
            progress(f"{time.monotonic() - t0:.0f}s, {gen * args.devices} changes, {largest} bytes")
    await asyncio.sleep(2.5)  # the last values read and flushed
    io.append((io_start, proc_io(bridge.pid)))
    outage = time.monotonic() - t0
    progress("starting the broker again")
    broker.start()
    r0 = time.monotonic()
    expected = {d: [v for v, _ in vs] for d, vs in sent.items()}
    total = sum(len(v) for v in expected.values())
    while True:
        quiet = sub.last_history and time.monotonic() - sub.last_history > 10
        if quiet or time.monotonic() - r0 > args.outage + 120:
            break
        await asyncio.sleep(1.0)
    replay = (sub.last_history or time.monotonic()) - r0
    await asyncio.sleep(4.0)  # a health report after the last acknowledgements
    health = sub.health.get("buffer", {})
    bridge.terminate()
    bridge.wait(timeout=10)
    sub_task.cancel()
    await server.stop()
    broker.stop()

    # -- the verdict per device
    dup = missing = extra = disorder = 0
    for device, want in expected.items():
        records = sub.history.get(device, [])
        times = [t for t, _ in records]
        dup += len(times) - len(set(times))
        disorder += sum(1 for a, b in itertools.pairwise(times) if b < a)
        unique = sorted(set(records))
        values = [v for _, v in unique]
        changes = [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]
        missing += sum(1 for v in want if v not in changes)
        extra += sum(1 for v in changes if v not in want)
    writes = sum(b.get("syscw", 0) - a.get("syscw", 0) for a, b in io)
    wbytes = sum(b.get("write_bytes", 0) - a.get("write_bytes", 0) for a, b in io)
    lines = [
        f"## Store and forward: {outage:.0f} s outage, {args.devices} changes/s, kill -9 half way",
        "",
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, load {os.getloadavg()[0]:.2f}; "
        f"buffer max_bytes {args.max_bytes}, flush_interval 1 s, "
        f"replay_rate {args.replay_rate:g}/s.",
        "",
        "| measure | figure |",
        "|---|---|",
        f"| changes made while the broker was away | {total} |",
        f"| arrived on `<device>/history` (unique) / duplicates | {total - missing} / {dup} |",
        f"| missing / not made / out of order | {missing} / {extra} / {disorder} |",
        f"| write system calls of the bridge while buffering | {writes} "
        f"({writes / outage:.2f}/s) |",
        f"| bytes the bridge sent to the disk while buffering | {wbytes} "
        f"({wbytes / outage / 1024:.1f} KiB/s) |",
        f"| commits of the restarted process (buffering + replay deletes) | "
        f"{health.get('commits', '?')} |",
        f"| largest buffer on disk (file + WAL + shm) | {largest} bytes "
        f"(max_bytes {args.max_bytes}) |",
        f"| dropped by the bounds | {health.get('dropped', '?')} |",
        f"| replay: broker back → last history message | {replay:.1f} s |",
        f"| records left in the store at the end | {health.get('records', '?')} |",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--devices", type=int, default=100, help="changes per second (1..247)")
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction of the outage")
    parser.add_argument("--max-bytes", type=int, default=64 * 1024 * 1024)
    parser.add_argument("--replay-rate", type=float, default=2000.0, help="per second")
    parser.add_argument("--workdir", type=Path, help="keep the bridge log and config here")
    args = parser.parse_args()
    if not 1 <= args.devices <= 247:
        parser.error("--devices must be 1..247 (Modbus unit ids)")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bridge-sf-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(asyncio.run(run(args, workdir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
