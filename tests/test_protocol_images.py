"""MQTT requests with images: base64 or a file under [images] folder, on the prompt or on a user
message; each problem refused at admission with the code and the field that caused it."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

from rkllmd.exchange import Exchange, Final
from rkllmd.ingress import Gate, admit
from rkllmd.protocol import Incoming, Topics
from rkllmd.settings import Settings

TOPICS = Topics("B")


def png(color: tuple[int, int, int] = (10, 20, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, "PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# A vision model (the default) and a text-only one; files need not exist to be admitted.
MODELS = {
    "vlm": {"runtime": "rkllm", "path": "/m/vl.rkllm", "vision_encoder": "/m/vl.rknn", "max_images": 3},
    "text": {"runtime": "rkllm", "path": "/m/text.rkllm"},
    "gguf": {"runtime": "llamacpp"},
}


def admit_with(payload: Any, **images: Any) -> Exchange | Final:
    settings = Settings(
        limits={"max_payload_bytes": 65536}, images=images, models=MODELS, default_model="vlm"
    )
    gate = Gate(settings, TOPICS, lambda ex: ex, lambda: False)
    return admit(Incoming("B/request/generate", json.dumps(payload).encode(), None, None), gate)


def test_prompt_images_reach_the_runtime_input() -> None:
    a, b = png((1, 1, 1)), png((2, 2, 2))
    ex = admit_with({"prompt": "compare <image> and <image>", "images": [b64(a), b64(b)]})
    assert isinstance(ex, Exchange) and ex.inp is not None
    assert ex.inp.images == (a, b) and ex.inp.messages[-1].images == (a, b)


def test_message_images_stay_on_their_message() -> None:
    img = png()
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is this?", "images": [b64(img)]},
    ]
    ex = admit_with({"messages": msgs})
    assert isinstance(ex, Exchange) and ex.inp is not None
    assert ex.inp.messages[-1].images == (img,) and ex.inp.messages[0].images == ()


def test_a_file_under_the_folder(tmp_path: Path) -> None:
    img = png()
    (tmp_path / "door.png").write_bytes(img)
    ex = admit_with({"prompt": "who is at the door?", "images": [{"path": "door.png"}]}, folder=str(tmp_path))
    assert isinstance(ex, Exchange) and ex.inp is not None and ex.inp.images == (img,)
    out = admit_with({"prompt": "x", "images": [{"path": "/etc/passwd"}]}, folder=str(tmp_path))
    assert isinstance(out, Final) and out.code == "bad_image" and "images[0]: " in str(out.error)
    assert "outside the image folder" in str(out.error)
    out = admit_with({"prompt": "x", "images": [{"path": "door.png"}]})
    assert (
        isinstance(out, Final)
        and out.code == "bad_image"
        and "no image folder is configured" in str(out.error)
    )


def test_refusals_name_the_field_and_the_code() -> None:
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"prompt": "x", "images": ["not base64!"]}, "bad_image", "images[0]: the image is not valid base64"),
        (
            {"messages": [{"role": "user", "content": "x", "images": [b64(png()), "%%%"]}]},
            "bad_image",
            "messages[0].images[1]:",
        ),
        ({"prompt": "x", "images": [b64(bytes(3000))]}, "image_too_large", "over the 2048-byte limit"),
        (
            {"messages": [{"role": "user", "content": "x"}], "images": [b64(png())]},
            "bad_request",
            "images go on",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": "x", "images": [b64(png())]},
                    {"role": "user", "content": "y"},
                ]
            },
            "bad_request",
            "images go on a user message",
        ),
        ({"prompt": "x", "images": "abc"}, "wrong_type", "images"),
        ({"prompt": "x", "images": [b64(png())] * 17}, "bad_request", "images"),
        (
            {"prompt": "x", "images": [b64(png())] * 4},
            "too_many_images",
            "4 images, model 'vlm' takes at most 3",
        ),
        (
            {"model": "text", "prompt": "x", "images": [b64(png())]},
            "images_unsupported",
            "model 'text' does not take images: it has no vision_encoder",
        ),
        (
            {"model": "gguf", "messages": [{"role": "user", "content": "x", "images": ["%%%"]}]},
            "images_unsupported",  # before any image is decoded
            "it has no mmproj",
        ),
    ]
    for payload, code, words in cases:
        out = admit_with(payload, max_bytes=2048)
        assert isinstance(out, Final), payload
        assert out.code == code and words in str(out.error), (out.code, str(out.error))


def history(*turns: tuple[str, list[bytes | str]]) -> list[dict[str, Any]]:
    """user turns with their images, an assistant answer after each but the last."""
    out: list[dict[str, Any]] = []
    for text, imgs in turns:
        out.append(
            {"role": "user", "content": text, "images": [i if isinstance(i, str) else b64(i) for i in imgs]}
        )
        out.append({"role": "assistant", "content": "seen"})
    return out[:-1]


def test_a_follow_up_keeps_the_earlier_image_in_its_own_turn() -> None:
    door = png((1, 1, 1))
    ex = admit_with({"messages": history(("who is at <image> the door?", [door]), ("and now?", []))})
    assert isinstance(ex, Exchange) and ex.inp is not None
    first, _answer, now = ex.inp.messages
    assert first.images == (door,) and first.content == "who is at <image> the door?"
    assert now.images == () and now.content == "and now?"


def test_history_over_max_images_keeps_the_newest_and_marks_the_rest(capsys: Any) -> None:
    a, b, c, d = (png((i, i, i)) for i in (1, 2, 3, 4))  # vlm takes 3: the current 2, then the newest
    ex = admit_with({"messages": history(("one", [a]), ("two <image> here", [b]), ("compare", [c, d]))})
    assert isinstance(ex, Exchange) and ex.inp is not None
    assert ex.inp.images == (b, c, d)
    assert ex.inp.messages[0].content == "[an image shown earlier] one" and ex.inp.messages[0].images == ()
    assert (
        ex.inp.messages[2].content == "two <image> here"
        and ex.inp.messages[4].content == "<image><image>compare"
    )
    assert capsys.readouterr().out.count("earlier_images_left_out") == 1  # once per request


def test_a_bad_earlier_image_is_left_out_but_a_bad_current_one_is_refused() -> None:
    ok = png()
    ex = admit_with({"messages": history(("old <image> and <image>", ["%%%", ok]), ("still there?", []))})
    assert isinstance(ex, Exchange) and ex.inp is not None
    assert ex.inp.images == (ok,) and ex.inp.messages[0].content == "old [an image shown earlier] and <image>"
    out = admit_with({"messages": history(("old", [ok]), ("this one", ["%%%"]))})
    assert isinstance(out, Final) and out.code == "bad_image" and "messages[2].images[0]:" in str(out.error)


def test_earlier_images_never_refuse_a_request() -> None:
    many = [png((i, 0, 0)) for i in range(5)]  # over vlm's 3 in one earlier turn
    ex = admit_with({"messages": history(("lots", many), ("the last one?", []))})
    assert isinstance(ex, Exchange) and ex.inp is not None and ex.inp.images == tuple(many[2:])
    assert ex.inp.messages[0].content.startswith("[an image shown earlier] " * 2 + "<image>" * 3)
    # a text-only model: the earlier pictures become markers, the text conversation goes on
    ex = admit_with({"model": "text", "messages": history(("look", [many[0]]), ("and?", []))})
    assert isinstance(ex, Exchange) and ex.inp is not None and ex.inp.images == ()
    assert ex.inp.messages[0].content == "[an image shown earlier] look"
