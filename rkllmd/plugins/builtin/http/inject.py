"""A request as rkllmd reads it, from what the OpenAI API's endpoints (``api.py`` and
``vectors.py``) make of a body: JSON within rkllmd's own payload limit. Runs on the plugin's
server thread."""

from __future__ import annotations

import json
from typing import Any

from .errors import ApiError


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
