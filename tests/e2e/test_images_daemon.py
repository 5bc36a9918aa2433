"""Images over MQTT into rkllmd as a process: the RKNN double encodes them in the worker, the RKLLM
double answers with what it saw; a text-only model and a bad image are refused with their codes."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

from tests.e2e.conftest import Start, final_of
from tests.fake_rknn.build import build_fake_rknn, write_model
from tests.helpers import Probe


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), color).save(buf, "PNG")
    return buf.getvalue()


def test_images_over_mqtt(start_daemon: Start, mqtt_probe: Probe, tmp_path: Path) -> None:
    folder = tmp_path / "snapshots"
    folder.mkdir()
    (folder / "door.png").write_bytes(png((0, 0, 255)))
    vision = {
        "vision_encoder": str(write_model(tmp_path / "enc.rknn", size=(32, 32), grid=(2, 2), embed=6)),
        "vision_library": str(build_fake_rknn(tmp_path)),
        "vision_family": "qwen2.5-vl",
    }
    _d, base = start_daemon(
        "1.3", model=vision, limits={"max_payload_bytes": 65536}, top={"images": {"folder": str(folder)}}
    )
    topic = f"{base}/response/generate"
    mqtt_probe.subscribe(topic)

    def ask(payload: dict) -> dict:
        mqtt_probe.publish(f"{base}/request/generate", payload)
        return final_of(mqtt_probe, topic, timeout=30)

    red = base64.b64encode(png((255, 0, 0))).decode()
    reply = ask(
        {
            "id": "i1",
            "prompt": "[[embed_dim=6]] is <image> like <image> ?",
            "images": [red, {"path": "door.png"}],
        }
    )
    assert reply["status"] == "ok", reply
    words = reply["data"]["text"].split()
    assert words[0] == "IS" and words[1].startswith("IMAGE1:4X6:") and words[3].startswith("IMAGE2:4X6:")
    assert words[1].split(":")[2:] != words[3].split(":")[2:]  # red and blue arrived apart
    t = reply["data"]["timings"]  # each step of the request, the images' own first
    assert t["images"] == 2 and t["image_decode_ms"] > 0 and t["image_encode_ms"] > 0
    assert {"queue_ms", "ttft_ms", "prefill_ms", "decode_ms", "total_ms"} <= set(t)
    assert t["ttft_ms"] >= t["image_decode_ms"] + t["image_encode_ms"]  # encoded before the prompt

    msgs = [{"role": "user", "content": "[[embed_dim=6]] describe", "images": [red]}]
    reply = ask({"id": "i2", "messages": msgs})
    assert reply["status"] == "ok" and reply["data"]["text"].startswith("IMAGE1:4X6:")

    reply = ask({"id": "i3", "prompt": "x", "images": [base64.b64encode(b"GIF89a....").decode()]})
    assert (reply["status"], reply["code"]) == ("error", "bad_image"), reply
    assert "GIF" in reply["error"]

    reply = ask({"id": "i4", "model": "other", "prompt": "what is this", "images": [red]})
    assert (reply["status"], reply["code"]) == ("error", "images_unsupported"), reply
    assert "no vision_encoder" in reply["error"]
    mqtt_probe.subscribe(f"{base}/response/models")
    mqtt_probe.publish(f"{base}/request/models", "")
    models = final_of(mqtt_probe, f"{base}/response/models", timeout=10)
    assert models["data"]["loaded"] == "fake"  # refused at admission: "other" was never loaded

    reply = ask({"id": "i6", "prompt": "[[embed_dim=6]] x", "images": [red] * 5})
    assert (reply["status"], reply["code"]) == ("error", "too_many_images"), reply
    assert "takes at most 4" in reply["error"]

    reply = ask({"id": "i5", "prompt": "[[embed_dim=6]] still there?", "images": [red]})
    assert reply["status"] == "ok"  # the model serves on after every refusal
