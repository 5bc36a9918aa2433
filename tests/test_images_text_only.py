"""A model that cannot see answers images with images_unsupported, never by ignoring them:
llama.cpp without an mmproj on the real SmolLM2 (the runtime's own check, behind admission's), as
the RKLLM runtime without a vision_encoder does (tests/test_rkllm_vision.py); with one:
tests/test_llamacpp_vision.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rkllmd.errors import ImagesUnsupported
from rkllmd.generation import ChatMessage, GenerateInput
from rkllmd.runtime.llamacpp.runtime import LlamaCppRuntime
from tests.helpers import open_smollm2


@pytest.fixture(scope="module")
def rt() -> Iterator[LlamaCppRuntime]:
    runtime = open_smollm2(max_context_len=512)
    yield runtime
    runtime.close()


@pytest.mark.model
def test_llamacpp_refuses_images_and_goes_on(rt: LlamaCppRuntime) -> None:
    jpeg = b"\xff\xd8\xff\xe0" + bytes(64)
    inp = GenerateInput(messages=(ChatMessage("user", "what is this?", images=(jpeg,)),), max_tokens=4)
    with pytest.raises(ImagesUnsupported, match="'smollm2' does not take images") as info:
        rt.generate(inp, lambda text, _tok: None)
    assert info.value.code == "images_unsupported"
    out: list[str] = []
    rt.generate(
        GenerateInput(messages=(ChatMessage("user", "Hi"),), max_tokens=4), lambda t, _k: out.append(t)
    )
    assert "".join(out)
