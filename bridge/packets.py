"""MQTT packets as bytes, without a client: pure arithmetic on what goes on the wire.

`publish_packet_size` is the size of a PUBLISH packet as a broker's maximum packet size
counts it (the link skips what the broker would refuse, and Home Assistant's discovery
checks its own messages against the same limit). `coalesce` merges the packets paho
has queued into one socket write.
"""

from __future__ import annotations

from collections import deque
from typing import Any

Packet = dict[str, Any]
"""A packet paho has queued (`paho.mqtt.client.Client._out_packet`): its bytes
(`packet`), how far they were written (`pos`, `to_process`), `command`, `qos`, `mid`
and `info`."""


def _varint_size(n: int) -> int:
    size = 1
    while n >= 128:
        n //= 128
        size += 1
    return size


def publish_packet_size(
    topic: str, payload_size: int, *, qos: int, v5: bool, correlation_data: bytes | None = None
) -> int:
    """Bytes of the PUBLISH packet carrying `payload_size` bytes on `topic`, headers included.

    The broker's maximum packet size counts whole packets: fixed header, topic,
    packet id (QoS 1/2), MQTT 5 properties, payload.
    """
    remaining = 2 + len(topic.encode("utf-8")) + payload_size
    if qos > 0:
        remaining += 2
    if v5:
        props = 0 if correlation_data is None else 1 + 2 + len(correlation_data)
        remaining += _varint_size(props) + props
    return 1 + _varint_size(remaining) + remaining


COALESCE_MAX = 64 * 1024  # bytes of queued packets merged into one socket write, at most
_PUBLISH, _DISCONNECT = 0x30, 0xE0  # MQTT control packet types (the high nibble)


def coalesce(packets: deque[Packet], limit: int = COALESCE_MAX) -> None:
    """Merge runs of paho's queued packets (`Client._out_packet`) into one, in place, so
    they leave in one socket write. Only packets paho does nothing with once written:
    not a QoS 0 PUBLISH (paho reports it published) nor a DISCONNECT (paho closes the
    socket), nor one partly written; a run stops at `limit` bytes. The order of the
    bytes on the wire is unchanged."""
    if len(packets) < 2:
        return
    merged: list[Packet] = []
    run: list[Packet] = []
    size = 0
    for packet in packets:
        kind = packet["command"] & 0xF0
        plain = (
            packet["pos"] == 0
            and kind != _DISCONNECT
            and not (kind == _PUBLISH and packet["qos"] == 0)
        )
        length = packet["to_process"]
        if plain and run and size + length <= limit:
            run.append(packet)
            size += length
            continue
        _close_run(run, merged)
        run, size = ([packet], length) if plain else ([], 0)
        if not plain:
            merged.append(packet)
    _close_run(run, merged)
    if len(merged) < len(packets):
        packets.clear()
        packets.extend(merged)


def _close_run(run: list[Packet], merged: list[Packet]) -> None:
    if len(run) == 1:
        merged.append(run[0])
    elif run:
        data = b"".join(p["packet"] for p in run)
        merged.append({**run[0], "packet": data, "to_process": len(data)})
