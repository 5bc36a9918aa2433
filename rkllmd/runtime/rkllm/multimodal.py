"""The RKLLM multimodal input: a prompt with ``<image>`` placeholders and the images' embeddings.

From the headers (docs/VISION.md, docs/RKLLM.md): ``RKLLM_INPUT_MULTIMODAL`` carries the prompt,
``image_embed`` (``n_image * n_image_tokens * embedding width`` float32, one image after another),
``n_image_tokens`` (per image), ``n_image``, ``image_width`` and ``image_height`` (the encoder's
input size). Where the image tags go depends on the release: 1.1.0 … 1.2.3 take ``img_start``,
``img_end`` and ``img_content`` in ``RKLLMParam`` once, at ``rkllm_init`` (``set_param_tags``);
1.3.0+ take ``image_start``/``image_end``/``image_content`` in each input's ``image`` part.
1.2.0's input has only ``image_embed`` and ``n_image_tokens``: one image per run. The vendor
demo's prompts carry ``<image>`` where the image goes (``"<image>What is in the image?"``).

Pure struct filling, for ``vision.py``; the run itself is ``RkllmHandle.run`` on the inference thread.
"""

from __future__ import annotations

import ctypes
from array import array
from collections.abc import Sequence
from ctypes import POINTER, Structure, c_float
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rkllmd.errors import LibraryVersionError, RequestError
from rkllmd.runtime.rkllm._abi_common import RKLLM_INPUT_MULTIMODAL

if TYPE_CHECKING:
    from rkllmd.runtime.rkllm._abi_common import AbiSpec
    from rkllmd.runtime.rknn.encoder import ImageEmbedding
    from rkllmd.vision.families import VisionFamily

PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class ImageTags:
    """What the runtime wraps around an image's tokens (``<|vision_start|>`` … ``<|vision_end|>``)."""

    start: str
    end: str
    content: str

    @classmethod
    def of(cls, family: VisionFamily) -> ImageTags:
        return cls(family.img_start, family.img_end, family.img_content)


def set_param_tags(param: Structure, tags: ImageTags) -> bool:
    """Put the tags in RKLLMParam (1.1.0 … 1.2.3) before rkllm_init; False for a release without them.

    ctypes keeps the encoded strings alive with ``param``, which the handle keeps for its lifetime.
    """
    if "img_start" not in {f[0] for f in type(param)._fields_}:
        return False
    param.img_start = tags.start.encode()
    param.img_end = tags.end.encode()
    param.img_content = tags.content.encode()
    return True


def place_images(prompt: str, n_images: int) -> str:
    """The prompt with one ``<image>`` per image: as written when it has exactly that many, the
    placeholders in front (the demo's form) when it has none; RequestError otherwise."""
    count = prompt.count(PLACEHOLDER)
    if count == n_images:
        return prompt
    if count == 0:
        return PLACEHOLDER * n_images + prompt
    raise RequestError(
        f"the prompt has {count} {PLACEHOLDER} placeholders for {n_images} images; write one per image, "
        "or none to have the images put before the text"
    )


@dataclass
class MultimodalInput:
    """A filled RKLLMInput and the buffers it points into, which must outlive the run."""

    struct: Structure
    keep: tuple[Any, ...]


def multimodal_input(
    spec: AbiSpec,
    prompt: str,
    images: Sequence[ImageEmbedding],
    tags: ImageTags,
    *,
    role: str = "user",
    enable_thinking: bool = False,
) -> MultimodalInput:
    """The RKLLMInput of one run with ``images`` (all from one encoder) for the loaded release."""
    if not images:
        raise ValueError("a multimodal input needs at least one image")
    first = images[0]
    shape = (first.n_tokens, first.embed_size, first.width, first.height)
    for img in images[1:]:
        if (img.n_tokens, img.embed_size, img.width, img.height) != shape:
            raise ValueError("the images of one run must come from one encoder (same tokens, width, size)")
    inp = spec.Input()
    mm = inp.multimodal_input
    mm_names = {f[0] for f in type(mm)._fields_}
    if len(images) > 1 and "image" not in mm_names and "n_image" not in mm_names:
        raise LibraryVersionError(
            f"several images in one run require runtime ≥ 1.2.1b1, loaded {spec.versions[0]}",
            function="rkllm_run",
        )
    data = array("f")
    for img in images:
        data.extend(img.data)
    buf = (c_float * len(data)).from_buffer(data)
    text = place_images(prompt, len(images)).encode()
    strings = (tags.start.encode(), tags.end.encode(), tags.content.encode())
    if spec.has_role:
        inp.role = role.encode()
        inp.enable_thinking = enable_thinking
    inp.input_type = RKLLM_INPUT_MULTIMODAL
    mm.prompt = text
    target = mm.image if "image" in mm_names else mm  # 1.3+: the image part; before: the struct itself
    target.image_embed = ctypes.cast(buf, POINTER(c_float))
    target.n_image_tokens = first.n_tokens
    if "image" in mm_names:
        target.image_start, target.image_end, target.image_content = strings
    if hasattr(target, "n_image"):
        target.n_image = len(images)
        target.image_width, target.image_height = first.width, first.height
    return MultimodalInput(inp, (data, buf, text, strings))
