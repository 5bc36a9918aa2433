"""The QoS 0 PUBLISH packets the bus writes itself, against the MQTT specification's layout."""

from __future__ import annotations

import pytest

from rkllmd.mqttwire import publish_qos0, remaining_length


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_length_is_the_specs_variable_byte_integer(n: int, encoded: bytes) -> None:
    """The boundary values of the spec's table (MQTT 5.0 §1.5.5) encode as it lists them."""
    assert remaining_length(n) == encoded


def test_a_publish_packet_has_type_length_topic_properties_and_payload() -> None:
    """MQTT 5 puts an empty property length between topic and payload; 3.1.1 has none."""
    assert publish_qos0("a/b", b"hi", v5=True) == b"\x30\x08\x00\x03a/b\x00hi"
    assert publish_qos0("a/b", b"hi", v5=False) == b"\x30\x07\x00\x03a/b" + b"hi"
    big = publish_qos0("t", b"x" * 200, v5=True)
    assert big[:3] == b"\x30\xcc\x01" and len(big) == 3 + 204  # 2 + 1 + 1 + 200 = 204 = 0xcc 0x01


@pytest.mark.parametrize("topic", ["", "a/+/b", "a/#", "nul\0"])
def test_a_topic_no_broker_accepts_is_refused_before_it_is_sent(topic: str) -> None:
    """Wildcards, NUL and the empty topic would get the connection closed: ValueError instead."""
    with pytest.raises(ValueError, match="topic"):
        publish_qos0(topic, b"", v5=True)
