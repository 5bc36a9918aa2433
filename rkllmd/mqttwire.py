"""MQTT PUBLISH packets at QoS 0 without properties, as the spec lays them out (MQTT 3.1.1 §3.3,
MQTT 5.0 §3.3), for ``Bus.stream``.

A stream chunk and its ``/text`` copy are the daemon's most frequent packets, one pair per token at
30 tok/s. paho's ``publish()`` builds a message-info object with its own condition variable, a
reason code and a property set for each, and the two took four system calls (cork, two sends,
uncork); built here, the pair is one ``send()``. Everything else (QoS 1 and 2, retain,
properties, TLS, the connection itself) stays paho's.
"""

from __future__ import annotations

PUBLISH = 0x30  # packet type 3, QoS 0, no DUP, no RETAIN
MAX_REMAINING = 268_435_455  # the largest Remaining Length four bytes can say


def remaining_length(n: int) -> bytes:
    """The variable byte integer of the fixed header: 7 bits a byte, low bits first."""
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def publish_qos0(topic: str, payload: bytes, v5: bool) -> bytes:
    """One QoS 0 PUBLISH of ``payload`` to ``topic``, not retained; ``v5`` adds the (empty)
    property length MQTT 5 requires. ValueError for what a broker would disconnect us for."""
    name = topic.encode()
    if not name or len(name) > 0xFFFF or any(c in name for c in b"+#\0"):
        raise ValueError(f"not a topic one can publish to: {topic!r}")
    props = b"\x00" if v5 else b""
    size = 2 + len(name) + len(props) + len(payload)
    if size > MAX_REMAINING:
        raise ValueError(f"payload of {len(payload)} bytes is larger than MQTT allows")
    head = bytes((PUBLISH,)) + remaining_length(size)
    return b"".join((head, len(name).to_bytes(2, "big"), name, props, payload))
