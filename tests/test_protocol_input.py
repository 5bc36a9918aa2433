"""Input that used to be misread: lone surrogates, NUL, a byte order mark, a bad role, and where a
refusal goes when the payload is refused before it validates."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rkllmd import protocol
from rkllmd.commands import COMMANDS
from rkllmd.errors import PayloadTooLarge, RequestError, RkllmdError, WrongType
from rkllmd.ingress import take_address as _address_from
from rkllmd.protocol import Address as ReplyTo

LIMIT = 4096


def refusal(command: str, obj: dict[str, Any]) -> RkllmdError:
    with pytest.raises(RkllmdError) as info:
        protocol.validate(COMMANDS[command], obj)
    return info.value


# --- where a refusal goes ------------------------------------------------------------------------


def test_lone_surrogate_is_refused_but_its_address_is_readable() -> None:
    """A cut emoji from JSON.stringify is bad_request naming the field, and id and reply_to still read."""
    raw = b'{"id":"s1","prompt":"\\ud800 smile","reply_to":"x/y","transaction":7}'
    with pytest.raises(RequestError) as info:
        protocol.decode_payload(raw, COMMANDS["generate"], LIMIT)
    assert info.value.code == "bad_request" and info.value.message.startswith("prompt:")
    assert protocol.read_address(raw, LIMIT) == {"id": "s1", "reply_to": "x/y", "transaction": 7}


def test_too_large_payload_is_read_for_its_address_up_to_four_times_the_limit() -> None:
    """Over the limit is payload_too_large; within 4x the address is read, beyond it nothing is."""

    def big(size: int) -> bytes:
        head = b'{"id":"big1","reply_to":"me/reply","prompt":"'
        return head + b"a" * (size - len(head) - 2) + b'"}'

    with pytest.raises(PayloadTooLarge):
        protocol.decode_payload(big(LIMIT + 1), COMMANDS["generate"], LIMIT)
    assert protocol.read_address(big(LIMIT + 1), LIMIT) == {"id": "big1", "reply_to": "me/reply"}
    assert protocol.read_address(big(4 * LIMIT), LIMIT) == {"id": "big1", "reply_to": "me/reply"}
    assert protocol.read_address(big(4 * LIMIT + 1), LIMIT) == {}


def test_read_address_leaves_out_what_no_reply_can_carry() -> None:
    """A transaction with a lone surrogate or longer than the limit is not offered for the echo."""
    raw = b'{"id":"t1","transaction":"\\udfff","prompt":"x"}'
    assert protocol.read_address(raw, LIMIT) == {"id": "t1"}
    long_tx = json.dumps({"id": "t2", "transaction": "x" * LIMIT, "prompt": ""}).encode()
    assert protocol.read_address(long_tx, LIMIT) == {"id": "t2"}


def test_read_address_reads_json_around_invalid_utf8_but_not_plain_text() -> None:
    """Invalid UTF-8 inside a string still leaves the address readable; text and arrays name none."""
    raw = b'{"prompt":"caf\xe9","reply_to":"a/b","id":"u1"}'
    assert protocol.read_address(raw, LIMIT) == {"reply_to": "a/b", "id": "u1"}
    assert protocol.read_address(b"reply_to a/b", LIMIT) == {}
    assert protocol.read_address(b'[{"reply_to":"a/b"}]', LIMIT) == {}


def test_address_from_takes_each_field_only_if_valid_on_its_own() -> None:
    """A bad reply topic, a bad id or an unechoable transaction is not used; the others still are."""
    reply = ReplyTo(topic="B/response/generate")
    _address_from({"id": "ok.1", "reply_to": "a/\udc80", "transaction": "\ud800"}, reply, False)
    assert reply.request_id == "ok.1" and reply.topic == "B/response/generate"
    assert not reply.has_transaction
    reply = ReplyTo(topic="B/response/generate")
    _address_from({"id": "no spaces", "reply_to": "good/topic", "transaction": [1]}, reply, False)
    assert reply.request_id is None and reply.topic == "good/topic" and reply.transaction == [1]


# --- NUL -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"prompt": "alpha \x00 beta"}, "prompt"),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "a\x00"}]},
            "messages[1].content",
        ),
        ({"prompt": "hi", "system": "be\x00terse"}, "system"),
        ({"prompt": "hi", "stop": "\x00"}, "stop"),
        ({"prompt": "hi", "stop": ["ok", "x\x00"]}, "stop"),
    ],
)
def test_nul_in_text_is_bad_request_naming_the_field(obj: dict[str, Any], field: str) -> None:
    """A NUL would cut the text where C reads it: refused before the runtime, naming the field."""
    raw = json.dumps(obj).encode()  # NUL travels as \\u0000
    exc = refusal("generate", protocol.decode_payload(raw, COMMANDS["generate"], LIMIT))
    assert exc.code == "bad_request"
    assert f"{field}: must not contain a NUL" in exc.message


def test_nul_in_plain_text_is_refused() -> None:
    """A plain-text prompt with a NUL is bad_request too, before it becomes a prompt."""
    with pytest.raises(RequestError) as info:
        protocol.decode_payload(b"alpha \x00 beta", COMMANDS["generate"], LIMIT)
    assert info.value.code == "bad_request"


# --- byte order mark -------------------------------------------------------------------------------


def test_json_after_a_bom_is_json() -> None:
    """A UTF-8 BOM before a JSON object is dropped: reply_to and max_tokens are read, not prompted."""
    raw = b'\xef\xbb\xbf{"prompt":"alpha beta","reply_to":"me/r","max_tokens":1}'
    assert protocol.decode_payload(raw, COMMANDS["generate"], LIMIT) == {
        "prompt": "alpha beta",
        "reply_to": "me/r",
        "max_tokens": 1,
    }
    assert protocol.read_address(raw, LIMIT) == {"reply_to": "me/r"}


def test_plain_text_after_a_bom_has_no_bom() -> None:
    """The BOM is not part of a plain-text prompt, nor of a plain-text id."""
    assert protocol.decode_payload("\ufeffhello".encode(), COMMANDS["generate"], LIMIT) == {"prompt": "hello"}
    assert protocol.decode_payload("\ufeff r1 ".encode(), COMMANDS["cancel"], LIMIT) == {"id": "r1"}


# --- wrong value versus wrong type -----------------------------------------------------------------


def test_unknown_role_is_bad_request_naming_field_and_allowed_values() -> None:
    """A role outside the set is a wrong value (bad_request), with the field, the choices and the input."""
    exc = refusal("generate", {"messages": [{"role": "wizard", "content": "hi"}]})
    assert exc.code == "bad_request" and not isinstance(exc, WrongType)
    assert "messages[0].role: must be one of" in exc.message
    assert all(r in exc.message for r in ("'system'", "'user'", "'assistant'", "'tool'"))
    assert "(got 'wizard')" in exc.message


@pytest.mark.parametrize(
    "obj",
    [
        {"messages": [{"role": 5, "content": "hi"}]},
        {"messages": [{"role": "user", "content": 5}]},
        {"messages": ["hi"]},
        {"prompt": 42},
        {"prompt": "hi", "max_tokens": "ten"},
        {"prompt": "hi", "stop": 5},
    ],
)
def test_wrong_json_types_stay_wrong_type(obj: dict[str, Any]) -> None:
    """A field of the wrong JSON type is still wrong_type, a role of 5 included."""
    assert refusal("generate", obj).code == "wrong_type"


def test_a_think_value_outside_the_levels_is_one_clear_bad_request() -> None:
    """``"think": "max"`` is a wrong value (bad_request, as PROTOCOL.md's codes table says), told in
    one sentence naming what is allowed, not as two union members' errors; a number is a wrong type."""
    exc = refusal("generate", {"prompt": "hi", "think": "max"})
    assert exc.code == "bad_request" and not isinstance(exc, WrongType)
    assert exc.message == "invalid request: think: must be true, false, 'low', 'medium' or 'high' (got 'max')"
    exc = refusal("generate", {"prompt": "hi", "think": 1})
    assert isinstance(exc, WrongType)
    assert exc.message == "invalid request: think: must be true, false, 'low', 'medium' or 'high' (got 1)"
    for ok in (True, False, "low", "medium", "high"):
        assert protocol.validate(COMMANDS["generate"], {"prompt": "hi", "think": ok}).think == ok  # type: ignore[attr-defined]


@pytest.mark.parametrize("image", [5, None, ["abc"], {"url": "https://x/a.jpg"}, {"path": 3}])
def test_an_image_of_the_wrong_shape_is_one_clear_wrong_type(image: Any) -> None:
    """``"images": [5]`` was told as both union members' errors (``images[0].str: …;
    images[0].ImagePathIn: …``); now one sentence naming the item and the shapes it may take."""
    for obj, where in (
        ({"prompt": "hi", "images": [image]}, "images[0]"),
        (
            {"messages": [{"role": "user", "content": "hi", "images": ["aGk=", image]}]},
            "messages[0].images[1]",
        ),
    ):
        exc = refusal("generate", obj)
        assert isinstance(exc, WrongType)
        assert exc.message.startswith(
            f'invalid request: {where}: must be a base64 string, a data: URI or {{"path": '
        )
        assert ";" not in exc.message and "ImagePathIn" not in exc.message


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (
            {"prompt": "x", "messages": [{"role": "user", "content": "y"}]},
            "request: give either prompt or messages",
        ),
        ({"messages": [{"role": "user"}]}, "messages[0]: content is required"),
        (
            {
                "messages": [
                    {"role": "assistant", "content": "x", "images": ["aGk="]},
                    {"role": "user", "content": "y"},
                ]
            },
            "messages[0]: images go on a user message",
        ),
    ],
)
def test_a_rule_of_the_request_is_told_in_its_own_words(obj: dict[str, Any], message: str) -> None:
    """The message is rkllmd's sentence after the field, without pydantic's "Value error, " (which
    also reached OpenAI clients through the http plugin)."""
    exc = refusal("generate", obj)
    assert exc.code == "bad_request" and exc.message.startswith(f"invalid request: {message}")


# --- null is an absent field -------------------------------------------------------------------


def test_null_takes_each_commands_defaults() -> None:
    """A field with a default sent as null is not given (docs/PROTOCOL.md, "Null is absent")."""
    gen: Any = protocol.validate(
        COMMANDS["generate"], {"prompt": "hi", "think": None, "stream": None, "sentences": None}
    )
    assert (gen.think, gen.stream, gen.sentences) == (False, True, False)
    emb: Any = protocol.validate(COMMANDS["embed"], {"input": "x", "encoding": None, "truncate": None})
    assert (emb.encoding, emb.truncate) == ("float", False)
    rr: Any = protocol.validate(
        COMMANDS["rerank"], {"query": "q", "documents": ["d"], "return_documents": None}
    )
    assert rr.return_documents is False


def test_null_inside_a_field_is_still_the_wrong_type() -> None:
    err = refusal("generate", {"messages": [{"role": None, "content": "hi"}]})
    assert isinstance(err, WrongType) and "messages[0].role" in err.message


@pytest.mark.parametrize(
    ("obj", "said"),
    [
        ({"prompt": "x", "stop": 5}, "stop: must be a string or a list of strings (got 5)"),
        ({"prompt": "x", "stop": ["a", 5]}, "stop: must be a string or a list of strings (got ['a', 5])"),
        ({"prompt": "x", "think": 5}, "think: must be true, false, 'low', 'medium' or 'high' (got 5)"),
        (
            {"prompt": "x", "images": [5]},
            'images[0]: must be a base64 string, a data: URI or {"path": "<file>"} (got 5)',
        ),
    ],
)
def test_a_union_field_of_no_shape_is_one_sentence(obj: dict[str, Any], said: str) -> None:
    err = refusal("generate", obj)
    assert isinstance(err, WrongType) and err.message == f"invalid request: {said}"
