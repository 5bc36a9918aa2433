"""Reply bodies as rkllmd.protocol lays them out, and the commands found in rkllmd/commands/."""

from __future__ import annotations

import json

import pytest

from rkllmd import protocol
from rkllmd.commands import COMMANDS
from rkllmd.errors import UnknownCommand
from rkllmd.exchange import Exchange, Final
from rkllmd.protocol import Address


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
    assert protocol.partial_data("m", "ab", 2) == {"model": "m", "text": "ab", "completion_tokens": 2}
    assert protocol.partial_data("m") == {"model": "m"}
    assert protocol.loaded_data("m", False) == {"model": "m", "loaded": False}
    assert protocol.cleared_data("m") == {"model": "m", "cleared": True}


def test_one_cancel_shape_here_and_on_another_board() -> None:
    """A cancel's data is the same whether this board had the request or another board of the fleet."""
    assert protocol.cancel_data("r1", "queued") == {"cancelled": "r1", "was": "queued"}
    assert protocol.cancel_data("r1", "running", "b2") == {
        "cancelled": "r1",
        "was": "running",
        "cancelled_on": "b2",
    }


def test_every_command_module_is_found_with_its_flags() -> None:
    """Every command module is found, with the flags the loop, ingress and dispatcher read."""
    assert set(COMMANDS) == {
        "generate",
        "cancel",
        "models",
        "load",
        "unload",
        "clear_cache",
        "embed",
        "rerank",
    }
    assert sorted(c.name for c in COMMANDS.values() if not c.queued) == ["cancel", "models"]
    assert [c.name for c in COMMANDS.values() if c.generates] == ["generate"]
    assert sorted(c.name for c in COMMANDS.values() if c.changes_model) == ["load", "unload"]
    assert sorted(c.name for c in COMMANDS.values() if c.cancellable) == ["embed", "rerank"]


def test_the_commands_drive_topics_and_plain_text() -> None:
    """Every command's topic parses, and a plain-text payload fills the command's field."""
    topics = protocol.Topics("B")
    for name, cmd in COMMANDS.items():
        assert topics.parse_request_topic(f"B/request/{name}", COMMANDS) == (cmd, None)
        obj = protocol.decode_payload(b"abc", cmd, 100)
        assert obj == ({cmd.plain_field: "abc"} if cmd.plain_field else {})
    assert topics.parse_request_topic("B/request/generate/m", COMMANDS) == (COMMANDS["generate"], "m")
    with pytest.raises(UnknownCommand):
        topics.parse_request_topic("B/request/load/m", COMMANDS)  # only a generation names a model there


@pytest.mark.parametrize(
    "delta", ["", "word", ' "quoted" ', "back\\slash", "tab\tnew\nline\r", "\x00\x1f\x7f", "é€😀", "日本語。"]
)
def test_a_stream_chunk_is_byte_for_byte_what_json_dumps_writes(delta: str) -> None:
    """The hand-built chunk (built once per token) matches json.dumps(ensure_ascii=False) exactly."""
    expected = json.dumps({"id": "r-1", "seq": 12, "delta": delta}, ensure_ascii=False).encode()
    assert protocol.stream_chunk("r-1", 12, delta) == expected
