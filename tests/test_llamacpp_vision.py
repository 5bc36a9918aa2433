"""llama.cpp with an ``mmproj`` file: the real SmolLM2 GGUF and a real, tiny LLaVA-style projector
written here (tests/tiny_mmproj.py), through the pinned llama-cpp-python's libmtmd. Its weights
are made up, so what is tested is the path, not understanding: the pixels reach the model
(different images, different greedy answers; the same image, the same answer), each image takes
its tokens in the prompt, the bounds and refusals are rkllmd's, and the model serves on. Also the
daemon with such a model over MQTT (the same requests as on the NPU)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from rkllmd.errors import BadImage, ModelLoadError, RequestError
from rkllmd.generation import ChatMessage, GenerateInput, Sampling
from rkllmd.runtime.llamacpp import embedded_model_path
from rkllmd.runtime.llamacpp import runtime as llamacpp
from rkllmd.runtime.llamacpp.kind import load_problems
from rkllmd.runtime.llamacpp.runtime import LlamaCppRuntime
from rkllmd.runtime.llamacpp.settings import LlamaCppModelSettings
from tests.tiny_mmproj import write_mmproj

SMOL_EMBD = 576  # SmolLM2-135M's width: the projector's output must match it
IMAGE_TOKENS = 16  # a 32-pixel image in 8-pixel patches


def png(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


RED, BLUE = png((255, 0, 0)), png((0, 0, 255))


def settings(**table: object) -> LlamaCppModelSettings:
    return LlamaCppModelSettings.model_validate(
        {"runtime": "llamacpp", "max_context_len": 512, "n_threads": 2, **table}
    )


@pytest.fixture(scope="module")
def mmproj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mmproj(tmp_path_factory.mktemp("mmproj") / "tiny-mmproj.gguf", SMOL_EMBD)


@pytest.fixture(scope="module")
def rt(mmproj: Path) -> Iterator[LlamaCppRuntime]:
    pytest.importorskip("llama_cpp")
    if embedded_model_path() is None:
        pytest.skip(f"embedded model missing: {llamacpp.INSTALL_EMBEDDED}")
    runtime = LlamaCppRuntime("smolvis", settings(mmproj=str(mmproj), max_images=2))
    runtime.open()
    yield runtime
    runtime.close()


def run(rt: LlamaCppRuntime, text: str, *images: bytes, tokens: int = 10) -> tuple[str, object]:
    out: list[str] = []
    inp = GenerateInput(
        messages=(ChatMessage("user", text, images=images),),
        max_tokens=tokens,
        sampling=Sampling(temperature=0.0, top_k=1),
    )
    result = rt.generate(inp, lambda t, _k: out.append(t))
    return "".join(out), result.perf


@pytest.mark.model
def test_the_pixels_reach_the_model(rt: LlamaCppRuntime) -> None:
    red, perf = run(rt, "What is in the picture?", RED)
    blue, _ = run(rt, "What is in the picture?", BLUE)
    again, _ = run(rt, "What is in the picture?", RED)
    assert red and blue and red != blue  # greedy: only the image differs
    assert again == red  # and the same image gives the same answer
    _, text_only = run(rt, "What is in the picture?")
    assert perf.prompt_tokens == text_only.prompt_tokens + IMAGE_TOKENS  # type: ignore[attr-defined]
    assert perf.images == 1 and perf.image_decode_ms > 0 and perf.image_encode_ms > 0  # type: ignore[attr-defined]
    assert perf.prefill_ms > 0 and perf.decode_ms > 0  # type: ignore[attr-defined]


@pytest.mark.model
def test_two_images_in_order_and_where_the_user_put_them(rt: LlamaCppRuntime) -> None:
    both, perf = run(rt, "Compare <image> with <image>.", RED, BLUE)
    swapped, _ = run(rt, "Compare <image> with <image>.", BLUE, RED)
    assert both != swapped and perf.images == 2  # type: ignore[attr-defined]
    with pytest.raises(RequestError, match="takes at most 2"):
        run(rt, "three", RED, BLUE, RED)
    with pytest.raises(RequestError, match="1 <image> placeholders for 2 images"):
        run(rt, "only <image> here", RED, BLUE)


@pytest.mark.model
def test_bad_images_are_refused_with_rkllmds_bounds_and_the_model_serves_on(rt: LlamaCppRuntime) -> None:
    with pytest.raises(BadImage, match="GIF"):
        run(rt, "x", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")
    with pytest.raises(BadImage, match=r"cannot be decoded|truncated|complete file"):
        run(rt, "x", RED[: len(RED) // 2])
    text, perf = run(rt, "Hi")
    assert text and perf.images == 0  # type: ignore[attr-defined]
    red, _ = run(rt, "What is in the picture?", RED)
    assert red  # the image positions of earlier runs were not taken for this prompt's prefix


@pytest.mark.model
def test_a_follow_up_question_sees_the_earlier_turns_image(rt: LlamaCppRuntime) -> None:
    def follow_up(image: bytes) -> tuple[str, object]:
        out: list[str] = []
        earlier = (
            ChatMessage("user", "What is <image> this?", images=(image,)),
            ChatMessage("assistant", "It is a picture."),
        )
        inp = GenerateInput(
            messages=(*earlier, ChatMessage("user", "Describe the picture.")),
            max_tokens=10,
            sampling=Sampling(temperature=0.0, top_k=1),
        )
        result = rt.generate(inp, lambda t, _k: out.append(t))
        return "".join(out), result.perf

    red, perf = follow_up(RED)
    blue, _ = follow_up(BLUE)
    assert red and blue and red != blue  # the earlier turn's pixels reached the model
    assert perf.images == 1 and perf.image_encode_ms > 0  # type: ignore[attr-defined]
    cut, cut_perf = follow_up(RED[: len(RED) // 2])  # cannot be decoded: left out, not refused
    assert cut and cut_perf.images == 0  # type: ignore[attr-defined]


def test_config_and_load_problems(tmp_path: Path) -> None:
    cfg = settings(mmproj=str(tmp_path / "missing.gguf"))
    assert cfg.takes_images and not settings().takes_images
    assert any("mmproj" in p and "does not exist" in p for p in load_problems("v", cfg))


@pytest.mark.model
def test_a_missing_or_broken_mmproj_fails_the_load_naming_it(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    if embedded_model_path() is None:
        pytest.skip(f"embedded model missing: {llamacpp.INSTALL_EMBEDDED}")
    with pytest.raises(ModelLoadError, match=r"mmproj file .*missing\.gguf of model 'v' does not exist"):
        LlamaCppRuntime("v", settings(mmproj=str(tmp_path / "missing.gguf"))).open()
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(ModelLoadError, match="could not load the mmproj file"):
        LlamaCppRuntime("v", settings(mmproj=str(broken))).open()
    wrong = write_mmproj(tmp_path / "wide.gguf", 1024)  # for a model of another width
    with pytest.raises(ModelLoadError, match="could not load the mmproj file"):
        LlamaCppRuntime("v", settings(mmproj=str(wrong))).open()
