"""A GGUF model's image projector (``mmproj``), through llama-cpp-python's multimodal support.

The projector is opened by llama-cpp-python's ``MTMDChatHandler`` (libmtmd: the one multimodal
path of the pinned llama-cpp-python; ``Llava15ChatHandler`` and its family-specific subclasses are
the same mtmd context behind a fixed chat format), after the model. rkllmd does not hand the chat
to the handler (it would render, sample and stream in its own way): it takes the handler's mtmd
context and runs the steps the handler runs, so the prompt is rendered by rkllmd with the GGUF's
own template (tools and all), and sampling, grammars, stop strings and abort stay rkllmd's.

A run with images: each image is decoded with rkllmd's bounds (rkllmd.vision.images: format by
its magic bytes, size from the header, EXIF orientation, RGB) and handed to mtmd as RGB pixels
(mtmd resizes and normalises as its model wants); the prompt carries mtmd's media marker once per
image; ``mtmd_tokenize`` splits it into text and image chunks; text chunks are evaluated by the
Llama object, image chunks encoded (``mtmd_encode_chunk``, timed as the encoder) and their
embeddings decoded into the context (``mtmd_helper_decode_image_chunk``, timed as prefill). The
positions the images took are marked so no later prompt's prefix matches them.

Inference thread (or the worker process), like the runtime.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rkllmd import logface
from rkllmd.errors import ContextExceeded, ModelLoadError, RequestError, TooManyImages
from rkllmd.generation import ChatMessage
from rkllmd.runtime.llamacpp._lib import route_mtmd_logs
from rkllmd.vision import history

log = logface.get_logger("llamacpp")


@dataclass
class Prefilled:
    """What a run with images evaluated before generation: its prompt ids (the Llama object's own,
    for its prefix match) and the time of each step."""

    ids: list[int]
    image_tokens: int = 0
    decode_ms: float = 0.0  # rkllmd's decoding of the images
    encode_ms: float = 0.0  # the projector's encoder
    prefill_ms: float = 0.0  # text chunks and the images' embeddings into the context
    spans: list[tuple[int, int]] = field(default_factory=list)  # positions holding image embeddings


class LlamaVision:
    """The mtmd context of one open model."""

    def __init__(self, name: str, path: Path, lib: Any, llm: Any, max_images: int) -> None:
        if not path.is_file():
            raise ModelLoadError(f"the mmproj file {path} of model {name!r} does not exist", model=name)
        self.name = name
        self.path = path
        self.max_images = max_images
        handlers = lib.llama_chat_format
        if not hasattr(handlers, "MTMDChatHandler"):
            raise ModelLoadError(
                f"llama-cpp-python {getattr(lib, '__version__', '?')} has no MTMDChatHandler: "
                "images need the pinned version (constraints.txt)",
                model=name,
            )
        route_mtmd_logs(
            lib.mtmd_cpp if hasattr(lib, "mtmd_cpp") else importlib.import_module("llama_cpp.mtmd_cpp")
        )
        self.handler = handlers.MTMDChatHandler(clip_model_path=str(path), verbose=False, use_gpu=False)
        try:
            self.handler._init_mtmd_context(llm)  # the handler's own setup, freed with the model
        except ValueError as exc:
            raise ModelLoadError(
                f"llama.cpp could not load the mmproj file {path}: {exc}", model=name
            ) from exc
        self.mtmd = self.handler._mtmd_cpp
        self.marker = self.mtmd.mtmd_default_marker().decode()
        self._lib = lib
        log.info("mmproj loaded", model=name, path=str(path), handler=type(self.handler).__name__)

    @property
    def ctx(self) -> Any:
        return self.handler.mtmd_ctx

    def check_count(self, n_images: int) -> None:
        if n_images > self.max_images:
            raise TooManyImages(f"{n_images} images, model {self.name!r} takes at most {self.max_images}")

    def place(self, text: str, n_images: int, *, strict: bool = True) -> str:
        """A turn's text with one media marker per image where the user wrote ``<image>``, else in
        front of the text (rkllmd.vision.history, as the RKLLM runtime places them)."""
        placed = history.place(text, [True] * n_images, strict=strict)
        return placed.replace(history.PLACEHOLDER, self.marker)

    def prepare(self, messages: Sequence[ChatMessage]) -> tuple[tuple[ChatMessage, ...], list[Any], float]:
        """Every turn's images decoded with rkllmd's bounds (an earlier turn's that cannot be is
        left out, the text marker in its place: rkllmd.vision.history), one media marker per
        image in its turn; the RGB images and the decoding's milliseconds."""
        from rkllmd.vision.images import decode, orient, to_rgb

        self.check_count(sum(len(m.images) for m in messages))
        current = history.current_turn([m.role for m in messages])
        placed = [
            dataclasses.replace(
                m, content=history.place(m.content, [True] * len(m.images), strict=i == current)
            )
            if m.images
            else m
            for i, m in enumerate(messages)
        ]
        t0 = time.perf_counter()
        taken, pictures, left_out = history.take_each(
            placed, lambda data: to_rgb(orient(decode(data)), (0, 0, 0))
        )
        decode_ms = (time.perf_counter() - t0) * 1000
        if left_out:  # an earlier turn's image that admission let through but cannot be decoded
            log.warning("llamacpp_earlier_images_left_out", model=self.name, count=left_out)
        marked = tuple(
            dataclasses.replace(m, content=m.content.replace(history.PLACEHOLDER, self.marker))
            if m.images
            else m
            for m in taken
        )
        return marked, pictures, decode_ms

    def prefill(self, llm: Any, prompt: str, images: Sequence[Any], decode_ms: float) -> Prefilled:
        """Evaluate ``prompt`` (with its markers) and ``images`` (RGB, from ``prepare``) into
        ``llm``'s context from position 0."""
        mtmd = self.mtmd
        out = Prefilled(ids=[], decode_ms=decode_ms)
        t0 = time.perf_counter()
        bitmaps = []
        try:
            for img in images:
                raw = img.tobytes()
                buf = (ctypes.c_uint8 * len(raw)).from_buffer_copy(raw)
                bitmap = mtmd.mtmd_bitmap_init(img.width, img.height, buf)
                if bitmap is None:
                    raise RequestError("llama.cpp could not take the image's pixels")
                bitmaps.append(bitmap)
            out.decode_ms += (time.perf_counter() - t0) * 1000
            chunks = mtmd.mtmd_input_chunks_init()
            try:
                self._tokenize(chunks, prompt, bitmaps)
                self._eval(llm, chunks, out)
            finally:
                mtmd.mtmd_input_chunks_free(chunks)
        finally:
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)
        out.ids = llm.input_ids[: llm.n_tokens].tolist()
        return out

    def _tokenize(self, chunks: Any, prompt: str, bitmaps: list[Any]) -> None:
        mtmd = self.mtmd
        text = mtmd.mtmd_input_text()
        raw = prompt.encode("utf-8")
        text.text, text.text_len, text.add_special, text.parse_special = raw, len(raw), False, True
        array = (mtmd.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
        rc = mtmd.mtmd_tokenize(self.ctx, chunks, ctypes.byref(text), array, len(bitmaps))
        if rc != 0:  # 1: marker and image counts differ, 2: an image failed preprocessing
            raise RequestError(
                f"llama.cpp could not tokenize the prompt with its images (mtmd_tokenize {rc})"
            )

    def _eval(self, llm: Any, chunks: Any, out: Prefilled) -> None:
        mtmd, lib = self.mtmd, self._lib
        llm.reset()
        llm._ctx.kv_cache_clear()
        n_ctx = llm.n_ctx()
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            n = int(mtmd.mtmd_input_chunk_get_n_tokens(chunk))
            if llm.n_tokens + n >= n_ctx:
                raise ContextExceeded(
                    f"prompt and images take over {llm.n_tokens + n} tokens; the context holds {n_ctx}"
                )
            t = time.perf_counter()
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t()
                ptr = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                llm.eval([ptr[j] for j in range(count.value)])
                out.prefill_ms += (time.perf_counter() - t) * 1000
                continue
            if mtmd.mtmd_encode_chunk(self.ctx, chunk) != 0:
                raise RequestError("llama.cpp's image encoder failed on an image")
            t1 = time.perf_counter()
            out.encode_ms += (t1 - t) * 1000
            start, new_past = llm.n_tokens, lib.llama_pos(0)
            embd = mtmd.mtmd_get_output_embd(self.ctx)
            no_callback = mtmd.mtmd_helper_post_decode_callback()  # a NULL function pointer
            at, seq = lib.llama_pos(start), lib.llama_seq_id(0)
            rc = mtmd.mtmd_helper_decode_image_chunk(
                self.ctx,
                llm._ctx.ctx,
                chunk,
                embd,
                at,
                seq,
                llm.n_batch,
                ctypes.byref(new_past),
                no_callback,
                None,
            )
            if rc != 0:
                raise RequestError(f"llama.cpp could not decode an image's embeddings (rc {rc})")
            out.prefill_ms += (time.perf_counter() - t1) * 1000
            llm.n_tokens = new_past.value
            out.image_tokens += n
            out.spans.append((start, llm.n_tokens))

    @staticmethod
    def forget(llm: Any, spans: list[tuple[int, int]]) -> None:
        """Mark the image positions so the next prompt's prefix match stops before them (their
        token ids in the Llama object are whatever was there: no image is a token)."""
        for start, end in spans:
            llm.input_ids[start:end] = -1
