"""paho's queued packets merged into one socket write (`bridge.packets.coalesce`)."""

from __future__ import annotations

from collections import deque
from typing import Any

from bridge.packets import coalesce

PUBLISH, PUBACK, DISCONNECT = 0x30, 0x40, 0xE0


def packet(command: int, data: bytes, *, qos: int = 0, pos: int = 0) -> dict[str, Any]:
    """A packet as paho queues it (`Client._packet_queue`)."""
    info = object()
    return {
        "command": command,
        "mid": 0,
        "qos": qos,
        "pos": pos,
        "to_process": len(data) - pos,
        "packet": bytearray(data),
        "info": info,
    }


def wire(packets: deque[dict[str, Any]]) -> bytes:
    return b"".join(bytes(p["packet"][p["pos"] :]) for p in packets)


def test_qos1_publishes_and_acks_leave_in_one_write_in_order() -> None:
    queued = deque(
        [
            packet(PUBLISH | 2, b"a" * 10, qos=1),
            packet(PUBACK, b"\x40\x02\x00\x01"),
            packet(PUBLISH | 3, b"b" * 7, qos=1),
        ]
    )
    before = wire(queued)
    coalesce(queued)
    assert len(queued) == 1
    assert wire(queued) == before
    assert queued[0]["to_process"] == len(before)
    assert queued[0]["qos"] == 1  # paho does nothing with it once written


def test_packets_paho_handles_after_writing_stay_on_their_own() -> None:
    qos0 = packet(PUBLISH, b"zero")
    bye = packet(DISCONNECT, b"\xe0\x00")
    queued = deque(
        [
            packet(PUBLISH | 2, b"1", qos=1),
            packet(PUBLISH | 2, b"2", qos=1),
            qos0,
            packet(PUBLISH | 2, b"3", qos=1),
            packet(PUBLISH | 2, b"4", qos=1),
            bye,
        ]
    )
    before = wire(queued)
    coalesce(queued)
    assert wire(queued) == before
    assert [bytes(p["packet"]) for p in queued] == [b"12", b"zero", b"34", b"\xe0\x00"]
    assert queued[1] is qos0  # its `info` and `mid` are paho's on_publish's
    assert queued[3] is bye


def test_a_partly_written_head_is_left_alone() -> None:
    head = packet(PUBLISH | 2, b"abcdef", qos=1, pos=4)
    queued = deque([head, packet(PUBLISH | 2, b"g", qos=1), packet(PUBLISH | 2, b"h", qos=1)])
    before = wire(queued)
    coalesce(queued)
    assert wire(queued) == before
    assert queued[0] is head
    assert len(queued) == 2


def test_a_run_stops_at_the_limit() -> None:
    queued = deque([packet(PUBLISH | 2, bytes([n]) * 40, qos=1) for n in range(5)])
    before = wire(queued)
    coalesce(queued, limit=100)
    assert wire(queued) == before
    assert [p["to_process"] for p in queued] == [80, 80, 40]


def test_one_packet_is_not_copied() -> None:
    only = packet(PUBLISH | 2, b"x", qos=1)
    queued = deque([only])
    coalesce(queued)
    assert queued[0] is only
