"""Image preprocessing: what is accepted, what is refused and how, and each step's effect on pixels."""

from __future__ import annotations

import io
import struct
import zlib
from array import array

import pytest
from PIL import Image

from rkllmd.errors import BadImage, ImageTooLarge
from rkllmd.vision import images
from rkllmd.vision.families import FAMILIES, family
from rkllmd.vision.limits import ImageLimits


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring width x height whose pixel data is a few bytes: what a bomb looks like."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_the_three_formats_decode(fmt: str) -> None:
    img = images.decode(encode(Image.new("RGB", (30, 20), (10, 200, 30)), fmt))
    assert (img.format, img.size) == (fmt, (30, 20))


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (encode(Image.new("RGB", (4, 4)), "GIF"), "a GIF"),
        (encode(Image.new("RGB", (4, 4)), "BMP"), "a BMP"),
        (encode(Image.new("RGB", (4, 4)), "TIFF"), "a TIFF"),
        (b"iVBORw0KGgoAAAANSUhEUgAA", "unknown format"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "text, not image data"),
        (b"", "an empty file"),
    ],
)
def test_other_formats_are_refused_by_name(data: bytes, words: str) -> None:
    with pytest.raises(BadImage, match="not JPEG, PNG or WebP") as info:
        images.decode(data)
    assert words in info.value.message and info.value.code == "bad_image"


def test_too_many_bytes_is_refused_before_decoding() -> None:
    data = encode(Image.effect_noise((64, 64), 64), "PNG")
    assert len(data) > 100
    with pytest.raises(ImageTooLarge, match=f"{len(data)} bytes, over the 100-byte limit") as info:
        images.decode(data, ImageLimits(max_bytes=100))
    assert info.value.code == "image_too_large"


def test_a_decompression_bomb_costs_only_its_header() -> None:
    bomb = png_header_only(8000, 6000)
    assert len(bomb) < 200
    with pytest.raises(ImageTooLarge, match=r"8000x6000 \(48000000 pixels\), over the limit"):
        images.decode(bomb)
    # Past Pillow's own bound its check fires first; still the same refusal, in rkllmd's words
    # (it used to carry Pillow's "exceeds limit of 178956970 pixels, could be decompression bomb").
    with pytest.raises(ImageTooLarge) as info:
        images.decode(png_header_only(30000, 30000))
    assert str(info.value) == (
        "the image has 900000000 pixels, over the limit of 40000000 pixels; scale it down before sending"
    )
    with pytest.raises(ImageTooLarge, match="per side"):
        images.decode(png_header_only(20000, 10), ImageLimits(max_side=16384))


def test_a_truncated_image_is_refused_as_incomplete() -> None:
    full = encode(Image.effect_noise((200, 200), 64).convert("RGB"), "JPEG")
    with pytest.raises(BadImage, match=r"cannot be decoded .*send the complete file"):
        images.decode(full[: len(full) // 2])
    with pytest.raises(BadImage, match="PNG"):
        images.decode(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)


def test_exif_orientation_stands_the_image_up() -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view"
    upright = images.orient(images.decode(encode(img, "JPEG", exif=exif, quality=95)))
    assert upright.size == (20, 40)
    top, bottom = upright.getpixel((10, 5)), upright.getpixel((10, 35))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # left half went to the top


def test_pad_square_centres_the_image_on_the_background() -> None:
    sq = images.pad_square(Image.new("RGB", (100, 50), (255, 0, 0)), (1, 2, 3))
    assert sq.size == (100, 100)
    assert sq.getpixel((50, 10)) == (1, 2, 3) and sq.getpixel((50, 90)) == (1, 2, 3)
    assert sq.getpixel((50, 25)) == (255, 0, 0) and sq.getpixel((50, 74)) == (255, 0, 0)
    assert sq.getpixel((50, 24)) == (1, 2, 3) and sq.getpixel((50, 75)) == (1, 2, 3)


def test_transparency_becomes_the_background() -> None:
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    img.putpixel((0, 0), (0, 255, 0, 255))
    rgb = images.to_rgb(images.decode(encode(img, "PNG")), (9, 8, 7))
    assert rgb.mode == "RGB" and rgb.getpixel((1, 1)) == (9, 8, 7) and rgb.getpixel((0, 0)) == (0, 255, 0)
    grey = images.to_rgb(Image.new("L", (2, 2), 77), (0, 0, 0))
    assert grey.getpixel((0, 0)) == (77, 77, 77)


def test_uint8_layouts() -> None:
    img = Image.new("RGB", (2, 1))
    img.putpixel((0, 0), (1, 2, 3))
    img.putpixel((1, 0), (4, 5, 6))
    assert images.to_uint8(img, "NHWC") == bytes([1, 2, 3, 4, 5, 6])
    assert images.to_uint8(img, "NCHW") == bytes([1, 4, 2, 5, 3, 6])


def test_normalise_is_per_channel_mean_and_std() -> None:
    img = Image.new("RGB", (2, 1), (255, 0, 51))
    mean, std = (0.5, 0.25, 0.2), (0.5, 0.25, 0.1)
    want = [(255 / 255 - 0.5) / 0.5, (0 - 0.25) / 0.25, (51 / 255 - 0.2) / 0.1]
    nhwc = images.normalise(img, mean, std, "NHWC")
    assert isinstance(nhwc, array) and nhwc.typecode == "f"
    assert list(nhwc) == pytest.approx(want * 2, abs=1e-5)
    nchw = images.normalise(img, mean, std, "NCHW")
    assert list(nchw) == pytest.approx([want[0]] * 2 + [want[1]] * 2 + [want[2]] * 2, abs=1e-5)


def test_prepare_runs_every_step() -> None:
    img = Image.new("RGB", (4000, 3000), (200, 10, 10))
    fam = family("qwen2-vl")
    p = images.prepare(encode(img, "JPEG", quality=90), (392, 392), fam.background)
    assert (p.width, p.height, p.source_width, p.source_height, p.format) == (392, 392, 4000, 3000, "JPEG")
    assert isinstance(p.pixels, bytes) and len(p.pixels) == 392 * 392 * 3
    # A 4:3 image padded to a square: the top rows are the family's mean colour, the middle the image.
    top = p.pixels[(5 * 392 + 196) * 3 : (5 * 392 + 196) * 3 + 3]
    mid = p.pixels[(196 * 392 + 196) * 3 : (196 * 392 + 196) * 3 + 3]
    assert tuple(top) == fam.background == (123, 117, 104)
    assert abs(mid[0] - 200) < 6 and mid[1] < 20
    floats = images.prepare(encode(img, "PNG"), (64, 64), fam.background, normalise_with=(fam.mean, fam.std))
    assert isinstance(floats.pixels, array) and len(floats.pixels) == 64 * 64 * 3
    pad, red = floats.pixels[(2 * 64 + 32) * 3], floats.pixels[(32 * 64 + 32) * 3]
    assert pad == pytest.approx((123 / 255 - fam.mean[0]) / fam.std[0], abs=0.01)  # ~0: the mean
    assert red == pytest.approx((200 / 255 - fam.mean[0]) / fam.std[0], abs=0.01)


def test_family_table() -> None:
    for fam in FAMILIES.values():
        assert fam.img_content and fam.input_size > 0 and len(fam.mean) == len(fam.std) == 3
    assert family("Qwen2.5VL").img_start == "<|vision_start|>"
    assert family("internvl3-1b").img_content == "<IMG_CONTEXT>"
    assert family("qwen3-vl").background == (128, 128, 128)
    with pytest.raises(ValueError, match="unknown vision family 'llava'; known: qwen2-vl"):
        family("llava")
