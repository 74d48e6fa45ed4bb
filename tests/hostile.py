"""A Modbus TCP server that misbehaves on purpose, one way per unit id.

It answers function 3 and 4 reads (register n holds n + 1000 * unit) and writes
(FC 6 and 16, echoed). Each unit id has a `mode`: "normal" answers correctly; the
other modes send the reply a broken device, gateway or attacker would:

- ``byte_count``: a read reply whose byte count says 20 more bytes than it carries
  (the MBAP length is right, so the stream stays framed);
- ``no_code``: an exception reply without its exception code byte;
- ``wrong_function``: a function 4 reply to a function 3 request (and vice versa);
- ``extra``: two registers more than asked for;
- ``tid_zero``: the right reply, with transaction id 0;
- ``wrong_unit``: the right reply, from another unit id;
- ``bad_header``: a reply whose MBAP protocol id is not 0: nothing after it can be
  framed;
- ``garbage``: 40 random bytes instead of a reply.

Kept apart from `bridge.sim` on purpose: the simulator is a well-behaved device
with fault switches; this one only exists to break the client.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Mapping

MODES = frozenset(
    {
        "normal",
        "byte_count",
        "no_code",
        "wrong_function",
        "extra",
        "tid_zero",
        "wrong_unit",
        "bad_header",
        "garbage",
    }
)

_MBAP = struct.Struct(">HHHB")


def register(unit: int, address: int) -> int:
    """What a normal read of `address` on `unit` returns."""
    return (address + 1000 * unit) & 0xFFFF


class HostileServer:
    def __init__(self, modes: Mapping[int, str]) -> None:
        for mode in modes.values():
            if mode not in MODES:
                raise ValueError(f"unknown mode {mode!r}")
        self.modes = dict(modes)
        self.connections = 0
        self.requests = 0
        self.writes: list[tuple[int, int, list[int]]] = []  # (unit, address, values)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while True:
                header = await reader.readexactly(_MBAP.size)
                tid, _pid, length, unit = _MBAP.unpack(header)
                pdu = await reader.readexactly(length - 1)
                self.requests += 1
                writer.write(self._reply(tid, unit, pdu))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _reply(self, tid: int, unit: int, pdu: bytes) -> bytes:
        mode = self.modes.get(unit, "normal")
        function = pdu[0]
        if mode == "garbage":
            return os.urandom(40)
        if mode == "no_code":
            return self._frame(tid, unit, bytes([function | 0x80]))
        if function in (3, 4):
            address, count = struct.unpack(">HH", pdu[1:5])
            if mode == "extra":
                count += 2
            data = b"".join(struct.pack(">H", register(unit, address + i)) for i in range(count))
            byte_count = len(data) + (20 if mode == "byte_count" else 0)
            if mode == "wrong_function":
                function = 7 - function  # 3 <-> 4
            body = bytes([function, byte_count]) + data
        elif function == 6:
            address, value = struct.unpack(">HH", pdu[1:5])
            self.writes.append((unit, address, [value]))
            body = pdu[:5]
        elif function == 16:
            address, count = struct.unpack(">HH", pdu[1:5])
            values = list(struct.unpack(f">{count}H", pdu[6 : 6 + 2 * count]))
            self.writes.append((unit, address, values))
            body = pdu[:5]
        else:
            body = bytes([function | 0x80, 1])  # illegal function
        if mode == "tid_zero":
            tid = 0
        if mode == "wrong_unit":
            unit = (unit % 247) + 1
        frame = self._frame(tid, unit, body)
        if mode == "bad_header":
            frame = frame[:2] + b"\x12\x34" + frame[4:]
        return frame

    @staticmethod
    def _frame(tid: int, unit: int, body: bytes) -> bytes:
        return _MBAP.pack(tid, 0, len(body) + 1, unit) + body
