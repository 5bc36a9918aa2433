"""Images through the OpenAI and Ollama APIs, sent by the pinned official clients (openai 3.26.0,
ollama 0.6.2: what Home Assistant pins, tests/e2e/test_ha_replay.py) to rkllmd as a process on the
two C doubles: the RKNN double encodes each image in the worker, the RKLLM double answers with
what it saw of each (IMAGE<k>:<tokens>X<width>:M<mean>:F<first>:L<last>, docs/VISION.md), so a
test can tell which image arrived where.

Home Assistant's AI Task is replayed as the newest Home Assistant source read (home-assistant/core,
``homeassistant/components/ollama/entity.py`` at 0d0db908 and ``ai_task.py`` at 12e94142, both
pinning ``ollama==0.6.2``; ``ai_task/entity.py`` at 021512e6 and ``const.py`` for the system prompt).
AI Task arrived in HA 2025.7/2025.8; the HA installed for the tests (2025.4.4) has none, so it is
not run itself. What that code sends: ``client.chat(model, messages=[system, user], tools=None,
stream=True, keep_alive=-1, options={"num_ctx": 8192}, think=None, format=<the structure as an
OpenAPI schema>)``, the user message carrying the task's instructions and
``images=[ollama.Image(value=attachment.path)]`` (the client reads the file and sends base64); the
final text is parsed as JSON (``ai_task.py``).
"""

from __future__ import annotations

import base64
import io
import json
import random
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from rkllmd.bench.broker import free_port
from rkllmd.testing import wait_until
from tests.e2e.conftest import rkllm_config
from tests.e2e.test_ha_replay import replay
from tests.fake_rknn.build import build_fake_rknn, write_model
from tests.helpers import Broker, DaemonProc

OPENAI, OLLAMA = "3.26.0", "0.6.2"
# The image words of the double: IMAGE<k>:4X6:M<mean>:F<first>:L<last> for a 2x2 grid, width 6.
AI_TASK_SYSTEM = "You are a Home Assistant expert and help users with their tasks."
AI_TASK_SCHEMA = {
    "type": "object",
    "properties": {
        "parcel": {"type": "boolean", "description": "Is there a parcel at the door?"},
        "seen": {"type": "string", "description": "What the camera shows"},
    },
    "required": ["parcel", "seen"],
}


def png(color: tuple[int, int, int], size: tuple[int, int] = (24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def noise_png(side: int) -> bytes:
    """A PNG that does not compress (random pixels): larger than [images].max_bytes below."""
    rnd = random.Random(7)
    img = Image.frombytes("RGB", (side, side), bytes(rnd.randrange(256) for _ in range(side * side * 3)))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


RED, BLUE, GREEN = (b64(png(c)) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0)))
GIF = b64(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")
BIG = b64(noise_png(48))  # ~7 KB, over the 4 KiB bound


class Served:
    def __init__(self, proc: DaemonProc, openai_port: int, ollama_port: int, folder: Path) -> None:
        self.proc = proc
        self.openai = f"http://127.0.0.1:{openai_port}/v1"
        self.ollama = f"http://127.0.0.1:{ollama_port}"
        self.folder = folder


@pytest.fixture(scope="module")
def served(
    broker: Broker, fake_libs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """rkllmd with the vision model ``fake`` (at most 2 images) and the text-only ``other``; both
    APIs; images bounded to 4 KiB; a script for the AI task's canned JSON answer."""
    tmp = tmp_path_factory.mktemp("imgclients")
    folder = tmp / "snapshots"
    folder.mkdir()
    script = tmp / "script.tsv"
    answer = '{"parcel": true, "seen": "@IMAGES@"}'  # the double puts its image words in
    script.write_text(f"*\tparcel at the door\t{b64(answer.encode())}\n")
    vision = {
        "vision_encoder": str(write_model(tmp / "enc.rknn", size=(32, 32), grid=(2, 2), embed=6)),
        "vision_library": str(build_fake_rknn(tmp)),
        "vision_family": "qwen2.5-vl",
        "max_images": 2,
    }
    openai_port, ollama_port = free_port(), free_port()
    cfg = rkllm_config(
        tmp,
        broker,
        fake_libs["1.3"],
        "imgclients",
        limits={"max_payload_bytes": 262144},
        model=vision,
        top={"images": {"max_bytes": 4096}},
    )
    with cfg.open("a") as f:
        f.write(
            f'\n[plugins]\nenabled = ["http", "ollama"]\n[plugins.http]\nport = {openai_port}\n'
            f"[plugins.ollama]\nport = {ollama_port}\n"
        )
    env = {"FAKE_RKLLM_EMBED_DIM": "6", "FAKE_RKLLM_SCRIPT": str(script)}
    d = DaemonProc(cfg, tmp, env=env)
    d.wait_ready(30)
    d.wait_log("OpenAI-compatible API listening")
    d.wait_log("Ollama-compatible API listening")
    yield Served(d, openai_port, ollama_port, folder)
    assert d.stop() == 0


def words(text: str) -> list[str]:
    return [w for w in text.split() if w.startswith("IMAGE")]


def data_uri(b: str, mime: str = "image/png") -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{b}", "detail": "low"}}


def openai_chat(served: Served, parts: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    content = [{"type": "text", "text": "what is in the picture?"}, *parts]
    kw.setdefault("model", "fake")
    return replay("openai", OPENAI, served.openai, messages=[{"role": "user", "content": content}], **kw)


def streamed_text(out: dict[str, Any]) -> str:
    return "".join(ch["delta"].get("content") or "" for c in out["chunks"] for ch in c["choices"])


# --- OpenAI: image_url data URIs ----------------------------------------------------------------


def test_openai_one_image_and_its_timings(served: Served) -> None:
    out = openai_chat(served, [data_uri(RED)], max_tokens=50)
    assert "error" not in out, out.get("error")
    part = out["sent"][0]["messages"][0]["content"][1]
    assert part["image_url"]["url"].startswith("data:image/png;base64,")  # as the client sent it
    completion = out["completion"]
    [seen] = words(completion["choices"][0]["message"]["content"])
    assert seen.startswith("IMAGE1:4X6:")
    t = completion["timings"]  # beside usage, as llama.cpp's server puts its own
    assert t["images"] == 1 and t["image_decode_ms"] > 0 and t["image_encode_ms"] > 0
    assert "prefill_ms" in t and "decode_ms" in t


def test_openai_two_images_streamed_arrive_apart_and_in_order(served: Served) -> None:
    out = openai_chat(served, [data_uri(RED), data_uri(BLUE)], stream=True, max_tokens=50)
    assert "error" not in out, out.get("error")
    first, second = words(streamed_text(out))
    assert first.startswith("IMAGE1:4X6:") and second.startswith("IMAGE2:4X6:")
    assert first.split(":")[2:] != second.split(":")[2:]  # red and blue: different pixels
    # the same red image alone gives the same figures: the order is the client's
    [alone] = words(openai_chat(served, [data_uri(RED)])["completion"]["choices"][0]["message"]["content"])
    assert alone.split(":")[2:] == first.split(":")[2:]


@pytest.mark.parametrize(
    ("parts", "status", "code", "says"),
    [
        ([data_uri(GIF, "image/gif")], 400, "invalid_image", "image/gif"),
        ([data_uri(GIF)], 400, "invalid_image", "GIF"),  # told PNG, is a GIF: the bytes decide
        ([data_uri("not base64!")], 400, "invalid_image", "base64"),
        (
            [{"type": "image_url", "image_url": {"url": "https://example.com/door.jpg"}}],
            400,
            "invalid_image",
            "does not fetch",
        ),
        ([data_uri(BIG)], 413, "image_too_large", "4096"),
        ([data_uri(RED), data_uri(BLUE), data_uri(GREEN)], 400, "too_many_images", "at most 2"),
    ],
    ids=["gif-type", "gif-bytes", "not-base64", "remote-url", "too-large", "too-many"],
)
def test_openai_bad_images_are_refused_in_openais_shape(
    served: Served, parts: list[dict[str, Any]], status: int, code: str, says: str
) -> None:
    for stream in (False, True):
        out = openai_chat(served, parts, stream=stream)
        err = out["error"]
        assert (err["status_code"], err["code"]) == (status, code), err
        assert says in err["message"], err


@pytest.mark.parametrize(
    ("parts", "where"),
    [
        ([data_uri(GIF)], "messages[0].content[1]"),
        ([data_uri(RED), {"type": "text", "text": "and"}, data_uri(BIG)], "messages[0].content[3]"),
    ],
    ids=["not-an-image", "too-large-after-text"],
)
def test_openai_image_refusal_names_the_part_the_client_sent(
    served: Served, parts: list[dict[str, Any]], where: str
) -> None:
    """Not rkllmd's own ``messages[0].images[k]``: the content part, and ``param`` its URL, as
    OpenAI's error object names the parameter at fault."""
    err = openai_chat(served, parts)["error"]
    assert err["message"].startswith(f"{where}: "), err
    assert err["param"] == f"{where}.image_url.url" and "images[" not in err["message"], err


def test_openai_too_many_images_names_the_first_part_over_the_bound(served: Served) -> None:
    """``param`` is the content part (not its URL: nothing is wrong with that image itself), the
    first one over the model's ``max_images`` (2 here: the third image, after the text part)."""
    err = openai_chat(served, [data_uri(RED), data_uri(BLUE), data_uri(GREEN)])["error"]
    assert (err["code"], err["param"]) == ("too_many_images", "messages[0].content[3]"), err
    assert "(messages[0].content[3] is one too many)" in err["message"], err


def test_openai_text_only_model_refuses_images_before_loading_it(served: Served) -> None:
    out = openai_chat(served, [data_uri(RED)], model="other")
    err = out["error"]
    assert (err["status_code"], err["code"]) == (400, "images_unsupported"), err
    assert "no vision_encoder" in err["message"]
    # refused at admission: the vision model is still the one loaded, "other" was never loaded
    with urllib.request.urlopen(f"{served.ollama}/api/ps", timeout=10) as resp:
        assert [m["name"] for m in json.loads(resp.read())["models"]] == ["fake:latest"]
    out = openai_chat(served, [data_uri(BLUE)])
    assert "error" not in out and words(out["completion"]["choices"][0]["message"]["content"])


# --- Ollama: images on a message and on /api/generate -------------------------------------------


def ollama_chat(served: Served, images: list[str], **kw: Any) -> dict[str, Any]:
    kw.setdefault("model", "fake:latest")
    kw.setdefault("stream", True)
    msg = {"role": "user", "content": "what is in the picture?", "images_b64": images}
    return replay("ollama", OLLAMA, served.ollama, messages=[msg], **kw)


def ollama_text(out: dict[str, Any]) -> str:
    return "".join((p.get("message") or {}).get("content") or p.get("response") or "" for p in out["parts"])


@pytest.mark.parametrize("stream", [True, False])
def test_ollama_chat_one_and_two_images(served: Served, stream: bool) -> None:
    one = ollama_chat(served, [RED], stream=stream)
    assert one["sent"][0]["messages"][0]["images"] == [RED]  # base64, as the client sends bytes
    [seen] = words(ollama_text(one))
    assert seen.startswith("IMAGE1:4X6:")
    done = one["parts"][-1]
    assert done["done"] and done["prompt_eval_duration"] > 0  # the images' time is in it
    two = ollama_chat(served, [RED, BLUE], stream=stream)
    first, second = words(ollama_text(two))
    assert first.split(":")[2:] == seen.split(":")[2:] and second.split(":")[2:] != seen.split(":")[2:]


def test_ollama_generate_with_images(served: Served) -> None:
    out = replay(
        "ollama",
        OLLAMA,
        served.ollama,
        method="generate",
        model="fake",
        prompt="compare <image> with <image>",
        images_b64=[BLUE, RED],
        stream=False,
    )
    assert out["sent"][0]["images"] == [BLUE, RED]
    text = ollama_text(out)
    assert text.startswith("COMPARE IMAGE1:4X6:") and " WITH IMAGE2:4X6:" in text


@pytest.mark.parametrize(
    ("images", "model", "said", "code"),
    [
        ([GIF], "fake:latest", "could not read that image", "bad_image"),
        ([BIG], "fake:latest", "too large", "image_too_large"),
        ([RED], "other:latest", "cannot see images", "images_unsupported"),
        ([RED, BLUE, GREEN], "fake:latest", "more pictures than I can look at", "too_many_images"),
    ],
    ids=["gif", "too-large", "text-only", "too-many"],
)
def test_ollama_bad_images_are_told_to_home_assistant_in_a_sentence(
    served: Served, images: list[str], model: str, said: str, code: str
) -> None:
    out = ollama_chat(served, images, model=model)
    [done] = out["parts"]
    assert done["done"] and done["done_reason"] == "error" and said in done["message"]["content"], done
    assert wait_until(lambda: f'"code": "{code}"' in served.proc.log_text(), 5)


def raw_post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_ollama_errors_for_other_clients_keep_ollamas_shape(served: Served) -> None:
    status, body = raw_post(
        f"{served.ollama}/api/chat",
        {"model": "fake", "stream": False, "messages": [{"role": "user", "content": "x", "images": [GIF]}]},
    )
    assert status == 400 and "GIF" in body["error"], body
    status, body = raw_post(
        f"{served.ollama}/api/generate", {"model": "other", "prompt": "x", "images": [RED]}
    )
    assert status == 400 and "does not take images" in body["error"], body
    status, body = raw_post(f"{served.ollama}/api/generate", {"model": "fake", "prompt": "x", "images": [7]})
    assert status == 400 and "array of base64 strings" in body["error"], body


def test_ollama_show_reports_vision_for_a_model_with_an_encoder(served: Served) -> None:
    _, fake = raw_post(f"{served.ollama}/api/show", {"model": "fake"})
    _, other = raw_post(f"{served.ollama}/api/show", {"model": "other:latest"})
    assert fake["capabilities"] == ["completion", "tools", "vision"]
    assert other["capabilities"] == ["completion", "tools"]


# --- Home Assistant's AI Task (newest HA source, see the top) -----------------------------------


def test_home_assistant_ai_task_with_a_camera_snapshot_and_a_structure(served: Served) -> None:
    """``ai_task.generate_data`` with an image attachment and a structure: HA's exact call through
    ollama 0.6.2; the answer is JSON of the schema, telling what the model saw of the snapshot."""
    snapshot = served.folder / "front_door.png"
    snapshot.write_bytes(png((200, 120, 40), (64, 48)))
    out = replay(
        "ollama",
        OLLAMA,
        served.ollama,
        model="fake:latest",
        messages=[
            {"role": "system", "content": AI_TASK_SYSTEM},
            {
                "role": "user",
                "content": "Is there a parcel at the door? Describe what you see.",
                "image_paths": [str(snapshot)],
            },
        ],
        tools=None,
        stream=True,
        keep_alive=-1,
        options={"num_ctx": 8192},
        think=None,
        format=AI_TASK_SCHEMA,
    )
    sent = out["sent"][0]
    assert sent["format"] == AI_TASK_SCHEMA and sent["stream"] is True
    assert sent["messages"][1]["images"] == [b64(snapshot.read_bytes())]  # the file, base64
    assert "error" not in out, out.get("error")
    data = json.loads(ollama_text(out))  # what ai_task.py does with the text
    assert data["parcel"] is True and data["seen"].startswith("IMAGE1:4X6:")
    # the same snapshot over OpenAI gives the same figures: one admission, one encoder
    [seen] = words(
        openai_chat(served, [data_uri(b64(snapshot.read_bytes()))])["completion"]["choices"][0]["message"][
            "content"
        ]
    )
    assert seen.split(":")[2:] == data["seen"].split(":")[2:]


def test_a_snapshot_over_the_request_limit_says_so_in_each_interface(served: Served) -> None:
    """A body over limits.max_payload_bytes (256 KiB here) is refused before it is read; Home
    Assistant's client hears that the picture is too large, OpenAI's gets 413."""
    huge = b64(noise_png(300))  # ~360 KB as base64
    [done] = ollama_chat(served, [huge])["parts"]
    assert done["done_reason"] == "error" and "Send a smaller picture" in done["message"]["content"]
    err = openai_chat(served, [data_uri(huge)])["error"]
    assert (err["status_code"], err["code"]) == (413, "payload_too_large"), err
