"""Every body rkllmd publishes for a request: the final reply's envelope and its ``data``, and the
stream chunks.

Pure functions and data only: no network, no threads. Laid out in one place so that MQTT
replies, the plugins' view of a final reply (``Final.as_reply``) and docs/PROTOCOL.md agree.
"""

from __future__ import annotations

import json
import json.encoder
from typing import Any, Literal

from rkllmd.protocol.address import Address

# json's own escaper for ensure_ascii=False (its C version where built, as dumps() uses)
_quote = json.encoder.encode_basestring


def reply_body(
    status: Literal["ok", "error"],
    data: dict[str, Any],
    code: str | None,
    error: str | None,
    request_id: str | None,
    address: Address | None = None,
) -> dict[str, Any]:
    """A final reply in the one envelope every command uses; the address adds the transaction."""
    out: dict[str, Any] = {"status": status}
    if request_id is not None:
        out["id"] = request_id
    if address is not None and address.has_transaction:
        out["transaction"] = address.transaction
    if status == "error":
        out["code"] = code
        out["error"] = error
    out["data"] = data
    return out


def to_json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def generation_data(
    model: str | None,
    text: str,
    finish_reason: str,
    prompt_tokens: int | None,
    completion_tokens: int,
    timings: dict[str, Any],
) -> dict[str, Any]:
    """The ``data`` of a generate reply that ran (finished, cancelled, or timed out part-way)."""
    return {
        "model": model,
        "text": text,
        "finish_reason": finish_reason,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": (prompt_tokens or 0) + completion_tokens,
        },
        "timings": timings,
    }


def partial_data(command: str, model: str | None, text: str, completion_tokens: int) -> dict[str, Any]:
    """The ``data`` of an error reply: what a generation produced before it failed."""
    if command != "generate":
        return {"model": model}
    return {"model": model, "text": text, "completion_tokens": completion_tokens}


def control_data(command: str, model: str | None) -> dict[str, Any]:
    """The ``data`` of a load, unload or clear_cache reply."""
    if command == "load":
        return {"model": model, "loaded": True}
    if command == "unload":
        return {"model": model, "loaded": False}
    return {"model": model, "cleared": True}


def stream_chunk(request_id: str, seq: int, delta: str, attempt: int = 1) -> bytes:
    """``{"id": …, "seq": …, "delta": …}`` exactly as json.dumps(ensure_ascii=False) writes it,
    built from the C string escaper: a chunk goes out per token, and dumps() makes an encoder each time.
    A request run again (``attempt`` 2 or more) says so in every chunk: its stream restarts at seq 0."""
    again = f', "attempt": {int(attempt)}' if attempt > 1 else ""
    return f'{{"id": {_quote(request_id)}, "seq": {int(seq)}{again}, "delta": {_quote(delta)}}}'.encode()


def stream_end(request_id: str, seq: int, finish_reason: str, status: str = "ok", attempt: int = 1) -> bytes:
    body: dict[str, Any] = {"id": request_id, "seq": seq}
    if attempt > 1:
        body["attempt"] = attempt
    body |= {"done": True, "finish_reason": finish_reason, "status": status}
    return json.dumps(body).encode()
