"""``POST /v1/embeddings`` (OpenAI's shape) and ``POST /v1/rerank`` (the Jina/Cohere shape the
common rerank servers answer), over rkllmd's embed and rerank commands (docs/EMBEDDINGS.md).

Each request is checked for what only this API has (OpenAI's token-array inputs, its
``encoding_format``), turned into an rkllmd embed or rerank request and injected as a
:class:`rkllmd.plugins.LocalMessage`: the same queue, in arrival order, as every other request.
Everything else (types, empty or too many inputs, an input longer than the context, the model's
kind) is rkllmd's check, answered in OpenAI's error shape. Coroutines on the plugin's server
thread (``http-server``).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any, Protocol

from rkllmd.plugins.builtin._relay import ClientGone, Relay, answer_deadline_s, one_answer

from .errors import api_error
from .inject import inject
from .wire import ApiError, decode_body

if TYPE_CHECKING:
    from rkllmd.plugins import PluginContext
    from rkllmd.plugins.builtin._httpserver import Handler


class Api(Protocol):
    """What these endpoints use of the plugin's endpoint class (``api.Api``, which routes to
    them: a protocol, so this module does not import it back)."""

    ctx: PluginContext
    log: Any
    relay: Relay
    _max_body: int
    _retry_after: int

    def _model(self, asked: str | None) -> str: ...


async def embeddings(api: Api, h: Handler) -> None:
    """``{"input": str | [str], "model", "encoding_format", "dimensions"}`` -> ``{"object": "list",
    "data": [{"object": "embedding", "index", "embedding"}], "model", "usage"}``."""
    body = decode_body(await h.read_body(api._max_body))
    inp = body.get("input")
    if isinstance(inp, list) and inp and all(type(x) in (int, list) for x in inp):  # token ids
        raise ApiError(
            400,
            "Token arrays are not supported as input; send the text itself.",
            param="input",
            code="invalid_value",
        )
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise ApiError(
            400,
            f"Invalid value for 'encoding_format': expected 'float' or 'base64', got {encoding!r}.",
            param="encoding_format",
            code="invalid_value",
        )
    fields: dict[str, Any] = {"input": inp, "encoding": encoding}
    if body.get("dimensions") is not None:
        fields["dimensions"] = body["dimensions"]
    asked, data = await _ask(api, h, "embed", body, fields, param="input")
    vectors = data.get("embeddings") or []
    out = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    tokens = int((data.get("usage") or {}).get("prompt_tokens") or 0)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    await h.send_json(
        200, {"object": "list", "data": out, "model": asked or data.get("model"), "usage": usage}
    )


async def rerank(api: Api, h: Handler) -> None:
    """``{"query", "documents": [str | {"text"}], "top_n", "return_documents", "instruction",
    "model"}`` -> ``{"id", "model", "results": [{"index", "relevance_score", "document"?}], "usage"}``.
    Other fields (Cohere's ``rank_fields``, ``max_chunks_per_doc``) are ignored, as clients send them."""
    body = decode_body(await h.read_body(api._max_body))
    fields = {
        k: body[k]
        for k in ("query", "documents", "top_n", "return_documents", "instruction")
        if body.get(k) is not None
    }
    asked, data = await _ask(api, h, "rerank", body, fields, param="documents")
    tokens = int((data.get("usage") or {}).get("prompt_tokens") or 0)
    await h.send_json(
        200,
        {
            "id": f"rerank-{secrets.token_hex(12)}",
            "model": asked or data.get("model"),
            "results": data.get("results") or [],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
    )


async def _ask(
    api: Api, h: Handler, command: str, body: dict[str, Any], fields: dict[str, Any], *, param: str
) -> tuple[str | None, dict[str, Any]]:
    """The model the client named, and the data of rkllmd's reply; an error reply as OpenAI's."""
    asked = body.get("model")
    if asked is not None and not isinstance(asked, str):
        raise ApiError(
            400, "Invalid type for 'model': expected a string.", param="model", code="invalid_type"
        )
    if asked:  # none named: rkllmd takes the first model of the right kind
        fields = {**fields, "model": api._model(asked)}
    rid = f"http-{secrets.token_hex(12)}"
    try:
        final = await one_answer(
            api.relay,
            lambda nonce: inject(api.ctx, command, {**fields, "id": rid, "transaction": nonce}, nonce),
            lambda: api.ctx.cancel(rid),
            h.on_gone,
            answer_deadline_s(api.ctx.settings),
        )
    except ClientGone:
        api.log.info(f"http client disconnected; {command} cancelled", request_id=rid)
        raise
    if final.status == "error":
        raise api_error(final, retry_after_s=api._retry_after, param=param)
    return asked or None, dict(final.data)
