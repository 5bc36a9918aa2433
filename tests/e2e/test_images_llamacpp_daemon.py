"""The same image request on a machine without an NPU: rkllmd as a process serving SmolLM2 with a
tiny real projector (tests/tiny_mmproj.py) through llama.cpp, over real mosquitto."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import pytest
from PIL import Image

from rkllmd.runtime.llamacpp import embedded_model_path
from tests.helpers import Broker, DaemonProc, Probe, write_config
from tests.tiny_mmproj import write_mmproj

pytestmark = pytest.mark.model
BASE = "llmvis"


def b64png(color: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def served(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    if embedded_model_path() is None:
        pytest.skip("the embedded SmolLM2 model is not installed")
    tmp = tmp_path_factory.mktemp("llmvis")
    mmproj = write_mmproj(tmp / "tiny-mmproj.gguf", 576)
    table = {"runtime": "llamacpp", "max_context_len": 1024, "n_threads": 2}
    cfg = write_config(
        tmp / "llmvis.toml",
        {
            "mqtt": {"host": broker.host, "port": broker.port, "base_topic": BASE, "client_id": BASE},
            "log": {"format": "json"},
            "limits": {"max_payload_bytes": 65536},
            "default_model": "vis",
            "models": {"vis": {**table, "mmproj": str(mmproj)}, "text": table},
        },
    )
    d = DaemonProc(cfg, tmp)
    d.wait_ready(90)
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
