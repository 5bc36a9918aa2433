"""The smallest real multimodal projector this machine can make: a LLaVA-style ``mmproj`` GGUF
(projector type ``mlp``) written by hand, with made-up weights, for a given language model width.

No vision GGUF ships on PyPI and Hugging Face is not reachable here, so the llama.cpp vision path
is tested with this file and the real SmolLM2 GGUF: libmtmd (the one in the pinned
llama-cpp-python) loads it, preprocesses the image, runs the encoder graph (a 8x8-patch
embedding, learned positions, the two-layer MLP projector) and the model prefills its output.
The weights mean nothing, so the model does not describe the image; what a test can tell is that
the pixels reached the model (different images, different greedy answers; the same image, the
same answer) and how many image tokens a prompt took.

Keys and tensor names follow llama.cpp's ``tools/mtmd/clip.cpp`` and ``clip-impl.h`` (the
``clip_model_loader`` and ``clip_graph_llava``): with ``block_count`` 1 the LLaVA graph runs no
transformer layer (it stops before the last one), though layer 0's required tensors must exist.
GGUF v3 as llama.cpp's ``gguf.h`` reads it; little-endian, float32 tensors, 32-byte alignment.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

_ALIGN = 32
_U32, _F32, _BOOL, _STRING, _ARRAY = 4, 6, 7, 8, 9


def _str(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, value: object) -> bytes:
    if isinstance(value, bool):
        return _str(key) + struct.pack("<IB", _BOOL, value)
    if isinstance(value, int):
        return _str(key) + struct.pack("<II", _U32, value)
    if isinstance(value, float):
        return _str(key) + struct.pack("<If", _F32, value)
    if isinstance(value, str):
        return _str(key) + struct.pack("<I", _STRING) + _str(value)
    assert isinstance(value, list)
    return _str(key) + struct.pack("<IIQ", _ARRAY, _F32, len(value)) + struct.pack(f"<{len(value)}f", *value)


def _pad(n: int) -> int:
    return (-n) % _ALIGN


def write_mmproj(
    path: Path, text_embd: int, *, image_size: int = 32, patch: int = 8, width: int = 16, seed: int = 1
) -> Path:
    """Write the projector to ``path`` for a language model of ``text_embd`` (SmolLM2-135M: 576);
    an image becomes ``(image_size / patch) ** 2`` tokens (16 by default)."""
    rnd = random.Random(seed)
    n_pos, hidden, n_ff = (image_size // patch) ** 2, 64, 24

    def rand(*ne: int, scale: float) -> tuple[tuple[int, ...], list[float]]:
        count = 1
        for n in ne:
            count *= n
        return ne, [rnd.uniform(-scale, scale) for _ in range(count)]

    tensors = {  # name: (ne, ggml order: ne[0] is the innermost), values
        "v.patch_embd.weight": rand(patch, patch, 3, width, scale=0.2),
        "v.position_embd.weight": rand(width, n_pos, scale=0.1),
        "v.blk.0.attn_out.weight": rand(width, width, scale=0.1),
        "v.blk.0.ffn_up.weight": rand(width, n_ff, scale=0.1),
        "v.blk.0.ffn_down.weight": rand(n_ff, width, scale=0.1),
        "mm.0.weight": rand(width, hidden, scale=0.5),
        "mm.0.bias": rand(hidden, scale=0.1),
        "mm.2.weight": rand(hidden, text_embd, scale=0.5),
        "mm.2.bias": rand(text_embd, scale=0.1),
    }
    kvs = {
        "general.architecture": "clip",
        "general.name": "rkllmd test projector",
        "clip.has_vision_encoder": True,
        "clip.projector_type": "mlp",
        "clip.use_gelu": True,
        "clip.vision.image_size": image_size,
        "clip.vision.patch_size": patch,
        "clip.vision.embedding_length": width,
        "clip.vision.feed_forward_length": n_ff,
        "clip.vision.projection_dim": text_embd,
        "clip.vision.block_count": 1,
        "clip.vision.attention.head_count": 1,
        "clip.vision.attention.layer_norm_epsilon": 1e-5,
        "clip.vision.image_mean": [0.5, 0.5, 0.5],
        "clip.vision.image_std": [0.5, 0.5, 0.5],
    }
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    head += b"".join(_kv(k, v) for k, v in kvs.items())
    data, infos = b"", b""
    for name, (ne, values) in tensors.items():
        data += b"\0" * _pad(len(data))
        infos += _str(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
        infos += struct.pack("<IQ", 0, len(data))  # GGML_TYPE_F32, offset in the data section
        data += struct.pack(f"<{len(values)}f", *values)
    head += infos
    path.write_bytes(head + b"\0" * _pad(len(head)) + data)
    return path
