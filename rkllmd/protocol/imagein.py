"""A request's images read and bounded at admission, and which of a conversation's go.

``read`` turns each image of a request (base64, a ``data:`` URI, ``{"path"}`` under the image
folder: rkllmd.vision.sources) into bytes, checks its format by its magic bytes, and names the
field in any refusal. ``conversation`` applies rkllmd.vision.history to a ``messages`` request:
the current turn's images all read (a refusal is the request's), earlier turns' newest first up
to ``max_images``, the rest, or one that cannot be read, left out with the text marker and
described in ``dropped``. Pure, without Pillow; the ingress thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rkllmd.errors import BadImage
from rkllmd.protocol import shapes
from rkllmd.vision import history
from rkllmd.vision.limits import DEFAULT_LIMITS, ImageLimits, sniff_format


def _is_item(v: Any) -> bool:
    """One image of a request as its union takes it: a string, or ``{"path": <string>}``."""
    return isinstance(v, str | BaseModel) or (
        isinstance(v, dict) and v.keys() == {"path"} and isinstance(v["path"], str)
    )


#: One image of a request, before pydantic's union sees it: a wrong one is told in one sentence,
#: not as the union members' two (``images[0].str: …; images[0].ImagePathIn: …``).
CHECK_ITEM = shapes.one_of('a base64 string, a data: URI or {"path": "<file>"}', _is_item)


def read(
    items: Sequence[Any] | None, where: str, folder: Path | None, max_bytes: int | None, *, first: int = 0
) -> tuple[bytes, ...]:
    """Each image's bytes (a string: base64 or a data: URI; else an ImagePathIn), in order."""
    if not items:
        return ()
    from rkllmd.vision import sources  # no Pillow: the bytes only; the runtime decodes the pixels

    limits = ImageLimits(max_bytes=max_bytes) if max_bytes else DEFAULT_LIMITS
    out = []
    for i, item in enumerate(items, start=first):
        try:
            if not isinstance(item, str):  # {"path": …}
                out.append(sources.from_file(item.path, folder, limits))
            elif item.startswith("data:"):  # OpenAI's image_url, passed on by the http plugin
                out.append(sources.from_data_uri(item, limits))
            else:
                out.append(sources.from_base64(item, limits))
            sniff_format(out[-1])  # JPEG, PNG or WebP by its magic bytes, before it is queued
        except BadImage as exc:
            raise type(exc)(f"{where}[{i}]: {exc.message}", **exc.data) from None
    return tuple(out)


def conversation(
    messages: Sequence[Any],
    folder: Path | None,
    max_bytes: int | None,
    max_images: int,
    dropped: list[str] | None,
) -> list[tuple[str, tuple[bytes, ...]]]:
    """Each message's text (an ``<image>`` or the marker per image) and the images that go."""
    current = history.current_turn([m.role for m in messages])
    kept = history.keep_newest([len(m.images or ()) for m in messages], current, max_images)
    out: list[tuple[str, tuple[bytes, ...]]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}].images"
        taken: list[bytes] = []
        flags: list[bool] = []
        for j, item in enumerate(m.images or ()):
            data = None
            if (i, j) not in kept:
                _note(dropped, f"{where}[{j}]: over max_images {max_images}, older than the rest")
            elif i == current:
                data = read([item], where, folder, max_bytes, first=j)[0]
            else:
                try:
                    data = read([item], where, folder, max_bytes, first=j)[0]
                except BadImage as exc:  # an earlier turn's: left out, not the whole request
                    _note(dropped, exc.message)
            if data is not None:
                taken.append(data)
            flags.append(data is not None)
        content = m.content or ""
        if flags:
            content = history.place(content, flags, strict=i == current)
        out.append((content, tuple(taken)))
    return out


def _note(dropped: list[str] | None, why: str) -> None:
    if dropped is not None:
        dropped.append(why)
