"""Every body rkllmd publishes for a request: the final reply's envelope and its ``data``, and the
stream chunks.

Pure functions and data only: no network, no threads. Laid out in one place so that MQTT
replies, the plugins' view of a final reply (``Final.as_reply``) and docs/PROTOCOL.md agree.
"""

from __future__ import annotations

import base64
import json
import json.encoder
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from rkllmd import thinking
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


def encoded_vector(vec: list[float], encoding: str) -> list[float] | str:
    """A vector as a reply carries it: floats, or (``base64``) the little-endian float32 bytes in
    base64, as OpenAI's ``encoding_format`` has it (a quarter of the JSON text)."""
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")
    return vec


def embedding_data(
    model: str | None,
    vectors: list[list[float]],
    encoding: str,
    prompt_tokens: int | None,
    timings: dict[str, Any],
) -> dict[str, Any]:
    """The ``data`` of an embed reply: one vector per input, in input order."""
    return {
        "model": model,
        "embeddings": [encoded_vector(v, encoding) for v in vectors],
        "encoding": encoding,
        "dimensions": len(vectors[0]) if vectors else 0,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        "timings": timings,
    }


def rerank_data(
    model: str | None,
    scores: list[float],
    documents: list[str] | None,
    top_n: int | None,
    prompt_tokens: int | None,
    timings: dict[str, Any],
) -> dict[str, Any]:
    """The ``data`` of a rerank reply: ``results`` by relevance, highest first (ties in document
    order), at most ``top_n``; each its document's ``index`` and ``relevance_score``, and its
    ``document`` when ``documents`` is given (return_documents)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:top_n]
    results: list[dict[str, Any]] = []
    for i in order:
        item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if documents is not None:
            item["document"] = {"text": documents[i]}
        results.append(item)
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return {"model": model, "results": results, "usage": usage, "timings": timings}


def partial_data(model: str | None, text: str | None = None, completion_tokens: int = 0) -> dict[str, Any]:
    """The ``data`` of an error reply: what a generation produced before it failed (``text``;
    None for a command that does not generate, whose error data names the model only)."""
    if text is None:
        return {"model": model}
    return {"model": model, "text": text, "completion_tokens": completion_tokens}


def loaded_data(model: str | None, loaded: bool) -> dict[str, Any]:
    """The ``data`` of a load (``loaded`` true) or unload reply."""
    return {"model": model, "loaded": loaded}


def cleared_data(model: str | None) -> dict[str, Any]:
    """The ``data`` of a clear_cache reply: the model whose cache was cleared (the loaded one)."""
    return {"model": model, "cleared": True}


def cancel_data(request_id: str, was: str, on: str | None = None) -> dict[str, Any]:
    """The ``data`` of a cancel that found its request: ``was`` ``queued`` or ``running``; ``on``:
    the board that had it, when another board of a fleet did (docs/FLEET.md)."""
    out: dict[str, Any] = {"cancelled": request_id, "was": was}
    if on is not None:
        out["cancelled_on"] = on
    return out


@dataclass(frozen=True)
class ModelFacts:
    """One configured model as every list of models shows it (the models reply, the info topic,
    the HTTP and Ollama lists): each list picks the facts its wire shape carries."""

    name: str
    runtime: str
    description: str
    context_length: int
    loaded: bool
    default: bool
    path: str | None = None  # the model's file, if it has one: only Ollama's list reads it (size, date)
    vision: bool = False  # it takes images (an image encoder is configured: docs/VISION.md)
    thinking: bool = False  # it can think (docs/THINKING.md, "Which models think")

    def brief(self) -> dict[str, Any]:
        """The model in the retained info topic: name, runtime, description."""
        return {"name": self.name, "runtime": self.runtime, "description": self.description}


def model_facts(models: Mapping[str, Any], loaded: str | None, default: str) -> list[ModelFacts]:
    """Every configured model (``[models.X]`` tables by name: ``Settings.models``) as its facts."""
    return [
        ModelFacts(
            name=name,
            runtime=str(cfg.runtime),
            description=cfg.description,
            context_length=int(cfg.max_context_len),
            loaded=name == loaded,
            default=name == default,
            path=str(cfg.path) if getattr(cfg, "path", None) else None,
            vision=bool(getattr(cfg, "takes_images", False)),
            thinking=thinking.can_think(name, cfg) if hasattr(cfg, "thinks") else False,
        )
        for name, cfg in models.items()
    ]


def models_data(models: list[ModelFacts], loaded: str | None, default: str) -> dict[str, Any]:
    """The ``data`` of a models reply: every configured model, the loaded one and the default."""
    out = [
        {
            "name": m.name,
            "runtime": m.runtime,
            "description": m.description,
            "context_length": m.context_length,
            "loaded": m.loaded,
            "default": m.default,
        }
        for m in models
    ]
    return {"models": out, "loaded": loaded, "default": default}


def stream_chunk(request_id: str, seq: int, delta: str, attempt: int = 1, thinking: str = "") -> bytes:
    """``{"id": …, "seq": …, "delta": …}`` exactly as json.dumps(ensure_ascii=False) writes it,
    built from the C string escaper: a chunk goes out per token, and dumps() makes an encoder each time.
    A request run again (``attempt`` 2 or more) says so in every chunk: its stream restarts at seq 0.
    A thinking model's thought comes in ``thinking``, apart from the text (``delta`` "" then)."""
    again = f', "attempt": {int(attempt)}' if attempt > 1 else ""
    thought = f', "thinking": {_quote(thinking)}' if thinking else ""
    head = f'{{"id": {_quote(request_id)}, "seq": {int(seq)}{again}'
    return f'{head}, "delta": {_quote(delta)}{thought}}}'.encode()


def stream_end(request_id: str, seq: int, finish_reason: str, status: str = "ok", attempt: int = 1) -> bytes:
    body: dict[str, Any] = {"id": request_id, "seq": seq}
    if attempt > 1:
        body["attempt"] = attempt
    body |= {"done": True, "finish_reason": finish_reason, "status": status}
    return json.dumps(body).encode()
