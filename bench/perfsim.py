"""The devices of bench/perf.py: `SimServer`s in a process of their own.

    python bench/perfsim.py --hosts 10 --units 100 --profile fleet --change 0.25

Its CPU is not counted against the bridge. One `SimServer` per host, each with
units 1..N holding a profile's registers (bench/perfkit.py). The server sees every
read: the read of a profile's first block starts a device cycle, which is
timestamped; on a stated fraction of cycles the unit's values move to the next
generation right then, before the read is answered, and the change is logged with
that time (the latency measurement starts there).

Control: one JSON object per line on stdin, one answer per line on stdout. The
first line out is ``{"ports": [...]}``. Commands: ``stats``, ``starts`` and
``changes`` (``since``/``until`` monotonic seconds), ``change`` (``fraction``),
``clear``, ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from perfkit import PROFILES, Profile, unit_registers  # noqa: E402

from bridge.sim import SimServer, SimUnit  # noqa: E402

_READ_FC = {"coils": 1, "discrete": 2, "holding": 3, "input": 4}
GOLDEN = 0.6180339887  # staggers the change accumulators, so devices do not change in step
UNIT_SIZE = 512  # addresses per table: the profiles stay below 300


class Devices:
    def __init__(self, hosts: int, units: int, profile: Profile, fraction: float) -> None:
        self.profile = profile
        self.fraction = fraction
        self.units = range(1, units + 1)
        self.servers = [
            SimServer({u: SimUnit(size=UNIT_SIZE) for u in self.units}) for _ in range(hosts)
        ]
        table, self._first_start = profile.first
        self._first_fc = _READ_FC[table]
        self.gen: dict[tuple[int, int], int] = {}
        self.acc: dict[tuple[int, int], float] = {}
        self.starts: dict[tuple[int, int], list[float]] = {}
        self.changes: list[tuple[int, int, int, float]] = []  # host, unit, gen, time
        self.max_open = [0] * hosts
        for h, server in enumerate(self.servers):
            server.exception_hook = self._hook_for(h)
            for u in self.units:
                key = (h, u)
                self.gen[key] = 0
                self.acc[key] = ((h * units + u) * GOLDEN) % 1.0
                self.starts[key] = []
                self._load(h, u, 0)

    def _load(self, host: int, unit: int, gen: int) -> None:
        sim_unit = self.servers[host].unit(unit)
        for table, address, regs in unit_registers(self.profile, unit, gen):
            sim_unit.set_registers(table, address, regs)

    def _hook_for(self, host: int) -> Any:
        def hook(unit: int, function: int, address: int, count: int) -> int | None:
            if function == self._first_fc and address == self._first_start:
                now = time.monotonic()
                key = (host, unit)
                self.starts[key].append(now)
                acc = self.acc[key] + self.fraction
                if acc >= 1.0:
                    acc -= 1.0
                    gen = self.gen[key] = self.gen[key] + 1
                    self._load(host, unit, gen)
                    self.changes.append((host, unit, gen, now))
                self.acc[key] = acc
                if unit == 1:  # once per cycle of the host's first unit is often enough
                    self._note_open()
            return None

        return hook

    def _note_open(self) -> None:
        for h, server in enumerate(self.servers):
            self.max_open[h] = max(self.max_open[h], server.connections_open)

    def command(self, msg: dict[str, Any]) -> dict[str, Any]:
        cmd = msg.get("cmd")
        if cmd == "stats":
            self._note_open()
            return {
                "t": time.monotonic(),
                "cpu": time.process_time(),
                "requests": [s.requests_total for s in self.servers],
                "connections_total": [s.connections_total for s in self.servers],
                "connections_open": [s.connections_open for s in self.servers],
                "max_open": list(self.max_open),
            }
        if cmd == "starts":
            lo, hi = float(msg["since"]), float(msg["until"])
            return {
                "starts": {
                    f"{h}:{u}": [t for t in ts if lo <= t <= hi]
                    for (h, u), ts in self.starts.items()
                }
            }
        if cmd == "changes":
            lo, hi = float(msg["since"]), float(msg["until"])
            return {"changes": [c for c in self.changes if lo <= c[3] <= hi]}
        if cmd == "change":
            self.fraction = float(msg["fraction"])
            return {"fraction": self.fraction}
        if cmd == "clear":
            for ts in self.starts.values():
                ts.clear()
            self.changes.clear()
            self.max_open = [s.connections_open for s in self.servers]
            return {"cleared": True}
        return {"error": f"unknown command {cmd!r}"}


async def serve(args: argparse.Namespace) -> None:
    devices = Devices(args.hosts, args.units, PROFILES[args.profile], args.change)
    for server in devices.servers:
        await server.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout

    def answer(doc: dict[str, Any]) -> None:
        out.write(json.dumps(doc, separators=(",", ":")) + "\n")
        out.flush()

    answer({"ports": [s.port for s in devices.servers]})
    try:
        while line := await reader.readline():
            msg = json.loads(line)
            if msg.get("cmd") == "quit":
                break
            answer(devices.command(msg))
    finally:
        for server in devices.servers:
            await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1)
    parser.add_argument("--units", type=int, default=1, help="units 1..N per host")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="fleet")
    parser.add_argument("--change", type=float, default=0.0, help="fraction of cycles")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
