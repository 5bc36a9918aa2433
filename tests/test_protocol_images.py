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
        ({"prompt": "x", "images": [b64(png())] * 4}, "bad_request", "4 images, model 'vlm' takes at most 3"),
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
