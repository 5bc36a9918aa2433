"""The benchmark's images, drawn with Pillow when a suite names them: no binary files in the
repository, the same pixels on every machine (nothing random, nothing from fonts).

Camera-snapshot-like scenes at the sizes a camera sends (a 720p JPEG, the usual Home Assistant
snapshot), plus a small PNG: what matters for the timings is the decode of a real-sized file and
the encoder's fixed input, not the scene; a vision model's answers in the report say what it made
of each (a front door with a parcel, the same door without, a driveway with two cars).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import cache

from PIL import Image, ImageDraw

_SKY, _WALL, _DOOR, _BOX = (150, 190, 230), (200, 190, 170), (110, 60, 30), (180, 130, 70)


def _door(parcel: bool) -> Image.Image:
    img = Image.new("RGB", (1280, 720), _WALL)
    d = ImageDraw.Draw(img)
    d.rectangle((0, 600, 1280, 720), fill=(120, 120, 120))  # the path
    d.rectangle((520, 140, 760, 600), fill=_DOOR)  # the door
    d.ellipse((720, 360, 740, 380), fill=(220, 200, 60))  # its handle
    d.rectangle((840, 220, 1000, 360), fill=_SKY, outline=(255, 255, 255), width=8)  # a window
    if parcel:
        d.rectangle((560, 500, 720, 610), fill=_BOX, outline=(90, 60, 30), width=4)
        d.line((560, 555, 720, 555), fill=(230, 220, 200), width=10)  # the tape
    return img


def _driveway() -> Image.Image:
    img = Image.new("RGB", (1280, 720), _SKY)
    d = ImageDraw.Draw(img)
    d.rectangle((0, 380, 1280, 720), fill=(90, 90, 95))
    for x, colour in ((180, (200, 30, 30)), (720, (30, 60, 200))):  # two cars
        d.rounded_rectangle((x, 420, x + 380, 560), radius=40, fill=colour)
        d.rectangle((x + 80, 360, x + 300, 440), fill=colour)
        for wx in (x + 70, x + 310):
            d.ellipse((wx - 40, 530, wx + 40, 610), fill=(20, 20, 20))
    return img


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, quality=85) if fmt == "JPEG" else img.save(buf, fmt)
    return buf.getvalue()


_SCENES: dict[str, tuple[Callable[[], Image.Image], str, str]] = {
    "door_parcel": (lambda: _door(True), "JPEG", "a front door with a parcel in front of it"),
    "door_empty": (lambda: _door(False), "JPEG", "the same front door, no parcel"),
    "driveway_cars": (_driveway, "JPEG", "a driveway with two cars, red and blue"),
    "red_square": (lambda: Image.new("RGB", (64, 64), (220, 20, 20)), "PNG", "a red square"),
}
NAMES = tuple(_SCENES)


@cache
def image_bytes(name: str) -> bytes:
    """The encoded image ``name`` (one of NAMES); KeyError for another."""
    make, fmt, _ = _SCENES[name]
    return _encode(make(), fmt)


def describe(name: str) -> str:
    """``door_parcel`` as the report lists it: what it shows, its size and format."""
    make, fmt, what = _SCENES[name]
    img = make()
    return f"`{name}`: {what} ({img.width}x{img.height} {fmt}, {len(image_bytes(name)) // 1024} KB)"
