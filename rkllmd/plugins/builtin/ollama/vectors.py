"""``POST /api/embed`` and the older ``POST /api/embeddings`` in Ollama's shapes, over rkllmd's
embed command (docs/EMBEDDINGS.md). Coroutines on the plugin's server thread (``ollama-server``).

The request is injected as a :class:`rkllmd.plugins.LocalMessage` on ``<base>/request/embed``:
the one queue, in arrival order. rkllmd checks the input (types, empty, too many, longer than the
context, the model's kind) and the refusal is answered as Ollama's ``{"error": ...}``. As Ollama,
``/api/embed`` cuts an input longer than the context at its end by default (``truncate``, done by
the job with the model's tokenizer) and refuses it with ``"truncate": false``; the older
``/api/embeddings`` has no ``truncate`` and refuses it.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any, Protocol

from rkllmd.plugins.builtin._httpconfig import HttpError
from rkllmd.plugins.builtin._relay import ClientGone, Relay, answer_deadline_s, one_answer

from . import wire

if TYPE_CHECKING:
    from rkllmd.plugins import PluginContext
    from rkllmd.plugins.builtin._httpserver import Handler


class Api(Protocol):
    """What these endpoints use of the plugin's endpoint class (``api.Api``, which routes to
    them: a protocol, so this module does not import it back)."""

    ctx: PluginContext
    log: Any
    relay: Relay
    _retry_after: int

    def _model(self, asked: str | None, verb: str = "") -> str: ...

    def _inject(self, command: str, payload: dict[str, Any], key: str | None = None) -> None: ...


async def embed(api: Api, h: Handler, body: dict[str, Any]) -> None:
    """``{"model", "input": str | [str], "dimensions"?, "truncate"?}`` -> ``{"model", "embeddings": [[...]],
    "total_duration", "load_duration", "prompt_eval_count"}``."""
    t0 = time.monotonic_ns()
    truncate = body.get("truncate", True)  # Ollama's default: cut a text to fit the context
    if not isinstance(truncate, bool):
        raise HttpError(400, "truncate must be true or false")
    fields: dict[str, Any] = {"input": body.get("input"), "truncate": truncate}
    if body.get("dimensions") is not None:
        fields["dimensions"] = body["dimensions"]
    model, data = await _ask(api, h, body, fields)
    await h.send_json(
        200,
        {
            "model": model,
            "embeddings": data.get("embeddings") or [],
            "total_duration": time.monotonic_ns() - t0,
            "load_duration": 0,
            "prompt_eval_count": int((data.get("usage") or {}).get("prompt_tokens") or 0),
        },
    )


async def embeddings(api: Api, h: Handler, body: dict[str, Any]) -> None:
    """The older endpoint: ``{"model", "prompt": str}`` -> ``{"embedding": [...]}`` (one text; an
    empty prompt is refused, not answered with an empty vector)."""
    prompt = body.get("prompt")
    # Named here, not by the embed command, whose refusal would name an `input` this endpoint
    # does not take (a client that sent /api/embed's `input` here learns what to send instead).
    if prompt is None:
        raise HttpError(400, "prompt is required: /api/embeddings embeds one prompt (/api/embed takes input)")
    if not isinstance(prompt, str):
        raise HttpError(400, "prompt must be a string")
    if not prompt.strip():
        raise HttpError(400, "prompt is empty: nothing to embed")
    _model, data = await _ask(api, h, body, {"input": prompt})
    (vector,) = data.get("embeddings") or [[]]
    await h.send_json(200, {"embedding": vector})


async def _ask(
    api: Api, h: Handler, body: dict[str, Any], fields: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The model as the client named it (or rkllmd chose it), and the data of rkllmd's reply."""
    asked = body.get("model")
    if asked is not None and not isinstance(asked, str):
        raise HttpError(400, "model must be a string")
    if asked:  # none named: rkllmd takes the first embedding model
        fields = {**fields, "model": api._model(asked)}
    rid = f"ollama-{secrets.token_hex(12)}"
    try:
        final = await one_answer(
            api.relay,
            lambda nonce: api._inject("embed", {**fields, "id": rid, "transaction": nonce}, key=nonce),
            lambda: api.ctx.cancel(rid),
            h.on_gone,
            answer_deadline_s(api.ctx.settings),
        )
    except ClientGone:
        api.log.info("ollama client disconnected; embed cancelled", request_id=rid)
        raise
    if final.status == "error":
        raise wire.outcome_error(final, api._retry_after)
    data = dict(final.data)
    return asked or wire.tag(str(data.get("model"))), data
