"""The ollama plugin's mapping between Ollama's wire format and rkllmd's, without a server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rkllmd import bus, errors
from rkllmd.exchange import Exchange, Final
from rkllmd.plugins import PluginError
from rkllmd.plugins.builtin import _spoken as spoken
from rkllmd.plugins.builtin._httpconfig import HttpError, Keys, load_keys
from rkllmd.plugins.builtin.ollama import models, wire
from rkllmd.protocol import model_facts
from rkllmd.settings import Settings


def chat(**body: Any) -> wire.Ask:
    return wire.parse(
        "chat", {"model": "smollm2:latest", "messages": [{"role": "user", "content": "hi"}], **body}
    )


def refused(fn: Any, *args: Any, **kwargs: Any) -> HttpError:
    with pytest.raises(HttpError) as err:
        fn(*args, **kwargs)
    return err.value


def test_options_map_onto_generate_fields() -> None:
    """Sampling options pass through, num_predict becomes max_tokens, runner knobs are ignored."""
    ask = chat(
        options={
            "temperature": 0,
            "top_p": 0.9,
            "top_k": 40,
            "seed": 7,
            "num_predict": 64,
            "stop": ["\n\n"],
            "repeat_penalty": 1.1,
            "num_ctx": 2048,
            "num_thread": 4,
        }
    )
    f = ask.fields
    assert (f["temperature"], f["top_p"], f["top_k"], f["seed"]) == (0, 0.9, 40, 7)
    assert (f["max_tokens"], f["stop"], f["repeat_penalty"]) == (64, ["\n\n"], 1.1)
    assert ask.num_ctx == 2048 and ask.ignored == ["num_thread"] and ask.stream


@pytest.mark.parametrize("value", [-1, -2, 0])
def test_num_predict_without_a_cap_leaves_the_default(value: int) -> None:
    """num_predict -1 (infinite), -2 (fill the context) and 0 leave rkllmd's own default."""
    assert "max_tokens" not in chat(options={"num_predict": value}).fields


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (-1, None),
        ("-1", None),
        ("-1s", None),
        (0, 0.0),
        ("0", 0.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        (2.5, 2.5),
        ("300ms", 0.3),
    ],
)
def test_keep_alive_durations(value: Any, seconds: float | None) -> None:
    """keep_alive takes seconds or Go durations; negative or absent is forever (None)."""
    got = wire.keep_alive_seconds(value)
    assert got is None if seconds is None else got == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["soon", "5 minutes", True, [1]])
def test_bad_keep_alive_is_400(value: Any) -> None:
    """A keep_alive that is no duration is a 400 naming the field."""
    err = refused(wire.keep_alive_seconds, value)
    assert err.status == 400 and "keep_alive" in err.message


def test_format_tools_and_think() -> None:
    """format "json" or a schema and tools pass through; think is checked and passed on."""
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    tools = [{"type": "function", "function": {"name": "HassTurnOn", "parameters": {"type": "object"}}}]
    ask = chat(format=schema, tools=tools, think="high")
    assert ask.fields["format"] == schema and ask.fields["tools"] == tools and ask.fields["think"] == "high"
    assert chat(format="json").fields["format"] == "json"
    assert "format" not in chat(format="").fields
    assert refused(chat, **{"format": "yaml"}).status == 400
    assert refused(chat, **{"think": "very"}).status == 400


def test_tool_calls_get_ids_and_tool_results_name_them_in_order() -> None:
    """Ollama's id-less tool calls get ids; each following tool result answers the next call."""
    ask = wire.parse(
        "chat",
        {
            "messages": [
                {"role": "user", "content": "lights on"},
                {
                    "role": "assistant",
                    "content": "",
                    "thinking": "hmm",
                    "tool_calls": [
                        {"function": {"name": "HassTurnOn", "arguments": {"name": "Kitchen"}}},
                        {"function": {"name": "HassTurnOn", "arguments": '{"name": "Hall"}'}},
                    ],
                },
                {"role": "tool", "content": '{"data": {}}'},
                {"role": "tool", "content": '{"data": {}}', "tool_name": "HassTurnOn"},
            ]
        },
    )
    assistant, first, second = ask.fields["messages"][1:]
    ids = [c["id"] for c in assistant["tool_calls"]]
    assert len(set(ids)) == 2 and "thinking" not in assistant
    assert assistant["tool_calls"][1]["function"]["arguments"] == {"name": "Hall"}
    assert first["tool_call_id"] == ids[0] and second["tool_call_id"] == ids[1]
    assert second["name"] == "HassTurnOn"


def test_images_and_bad_messages() -> None:
    """Images are flagged (the API refuses them per model); bad roles and content are 400."""
    assert chat(messages=[{"role": "user", "content": "x", "images": ["aGk="]}]).images
    assert wire.parse("generate", {"prompt": "x", "images": ["aGk="]}).images
    assert refused(chat, **{"messages": [{"role": "wizard", "content": "x"}]}).status == 400
    assert refused(chat, **{"messages": [{"role": "user", "content": 5}]}).status == 400
    assert refused(wire.parse, "generate", {"prompt": "x", "raw": True}).status == 400


def test_empty_requests_load_or_unload() -> None:
    """No prompt and no messages is Ollama's load request (unload with keep_alive 0)."""
    assert wire.parse("generate", {"model": "m"}).empty
    assert wire.parse("chat", {"model": "m", "messages": []}).empty
    assert wire.parse("generate", {"model": "m", "keep_alive": 0}).keep_alive_s == 0
    assert not chat().empty


def test_done_line_carries_ollama_durations_in_ns() -> None:
    """rkllmd's timings in ms become Ollama's durations in ns, and its counts."""
    data = {
        "text": "hi",
        "finish_reason": "length",
        "usage": {"prompt_tokens": None, "completion_tokens": 3},
        "timings": {"queue_ms": 1.5, "total_ms": 10.0, "prefill_ms": 4.0, "decode_ms": 5.25},
    }
    line = wire.Shape("chat", "smollm2:latest").done("", data)
    assert line["done"] and line["done_reason"] == "length"
    assert line["message"] == {"role": "assistant", "content": ""}
    assert line["total_duration"] == 11_500_000 and line["prompt_eval_duration"] == 4_000_000
    assert line["eval_duration"] == 5_250_000 and line["eval_count"] == 3 and line["prompt_eval_count"] == 0
    assert line["created_at"].endswith("Z")
    gen = wire.Shape("generate", "m").part("x")
    assert gen["response"] == "x" and not gen["done"]


def test_tool_calls_in_the_reply() -> None:
    """rkllmd's tool calls become message.tool_calls with arguments as objects; done_reason stop."""
    data = {
        "finish_reason": "tool_calls",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "HassTurnOn", "arguments": {"name": "K"}},
            }
        ],
    }
    calls = wire.tool_calls(data)
    assert calls == [
        {"function": {"index": 0, "name": "HassTurnOn", "arguments": {"name": "K"}}, "id": "call_1"}
    ]
    assert wire.done_reason(data) == "stop"
    assert wire.Shape("chat", "m").part("", calls)["message"]["tool_calls"] == calls


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("unknown_model", 404),
        ("busy", 503),
        ("bad_request", 400),
        ("context_exceeded", 400),
        ("runtime_crashed", 500),
        ("invalid_output", 500),
        ("payload_too_large", 413),
    ],
)
def test_rkllmd_errors_become_ollama_statuses(code: str, status: int) -> None:
    """Each rkllmd error code has its HTTP status; the body is Ollama's {"error": message}."""
    err = wire.outcome_error(Final(Exchange("generate", "t"), "error", {}, code, "why"), retry_after_s=3)
    assert err.status == status and wire.error_body(err.status, err.message) == {"error": "why"}
    assert ("Retry-After" in err.headers) == (code == "busy")


def test_names_and_listings() -> None:
    """Configured names are listed with :latest; ps shows the loaded one; show has the context."""
    settings = Settings()
    name = settings.default
    assert wire.tag(name) == f"{name}:latest" and wire.untag(f"{name}:latest") == name
    assert wire.tag("qwen:1.5b") == "qwen:1.5b"
    listed = models.tags(model_facts(settings.models, None, name))["models"]
    assert listed[0]["model"] == f"{name}:latest" and len(listed[0]["digest"]) == 64
    assert models.ps(model_facts(settings.models, None, name)) == {"models": []}
    facts = model_facts(settings.models, name, name)
    loaded = models.ps(facts)["models"][0]
    assert loaded["context_length"] == settings.models[name].max_context_len
    info = models.show(next(m for m in facts if m.name == name), ["completion"])["model_info"]
    assert info[f"{info['general.architecture']}.context_length"] == settings.models[name].max_context_len


def test_keys_compare_every_key() -> None:
    """Bearer keys: none configured is open; a missing or wrong key says why."""
    assert Keys([]).check(None) is None
    keys = Keys(["a1", "b2"])
    assert keys.check("Bearer b2") is None
    assert "missing" in str(keys.check(None)) and "invalid" in str(keys.check("Bearer nope"))


def test_key_file_without_a_key_is_an_error(tmp_path: Path) -> None:
    """A key file that holds only comments never leaves the API open."""
    empty = tmp_path / "keys"
    empty.write_text("# none yet\n\n")
    empty.chmod(0o640)
    with pytest.raises(ValueError, match="holds no key"):
        load_keys([], empty)
    empty.write_text("# one\nk1\n")
    assert load_keys(["k0"], empty) == ["k0", "k1"]


def test_every_failure_a_request_can_end_with_has_its_own_sentence() -> None:
    """Each rkllmd error code is told in a sentence of its own, or as invalid input; only a bug
    (internal_error) and the errors that never answer a request (a config error, the broker
    gone) get the general one."""
    assert bus.BrokerUnavailable and PluginError  # every module that defines an error is loaded
    codes = {c.code for c in _subclasses(errors.RkllmdError)}
    general = {c for c in codes if spoken.sentence(c) == spoken.sentence(None)}
    assert general == {"internal_error", "config_error", "broker_unavailable"}
    assert spoken.sentence("busy") != spoken.sentence("shutdown")


def _subclasses(cls: type) -> list[type]:
    return [cls, *(s for sub in cls.__subclasses__() for s in _subclasses(sub))]


def test_thought_goes_to_message_thinking_never_content() -> None:
    """think reaches rkllmd as its own field; thought comes back as ``message.thinking`` (chat) or
    ``thinking`` (generate), a capped one with done_reason thinking_limit."""
    assert chat(think=True).fields["think"] is True and "think" not in chat().fields
    shape = wire.Shape("chat", "qwen3:latest")
    part = shape.part("", thinking="Let me see")
    assert part["message"] == {"role": "assistant", "content": "", "thinking": "Let me see"}
    assert "thinking" not in shape.part("Hi")["message"]
    done = shape.done("Hi", {"finish_reason": "stop"}, None, "Let me see")
    assert done["message"]["thinking"] == "Let me see" and done["message"]["content"] == "Hi"
    gen = wire.Shape("generate", "qwen3:latest").part("", thinking="hmm")
    assert gen["response"] == "" and gen["thinking"] == "hmm"
    assert wire.done_reason({"finish_reason": "thinking_limit"}) == "thinking_limit"
