"""Image preprocessing for vision encoders, one function per step, with Pillow.

The path is the vendor multimodal demo's (airockchip/rknn-llm examples/multimodal_model_demo):
decode, turn upright (EXIF orientation), RGB, pad to a square centred on a background of the
family's mean colour, resize to the encoder's input size (bilinear, as the demo's
``cv::INTER_LINEAR``; Pillow's filter also antialiases when shrinking, OpenCV's does not), then
hand the encoder uint8 pixels (the demo's choice: the ``.rknn`` normalises inside) or, for an
encoder that takes floats, ``(x / 255 - mean) / std`` per channel. Every refusal is a
``BadImage`` or ``ImageTooLarge`` whose message tells the user what to send instead.

Bounds come before work: the byte size is checked before decoding, the format by its magic
bytes before Pillow sees the data (and Pillow is only allowed the three formats), and the pixel
count from the header before any pixel is decoded, so a decompression bomb costs a header read.
Runs on whatever thread calls it (the inference thread, for the encoder); no global Pillow state
is changed.
"""

from __future__ import annotations

import io
import re
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageOps, UnidentifiedImageError

from rkllmd.errors import BadImage, ImageTooLarge
from rkllmd.vision.limits import DEFAULT_LIMITS, ImageLimits, sniff_format

Layout = Literal["NHWC", "NCHW"]
RGB = tuple[int, int, int]


def decode(data: bytes, limits: ImageLimits = DEFAULT_LIMITS, *, draft: int | None = None) -> Image.Image:
    """Decode one JPEG, PNG or WebP (its first frame) within ``limits``; the pixels are loaded.

    ``draft``: a JPEG may be decoded at a reduced scale (1/2 … 1/8, the decoder's own DCT scaling)
    as long as both sides stay at least ``draft`` pixels, which is most of the decode time saved
    for a camera snapshot going to a 448-pixel encoder.
    """
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(
            f"the image is {len(data)} bytes, over the {limits.max_bytes}-byte limit; send a smaller "
            "or more compressed image",
            size=len(data),
            limit=limits.max_bytes,
        )
    fmt = sniff_format(data)
    try:
        # Pillow warns (DecompressionBombWarning) from 89 M pixels and refuses from 179 M; the
        # header check below refuses first at any smaller bound. (No warnings filter here: the
        # filters are process-wide and other threads run meanwhile.)
        img = Image.open(io.BytesIO(data), formats=[fmt])
        width, height = img.size
        check_size(width, height, limits)
        img.info["source_size"] = (width, height)  # as sent, whatever draft() decodes
        if draft and fmt == "JPEG":
            img.draft("RGB", (draft, draft))
        img.load()
    except (ImageTooLarge, BadImage):
        raise
    except Image.DecompressionBombError as exc:  # raised inside open(), before the header check
        # Its text names Pillow's own bound (179 M), not ours: only the size found is passed on.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"has {found.group(1)} pixels, " if found else "is "
        raise ImageTooLarge(
            f"the image {size}over the limit of {limits.max_pixels} pixels; scale it down before sending"
        ) from exc
    except UnidentifiedImageError as exc:
        raise BadImage(f"the {fmt} image cannot be read: its header is damaged") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow's words for a truncated or corrupt file ("image file is truncated", "broken data stream").
        raise BadImage(f"the {fmt} image cannot be decoded ({exc}); send the complete file") from exc
    return img


def check_size(width: int, height: int, limits: ImageLimits = DEFAULT_LIMITS) -> None:
    """ImageTooLarge for an image over the pixel or side bound; BadImage for an empty one."""
    if width <= 0 or height <= 0:
        raise BadImage(f"the image is {width}x{height}: it has no pixels")
    if max(width, height) > limits.max_side or width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} ({width * height} pixels), over the limit of "
            f"{limits.max_pixels} pixels and {limits.max_side} per side; scale it down before sending",
            width=width,
            height=height,
        )


def orient(img: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation tag says (a phone photo taken sideways stands up)."""
    try:
        return ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError):  # a malformed EXIF block: keep the image as stored
        return img


def to_rgb(img: Image.Image, background: RGB) -> Image.Image:
    """Three 8-bit channels; transparency is laid over ``background`` (what the padding will be)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB")


def pad_square(img: Image.Image, background: RGB) -> Image.Image:
    """The image centred on a ``background`` square as wide as its longer side (the demo's expand2square)."""
    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    square = Image.new("RGB", (side, side), background)
    square.paste(img, ((side - width) // 2, (side - height) // 2))
    return square


def resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The image at ``size`` (width, height), bilinear."""
    if img.size == size:
        return img
    return img.resize(size, Image.Resampling.BILINEAR)


def to_uint8(img: Image.Image, layout: Layout = "NHWC") -> bytes:
    """The RGB pixels as bytes: NHWC (Pillow's own order, R G B per pixel) or NCHW (planes)."""
    if layout == "NHWC":
        return img.tobytes()
    return b"".join(band.tobytes() for band in img.split())


def normalise(
    img: Image.Image, mean: Sequence[float], std: Sequence[float], layout: Layout = "NHWC"
) -> array[float]:
    """float32 ``(x / 255 - mean) / std`` per channel, in ``layout`` order."""
    planes = []
    for band, m, s in zip(img.split(), mean, std, strict=True):
        scale, offset = 1.0 / (255.0 * s), -m / s
        planes.append(array("f", band.convert("F").point(lambda v, a=scale, b=offset: v * a + b).tobytes()))
    if layout == "NCHW":
        out = array("f")
        for plane in planes:
            out.extend(plane)
        return out
    out = array("f", bytes(4 * len(planes[0]) * len(planes)))
    for c, plane in enumerate(planes):
        out[c :: len(planes)] = plane
    return out


@dataclass(frozen=True)
class Prepared:
    """One image ready for an encoder, and what it was."""

    pixels: bytes | array[float]  # uint8 bytes, or float32 when normalised
    width: int  # the encoder's input size
    height: int
    source_width: int  # the image as sent (its header's size, before orientation)
    source_height: int
    format: str  # JPEG, PNG or WEBP
    decode_ms: float  # decode through the last step


def prepare(
    data: bytes,
    size: tuple[int, int],
    background: RGB,
    *,
    limits: ImageLimits = DEFAULT_LIMITS,
    layout: Layout = "NHWC",
    normalise_with: tuple[Sequence[float], Sequence[float]] | None = None,
) -> Prepared:
    """Every step for one encoded image: decode, orient, RGB, pad, resize, then uint8 or normalised."""
    t0 = time.perf_counter()
    img = decode(data, limits, draft=max(size))
    fmt = str(img.format)
    source: tuple[int, int] = img.info["source_size"]
    img = orient(img)
    img = resize(pad_square(to_rgb(img, background), background), size)
    pixels: bytes | array[float]
    if normalise_with is None:
        pixels = to_uint8(img, layout)
    else:
        pixels = normalise(img, normalise_with[0], normalise_with[1], layout)
    ms = (time.perf_counter() - t0) * 1000.0
    return Prepared(pixels, size[0], size[1], source[0], source[1], fmt, ms)
