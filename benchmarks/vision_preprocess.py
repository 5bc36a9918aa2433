"""Image preprocessing and the encoder call path: how long an image takes before the NPU.

Not a test (nothing is asserted): it prints figures. For camera-snapshot sizes it times
``rkllmd.vision.images.prepare`` (decode, orientation, pad, resize, uint8 pixels) to a 448x448
encoder input, with and without the JPEG decoder's reduced-scale decoding (``draft``), and the
float (mean/std) output; then ``VisionEncoder.encode`` end to end on the C double of the RKNN
runtime (needs gcc), whose own work is a patch mean, so what is left is rkllmd's overhead.

    .venv/bin/python benchmarks/vision_preprocess.py --repeat 20
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rkllmd.vision import images
from rkllmd.vision.families import VisionFamily, family

SIZES = {"720p": (1280, 720), "1080p": (1920, 1080), "4K": (3840, 2160)}


def snapshot(size: tuple[int, int], fmt: str) -> bytes:
    # Noise plus gradients: compresses like a photo, not like a flat colour.
    img = Image.effect_noise(size, 40).convert("RGB")
    img = Image.blend(img, Image.linear_gradient("L").resize(size).convert("RGB"), 0.5)
    buf = io.BytesIO()
    img.save(buf, fmt, quality=85) if fmt == "JPEG" else img.save(buf, fmt)
    return buf.getvalue()


def timed(fn: Callable[[], object], repeat: int) -> str:
    fn()
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) * 1000)
    return f"median {statistics.median(runs):7.1f} ms  min {min(runs):7.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--size", type=int, default=448, help="encoder input side")
    args = ap.parse_args()
    fam = family("qwen2.5-vl")
    side = (args.size, args.size)
    for name, size in SIZES.items():
        for fmt in ("JPEG", "PNG", "WEBP"):
            data = snapshot(size, fmt)
            print(f"{name:5} {fmt:4} {len(data) / 1e6:5.2f} MB  prepare  ", end="")
            print(timed(lambda d=data: images.prepare(d, side, fam.background), args.repeat))
            if fmt == "JPEG":
                print(f"{name:5} {fmt:4}           no draft ", end="")
                print(timed(lambda d=data: _no_draft(d, side, fam.background), args.repeat))
                print(f"{name:5} {fmt:4}           float32  ", end="")
                print(timed(lambda d=data: _floats(d, side, fam), args.repeat))
    _encoder(args.repeat, side)


def _floats(data: bytes, size: tuple[int, int], fam: VisionFamily) -> object:
    return images.prepare(data, size, fam.background, normalise_with=(fam.mean, fam.std))


def _no_draft(data: bytes, size: tuple[int, int], bg: tuple[int, int, int]) -> bytes:
    img = images.orient(images.decode(data))
    return images.to_uint8(images.resize(images.pad_square(images.to_rgb(img, bg), bg), size))


def _encoder(repeat: int, side: tuple[int, int]) -> None:
    from rkllmd.runtime.rknn._lib import RknnLibrary
    from rkllmd.runtime.rknn.encoder import VisionEncoder
    from tests.fake_rknn.build import build_fake_rknn, write_model

    with tempfile.TemporaryDirectory() as tmp:
        lib = RknnLibrary.open(build_fake_rknn(Path(tmp)))
        model = write_model(Path(tmp) / "m.rknn", size=side, grid=(16, 16), embed=2048)
        with VisionEncoder(model, lib=lib, family_name="qwen2.5-vl") as enc:
            data = snapshot(SIZES["1080p"], "JPEG")
            last = enc.encode(data)
            figures = timed(lambda: enc.encode(data), repeat)
            print(f"encode 1080p JPEG on the double (256 tokens x 2048): {figures}")
            ms = f"decode {last.decode_ms:.1f} ms, encode {last.encode_ms:.1f} ms, run {last.npu_ms} ms"
            print(f"  last: {ms}")


if __name__ == "__main__":
    main()
