"""Requests per second one `SimServer` answers to a sequential client, in one process.

    .venv/bin/python bench/sim_throughput.py [--seconds 3] [--count 10] [--raw]

The pymodbus client (one request in flight, as the bridge uses it) is the realistic
number; `--raw` adds a bare asyncio client to show how much of that the server costs.
Client and server share one event loop, like the soak benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import struct
import time

from pymodbus.client import AsyncModbusTcpClient

from bridge.sim import SimServer


async def pymodbus_rate(server: SimServer, seconds: float, count: int) -> float:
    client = AsyncModbusTcpClient(
        "127.0.0.1", port=server.port, timeout=2, retries=0, reconnect_delay=0
    )
    if not await client.connect():
        raise SystemExit("could not connect to the simulator")
    try:
        done = 0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            for _ in range(50):
                rr = await client.read_holding_registers(0, count=count, device_id=1)
                if rr.isError():
                    raise SystemExit(f"unexpected error reply: {rr}")
            done += 50
        return done / (time.perf_counter() - started)
    finally:
        client.close()


async def raw_rate(server: SimServer, seconds: float, count: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    reply_size = 9 + 2 * count
    try:
        done = 0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            for _ in range(200):
                tid = done & 0xFFFF
                writer.write(struct.pack(">HHHBBHH", tid, 0, 6, 1, 3, 0, count))
                reply = await reader.readexactly(reply_size)
                if struct.unpack_from(">H", reply)[0] != tid:
                    raise SystemExit("transaction id mismatch")
                done += 1
        return done / (time.perf_counter() - started)
    finally:
        writer.close()
        await writer.wait_closed()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--count", type=int, default=10, help="registers per read")
    parser.add_argument("--raw", action="store_true", help="also measure a bare asyncio client")
    args = parser.parse_args()
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    async with SimServer([1]) as server:
        server.unit(1).set_registers("holding", 0, list(range(args.count)))
        rate = await pymodbus_rate(server, args.seconds, args.count)
        print(f"pymodbus client, sequential FC3 x{args.count}: {rate:,.0f} requests/s")
        if args.raw:
            rate = await raw_rate(server, args.seconds, args.count)
            print(f"raw asyncio client, sequential FC3 x{args.count}: {rate:,.0f} requests/s")
        print(f"server counted {server.requests_total:,} requests")


if __name__ == "__main__":
    asyncio.run(main())
