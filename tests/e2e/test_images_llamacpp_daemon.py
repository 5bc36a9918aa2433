"""The same image request on a machine without an NPU: rkllmd as a process serving SmolLM2 with a
tiny real projector (tests/tiny_mmproj.py) through llama.cpp, over real mosquitto and through the
pinned openai client (3.26.0) on the http plugin. The projector's weights are made up: what is
tested is that an image's pixels reach the model (another image, another greedy answer)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import pytest
from PIL import Image

from rkllmd.bench.broker import free_port
from rkllmd.runtime.llamacpp import embedded_model_path
from tests.e2e.test_ha_replay import replay
from tests.helpers import Broker, DaemonProc, Probe, write_config
from tests.tiny_mmproj import write_mmproj

pytestmark = pytest.mark.model
BASE = "llmvis"
OPENAI = "3.26.0"
# A follow-up question about the picture of the first turn; "Describe the picture." after this
# answer is where the tiny projector's red and blue give different greedy answers.
EARLIER_ANSWER, FOLLOW_UP = "It is a picture.", "Describe the picture."


def b64png(color: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def served(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    """The daemon; its OpenAI API's port is ``served.openai_port``."""
    if embedded_model_path() is None:
        pytest.skip("the embedded SmolLM2 model is not installed")
    tmp = tmp_path_factory.mktemp("llmvis")
    mmproj = write_mmproj(tmp / "tiny-mmproj.gguf", 576)
    port = free_port()
    table = {"runtime": "llamacpp", "max_context_len": 1024, "n_threads": 2}
    cfg = write_config(
        tmp / "llmvis.toml",
        {
            "mqtt": {"host": broker.host, "port": broker.port, "base_topic": BASE, "client_id": BASE},
            "log": {"format": "json"},
            "limits": {"max_payload_bytes": 65536},
            "default_model": "vis",
            "models": {"vis": {**table, "mmproj": str(mmproj)}, "text": table},
            "plugins": {"enabled": ["http"], "http": {"port": port}},
        },
    )
    d = DaemonProc(cfg, tmp)
    d.wait_ready(90)
    d.wait_log("OpenAI-compatible API listening")
    d.openai_port = port  # type: ignore[attr-defined]
    yield d
    assert d.stop() == 0


def ask(probe: Probe, rid: str, **req: object) -> dict:
    probe.subscribe(f"{rid}/reply")
    probe.publish(f"{BASE}/request/generate", {"id": rid, **req}, response_topic=f"{rid}/reply")
    return probe.get(f"{rid}/reply", timeout=90).json()


def test_images_over_mqtt_on_llamacpp(served: DaemonProc, mqtt_probe: Probe) -> None:
    greedy = {"temperature": 0, "top_k": 1, "max_tokens": 8}
    red = ask(mqtt_probe, "r1", prompt="What is in the picture?", images=[b64png((255, 0, 0))], **greedy)
    blue = ask(mqtt_probe, "b1", prompt="What is in the picture?", images=[b64png((0, 0, 255))], **greedy)
    assert red["status"] == blue["status"] == "ok", (red, blue)
    assert red["data"]["text"] != blue["data"]["text"]  # the pixels reached the model
    t = red["data"]["timings"]
    assert t["images"] == 1 and t["image_decode_ms"] > 0 and t["image_encode_ms"] > 0 and t["prefill_ms"] > 0
    refused = ask(mqtt_probe, "t1", model="text", prompt="x", images=[b64png((0, 0, 0))])
    assert (refused["status"], refused["code"]) == ("error", "images_unsupported")
    assert "no mmproj" in refused["error"]


def test_a_follow_up_about_an_earlier_picture_over_mqtt(served: DaemonProc, mqtt_probe: Probe) -> None:
    def follow_up(rid: str, color: tuple[int, int, int]) -> dict:
        messages = [
            {"role": "user", "content": "What is <image> this?", "images": [b64png(color)]},
            {"role": "assistant", "content": EARLIER_ANSWER},
            {"role": "user", "content": FOLLOW_UP},
        ]
        return ask(mqtt_probe, rid, messages=messages, temperature=0, top_k=1, max_tokens=8)

    red, blue = follow_up("fr", (255, 0, 0)), follow_up("fb", (0, 0, 255))
    assert red["status"] == blue["status"] == "ok", (red, blue)
    assert red["data"]["text"] != blue["data"]["text"]  # the earlier turn's pixels reached the model
    assert red["data"]["timings"]["images"] == 1


def test_a_follow_up_about_an_earlier_picture_through_openais_client(served: DaemonProc) -> None:
    url = f"http://127.0.0.1:{served.openai_port}/v1"  # type: ignore[attr-defined]

    def follow_up(color: tuple[int, int, int]) -> dict:
        image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64png(color)}"}}
        messages = [
            {
                "role": "user",
                "content": [{"type": "text", "text": "What is"}, image, {"type": "text", "text": "this?"}],
            },
            {"role": "assistant", "content": EARLIER_ANSWER},
            {"role": "user", "content": FOLLOW_UP},
        ]
        out = replay("openai", OPENAI, url, model="vis", messages=messages, temperature=0, max_tokens=8)
        assert "error" not in out, out.get("error")
        return out["completion"]  # type: ignore[no-any-return]

    red, blue = follow_up((255, 0, 0)), follow_up((0, 0, 255))
    assert red["choices"][0]["message"]["content"] != blue["choices"][0]["message"]["content"]
    assert red["timings"]["images"] == 1
