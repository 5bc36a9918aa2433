"""Which images of a conversation reach the model, and where each one's ``<image>`` goes.

Chat clients (Open WebUI, LLM Vision, Home Assistant's chat log) send the whole history back
with its pictures on every turn, so a follow-up question carries the earlier images again. The
policy (docs/VISION.md): the current turn's images (the last user message's) all go, or the
request is refused as too many, since the user is asking about them; the earlier turns' images
fill what is left of the model's ``max_images``, newest first; an earlier image that does not
fit, or cannot be taken (over the byte bound, not an image, a path outside the folder), becomes
the text ``[an image shown earlier]`` in its turn, so the model still knows something was
shown there. A request is never refused for its earlier images alone: a client that kept a
refused picture in its history would otherwise fail every later turn of that conversation.

Placement: a turn's text keeps ``<image>`` where the sender wrote one per image, else its
images go in front of the text (the vendor demo's form). Pure and without Pillow (the daemon's
admission imports it); the caller's thread.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TypeVar

from rkllmd.errors import BadImage, RequestError
from rkllmd.generation import ChatMessage

T = TypeVar("T")

PLACEHOLDER = "<image>"
EARLIER = "[an image shown earlier]"


def current_turn(roles: Sequence[str]) -> int:
    """The index of the last user message (the turn being asked), or -1 without one."""
    return max((i for i, r in enumerate(roles) if r == "user"), default=-1)


def keep_newest(counts: Sequence[int], current: int, budget: int) -> set[tuple[int, int]]:
    """The (message, image) pairs that go to the model: every image of message ``current`` (the
    caller refuses more than ``budget`` there), then earlier images, newest first, while
    ``budget`` lasts. Images after the current turn (none in practice) count as earlier."""
    kept = {(current, j) for j in range(counts[current])} if current >= 0 else set()
    left = budget - len(kept)
    for i in reversed(range(len(counts))):
        if i == current:
            continue
        for j in reversed(range(counts[i])):
            if left <= 0:
                return kept
            kept.add((i, j))
            left -= 1
    return kept


def place(text: str, kept: Sequence[bool], *, strict: bool) -> str:
    """``text`` with one ``<image>`` per kept image and ``[an image shown earlier]`` per dropped one.

    Placeholders the sender wrote, one per image, stay where they are; with none, the images go
    in front. ``strict`` (the current turn): a different count is a RequestError, as the sender
    can fix it; an earlier turn's written placeholders are then dropped and the images put in front.
    """
    written = text.count(PLACEHOLDER)
    if written == len(kept) and kept:
        pieces = text.split(PLACEHOLDER)
        out = [pieces[0]]
        for keep, piece in zip(kept, pieces[1:], strict=True):
            out.append(PLACEHOLDER if keep else EARLIER)
            out.append(piece)
        return "".join(out)
    if written and strict:
        raise RequestError(
            f"the prompt has {written} {PLACEHOLDER} placeholders for {len(kept)} images; write one per "
            "image, or none to have the images put before the text"
        )
    if written:
        text = text.replace(PLACEHOLDER, "")
    front = "".join(PLACEHOLDER if keep else EARLIER + " " for keep in kept)
    return front + text


def take_each(
    messages: Sequence[ChatMessage], take: Callable[[bytes], T]
) -> tuple[tuple[ChatMessage, ...], list[T], int]:
    """Each image of ``messages`` (already placed: one ``<image>`` per image) through ``take`` (a
    runtime's decoding), in order: the messages without the earlier turns' images ``take``
    refused (BadImage: a cut file, too many pixels), their placeholders now the marker; what
    ``take`` returned; how many were left out. The current turn's refusal is raised."""
    current = current_turn([m.role for m in messages])
    out: list[ChatMessage] = []
    taken: list[T] = []
    left_out = 0
    for i, m in enumerate(messages):
        flags: list[bool] = []
        for data in m.images:
            try:
                taken.append(take(data))
                flags.append(True)
            except BadImage:
                if i == current:
                    raise
                flags.append(False)
        if not all(flags):
            left_out += flags.count(False)
            kept = tuple(img for img, ok in zip(m.images, flags, strict=True) if ok)
            m = dataclasses.replace(m, content=place(m.content, flags, strict=False), images=kept)
        out.append(m)
    return tuple(out), taken, left_out
