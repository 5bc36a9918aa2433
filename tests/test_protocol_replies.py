"""Reply bodies as rkllmd.protocol lays them out, and the one command table."""

from __future__ import annotations

import json

import pytest

from rkllmd import protocol
from rkllmd.exchange import Exchange, Final
from rkllmd.protocol import COMMANDS, Address


def test_error_reply_carries_id_transaction_code_and_data() -> None:
    """An error body has status, id, the echoed transaction, code, error and data, in that order."""
    addr = Address("t", request_id="r1", transaction={"n": 1}, has_transaction=True)
    body = protocol.reply_body("error", {}, "busy", "queue full", addr.request_id, addr)
    assert list(body) == ["status", "id", "transaction", "code", "error", "data"]
    assert json.loads(protocol.to_json(body)) == {
        "status": "error",
        "id": "r1",
        "transaction": {"n": 1},
        "code": "busy",
        "error": "queue full",
        "data": {},
    }


def test_ok_reply_without_id_or_transaction() -> None:
    """An ok body without an id or a transaction has neither key, nor code and error."""
    assert protocol.reply_body("ok", {"x": 1}, None, None, None, Address("t")) == {
        "status": "ok",
        "data": {"x": 1},
    }


def test_final_as_reply_is_the_body_without_transaction() -> None:
    """Final.as_reply (what plugins see) is the protocol's body for the request's id."""
    ex = Exchange(
        "generate", "B/request/generate", id="r2", address=Address("t", transaction=3, has_transaction=True)
    )
    final = Final(ex, "ok", {"text": "hi"})
    assert final.as_reply() == {"status": "ok", "id": "r2", "data": {"text": "hi"}}
    assert final.ok and final.text == "hi"


def test_generation_and_control_data() -> None:
    """Generate data sums usage (an unknown prompt count as 0); control data names the model."""
    data = protocol.generation_data("m", "ab", "stop", None, 2, {"queue_ms": 1.0})
    assert data["usage"] == {"prompt_tokens": None, "completion_tokens": 2, "total_tokens": 2}
    assert protocol.partial_data("generate", "m", "ab", 2) == {
        "model": "m",
        "text": "ab",
        "completion_tokens": 2,
    }
    assert protocol.partial_data("load", "m", "", 0) == {"model": "m"}
    assert protocol.control_data("unload", "m") == {"model": "m", "loaded": False}


def test_one_command_table_drives_topics_and_plain_text() -> None:
    """Every command's topic parses, and a plain-text payload fills the table's field."""
    topics = protocol.Topics("B")
    for name, cmd in COMMANDS.items():
        assert topics.parse_request_topic(f"B/request/{name}") == (name, None)
        obj = protocol.decode_payload(b"abc", name, 100)
        assert obj == ({cmd.plain_field: "abc"} if cmd.plain_field else {})


@pytest.mark.parametrize(
    "delta", ["", "word", ' "quoted" ', "back\\slash", "tab\tnew\nline\r", "\x00\x1f\x7f", "é€😀", "日本語。"]
)
def test_a_stream_chunk_is_byte_for_byte_what_json_dumps_writes(delta: str) -> None:
    """The hand-built chunk (built once per token) matches json.dumps(ensure_ascii=False) exactly."""
    expected = json.dumps({"id": "r-1", "seq": 12, "delta": delta}, ensure_ascii=False).encode()
    assert protocol.stream_chunk("r-1", 12, delta) == expected
