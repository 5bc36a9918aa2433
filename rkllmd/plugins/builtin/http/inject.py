"""A request as rkllmd reads it, from what the OpenAI API's endpoints (``api.py`` and
``vectors.py``) make of a body: JSON within rkllmd's own payload limit, handed to rkllmd on its
command's topic. Runs on the plugin's server thread."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from rkllmd.plugins import LocalMessage

from .errors import ApiError

if TYPE_CHECKING:
    from rkllmd.plugins import PluginContext


def inject(ctx: PluginContext, command: str, payload: dict[str, Any], key: str) -> None:
    """Hand ``payload`` to rkllmd on ``command``'s topic (:func:`encode`d); ``key``: the relay
    slot's nonce, which routes every event of the request back to it."""
    data = encode(payload, ctx.settings.limits.max_payload_bytes)
    ctx.inject(LocalMessage(ctx.topics.request(command), data, received_at=time.monotonic(), key=key))


def encode(payload: dict[str, Any], limit: int) -> bytes:
    """The generate request as rkllmd reads it; within rkllmd's own payload limit (413 otherwise)."""
    # Never write a number rkllmd would not parse: that is a bug (a 500), never a hang.
    try:
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except UnicodeEncodeError:  # "\ud800" in the body: a lone surrogate nothing could echo back
        raise ApiError(
            400, "The request contains an unpaired surrogate escape.", code="invalid_value"
        ) from None
    if len(data) > limit:
        raise ApiError(
            413,
            f"The request is {len(data)} bytes as rkllmd reads it; the limit is {limit}.",
            code="payload_too_large",
        )
    return data
