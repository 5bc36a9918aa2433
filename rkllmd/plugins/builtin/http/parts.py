"""OpenAI's message content parts: text, and images as ``image_url`` data URIs.

Pure functions (the plugin's server thread). An image part's ``url`` is passed on to rkllmd as it
is, on the message's ``images``, and an ``<image>`` placeholder takes its place in the text, so the
model sees it where the client put it; admission decodes and bounds it like any image
(docs/VISION.md), and a refusal comes back as ``bad_image`` / ``image_too_large`` in OpenAI's
error shape.

A remote ``http(s)://`` URL is refused here, not fetched: a daemon on the home network that
fetches any URL a client names can be made to reach hosts the client cannot (the router's admin
page, the NAS), waits on slow servers while its one queue waits, and the clients that matter
(Home Assistant, Frigate, LLM Vision, Open WebUI) send the image itself as a data URI.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from rkllmd.plugins.builtin._httpconfig import HttpError

PLACEHOLDER = "<image>"  # where an image goes in a turn's text: part of the request (docs/PROTOCOL.md)
_IMAGE_TYPES = ("image_url", "input_image")  # input_image: the Responses API's name, same url
_NAMED = re.compile(r"messages\[\d+\]\.images\[\d+\]")  # an image as rkllmd's refusals name it


def content(parts: list[Any], where: str, error: Callable[..., HttpError]) -> tuple[str, list[str]]:
    """The message's text and each image part's data URI, in order.

    The text keeps the order the client wrote: an ``<image>`` placeholder where each image part
    was (text, image, text: the image between the two texts), the parts joined by newlines. A
    client that wrote ``<image>`` in its text itself keeps its own placement.
    ``error(status, message, param=, code=)`` builds the interface's error (wire.ApiError)."""
    texts: list[str] = []
    images: list[str] = []
    pieces: list[str] = []
    for j, part in enumerate(parts):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
            pieces.append(part["text"])
        elif kind in _IMAGE_TYPES:
            images.append(_url(part, at, error))
            pieces.append(PLACEHOLDER)
        else:
            raise error(
                400,
                f"Invalid content part '{at}': rkllmd takes text and image_url parts.",
                param=at,
                code="invalid_value",
            )
    if any(PLACEHOLDER in t for t in texts):
        return "\n".join(texts), images
    return "\n".join(pieces), images


def _url(part: dict[str, Any], at: str, error: Callable[..., HttpError]) -> str:
    """The part's image URL (``image_url.url``, or the string itself); ``detail`` is ignored:
    the image is resized to the encoder's own input size whatever it asks."""
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise error(
            400,
            f"Missing image URL in '{at}': send image_url.url.",
            param=f"{at}.image_url.url",
            code="invalid_value",
        )
    if url.startswith(("http://", "https://")):
        raise error(
            400,
            f"Invalid image in '{at}': rkllmd does not fetch image URLs; "
            "send the image itself as data:image/jpeg;base64,<data>.",
            param=f"{at}.image_url.url",
            code="invalid_image",
        )
    return url


def places(messages: Any) -> dict[str, str]:
    """Where each image rkllmd names (``messages[i].images[k]``, its own request's shape) was in
    the client's request: its content part, ``messages[i].content[j]``."""
    out: dict[str, str] = {}
    for i, m in enumerate(messages if isinstance(messages, list) else ()):
        content = m.get("content") if isinstance(m, dict) else None
        at = [j for j, p in enumerate(content or ()) if isinstance(p, dict) and p.get("type") in _IMAGE_TYPES]
        out.update({f"messages[{i}].images[{k}]": f"messages[{i}].content[{j}]" for k, j in enumerate(at)})
    return out


def as_sent(message: str, placed: dict[str, str]) -> tuple[str, str | None]:
    """An rkllmd refusal's ``message`` naming the image part the client sent, and that part
    (``messages[i].content[j]``); None when it names no image."""
    named = _NAMED.search(message)
    at = placed.get(named.group()) if named else None
    if named is None or at is None:
        return message, None
    return message.replace(named.group(), at, 1), at
