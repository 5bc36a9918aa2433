"""A vision model on the RKLLM runtime: the encoder (RKNN double) opens and closes with the model,
a request's images reach the LLM (RKLLM double) where the user put them, and what cannot be
served is refused with the error a user can act on."""

from __future__ import annotations

import ctypes
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from rkllmd.errors import BadImage, ImagesUnsupported, ModelLoadError, RequestError, TooManyImages
from rkllmd.generation import ChatMessage, GenerateInput
from rkllmd.runtime.rkllm.runtime import RkllmRuntime
from rkllmd.runtime.rkllm.settings import RkllmSettings
from rkllmd.runtime.rknn._lib import load_library
from rkllmd.runtime.rknn.encoder import VisionEncoder
from tests.fake_rknn.build import build_fake_rknn, write_model
from tests.rkllm_conftest_fixtures import FakeIntrospect, fake_library, model_settings

RKNN_BUILD = Path(os.environ.get("RKLLMD_FAKE_BUILD_DIR", Path(tempfile.gettempdir()) / "rkllmd-fake-rknn"))


def png(color: tuple[int, int, int], size: tuple[int, int] = (40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def rknn_stat(name: str) -> int:
    fn = load_library(build_fake_rknn(RKNN_BUILD)).cdll.fake_rknn_stat
    fn.restype, fn.argtypes = ctypes.c_long, [ctypes.c_char_p]
    return int(fn(name.encode()))


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    model = tmp_path / "model.rkllm"
    model.write_bytes(b"not really a model")
    encoder = write_model(tmp_path / "enc.rknn", size=(32, 32), grid=(2, 2), embed=6)
    opened: list[RkllmRuntime] = []

    def make(abi: str = "13", vision: bool = True, **cfg: Any) -> RkllmRuntime:
        if vision:
            cfg.setdefault("vision_encoder", encoder)
            cfg.setdefault("vision_library", build_fake_rknn(RKNN_BUILD))
            cfg.setdefault("vision_family", "qwen2.5-vl")
        rt = RkllmRuntime("vlm", model_settings(model, fake_library(abi), **cfg), RkllmSettings())
        opened.append(rt)
        rt.open()
        return rt

    yield make
    for rt in opened:
        rt.close()


def ask(text: str, *images: bytes, earlier: tuple[ChatMessage, ...] = ()) -> GenerateInput:
    return GenerateInput(messages=(*earlier, ChatMessage("user", text, images=images)), max_tokens=64)


def run(rt: RkllmRuntime, inp: GenerateInput) -> str:
    out: list[str] = []
    rt.generate(inp, lambda text, _tid: out.append(text))
    return "".join(out)


@pytest.mark.parametrize("abi", ["12", "13", "131"])
def test_images_reach_the_model_where_the_user_put_them(make: Any, abi: str) -> None:
    rt = make(abi)
    st = FakeIntrospect(fake_library(abi))
    answer = run(rt, ask("[[embed_dim=6]] is <image> like <image> ?", png((255, 0, 0)), png((0, 0, 255))))
    words = answer.split()
    assert words[0] == "IS" and words[1].startswith("IMAGE1:4X6:") and words[3].startswith("IMAGE2:4X6:")
    assert words[1].split(":")[2:] != words[3].split(":")[2:]  # the two images arrived apart
    assert (st.stat("last_n_image"), st.stat("last_n_image_tokens"), st.stat("last_image_width")) == (
        2,
        4,
        32,
    )
    assert st.text("image_start") == "<|vision_start|>" and st.text("image_content") == "<|image_pad|>"
    assert rt.vision.last_timings["image_encode_ms"] > 0


def test_images_without_placeholders_go_before_the_text(make: Any) -> None:
    rt = make()
    answer = run(rt, ask("[[embed_dim=6]] describe", png((0, 255, 0))))
    assert answer.split()[0].startswith("IMAGE1:") and answer.split()[1] == "DESCRIBE"


def test_the_encoder_opens_and_closes_with_the_model(make: Any) -> None:
    live = rknn_stat("live_contexts")
    rt = make()
    assert isinstance(rt.vision.encoder, VisionEncoder) and rknn_stat("live_contexts") == live + 1
    rt.close()
    assert rt.vision.encoder is None and rknn_stat("live_contexts") == live


def test_an_encoder_that_cannot_open_fails_the_model_and_frees_the_llm(make: Any, tmp_path: Path) -> None:
    st = FakeIntrospect(fake_library("13"))
    live = st.stat("live")
    with pytest.raises(ModelLoadError, match="does not exist"):
        make(vision_encoder=tmp_path / "missing.rknn")
    bad = write_model(tmp_path / "bad.rknn", fail="init")
    with pytest.raises(ModelLoadError, match="cannot be opened: rknn_init returned -1"):
        make(vision_encoder=bad)
    assert st.stat("live") == live  # each LLM handle was destroyed again


def test_a_text_only_model_refuses_images(make: Any) -> None:
    rt = make(vision=False)
    with pytest.raises(ImagesUnsupported, match="'vlm' does not take images") as info:
        run(rt, ask("what is this", png((1, 2, 3))))
    assert info.value.code == "images_unsupported"
    assert run(rt, ask("still answers text")) == "STILL ANSWERS TEXT"


def test_requests_it_cannot_serve_are_refused(make: Any) -> None:
    rt = make(max_images=2)
    img = png((9, 9, 9))
    with pytest.raises(TooManyImages, match="3 images, model 'vlm' takes at most 2"):
        run(rt, ask("three", img, img, img))
    with pytest.raises(BadImage, match="a GIF, not JPEG, PNG or WebP"):
        run(rt, ask("gif", b"GIF89a\x01\x00"))
    with pytest.raises(RequestError, match="1 <image> placeholders for 2 images"):
        run(rt, ask("<image> one", img, img))
    assert run(rt, ask("[[embed_dim=6]] after", img)).split()[1] == "AFTER"  # the model still serves


def test_a_follow_up_sends_the_earlier_turns_image_in_its_own_turn(make: Any) -> None:
    rt = make()
    red = png((255, 0, 0))
    earlier = (
        ChatMessage("user", "[[embed_dim=6]] what is this", images=(red,)),
        ChatMessage("assistant", "red"),
    )
    answer = run(rt, ask("and its colour?", earlier=earlier)).split()
    # the transcript of the earlier turns, the image in the first user turn, then the question
    at = next(i for i, w in enumerate(answer) if w.startswith("IMAGE1:4X6:"))
    assert answer[at - 1] == "USER:" and answer[at + 1] == "WHAT" and answer[-2:] == ["ITS", "COLOUR?"]
    # an earlier image with good magic bytes but cut short fails to decode here: left out, marked
    cut = (ChatMessage("user", "[[embed_dim=6]] <image> and", images=(red[:40],)), *earlier)
    answer = run(rt, ask("which?", earlier=cut)).split()
    assert "USER: [AN IMAGE SHOWN EARLIER] AND USER:" in " ".join(answer)
    assert len([w for w in answer if ":4X6:" in w]) == 1  # the good one still went
    with pytest.raises(BadImage):  # the current turn's is still refused: the sender can fix it
        run(rt, ask("this?", red[:40], earlier=earlier))
    kept = make(keep_history=True)  # the runtime remembers earlier turns: only the current images go
    assert run(kept, ask("[[embed_dim=6]] and now?", earlier=earlier)) == "AND NOW?"


def test_image_tokens_count_towards_the_prompt(make: Any) -> None:
    rt = make()
    with_image, without = ask("hello", png((1, 1, 1))), ask("hello")
    assert rt.vision.extra_tokens(with_image) == 4 and rt.vision.extra_tokens(without) == 0


def test_an_unknown_family_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown vision family 'llava'"):
        model_settings(tmp_path / "m.rkllm", tmp_path / "lib.so", vision_family="llava")


def test_in_the_worker_process_images_cross_the_pipe_and_errors_keep_their_code(tmp_path: Path) -> None:
    from rkllmd.runtime.registry import kind_of
    from rkllmd.runtime.worker import WorkerRuntime
    from rkllmd.settings import Settings

    model = tmp_path / "m.rkllm"
    model.write_bytes(b"not really a model")
    vision = {
        "vision_encoder": str(write_model(tmp_path / "enc.rknn", size=(32, 32), grid=(2, 2), embed=6)),
        "vision_library": str(build_fake_rknn(RKNN_BUILD)),
    }
    models = {
        "v": {"runtime": "rkllm", "path": str(model), "library": str(fake_library("13")), **vision},
        "t": {"runtime": "rkllm", "path": str(model), "library": str(fake_library("13"))},
    }
    s = Settings.model_validate({"models": models, "rkllm": {"prompt_cache_dir": str(tmp_path / "pc")}})
    for name in ("v", "t"):
        rt = WorkerRuntime(kind_of(s.models[name]), name, s.models[name], s, load_timeout_s=60)
        rt.open()
        try:
            got: list[str] = []
            inp = ask("[[embed_dim=6]] what", png((200, 100, 0)))
            if name == "v":
                rt.generate(inp, lambda text, _tok, out=got: out.append(text))
                assert "".join(got).startswith("IMAGE1:4X6:")
                with pytest.raises(BadImage, match="PNG"):
                    rt.generate(ask("x", b"\x89PNG\r\n\x1a\nbroken"), lambda text, _tok: None)
            else:
                with pytest.raises(ImagesUnsupported, match="'t' does not take images"):
                    rt.generate(inp, lambda text, _tok: None)
        finally:
            rt.close()
