"""The floor of bench/perf.py: a bare pymodbus asyncio loop reading a profile's blocks.

    python bench/perffloor.py --ports 5020,5021 --units 100 --profile fleet [--interval 1]

One `AsyncModbusTcpClient` per host (one request in flight, as the bridge), all
hosts at once, each reading unit 1..N's blocks one after the other, with nothing
done with the answers but checking them. Flat out by default; with `--interval`,
paced as the bridge polls: every device once per interval, device k of n starting
k/n of the interval after the first (the bridge's phase spread). After `--warmup` seconds it
measures its own CPU time (user + system) over `--seconds` and prints one JSON
line: reads, device cycles, CPU seconds, wall seconds, the window's monotonic start
and end, and the machine's busy CPU seconds in it (to tell other load apart).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time

from perfkit import PROFILES, Profile, machine_busy  # bench/ is the script's directory
from pymodbus.client import AsyncModbusTcpClient


class Counts:
    reads = 0
    cycles = 0
    running = True  # a flag, not cancel(): pymodbus's wait_for may swallow a cancellation


async def host_loop(
    client: AsyncModbusTcpClient, host: int, hosts: int, units: int, args: argparse.Namespace
) -> None:
    calls = {"holding": client.read_holding_registers, "input": client.read_input_registers}
    profile: Profile = PROFILES[args.profile]
    blocks = [(calls[table], start, count) for table, start, count in profile.blocks]
    loop = asyncio.get_running_loop()
    interval, start_at, devices = args.interval, loop.time(), hosts * units
    cycle = 0
    while Counts.running:
        for unit in range(1, units + 1):
            if interval:
                phase = (host * units + unit - 1) / devices
                delay = start_at + (cycle + phase) * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            for call, start, count in blocks:
                rr = await call(start, count=count, device_id=unit)
                if rr.isError():
                    raise SystemExit(f"error reply from unit {unit}: {rr}")
                Counts.reads += 1
            Counts.cycles += 1
        cycle += 1


async def run(args: argparse.Namespace) -> dict[str, float]:
    clients = [
        AsyncModbusTcpClient("127.0.0.1", port=int(p), timeout=2, retries=0, reconnect_delay=0)
        for p in args.ports.split(",")
    ]
    for client in clients:
        if not await client.connect():
            raise SystemExit("floor: cannot connect")
    tasks = [
        asyncio.create_task(host_loop(c, h, len(clients), args.units, args))
        for h, c in enumerate(clients)
    ]
    await asyncio.sleep(args.warmup)
    r0, c0, cpu0, t0 = Counts.reads, Counts.cycles, time.process_time(), time.monotonic()
    busy0 = machine_busy()
    await asyncio.sleep(args.seconds)
    r1, c1, cpu1, t1 = Counts.reads, Counts.cycles, time.process_time(), time.monotonic()
    busy1 = machine_busy()
    Counts.running = False
    await asyncio.wait(tasks, timeout=5)
    for client in clients:
        client.close()
    return {"reads": r1 - r0, "cycles": c1 - c0, "cpu": cpu1 - cpu0, "wall": t1 - t0,
            "t0": t0, "t1": t1, "busy": busy1 - busy0}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", required=True, help="comma-separated")
    parser.add_argument("--units", type=int, default=1, help="units 1..N per host")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="fleet")
    parser.add_argument("--interval", type=float, default=0.0, help="s; 0: flat out")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
