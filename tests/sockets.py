"""Count a process's TCP sockets from /proc (Linux): what `ss -tnp` would show."""

from __future__ import annotations

import os
from collections.abc import Collection

_ESTABLISHED = "01"
_TIME_WAIT = "06"


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _rows(pid: int | str = "self") -> list[list[str]]:
    rows: list[list[str]] = []
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as fh:
                next(fh)
                rows.extend(line.split() for line in fh)
        except FileNotFoundError:
            continue
    return rows


def _port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1], 16)


def connections_to(pid: int, ports: Collection[int], state: str = _ESTABLISHED) -> int:
    """Sockets of process `pid` connected to any of `ports` (established by default)."""
    inodes = _socket_inodes(pid)
    return sum(
        1 for row in _rows(pid) if row[3] == state and _port(row[2]) in ports and row[9] in inodes
    )


def time_wait_to(ports: Collection[int]) -> int:
    """TIME_WAIT sockets on this machine towards (or from) any of `ports`."""
    return sum(
        1
        for row in _rows()
        if row[3] == _TIME_WAIT and (_port(row[2]) in ports or _port(row[1]) in ports)
    )
