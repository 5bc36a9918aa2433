"""A model's vision encoder, opened and closed with it, and the multimodal input of a run with images.

A ``[models.X]`` table with ``vision_encoder`` gets a ``VisionEncoder`` (rkllmd.runtime.rknn) after
``rkllm_init`` (the vendor demo's order) and loses it at close. A run whose request carries images
encodes each (decode, preprocessing and the encoder: timed and logged), puts one ``<image>`` per
image in its own turn (where the user wrote them, else in front of the text: rkllmd.vision.history;
the earlier turns are rendered into the prompt text by prompt.py, placeholders and all), and sends
``RKLLM_INPUT_MULTIMODAL`` (rkllmd.runtime.rkllm.multimodal). Images on a model without an
encoder are ``ImagesUnsupported``; more than ``max_images`` (admission already left the oldest
earlier ones out) a ``RequestError``. Pillow and the RKNN binding are imported only when an
encoder is configured.

Inference thread (or the worker process); settings are read as attributes (a Table in the worker).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from rkllmd import logface
from rkllmd.errors import ImagesUnsupported, ModelLoadError, TooManyImages
from rkllmd.generation import GenerateInput
from rkllmd.runtime.base import Perf
from rkllmd.runtime.rkllm.multimodal import ImageTags, MultimodalInput, multimodal_input
from rkllmd.vision import history
from rkllmd.vision.families import family

if TYPE_CHECKING:
    from ctypes import Structure

    from rkllmd.runtime.rkllm._abi_common import AbiSpec
    from rkllmd.runtime.rkllm.settings import RkllmModelSettings
    from rkllmd.runtime.rknn.encoder import VisionEncoder

log = logface.get_logger("rkllmd.runtime.rkllm.runtime")


class ModelVision:
    """The vision side of one RKLLM model: nothing unless ``vision_encoder`` is configured."""

    def __init__(self, name: str, cfg: RkllmModelSettings) -> None:
        self.name = name
        self.cfg = cfg
        self.path = getattr(cfg, "vision_encoder", None)
        fam = family(getattr(cfg, "vision_family", "qwen2-vl"))
        self.family = fam
        self.tags = ImageTags.of(fam)
        self.encoder: VisionEncoder | None = None
        self.last_timings: dict[str, float] = {}  # the last run's image decode and encode ms

    @property
    def configured(self) -> bool:
        return self.path is not None

    def set_init_tags(self, param: Structure) -> None:
        """1.1.0 … 1.2.3 take the image tags at rkllm_init; later releases take them per run."""
        if self.configured:
            from rkllmd.runtime.rkllm.multimodal import set_param_tags

            set_param_tags(param, self.tags)

    def open(self, undo: Sequence[Callable[[], object]] = ()) -> None:
        """Open the encoder (after rkllm_init); on failure call ``undo`` (release the LLM), then raise."""
        try:
            self._open()
        except BaseException:
            for fn in undo:
                fn()
            raise

    def _open(self) -> None:
        if not self.configured or self.encoder is not None:
            return
        from rkllmd.runtime.rknn.encoder import VisionEncoder

        try:
            self.encoder = VisionEncoder(
                self.path,  # type: ignore[arg-type]
                family_name=self.family,
                library=self.cfg.vision_library,
                core_mask=self.cfg.vision_core_mask,
            )
        except ModelLoadError:
            raise
        except Exception as exc:  # the RKNN library missing or refused, rknn_init failing: the model fails
            raise ModelLoadError(
                f"the vision encoder {self.path} of model {self.name!r} cannot be opened: {exc}",
                model=self.name,
            ) from exc

    def close(self) -> None:
        encoder, self.encoder = self.encoder, None
        if encoder is not None:
            encoder.close()

    def sent(self, inp: GenerateInput) -> GenerateInput:
        """``inp`` with the images a run sends, one ``<image>`` per image in each turn's text.

        With ``keep_history`` the runtime remembers the earlier turns (their images included)
        and only the last turn is sent (prompt.py), so only the current turn's images go."""
        current = history.current_turn([m.role for m in inp.messages])
        msgs = []
        for i, m in enumerate(inp.messages):
            if m.images and self.cfg.keep_history and i != current:
                m = dataclasses.replace(m, images=())
            elif m.images:
                content = history.place(m.content, [True] * len(m.images), strict=i == current)
                m = dataclasses.replace(m, content=content)
            msgs.append(m)
        return dataclasses.replace(inp, messages=tuple(msgs))

    def timed(self, perf: Perf, inp: GenerateInput) -> Perf:
        """``perf`` with the run's images and their timings (unchanged without images)."""
        n = len(self.sent(inp).images) if inp.images else 0
        if not n or not self.last_timings:
            return perf
        t = self.last_timings
        return dataclasses.replace(
            perf,
            images=n,
            image_decode_ms=t["image_decode_ms"],
            image_encode_ms=t["image_encode_ms"],
        )

    def extra_tokens(self, inp: GenerateInput) -> int:
        """The image tokens a run adds to its prompt (for the context-length check)."""
        if self.encoder is None or not inp.images:
            return 0
        return len(self.sent(inp).images) * self.encoder.n_image_tokens

    def run_input(
        self, spec: AbiSpec, inp: GenerateInput, prompt_text: Callable[[GenerateInput], str], role: str
    ) -> tuple[MultimodalInput | None, GenerateInput]:
        """The RKLLMInput of a run with ``inp.images``, and the input as sent (earlier turns' images
        that cannot be decoded now the text marker). None when no image is sent: an earlier turn's
        with keep_history, or none that can be decoded. Errors as the module says."""
        if self.encoder is None:
            raise ImagesUnsupported(
                f"model {self.name!r} does not take images: it has no vision_encoder (docs/VISION.md)",
                model=self.name,
            )
        inp = self.sent(inp)
        if len(inp.images) > self.cfg.max_images:
            raise TooManyImages(
                f"{len(inp.images)} images, model {self.name!r} takes at most {self.cfg.max_images}"
            )
        self.last_timings = {}
        messages, embeddings, left_out = history.take_each(inp.messages, self.encoder.encode)
        if left_out:  # an earlier turn's image that admission let through but cannot be decoded
            log.warning("rkllm_earlier_images_left_out", model=self.name, count=left_out)
            inp = dataclasses.replace(inp, messages=messages)
        if not embeddings:
            return None, inp
        log.info(
            "rkllm_images_encoded",
            model=self.name,
            images=len(embeddings),
            tokens=sum(e.n_tokens for e in embeddings),
            decode_ms=round(sum(e.decode_ms for e in embeddings), 1),
            encode_ms=round(sum(e.encode_ms for e in embeddings), 1),
        )
        self.last_timings = {
            "image_decode_ms": sum(e.decode_ms for e in embeddings),
            "image_encode_ms": sum(e.encode_ms for e in embeddings),
        }
        return multimodal_input(spec, prompt_text(inp), embeddings, self.tags, role=role), inp
