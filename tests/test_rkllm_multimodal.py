"""Images from the vision encoder (the RKNN double) reach the LLM (the RKLLM double) through
RKLLM_INPUT_MULTIMODAL: counts, size, tags where each release takes them, and the embeddings
themselves, which the double answers with."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from rkllmd.errors import LibraryVersionError, RequestError
from rkllmd.runtime.rkllm import _abi_common as c
from rkllmd.runtime.rkllm._handle import RkllmHandle
from rkllmd.runtime.rkllm._lib import RkllmLibrary
from rkllmd.runtime.rkllm.multimodal import ImageTags, multimodal_input, place_images, set_param_tags
from rkllmd.runtime.rkllm.param import make_param
from rkllmd.runtime.rknn._lib import RknnLibrary
from rkllmd.runtime.rknn.encoder import ImageEmbedding, VisionEncoder
from rkllmd.vision.families import family
from tests.fake_rknn.build import build_fake_rknn, write_model
from tests.rkllm_conftest_fixtures import FakeIntrospect, fake_library, model_settings

RKNN_BUILD = Path(os.environ.get("RKLLMD_FAKE_BUILD_DIR", Path(tempfile.gettempdir()) / "rkllmd-fake-rknn"))
QWEN = ImageTags.of(family("qwen2.5-vl"))
EMBED = 6  # the encoder double's width: 6 floats per token


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageEmbedding, ImageEmbedding]:
    """Two different images through the RKNN double: 32x32 input, 2x2 tokens of 6 floats."""
    model = write_model(tmp_path_factory.mktemp("rknn") / "enc.rknn", size=(32, 32), grid=(2, 2), embed=EMBED)
    lib = RknnLibrary.open(build_fake_rknn(RKNN_BUILD))
    halves = Image.new("RGB", (40, 40), (255, 0, 0))
    halves.paste((0, 255, 0), (20, 0, 40, 40))
    with VisionEncoder(model, lib=lib, family_name="qwen2.5-vl") as enc:
        return enc.encode(png(halves)), enc.encode(png(Image.new("RGB", (30, 60), (0, 0, 255))))


def milli(x: float) -> int:
    return int(x * 1000 + 0.5) if x >= 0 else int(x * 1000 - 0.5)  # the double's rounding


def seen(k: int, e: ImageEmbedding) -> str:
    """The word the double makes of image k (1-based) from the floats it received."""
    mean = sum(e.data) / len(e.data)
    last = e.data[(e.n_tokens - 1) * e.embed_size]
    return f"IMAGE{k}:{e.n_tokens}X{e.embed_size}:M{milli(mean)}:F{milli(e.data[0])}:L{milli(last)}"


class Llm:
    """An RKLLM double opened with rkllm_init, collecting the text of each run."""

    def __init__(self, abi: str, model: Path, tags: ImageTags | None) -> None:
        self.path = fake_library(abi)
        self.lib = RkllmLibrary.open(self.path)
        self.text: list[bytes] = []
        self.handle = RkllmHandle(self.lib, self._on_result)
        param = make_param(self.lib, model_settings(model, self.path), "m")
        self.tags_at_init = set_param_tags(param, tags) if tags else False
        self.handle.init(param)
        self.stats = FakeIntrospect(self.path)

    def _on_result(self, state: int, result: Any) -> None:
        if state == c.RKLLM_RUN_NORMAL and result is not None and result.text:
            self.text.append(result.text)

    def run(self, inp: Any) -> tuple[int, str]:
        self.text.clear()
        infer = self.lib.spec.InferParam()
        infer.mode = c.RKLLM_INFER_GENERATE
        rc = self.handle.run(inp, infer)
        return rc, b"".join(self.text).decode()


@pytest.fixture
def llm(tmp_path: Path) -> Iterator[Any]:
    model = tmp_path / "model.rkllm"
    model.write_bytes(b"not really a model")
    opened: list[Llm] = []

    def make(abi: str, tags: ImageTags | None = QWEN) -> Llm:
        opened.append(Llm(abi, model, tags))
        return opened[-1]

    yield make
    for o in opened:
        o.handle.destroy()


@pytest.mark.parametrize("abi", ["12", "13", "131"])
def test_two_images_reach_the_llm(llm: Any, abi: str, embeddings: tuple[ImageEmbedding, ...]) -> None:
    a, b = embeddings
    m = llm(abi)
    # 1.2.x takes the tags at init, 1.3+ per input.
    assert m.tags_at_init == (abi == "12")
    inp = multimodal_input(m.lib.spec, "[[embed_dim=6]] compare <image> with <image> please", [a, b], QWEN)
    rc, answer = m.run(inp.struct)
    st = m.stats
    assert rc == 0
    assert (st.stat("last_n_image"), st.stat("last_n_image_tokens")) == (2, 4)
    assert (st.stat("last_image_width"), st.stat("last_image_height"), st.stat("image_placeholders")) == (
        32,
        32,
        2,
    )
    assert (st.text("image_start"), st.text("image_end"), st.text("image_content")) == (
        "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    )  # fmt: skip
    words = f"{seen(1, a)} {seen(2, b)}"
    assert st.text("images").split() == words.split()
    assert seen(1, a) != seen(2, b)  # the double told the two images apart
    assert answer == f"COMPARE {seen(1, a)} WITH {seen(2, b)} PLEASE"  # what it saw, where it saw it
    assert st.text("prompt") == "[[embed_dim=6]] compare <image> with <image> please"


def test_images_without_placeholders_go_in_front(llm: Any, embeddings: tuple[ImageEmbedding, ...]) -> None:
    a, _ = embeddings
    m = llm("13")
    rc, answer = m.run(multimodal_input(m.lib.spec, " [[embed_dim=6]] what is this?", [a], QWEN).struct)
    assert rc == 0 and answer.startswith(seen(1, a))
    assert m.stats.text("prompt").startswith("<image>")


def test_1_2_x_without_tags_at_init_sends_empty_tags(
    llm: Any, embeddings: tuple[ImageEmbedding, ...]
) -> None:
    m = llm("12", tags=None)
    rc, _ = m.run(multimodal_input(m.lib.spec, "[[embed_dim=6]] <image>", [embeddings[0]], QWEN).struct)
    assert rc == 0 and m.stats.text("image_start") == "" and m.stats.text("image_content") == ""


def test_1_2_0_takes_one_image(llm: Any, embeddings: tuple[ImageEmbedding, ...]) -> None:
    a, b = embeddings
    m = llm("120")
    rc, answer = m.run(multimodal_input(m.lib.spec, "[[embed_dim=6]] <image> what", [a], QWEN).struct)
    assert rc == 0 and seen(1, a) in answer and m.stats.text("image_start") == "<|vision_start|>"
    with pytest.raises(LibraryVersionError, match=r"several images in one run require runtime ≥ 1\.2\.1b1"):
        multimodal_input(m.lib.spec, "<image><image>", [a, b], QWEN)


def test_the_double_refuses_a_prompt_that_does_not_place_every_image(
    llm: Any, embeddings: tuple[ImageEmbedding, ...]
) -> None:
    m = llm("13")
    inp = multimodal_input(m.lib.spec, "[[embed_dim=6]] <image> <image>", list(embeddings), QWEN)
    inp.struct.multimodal_input.prompt = b"[[embed_dim=6]] only <image> here"
    refused = m.stats.stat("image_refused")
    rc, _ = m.run(inp.struct)
    assert rc == -1 and m.stats.stat("image_refused") == refused + 1


def test_place_images() -> None:
    assert place_images("what is <image>?", 1) == "what is <image>?"
    assert place_images("compare", 2) == "<image><image>compare"
    with pytest.raises(RequestError, match="1 <image> placeholders for 2 images"):
        place_images("<image> and", 2)


def test_images_of_one_run_come_from_one_encoder(embeddings: tuple[ImageEmbedding, ...]) -> None:
    a, _ = embeddings
    other = ImageEmbedding(a.data[: 2 * EMBED], 2, EMBED, 32, 32, 0.0, 0.0, None)
    lib = RkllmLibrary.open(fake_library("13"))
    with pytest.raises(ValueError, match="one encoder"):
        multimodal_input(lib.spec, "<image><image>", [a, other], QWEN)
