"""The sentence stream end to end: rkllmd as a process over real mosquitto, on the C runtime double.

The double's [[say=BASE64]] directive emits exact text in pieces of [[chunk=N]] bytes, so sentence
ends arrive split across tokens, deterministically.
"""

from __future__ import annotations

import base64
from typing import Any

from tests.e2e.conftest import Start, final_of
from tests.helpers import Msg, Probe

WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


def say(text: str, chunk: int = 2, delay_ms: int = 0) -> str:
    directives = f"[[say={base64.b64encode(text.encode()).decode()}]] [[chunk={chunk}]]"
    return directives + (f" [[delay_ms={delay_ms}]]" if delay_ms else "")


def sentences(probe: Probe, base: str, payload: dict[str, Any]) -> tuple[list[Msg], dict[str, Any]]:
    """Publish a generate request; every message on its sentence topic up to the empty end marker,
    and its final reply."""
    rid = payload["id"]
    topic = f"{base}/stream/{rid}/sentences"
    probe.subscribe(topic, f"reply/{rid}")
    probe.publish(f"{base}/request/generate", payload, response_topic=f"reply/{rid}")
    msgs = probe.collect_until(topic, lambda m: m.payload == b"")
    return msgs, final_of(probe, f"reply/{rid}")


def test_sentences_arrive_in_order_split_where_sentences_end(start_daemon: Start, mqtt_probe: Probe) -> None:
    """Each whole sentence is one plain-text message, markdown and code left out, then an empty end."""
    _d, base = start_daemon()
    text = (
        "Hello there, my friend. Dr. Smith has 3.5 kg of flour! Is that enough?\n"
        "- **Eggs** are on the list too\n```\nprint('code')\n```\n今日は晴れです。The end"
    )
    msgs, reply = sentences(
        mqtt_probe, base, {"id": "s1", "prompt": say(text), "sentences": True, "stream": False}
    )
    assert reply["status"] == "ok" and reply["data"]["text"] == text
    assert [m.payload.decode() for m in msgs] == [
        "Hello there, my friend.",
        "Dr. Smith has 3.5 kg of flour!",
        "Is that enough?",
        "Eggs are on the list too",
        "今日は晴れです。",
        "The end",
        "",
    ]
    assert not any(m.retain for m in msgs)


def test_text_without_punctuation_is_spoken_before_the_answer_ends(
    start_daemon: Start, mqtt_probe: Probe
) -> None:
    """With no sentence end in sight the text is cut at the length limit, well before the final reply."""
    _d, base = start_daemon()
    text = " ".join(f"item{i}" for i in range(120))  # 700 characters, no punctuation
    rid = "s2"
    mqtt_probe.subscribe(f"{base}/stream/{rid}/sentences", f"reply/{rid}")
    mqtt_probe.publish(
        f"{base}/request/generate",
        {"id": rid, "prompt": say(text, chunk=7), "sentences": True},
        response_topic=f"reply/{rid}",
    )
    arrived = []
    while not arrived or arrived[-1].topic != f"reply/{rid}":
        arrived.append(mqtt_probe.get(timeout=20))
    said = [m.payload.decode() for m in arrived if m.topic.endswith("/sentences")]
    assert said[-1] == ""  # the end marker, then the reply
    said = said[:-1]
    assert len(said) >= 3 and all(0 < len(s) <= 200 for s in said)
    assert " ".join(said) == text
    first_reply = next(i for i, m in enumerate(arrived) if m.topic == f"reply/{rid}")
    first_sentence = next(i for i, m in enumerate(arrived) if m.topic.endswith("/sentences"))
    assert first_sentence < first_reply


def test_tool_call_markup_is_never_spoken(start_daemon: Start, mqtt_probe: Probe) -> None:
    """The text before a tool call is said; the call itself never reaches the sentence topic."""
    _d, base = start_daemon()
    call = '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>'
    msgs, reply = sentences(
        mqtt_probe,
        base,
        {
            "id": "s3",
            "prompt": say("Let me check the weather. " + call),
            "tools": [WEATHER],
            "sentences": True,
        },
    )
    assert reply["data"]["finish_reason"] == "tool_calls"
    assert [m.payload.decode() for m in msgs] == ["Let me check the weather.", ""]


def test_a_cancelled_request_ends_its_sentences_without_the_half_sentence(
    start_daemon: Start, mqtt_probe: Probe
) -> None:
    """Cancelled mid-sentence: the whole sentences said so far, then the end marker, nothing half-said."""
    _d, base = start_daemon()
    rid = "s4"
    topic = f"{base}/stream/{rid}/sentences"
    mqtt_probe.subscribe(topic, f"reply/{rid}")
    text = "The first sentence is here. And this one goes on and on and on without an end " * 3
    mqtt_probe.publish(
        f"{base}/request/generate",
        {"id": rid, "prompt": say(text, chunk=3, delay_ms=40), "sentences": True},
        response_topic=f"reply/{rid}",
    )
    assert mqtt_probe.get(topic, timeout=20).payload == b"The first sentence is here."
    mqtt_probe.publish(f"{base}/request/cancel", rid, response_topic="reply/cancel")  # the owner's folder
    rest = mqtt_probe.collect_until(topic, lambda m: m.payload == b"")
    assert final_of(mqtt_probe, f"reply/{rid}")["data"]["finish_reason"] == "cancelled"
    assert all(m.payload.endswith(b".") or m.payload == b"" for m in rest)


def test_sentences_must_be_a_bool(start_daemon: Start, mqtt_probe: Probe) -> None:
    """A sentences field that is not true or false is a wrong_type error naming the field."""
    _d, base = start_daemon()
    mqtt_probe.subscribe("reply/s5")
    mqtt_probe.publish(
        f"{base}/request/generate",
        {"id": "s5", "prompt": "hi", "sentences": "yes"},
        response_topic="reply/s5",
    )
    reply = final_of(mqtt_probe, "reply/s5")
    assert reply["status"] == "error" and reply["code"] == "wrong_type"
    assert "sentences" in reply["error"]
