"""MQTT packets as bytes, without a client: pure arithmetic on what goes on the wire.

`publish_packet_size` is the size of a PUBLISH packet as a broker's maximum packet size
counts it (the link skips what the broker would refuse, and Home Assistant's discovery
checks its own messages against the same limit).
"""

from __future__ import annotations


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
