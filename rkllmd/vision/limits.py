"""The bounds on one image and the formats accepted, without Pillow: the MQTT protocol imports
this (through ``sources.py``) in the daemon, which decodes no pixels. Pure data."""

from __future__ import annotations

from dataclasses import dataclass

# Pillow format name -> MIME type of the formats accepted.
FORMATS: dict[str, str] = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on one image: its encoded size, its pixel count, its longest side."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000  # 8K UHD is 33.2 M
    max_side: int = 16384


DEFAULT_LIMITS = ImageLimits()
