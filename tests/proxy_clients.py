"""Clients of a Modbus TCP proxy, run in a process of their own (so their load does not
share the event loop of the simulated gateway that measures the bridge's polls).

    python tests/proxy_clients.py PORT SECONDS UNIT ADDRESS VALUE...

For SECONDS, against 127.0.0.1:PORT, at the same time:

- `reader`: a well-behaved client reading len(VALUE) holding registers of UNIT from
  ADDRESS over and over, every answer checked against VALUE...;
- `garbage`: bytes that are no Modbus TCP header; `oversized`: an MBAP length of 302
  (an ADU beyond 260 bytes); `drip`: a request one byte a second, never completed in
  time; each should be closed by the proxy on its own;
- `flood`: a thousand requests sent at once on one connection; every answer must come
  back, in order, with its own transaction id and the right registers.

Prints one JSON object: what each saw. Loopback only.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import time
from typing import Any


def mbap(tid: int, unit: int, pdu: bytes, *, length: int | None = None) -> bytes:
    n = len(pdu) + 1 if length is None else length
    return struct.pack(">HHHB", tid, 0, n, unit) + pdu


async def frame(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    head = await reader.readexactly(7)
    tid, _pid, length, unit = struct.unpack(">HHHB", head)
    return tid, unit, await reader.readexactly(length - 1)


async def closed_by_peer(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


class Clients:
    def __init__(self, port: int, seconds: float, unit: int, address: int, values: list[int]):
        self.port, self.seconds = port, seconds
        self.unit, self.address, self.values = unit, address, values
        self.request = struct.pack(">BHH", 3, address, len(values))
        self.expected = bytes((3, 2 * len(values))) + struct.pack(f">{len(values)}H", *values)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def reader(self, stop: asyncio.Event) -> dict[str, Any]:
        reader, writer = await self.connect()
        latencies: list[float] = []
        wrong = 0
        tid = 0
        try:
            while not stop.is_set():
                tid = (tid + 1) & 0xFFFF
                started = time.monotonic()
                writer.write(mbap(tid, self.unit, self.request))
                async with asyncio.timeout(5):
                    got = await frame(reader)
                latencies.append(time.monotonic() - started)
                wrong += got != (tid, self.unit, self.expected)
                await asyncio.sleep(0.01)
        finally:
            writer.close()
        latencies.sort()
        return {
            "answers": len(latencies),
            "wrong": wrong,
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
            "max_ms": 1000 * latencies[-1] if latencies else None,
        }

    async def hostile(self, data: bytes, within: float) -> bool:
        reader, writer = await self.connect()
        writer.write(data)
        try:
            return await closed_by_peer(reader, within)
        finally:
            writer.close()

    async def drip(self) -> bool:
        reader, writer = await self.connect()
        request = mbap(1, self.unit, self.request)
        try:
            for byte in request[:-1]:  # never the last byte
                writer.write(bytes([byte]))
                if await closed_by_peer(reader, 1.0):
                    return True
            return await closed_by_peer(reader, 10.0)
        except ConnectionError:
            return True
        finally:
            writer.close()

    async def flood(self) -> dict[str, Any]:
        await asyncio.sleep(0.5)
        reader, writer = await self.connect()
        started = time.monotonic()
        writer.write(b"".join(mbap(i, self.unit, self.request) for i in range(1000)))
        answers = []
        try:
            async with asyncio.timeout(max(10.0, self.seconds)):
                for _ in range(1000):
                    answers.append(await frame(reader))
        except TimeoutError:
            pass
        finally:
            writer.close()
        return {
            "answers": len(answers),
            "in_order": [a[0] for a in answers] == list(range(len(answers))),
            "right": all(a[1:] == (self.unit, self.expected) for a in answers),
            "seconds": round(time.monotonic() - started, 3),
        }

    async def run(self) -> dict[str, Any]:
        stop = asyncio.Event()
        reader = asyncio.create_task(self.reader(stop))
        garbage = asyncio.create_task(self.hostile(bytes(range(7, 200)) * 3, 5.0))
        oversized = asyncio.create_task(
            self.hostile(mbap(1, self.unit, bytes([16]) + bytes(300), length=302), 5.0)
        )
        drip = asyncio.create_task(self.drip())
        flood = asyncio.create_task(self.flood())
        await asyncio.sleep(self.seconds)
        stop.set()
        return {
            "reader": await reader,
            "garbage_closed": await garbage,
            "oversized_closed": await oversized,
            "drip_closed": await drip,
            "flood": await flood,
        }


def main() -> None:
    port, seconds, unit, address, *values = sys.argv[1:]
    clients = Clients(int(port), float(seconds), int(unit), int(address), [int(v) for v in values])
    print(json.dumps(asyncio.run(clients.run())))


if __name__ == "__main__":
    main()
