"""The bounds on one image and the formats accepted, without Pillow: the MQTT protocol imports
this (through ``sources.py``) in the daemon, which decodes no pixels, to check an image's format
by its magic bytes at admission. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from rkllmd.errors import BadImage

# Pillow format name -> MIME type of the formats accepted.
FORMATS: dict[str, str] = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on one image: its encoded size, its pixel count, its longest side."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000  # 8K UHD is 33.2 M
    max_side: int = 16384


DEFAULT_LIMITS = ImageLimits()


def sniff_format(data: bytes) -> str:
    """The format named by the magic bytes (``JPEG``, ``PNG``, ``WEBP``); BadImage for anything else."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    what = "an empty file" if not data else _describe(data)
    raise BadImage(f"the image is {what}, not JPEG, PNG or WebP; send one of those formats")


def _describe(data: bytes) -> str:
    for magic, name in ((b"GIF8", "a GIF"), (b"BM", "a BMP"), (b"II*\0", "a TIFF"), (b"MM\0*", "a TIFF")):
        if data.startswith(magic):
            return name
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "a HEIC/AVIF"
    if data.lstrip()[:1] in (b"<", b"{"):
        return "text, not image data (base64 not decoded?)"
    return "in an unknown format"
