"""Typed errors of the bridge.

Each exception carries the context needed to act on it, so callers never parse
message strings.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration file.

    `line` and `column` are 1-based and None when the problem has no position
    (an unreadable file, say). `path` names the value, e.g.
    ``devices[2].points[5].type``; it is empty for problems about the whole file.
    """

    file: str
    line: int | None
    column: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        if self.path:
            return f"{where}: {self.path}: {self.message}"
        return f"{where}: {self.message}"


class ConfigError(BridgeError):
    """The configuration cannot be used; `problems` lists every reason found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class ModbusRequestError(BridgeError):
    """A request to a Modbus device failed; carries the host and unit it was for."""

    def __init__(self, host: str, unit: int, reason: str) -> None:
        self.host = host
        self.unit = unit
        self.reason = reason
        super().__init__(f"host {host} unit {unit}: {reason}")


class HostUnavailable(ModbusRequestError):
    """The host's session is down (connecting, backing off, or stopping)."""


class RequestTimeout(ModbusRequestError):
    """The device did not answer within the host's timeout; the socket is kept."""


class BadReply(ModbusRequestError):
    """An answer that does not fit the request: malformed, or for another function,
    count, address or unit. The request failed; on Modbus TCP the link stays in step."""


EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ExceptionReply(ModbusRequestError):
    """The device answered with a Modbus exception (the link itself is healthy)."""

    def __init__(self, host: str, unit: int, code: int, request: str) -> None:
        self.code = code
        self.request = request
        name = EXCEPTION_NAMES.get(code, "unknown exception")
        super().__init__(host, unit, f"{request}: exception {code} ({name})")


@dataclass(frozen=True)
class Transaction:
    """The ``transaction`` of an MQTT command, echoed in its result.

    A wrapper so that ``"transaction": null`` (echoed as null) differs from no
    transaction at all (``None`` where a `Transaction | None` is expected).
    """

    value: object


class CommandError(BridgeError):
    """An MQTT command refused before anything was written; `reason` is for the user.

    `transaction` is the command's transaction when it could be read, so the
    error result can echo it.
    """

    MAX_REASON = 300  # characters: a 64 KiB payload must not come back in the reason

    def __init__(
        self, reason: str, *, transaction: Transaction | None = None, point: str | None = None
    ) -> None:
        if len(reason) > self.MAX_REASON:
            reason = reason[: self.MAX_REASON - 1] + "…"
        self.reason = reason
        self.transaction = transaction
        self.point = point
        super().__init__(reason)


# The process ran out of file descriptors (EMFILE: its own limit; ENFILE: the system's).
_DESCRIPTOR_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})
OUT_OF_DESCRIPTORS = (
    "the bridge is out of file descriptors: raise its limit (LimitNOFILE= in the systemd "
    "unit) or find what holds them (ls -l /proc/<pid>/fd)"
)


def out_of_descriptors(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) says the process has no file descriptor left."""
    seen: set[int] = set()
    inner: BaseException | None = exc
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        if isinstance(inner, OSError) and inner.errno in _DESCRIPTOR_ERRNOS:
            return True
        inner = inner.__cause__ or inner.__context__
    return False


def describe_os_error(exc: OSError) -> str:
    """An OS error in one line (the system's words for its errno, which read the same on
    every event loop), saying plainly when descriptors ran out."""
    if exc.errno:
        text = os.strerror(exc.errno)
    elif isinstance(exc, TimeoutError):
        text = "timed out"
    else:
        text = str(exc) or type(exc).__name__
    return f"{text} ({OUT_OF_DESCRIPTORS})" if out_of_descriptors(exc) else text


def file_kind(mode: int) -> str:
    """What a file is, from its `st_mode`, for a message: "a regular file", "a FIFO"..."""
    for test, kind in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


_MEMORY_DEVICES = 1  # Linux's character major of /dev/null, /dev/zero, /dev/random, ...


def serial_device_problem(mode: int, rdev: int) -> str | None:
    """Why a path with this `st_mode` and `st_rdev` cannot be a serial port (a phrase
    to follow "is"), or None: only a character device can, and not one of the memory
    devices (/dev/null, /dev/zero), which are character devices that take anything."""
    if not stat.S_ISCHR(mode):
        return f"{file_kind(mode)}, not a serial device"
    if os.major(rdev) == _MEMORY_DEVICES:
        return "a memory device (like /dev/null or /dev/zero), not a serial device"
    return None
