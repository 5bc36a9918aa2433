"""The endpoints. Every method here runs on the plugin's server thread (``http-server``), the
coroutines on its event loop.

A completion request is checked, turned into an rkllmd generate request and injected as a
:class:`rkllmd.plugins.LocalMessage` on ``<base>/request/generate``: rkllmd's ingress thread takes
it exactly like an MQTT request (plugin preprocessors, validation, the one bounded queue, in
arrival order), and because it is local nothing about it is published over MQTT. The router
(_relay.Relay.route) hands its final reply (dispatcher thread) and its first tokens to the waiting
handler; once a stream has begun, it writes the tokens to the client itself (inference thread).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from rkllmd.plugins import Final, load_problems
from rkllmd.plugins.builtin._httpbase import ApiBase, answer
from rkllmd.plugins.builtin._httpconfig import HttpError, Keys
from rkllmd.plugins.builtin._relay import ClientGone, Piece, Thought, Waiter, answer_deadline_s
from rkllmd.plugins.builtin._streamwrite import hole, string, template

from . import vectors
from .errors import api_error
from .inject import inject
from .wire import ApiError, Ask, Kind, Shape, decode_body, finish_reason, model, models, parse

if TYPE_CHECKING:
    from rkllmd.plugins.builtin._httpserver import Handler


class Api(ApiBase):
    """The OpenAI-compatible endpoints and ``/health``, over one rkllmd daemon."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._created = int(time.time())

    async def handle(self, h: Handler, method: str) -> None:
        """Route one request; every failure becomes an OpenAI error object if nothing was sent yet."""
        path = unquote(urlsplit(h.path).path).rstrip("/") or "/"

        async def in_stream(err: HttpError) -> None:  # the error becomes the stream's last event
            await h.send_event(err.body(h.server.error_body))
            await h.end_events()

        await answer(
            h,
            lambda: self._route(h, method, path),
            name="http",
            log=self.log,
            path=path,
            in_stream=in_stream,
            log_refused=True,  # bad input gets a log line as well as its error
        )

    async def _route(self, h: Handler, method: str, path: str) -> None:
        if path == "/health":
            self._only(method, "GET", path)
            return await self._health(h)
        if not path.startswith("/v1/") and path != "/v1":
            raise ApiError(404, f"Invalid URL ({method} {path})", code="unknown_url")
        self._authorize(h)
        if path == "/v1/models":
            self._only(method, "GET", path)
            return await h.send_json(200, models([m.name for m in self.ctx.models()], self._created))
        if path.startswith("/v1/models/"):
            self._only(method, "GET", path)
            name = path.removeprefix("/v1/models/")
            if name not in self.ctx.settings.models:
                raise _no_model(name)
            return await h.send_json(200, model(name, self._created))
        if path == "/v1/chat/completions":
            self._only(method, "POST", path)
            return await self._generate(h, "chat")
        if path == "/v1/completions":
            self._only(method, "POST", path)
            return await self._generate(h, "text")
        if path in ("/v1/embeddings", "/v1/rerank"):
            self._only(method, "POST", path)
            endpoint = vectors.embeddings if path == "/v1/embeddings" else vectors.rerank
            return await endpoint(self, h)
        raise ApiError(404, f"Invalid URL ({method} {path})", code="unknown_url")

    @staticmethod
    def _only(method: str, allowed: str, path: str) -> None:
        if method != allowed:
            raise ApiError(
                405, f"Method {method} is not allowed on {path}; use {allowed}.", code="method_not_allowed"
            )

    def _authorize(self, h: Handler) -> None:
        """Bearer-token auth when keys are configured; every key is compared, in constant time."""
        why = self._keys.check(h.headers.get("Authorization"))
        if why is None:
            return
        h.close_connection = True  # the body (if any) is not read
        if why == Keys.MISSING:
            raise ApiError(
                401, "Missing API key: send 'Authorization: Bearer <key>'.", code="missing_api_key"
            )
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    # --- GET /health -------------------------------------------------------------------------

    async def _health(self, h: Handler) -> None:
        """200 when rkllmd is connected to its broker and a model is loaded or loadable, else 503."""
        stats = self.ctx.stats()
        settings = self.ctx.settings
        # A host that does not report its connection (the testing kit) counts as connected.
        connected = stats.get("connected") is not False
        loaded = stats.get("loaded_model")
        problems = [] if loaded else load_problems(settings.default, settings.models[settings.default])
        healthy = connected and not problems
        body = {
            "status": "ok" if healthy else "unavailable",
            "mqtt_connected": connected,
            "loaded_model": loaded,
            "default_model": settings.default,
            "model_loadable": not problems,
            "problems": problems,
            "queue_depth": stats.get("queue_depth"),
            "busy": stats.get("busy"),
        }
        await h.send_json(200 if healthy else 503, body, {"Cache-Control": "no-store"})

    # --- POST /v1/chat/completions, /v1/completions ------------------------------------------

    async def _generate(self, h: Handler, kind: Kind) -> None:
        ask = parse(kind, decode_body(await h.read_body(self._max_body)))
        model = self._model(ask.model)
        hexid = secrets.token_hex(12)
        rid, nonce = f"http-{hexid}", secrets.token_hex(8)
        payload = {**ask.fields, "id": rid, "model": model, "stream": False, "transaction": nonce}
        shape = Shape(kind, ("chatcmpl-" if kind == "chat" else "cmpl-") + hexid, int(time.time()), model)
        with self.relay.track(nonce) as slot:
            inject(self.ctx, "generate", payload, nonce)
            deadline_s = answer_deadline_s(self.ctx.settings)
            waiter = Waiter(slot, lambda: self.ctx.cancel(rid), h.on_gone, deadline_s=deadline_s)
            try:
                if ask.stream:
                    await self._stream(h, waiter, ask, shape, rid)
                else:
                    await self._complete(h, waiter, ask, shape, rid)
            except ClientGone:
                self.log.info("http client disconnected; generation cancelled", request_id=rid)
                raise

    def _model(self, asked: str | None) -> str:
        """The configured model a request names (or an alias of one; ``*`` matches any name)."""
        models = self.ctx.settings.models
        if asked is None or asked == "":
            return self.ctx.settings.default
        if asked in models:
            return asked
        target = self._aliases.get(asked) or self._aliases.get("*")
        if target is None:
            raise _no_model(asked)
        return target

    async def _complete(self, h: Handler, waiter: Waiter, ask: Ask, shape: Shape, rid: str) -> None:
        item = await waiter.final()
        if item.status == "error":
            raise self._error(item, ask)
        text = ask.echo + str(item.data.get("text") or "")
        await h.send_json(200, shape.complete(text, item.data), {"X-Request-Id": rid})

    async def _stream(self, h: Handler, waiter: Waiter, ask: Ask, shape: Shape, rid: str) -> None:
        """Server-sent events. The status line waits for the first token, so that a request
        refused in the queue (busy, unknown model, context too long) still gets its status code."""
        item = await waiter.next()
        if isinstance(item, Final) and item.status == "error":
            raise self._error(item, ask)
        await h.start_events({"X-Request-Id": rid})
        u = ask.include_usage
        event = _token_event(shape, u)
        try:
            if shape.kind == "chat":
                await h.send_event(shape.chunk(first=True, usage_null=u))
            elif ask.echo:
                await h.send_event(shape.chunk(delta=ask.echo, usage_null=u))
            writer, direct = h.stream_writer(event), False
            while not isinstance(item, Final):
                body = event(item)
                if body:  # empty: thought, which a completion has no place for
                    await h.send_chunk(body)
                # The tokens still to come are written where they arrive (_streamwrite).
                if writer is not None and not direct:
                    direct = waiter.direct(writer.write)
                item = await waiter.next()
            if item.status == "error":  # failed part-way: OpenAI's clients raise on an error event
                await h.send_event(self._error(item, ask).body())
                return await h.end_events()
            if shape.kind == "chat":
                for chunk in shape.tool_call_chunks(item.data, usage_null=u):
                    await h.send_event(chunk)
            await h.send_event(shape.chunk(finish=finish_reason(item.data), usage_null=u))
            if u:
                await h.send_event(shape.usage_chunk(item.data))
            await h.send_event("[DONE]")
            await h.end_events()
        except OSError:  # a write failed: the client is gone
            if not isinstance(item, Final):
                await waiter.abandon()
            raise ClientGone from None

    def _error(self, outcome: Final, ask: Ask) -> ApiError:
        return api_error(outcome, retry_after_s=self._retry_after, param=ask.param, places=ask.places)


def _no_model(name: str) -> ApiError:
    return ApiError(
        404, f"The model '{name}' does not exist; see GET /v1/models.", param="model", code="model_not_found"
    )


def _token_event(shape: Shape, usage_null: bool) -> Callable[[Piece], bytes]:
    """A text delta's whole server-sent event, as ``send_event(shape.chunk(delta=...))`` writes it,
    from pieces made once: this runs per token, on the thread that routes the tokens. A piece of
    thought is a chat's ``reasoning_content`` delta; a completion has none (b"": nothing sent)."""
    head, tail = template(shape.chunk(delta=hole("delta"), usage_null=usage_null), "delta")
    head, tail = b"data: " + head, tail + b"\n\n"
    t_head = t_tail = b""
    if shape.kind == "chat":
        t_head, t_tail = template(shape.chunk(thinking=hole("thinking"), usage_null=usage_null), "thinking")
        t_head, t_tail = b"data: " + t_head, t_tail + b"\n\n"

    def event(item: Piece) -> bytes:
        if isinstance(item, Thought):
            return t_head + string(item.text) + t_tail if t_head else b""
        return head + string(item) + tail

    return event
