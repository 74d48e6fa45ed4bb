"""A careless neighbour on a TCP port: idle and slow connections, held open.

`Flood(port, idle=1000, slow=1000)` keeps that many connections to 127.0.0.1:`port`:
an idle one connects and sends nothing; a slow one sends the start of a request head
(`GET /metrics HTTP/1.1`) and then one header byte every `trickle` seconds, never
finishing it (a slowloris). A connection the server drops is opened again after
`reopen` seconds while `reopening` is true, so the pressure lasts as long as the test
wants it. They are opened at `rate` per second, which a server that accepts at all
keeps up with. Bounded: `idle + slow` connections at most, until `stop()`. Loopback only.

Also `process_figures(pid)`: a process's open descriptors, threads and resident memory
from /proc (Linux), for measuring what the flood costs the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
from dataclasses import dataclass


def raise_own_descriptor_limit(needed: int) -> bool:
    """Raise this process's soft descriptor limit to at least `needed`; False when the
    hard limit does not allow it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return True
    if hard != resource.RLIM_INFINITY and hard < needed:
        return False
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return True


@dataclass(frozen=True)
class ProcessFigures:
    descriptors: int
    threads: int
    rss: int  # bytes


def process_figures(pid: int) -> ProcessFigures:
    threads = rss = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return ProcessFigures(len(os.listdir(f"/proc/{pid}/fd")), threads, rss)


class Flood:
    def __init__(
        self,
        port: int,
        *,
        idle: int,
        slow: int,
        trickle: float = 1.0,
        reopen: float = 1.0,
        rate: float = 500.0,
    ) -> None:
        self.port = port
        self.idle = idle
        self.slow = slow
        self.trickle = trickle
        self.reopen = reopen
        self.rate = rate  # new connections per second at the start
        self.reopening = True
        self.opened = 0  # connections established, reopened ones included
        self.dropped = 0  # by the server
        self.refused = 0  # connection attempts that failed
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start every connection, `rate` per second (returns when the last one starts)."""
        for n in range(self.idle + self.slow):
            # Alternating, at `rate`: a listen queue that overflows loses connections the
            # client believes open, so a flood faster than the server accepts is weaker.
            slow = n % 2 == 1 if n < 2 * min(self.idle, self.slow) else self.slow > self.idle
            self._tasks.append(asyncio.create_task(self._hold(slow)))
            await asyncio.sleep(1 / self.rate)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _hold(self, slow: bool) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                try:
                    await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", self.port)), 10)
                except (OSError, TimeoutError):
                    self.refused += 1
                else:
                    self.opened += 1
                    await self._occupy(sock, slow)
                    self.dropped += 1
            finally:
                sock.close()
            if not self.reopening:
                return
            await asyncio.sleep(self.reopen)

    async def _occupy(self, sock: socket.socket, slow: bool) -> None:
        """Until the server drops the connection."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            if not slow:
                while await loop.sock_recv(sock, 4096):
                    pass  # an answer (a refusal): read on until the close
                return
            await loop.sock_sendall(sock, b"GET /metrics HTTP/1.1\r\nX-Slow: ")
            closed = asyncio.ensure_future(_until_closed(loop, sock))
            try:
                while not closed.done():
                    await asyncio.wait({closed}, timeout=self.trickle)
                    if not closed.done():
                        await loop.sock_sendall(sock, b"x")
            finally:
                closed.cancel()


async def _until_closed(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while await loop.sock_recv(sock, 4096):
            pass
