"""The newer request surface tried as a client on the LAN would: embeddings, rerank, images,
thinking limits, on MQTT and both HTTP APIs of one rkllmd process (real mosquitto, the C doubles,
real sockets on loopback). Each bad value gets a clear error in its interface's shape within
seconds, no connection slot stays taken, and no file outside the image folder is read.
"""

from __future__ import annotations

import base64
import io
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.e2e.conftest import rkllm_config
from tests.fake_rknn.build import build_fake_rknn, write_model
from tests.helpers import Broker, DaemonProc, Probe, free_port, post_json

BASE = "surf"
TIMEOUT_S = 5.0  # a refusal takes milliseconds; longer is a hang
NON_FINITE = ["1e999", "-1e999", "NaN", "Infinity"]
HUGE = ["1e308", "123456789012345678901234567890", "-5", "0", "2.5", '"3"', "true", "[]"]


def png(size: tuple[int, int] = (24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (255, 0, 0)).save(buf, "PNG")
    return buf.getvalue()


class Surface:
    def __init__(self, proc: DaemonProc, broker: Broker, openai: int, ollama: int, folder: Path) -> None:
        self.proc, self.broker, self.openai, self.ollama, self.folder = proc, broker, openai, ollama, folder

    def post(self, port: int, path: str, body: bytes | dict[str, Any]) -> tuple[int, Any]:
        return post_json(port, path, body, TIMEOUT_S)

    def mqtt(self, command: str, body: bytes | dict[str, Any]) -> dict[str, Any]:
        reply = f"surf-client/{uuid.uuid4().hex[:8]}"
        obj = json.loads(body) if isinstance(body, bytes) else body
        p = Probe(self.broker)
        try:
            p.subscribe(reply)
            raw = body if isinstance(body, bytes) else json.dumps(obj).encode()
            raw = raw.replace(b"{", b'{"reply_to": "' + reply.encode() + b'", ', 1)
            p.publish(f"{BASE}/request/{command}", raw)
            return json.loads(p.get(reply, timeout=TIMEOUT_S).payload)
        finally:
            p.close()


@pytest.fixture(scope="module")
def surface(
    broker: Broker, fake_libs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Surface]:
    tmp = tmp_path_factory.mktemp("surf")
    folder = tmp / "snapshots"
    folder.mkdir()
    (folder / "ok.png").write_bytes(png())
    (tmp / "secret.png").write_bytes(png())
    (folder / "link.png").symlink_to(tmp / "secret.png")
    (folder / "env").symlink_to("/proc/self/environ")
    os.mkfifo(folder / "fifo.png")
    (folder / "null.png").symlink_to("/dev/zero")
    with (folder / "huge.png").open("wb") as f:
        f.truncate(64 * 1024 * 1024)  # sparse: 64 MiB on paper, nothing on disk
    model_file = tmp / "fake-model.rkllm"
    common = {"runtime": "rkllm", "path": str(model_file), "library": str(fake_libs["1.3"])}
    vision = {
        "vision_encoder": str(write_model(tmp / "enc.rknn", size=(32, 32), grid=(2, 2), embed=6)),
        "vision_library": str(build_fake_rknn(tmp)),
        "vision_family": "qwen2.5-vl",
    }
    openai, ollama = free_port(), free_port()
    cfg = rkllm_config(
        tmp,
        broker,
        fake_libs["1.3"],
        BASE,
        model=vision,
        limits={"max_payload_bytes": 65536},
        extra_models={
            "emb": {**common, "kind": "embedding", "pooling": "mean"},
            "mat": {**common, "kind": "embedding", "matryoshka": True},
            "rr": {**common, "kind": "rerank", "rerank_token_ids": [7, 3]},
        },
        top={"images": {"folder": str(folder)}},
    )
    with cfg.open("a") as f:
        f.write(
            f'\n[plugins]\nenabled = ["http", "ollama"]\n[plugins.http]\nport = {openai}\n'
            f"[plugins.ollama]\nport = {ollama}\n"
        )
    d = DaemonProc(cfg, tmp)
    d.wait_ready(30)
    d.wait_log("OpenAI-compatible API listening")
    d.wait_log("Ollama-compatible API listening")
    yield Surface(d, broker, openai, ollama, folder)
    assert d.stop() == 0


def body_with(body: dict[str, Any], field: str, literal: str) -> bytes:
    """``body`` as JSON text with ``field`` written as ``literal`` (1e999, NaN, a 30-digit integer...)."""
    return json.dumps({**body, field: "@N@"}).replace('"@N@"', literal).encode()


def clear_refusal(literal: str, status: int, message: str) -> None:
    """A refused number: non-finite is bad_json, anything else names the field or the limit."""
    assert status in (400, 413), (literal, status, message)
    if literal in NON_FINITE:
        assert "finite numbers only" in message, message


# (path, body, field, is served when the number is a huge whole one)
OPENAI_NUMBERS = [
    ("/v1/embeddings", {"model": "mat", "input": "hello"}, "dimensions", False),
    ("/v1/rerank", {"model": "rr", "query": "q", "documents": ["a", "b"]}, "top_n", True),  # all of them
]
OLLAMA_NUMBERS = [
    ("/api/embed", {"model": "emb", "input": "hello"}, "truncate", False),
    ("/api/embed", {"model": "mat", "input": "hello"}, "dimensions", False),
    ("/api/embeddings", {"model": "emb", "prompt": "hello"}, "keep_alive", True),  # read by nothing
]
MQTT_NUMBERS = [
    ("embed", {"model": "mat", "input": "hello"}, "dimensions", False),
    ("embed", {"model": "emb", "input": "hello"}, "truncate", False),
    ("rerank", {"model": "rr", "query": "q", "documents": ["a"]}, "top_n", True),
    ("generate", {"prompt": "aa1"}, "max_thinking_tokens", True),  # a limit never reached
]
WHOLE = {"1e308", "123456789012345678901234567890"}


@pytest.mark.parametrize("literal", NON_FINITE + HUGE)
@pytest.mark.parametrize(("path", "body", "field", "served"), OPENAI_NUMBERS)
def test_openai_new_numeric_fields_get_a_clear_answer(
    surface: Surface, path: str, body: dict[str, Any], field: str, served: bool, literal: str
) -> None:
    """/v1/embeddings dimensions and /v1/rerank top_n: non-finite, huge, negative, fractional or
    not a number at all is a 400 in OpenAI's shape at once (no hang); a huge top_n is "all"."""
    status, answer = surface.post(surface.openai, path, body_with(body, field, literal))
    if served and literal in WHOLE:
        assert status == 200 and len(answer["results"]) == 2, answer
    else:
        clear_refusal(literal, status, answer["error"]["message"])


@pytest.mark.parametrize("literal", NON_FINITE + HUGE)
@pytest.mark.parametrize(("path", "body", "field", "served"), OLLAMA_NUMBERS)
def test_ollama_new_numeric_fields_get_a_clear_answer(
    surface: Surface, path: str, body: dict[str, Any], field: str, served: bool, literal: str
) -> None:
    """/api/embed truncate and dimensions, /api/embeddings keep_alive: the same, in Ollama's shape."""
    status, answer = surface.post(surface.ollama, path, body_with(body, field, literal))
    if served and literal not in NON_FINITE:
        assert status == 200 and answer["embedding"], answer
    elif literal == "true" and field == "truncate":
        assert status == 200 and answer["embeddings"], answer
    else:
        clear_refusal(literal, status, answer["error"])


@pytest.mark.parametrize("literal", NON_FINITE + HUGE)
@pytest.mark.parametrize(("command", "body", "field", "served"), MQTT_NUMBERS)
def test_mqtt_new_numeric_fields_get_a_clear_answer(
    surface: Surface, command: str, body: dict[str, Any], field: str, served: bool, literal: str
) -> None:
    """embed dimensions and truncate, rerank top_n, generate max_thinking_tokens over MQTT."""
    r = surface.mqtt(command, body_with(body, field, literal))
    if (served and literal in WHOLE) or (literal == "true" and field == "truncate"):
        assert r["status"] == "ok", r
        return
    assert r["status"] == "error" and r["code"] != "internal_error", r
    if literal in NON_FINITE:
        assert r["code"] == "bad_json" and "finite numbers only" in r["error"]


# (path as sent, code): each refused before anything outside the folder is opened
ESCAPES = [
    ("../secret.png", "bad_image"),
    ("/proc/self/environ", "bad_image"),
    ("/etc/passwd", "bad_image"),
    ("link.png", "bad_image"),  # a link out of the folder
    ("env", "bad_image"),  # a link to /proc/self/environ
    ("fifo.png", "bad_image"),  # a read would block
    ("null.png", "bad_image"),  # a link to /dev/zero, which never ends
    ("huge.png", "image_too_large"),
    ("ok.png/../../secret.png", "bad_image"),
    ("", "bad_image"),
    ("ok.png\x00", "bad_image"),  # once internal_error: Python's os calls refuse a NUL with ValueError
    ("\x00../../../etc/passwd", "bad_image"),
]


@pytest.mark.parametrize(("path", "code"), ESCAPES)
def test_mqtt_image_path_outside_the_folder_is_refused_at_once(
    surface: Surface, path: str, code: str
) -> None:
    """An image ``path`` that leaves the folder, names a FIFO, a device or a file over the byte
    limit is refused with its code in milliseconds; a file in the folder is served."""
    r = surface.mqtt("generate", {"prompt": "[[embed_dim=6]] <image>", "images": [{"path": path}]})
    assert r["status"] == "error" and r["code"] == code, r
    r = surface.mqtt("generate", {"prompt": "[[embed_dim=6]] <image>", "images": [{"path": "ok.png"}]})
    assert r["status"] == "ok" and r["data"]["text"].startswith("IMAGE1:"), r


def bomb_b64() -> str:
    """A 20000 x 20000 PNG (400 M pixels) of 48 KB: a decompression bomb."""
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode()


def test_image_bombs_and_too_many_images_are_refused_on_every_interface(surface: Surface) -> None:
    """A bomb is image_too_large from its header (MQTT, OpenAI data: URI, Ollama images); 300 small
    images in one message are refused by count; 40 earlier turns of 16 images each naming a file
    over the byte limit are left out as text, never read."""
    bomb = bomb_b64()
    r = surface.mqtt("generate", {"prompt": "[[embed_dim=6]] <image>", "images": [bomb]})
    assert r["code"] == "image_too_large" and "pixels" in r["error"], r
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + bomb}}
    chat = {"model": "fake", "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, part]}]}
    status, answer = surface.post(surface.openai, "/v1/chat/completions", chat)
    assert status == 413 and answer["error"]["code"] == "image_too_large", answer
    msgs = [{"role": "user", "content": "x", "images": [bomb]}]
    status, answer = surface.post(
        surface.ollama, "/api/chat", {"model": "fake", "stream": False, "messages": msgs}
    )
    assert status == 413 and "pixels" in answer["error"], answer
    small = base64.b64encode(png((2, 2))).decode()
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + small}}
    chat = {"model": "fake", "messages": [{"role": "user", "content": [part] * 300}]}
    status, answer = surface.post(surface.openai, "/v1/chat/completions", chat)
    assert status == 400 and "at most 16" in answer["error"]["message"], answer
    msgs = [{"role": "user", "content": "x", "images": [small] * 300}]
    status, answer = surface.post(
        surface.ollama, "/api/chat", {"model": "fake", "stream": False, "messages": msgs}
    )
    assert status == 400 and "at most 16" in answer["error"], answer
    r = surface.mqtt("generate", {"prompt": "x", "images": [small] * 300})
    assert r["code"] == "bad_request" and "at most 16" in r["error"], r
    turn = {"role": "user", "content": "x", "images": [{"path": "huge.png"}] * 16}
    r = surface.mqtt("generate", {"messages": [turn] * 40 + [{"role": "user", "content": "y"}]})
    assert r["status"] == "ok" and "IMAGE1" not in r["data"]["text"], r


@pytest.mark.parametrize("n", [5000, 20000])
def test_huge_input_lists_are_refused_by_count_or_size(surface: Surface, n: int) -> None:
    """Thousands of texts within the body limit are too_many_inputs (limits.max_embed_inputs);
    beyond it, payload_too_large, on each interface and for embed and rerank alike."""
    code = "too_many_inputs" if n == 5000 else "payload_too_large"
    texts = ["a"] * n
    status, answer = surface.post(surface.openai, "/v1/embeddings", {"model": "emb", "input": texts})
    assert status in (400, 413) and answer["error"]["code"] == code, answer
    rerank = {"model": "rr", "query": "q", "documents": texts}
    status, answer = surface.post(surface.openai, "/v1/rerank", rerank)
    assert status in (400, 413) and answer["error"]["code"] == code, answer
    status, answer = surface.post(surface.ollama, "/api/embed", {"model": "emb", "input": texts})
    assert status in (400, 413) and ("64" in answer["error"] or "limit" in answer["error"]), answer
    assert surface.mqtt("embed", {"model": "emb", "input": texts})["code"] == code
    assert surface.mqtt("rerank", rerank)["code"] == code


OWN_TOPICS = [
    "surf",
    "surf/state",
    "surf/info",
    "surf/fleet/state",
    "surf/fleet/cancel",
    "surf/node/b1/state",
    "surf/node/b1/open",
    "surf/node/b1/handed",
    "surf/node/b1/serves",
    "surf/node/b1/request/generate",
    "surf/stream/someone-elses-id",
    "surf/request/generate",
]


@pytest.mark.parametrize("topic", OWN_TOPICS)
@pytest.mark.parametrize("command", ["embed", "rerank"])
def test_embed_and_rerank_reply_to_rkllmds_own_topics_is_refused(
    surface: Surface, topic: str, command: str
) -> None:
    """A reply_to on rkllmd's own topics (state, fleet and takeover records, another request's
    stream) is refused bad_request at the default reply topic, and nothing is published there."""
    body = (
        {"model": "emb", "input": "x"}
        if command == "embed"
        else {"model": "rr", "query": "q", "documents": ["a"]}
    )
    p = Probe(surface.broker)
    try:
        p.subscribe(topic, f"{BASE}/response/{command}")
        p.publish(f"{BASE}/request/{command}", {**body, "reply_to": topic})
        r = json.loads(p.get(f"{BASE}/response/{command}", timeout=TIMEOUT_S).payload)
        assert r["code"] == "bad_request" and "publishes on its own" in r["error"], r
        assert [m.topic for m in p.drain() if m.topic == topic and not m.retain] == []
    finally:
        p.close()


def test_every_connection_is_given_back(surface: Surface) -> None:
    """After every refusal above, more refused bodies than connection slots, then a served one."""
    for i in range(40):
        literal = NON_FINITE[i % len(NON_FINITE)]
        assert (
            surface.post(
                surface.openai,
                "/v1/embeddings",
                body_with({"model": "mat", "input": "x"}, "dimensions", literal),
            )[0]
            == 400
        )
        assert (
            surface.post(
                surface.ollama, "/api/embed", body_with({"model": "emb", "input": "x"}, "truncate", literal)
            )[0]
            == 400
        )
    status, answer = surface.post(surface.openai, "/v1/embeddings", {"model": "emb", "input": "x"})
    assert status == 200 and answer["data"][0]["embedding"], answer


SMUGGLED_PATHS: list[tuple[str, Any]] = [
    ("openai", {"type": "image_url", "image_url": {"url": {"path": "ok.png"}}}),
    ("openai", {"type": "image_url", "image_url": {"path": "ok.png"}}),
    ("openai", {"type": "image_url", "image_url": {"url": "ok.png"}}),
    ("openai", {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}),
    ("openai", {"type": "image", "path": "ok.png"}),
    ("ollama", {"path": "ok.png"}),
    ("ollama", "ok.png"),
    ("ollama", "/etc/passwd"),
]


@pytest.mark.parametrize(("api", "image"), SMUGGLED_PATHS)
def test_http_apis_take_no_image_file_paths(surface: Surface, api: str, image: Any) -> None:
    """File paths are an MQTT automation's alone: an HTTP client's image naming a file, in any
    shape, is a 400 at once and no file is read (the fake encoder would answer IMAGE1 for one)."""
    text = "[[embed_dim=6]] <image>"
    if api == "openai":
        msgs = [{"role": "user", "content": [{"type": "text", "text": text}, image]}]
        status, answer = surface.post(
            surface.openai, "/v1/chat/completions", {"model": "fake", "messages": msgs}
        )
        assert status == 400 and answer["error"]["message"], answer
    else:
        msgs = [{"role": "user", "content": text, "images": [image]}]
        body = {"model": "fake", "stream": False, "messages": msgs}
        status, answer = surface.post(surface.ollama, "/api/chat", body)
        assert status == 400 and set(answer) == {"error"}, answer
