"""A conversation about a picture, as chat clients hold one: Open WebUI, LLM Vision and Home
Assistant's chat log send the whole history back, its images included, on every turn. Through
the pinned clients (openai 3.26.0, ollama 0.6.2) and MQTT to rkllmd on the two C doubles (the
daemon of tests/e2e/test_images_clients.py: model ``fake`` takes at most 2 images); the RKLLM
double answers with the prompt it was given, each ``<image>`` replaced by what it saw of that
image (IMAGE<k>:<tokens>X<width>:M<mean>:F<first>:L<last>), so a test sees which images reached
it and where."""

from __future__ import annotations

from typing import Any

from tests.e2e.test_ha_replay import replay
from tests.e2e.test_images_clients import (
    BLUE,
    GIF,
    GREEN,
    OLLAMA,
    OPENAI,
    RED,
    Served,
    data_uri,
    served,
)
from tests.helpers import Probe

__all__ = ["served"]  # the module's daemon, shared by the fixture's import


def words(text: str) -> list[str]:
    """The double's image words (not the marker's IMAGE: "[AN IMAGE SHOWN EARLIER]")."""
    return [w for w in text.split() if w.startswith("IMAGE") and ":" in w]


def figures(word: str) -> list[str]:
    """What the double saw of an image's pixels (mean, first, last), whatever its number."""
    return word.split(":")[2:]


def openai(served: Served, messages: list[dict[str, Any]], **kw: Any) -> str:
    out = replay("openai", OPENAI, served.openai, model="fake", messages=messages, max_tokens=300, **kw)
    assert "error" not in out, out.get("error")
    return str(out["completion"]["choices"][0]["message"]["content"])


def alone(served: Served, image: str) -> list[str]:
    """The figures of ``image`` sent alone in one turn."""
    [seen] = words(
        openai(served, [{"role": "user", "content": [{"type": "text", "text": "x"}, data_uri(image)]}])
    )
    return figures(seen)


def test_openai_follow_up_question_about_an_earlier_image(served: Served) -> None:
    history = [
        {"role": "user", "content": [{"type": "text", "text": "what is this?"}, data_uri(RED)]},
        {"role": "assistant", "content": "a red square"},
        {"role": "user", "content": "and what colour is it?"},
    ]
    answer = openai(served, history)
    [seen] = words(answer)
    assert figures(seen) == alone(served, RED)  # the earlier turn's image reached the model
    # in its turn, after the text as the client wrote it
    assert answer.index("WHAT IS THIS?") < answer.index(seen) < answer.index("ASSISTANT: A RED SQUARE")
    assert answer.rstrip().endswith("AND WHAT COLOUR IS IT?")


def test_ollama_follow_up_question_about_an_earlier_image(served: Served) -> None:
    history = [
        {"role": "user", "content": "what is this?", "images_b64": [BLUE]},
        {"role": "assistant", "content": "a blue square"},
        {"role": "user", "content": "is it dark?"},
    ]
    out = replay("ollama", OLLAMA, served.ollama, model="fake:latest", messages=history, stream=False)
    [done] = out["parts"]
    [seen] = words(done["message"]["content"])
    assert figures(seen) == alone(served, BLUE)


def test_history_over_max_images_keeps_the_newest(served: Served) -> None:
    """Three pictures in a conversation, a model that takes 2: the oldest is left out, marked."""
    history = [
        {"role": "user", "content": [{"type": "text", "text": "first"}, data_uri(GREEN)]},
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": [{"type": "text", "text": "second"}, data_uri(BLUE)]},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": [{"type": "text", "text": "compare them"}, data_uri(RED)]},
    ]
    answer = openai(served, history)
    blue, red = words(answer)
    assert figures(blue) == alone(served, BLUE) and figures(red) == alone(served, RED)
    marker = ["[AN", "IMAGE", "SHOWN", "EARLIER]"]
    expected = ["USER:", "FIRST", *marker, "ASSISTANT:", "ONE", "USER:", "SECOND", blue, "ASSISTANT:", "TWO"]
    assert answer.split()[3:] == [*expected, "COMPARE", "THEM", red]
    served.proc.wait_log("earlier_images_left_out")


def test_a_bad_earlier_image_is_left_out_not_refused(served: Served) -> None:
    """The client kept a refused picture in its history: later turns still get answers."""
    history = [
        {"role": "user", "content": [{"type": "text", "text": "this?"}, data_uri(GIF)]},
        {"role": "assistant", "content": "cannot"},
        {"role": "user", "content": [{"type": "text", "text": "this one then"}, data_uri(RED)]},
    ]
    answer = openai(served, history)
    [seen] = words(answer)
    assert figures(seen) == alone(served, RED) and "[AN IMAGE SHOWN EARLIER]" in answer


def test_mqtt_messages_history_with_images(served: Served, mqtt_probe: Probe) -> None:
    topic = "imgclients/request/generate"
    mqtt_probe.subscribe("hist/reply")
    messages = [
        {"role": "user", "content": "look <image> here", "images": [RED]},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "and now?"},
    ]
    mqtt_probe.publish(
        topic, {"id": "h1", "messages": messages, "max_tokens": 300}, response_topic="hist/reply"
    )
    reply = mqtt_probe.get("hist/reply", timeout=30).json()
    assert reply["status"] == "ok", reply
    [seen] = words(reply["data"]["text"])
    assert figures(seen) == alone(served, RED)
    text = reply["data"]["text"]
    assert text.index("LOOK") < text.index(seen) < text.index("HERE")  # where the sender put it


def test_openai_text_and_image_parts_keep_the_clients_order(served: Served) -> None:
    content = [
        {"type": "text", "text": "left"},
        data_uri(RED),
        {"type": "text", "text": "right"},
        data_uri(BLUE),
        {"type": "text", "text": "which is darker?"},
    ]
    answer = openai(served, [{"role": "user", "content": content}])
    red, blue = words(answer)
    assert answer.split() == ["LEFT", red, "RIGHT", blue, "WHICH", "IS", "DARKER?"]
    assert figures(red) == alone(served, RED) and figures(blue) == alone(served, BLUE)
    # an image alone, with no text part, is a question too
    assert words(openai(served, [{"role": "user", "content": [data_uri(RED)]}]))
