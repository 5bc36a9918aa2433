"""Admission (rkllmd.ingress.admit) on its own: no broker, no loop, no thread."""

from __future__ import annotations

import json
from typing import Any

from rkllmd.exchange import Exchange, Final
from rkllmd.ingress import Gate, admit
from rkllmd.protocol import Incoming, LocalMessage, Topics
from rkllmd.settings import Settings

SETTINGS = Settings(limits={"max_tokens": 100, "max_tokens_cap": 200, "max_payload_bytes": 1024})
TOPICS = Topics("B")


def gate(stopping: bool = False, preprocess: Any = None) -> Gate:
    return Gate(SETTINGS, TOPICS, preprocess or (lambda ex: ex), lambda: stopping)


def msg(command: str, payload: Any, response_topic: str | None = None) -> Incoming:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return Incoming(f"B/request/{command}", raw, response_topic, b"c" if response_topic else None)


def test_generate_is_admitted_with_model_input_and_address() -> None:
    """A generate request becomes an exchange with its id, model, runtime input and reply address."""
    ex = admit(
        msg("generate", {"id": "r1", "prompt": "hi", "system": "be brief", "reply_to": "me/r"}), gate()
    )
    assert isinstance(ex, Exchange)
    assert (ex.command, ex.id, ex.model, ex.stream) == ("generate", "r1", SETTINGS.default, True)
    assert ex.inp is not None and ex.inp.max_tokens == 100 and ex.inp.last_user == "hi"
    assert ex.inp.system == "be brief"
    assert ex.address is not None and ex.address.topic == "me/r" and ex.address.request_id == "r1"


def test_plain_text_gets_a_new_id_and_the_default_reply_topic() -> None:
    """A plain-text prompt is admitted under a generated id, answered on B/response/generate."""
    ex = admit(msg("generate", b"hello there"), gate())
    assert isinstance(ex, Exchange) and ex.id and ex.payload == {"prompt": "hello there"}
    assert ex.address is not None and ex.address.topic == "B/response/generate"


def test_refusal_keeps_the_address_the_request_asked_for() -> None:
    """A wrong field is refused as a Final carrying the payload's id, transaction and reply_to."""
    out = admit(msg("generate", {"id": "x1", "prompt": 5, "transaction": 7, "reply_to": "me/r"}), gate())
    assert isinstance(out, Final) and out.code == "wrong_type" and out.request.id == "x1"
    addr = out.request.address
    assert addr is not None and addr.topic == "me/r" and addr.transaction == 7 and addr.has_transaction


def test_v5_response_topic_wins_and_command_is_known_before_decoding() -> None:
    """A refused payload still names its command, and its refusal goes to the Response Topic."""
    out = admit(msg("generate", b"   ", response_topic="v5/reply"), gate())
    assert isinstance(out, Final) and out.code == "empty_prompt"
    assert out.request.command == "generate"
    assert out.request.address is not None and out.request.address.topic == "v5/reply"


def test_unknown_command_is_answered_on_the_error_topic() -> None:
    """An unknown command topic is refused on B/response/error."""
    out = admit(msg("nosuch", {"id": "a"}), gate())
    assert isinstance(out, Final) and out.code == "unknown_command"
    assert out.request.address is not None and out.request.address.topic == "B/response/error"


def test_model_and_max_tokens_follow_the_one_rule() -> None:
    """Unknown models and max_tokens over the cap are refused; the topic's model is used."""
    out = admit(msg("generate", {"prompt": "x", "model": "nope"}), gate())
    assert isinstance(out, Final) and out.code == "unknown_model"
    out = admit(msg("generate", {"prompt": "x", "max_tokens": 201}), gate())
    assert isinstance(out, Final) and out.code == "bad_request" and "over the limit of 200" in str(out.error)
    topic = Incoming(f"B/request/generate/{SETTINGS.default}", b"hi")
    ex = admit(topic, gate())
    assert isinstance(ex, Exchange) and ex.topic_model == SETTINGS.default == ex.model


def test_preprocessors_see_the_exchange_and_may_refuse() -> None:
    """The chain rewrites the payload before validation; a stopping gate refuses with shutdown."""

    def pre(ex: Exchange) -> Exchange:
        ex.payload["prompt"] = ex.payload.pop("question")
        return ex

    ex = admit(msg("generate", {"question": "why"}), gate(preprocess=pre))
    assert isinstance(ex, Exchange) and ex.inp is not None and ex.inp.last_user == "why"
    assert ex.original == {"question": "why"}
    out = admit(msg("generate", {"prompt": "x"}), gate(stopping=True))
    assert isinstance(out, Final) and out.code == "shutdown"


def test_control_commands_and_local_messages() -> None:
    """load defaults to the default model; cancel needs an id; a LocalMessage never streams."""
    ex = admit(msg("load", b""), gate())
    assert isinstance(ex, Exchange) and ex.model == SETTINGS.default
    out = admit(msg("cancel", {}), gate())
    assert isinstance(out, Final) and out.code == "bad_request"
    local = admit(LocalMessage("B/request/generate", b'{"prompt":"x"}'), gate())
    assert isinstance(local, Exchange) and local.local and not local.stream


def test_a_reply_topic_among_rkllmd_own_is_refused_and_answered_in_its_reply_space() -> None:
    """reply_to or a Response Topic naming rkllmd's own topics (state, streams, a board's, plugins')
    or a topic a plugin reserves is bad_request, answered on B/response/<command>; B/response/...
    itself and topics that only start with the same letters are fine."""
    reserved = Gate(SETTINGS, TOPICS, lambda ex: ex, lambda: False, lambda t: t.startswith("homeassistant/"))
    for topic in (
        "B",
        "B/state",
        "B/stream/x",
        "B/node/b1/state",
        "B/plugins/homeassistant/answer",
        "homeassistant/x",
    ):
        for out in (
            admit(msg("generate", {"prompt": "x", "reply_to": topic, "id": "r9"}), reserved),
            admit(msg("generate", {"prompt": "x", "id": "r9"}, response_topic=topic), reserved),
            admit(msg("cancel", {"id": "r9", "reply_to": topic}), reserved),
        ):
            assert isinstance(out, Final) and out.code == "bad_request", (topic, out)
            assert topic in (out.error or "") and "publishes on its own" in (out.error or "")
            assert out.request.address is not None
            assert out.request.address.topic.startswith("B/response/"), (topic, out.request.address)
    for topic in ("B/response/mine", "Bx/state", "me/B/state"):
        ok = admit(msg("generate", {"prompt": "x", "reply_to": topic}), reserved)
        assert isinstance(ok, Exchange) and ok.address is not None and ok.address.topic == topic
