"""The Ollama endpoints. Every method here runs on the plugin's server thread (``ollama-server``),
the coroutines on its event loop.

A chat or generate request is checked, turned into an rkllmd generate request and injected as a
:class:`rkllmd.plugins.LocalMessage` on ``<base>/request/generate``: rkllmd's ingress thread takes
it exactly like an MQTT request (plugin preprocessors, validation, the one bounded queue, in
arrival order), and nothing about it is published over MQTT. The router (the shared
_relay.Relay) hands its final reply (dispatcher thread) and its first tokens to the waiting
handler; once a stream has begun, it writes the tokens to the client itself (inference thread).
Loading and unloading (an empty prompt, ``keep_alive: 0``) are rkllmd's own load and unload
commands, injected the same way, so they too wait their turn in the queue.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from rkllmd.plugins import Final, LocalMessage, ModelFacts
from rkllmd.plugins.builtin._httpbase import ApiBase, answer
from rkllmd.plugins.builtin._httpconfig import HttpError
from rkllmd.plugins.builtin._relay import ClientGone, Item, Piece, Thought, Waiter, answer_deadline_s
from rkllmd.plugins.builtin._streamwrite import hole, string, template

from .. import _spoken as spoken
from . import models, vectors, wire
from .config import Config
from .wire import Kind, Shape

if TYPE_CHECKING:
    from rkllmd.plugins.builtin._httpserver import Handler

VERSION = "0.12.6"  # the Ollama API version answered: clients gate features on it (HOMEASSISTANT.md)
_UNSUPPORTED = ("/api/create", "/api/copy", "/api/push", "/api/blobs")
_NDJSON = "application/x-ndjson"


class Api(ApiBase):
    """Ollama's endpoints over one rkllmd daemon."""

    async def handle(self, h: Handler, method: str) -> None:
        """Route one request; every failure becomes ``{"error": ...}`` with its status, and a log line."""
        path = unquote(urlsplit(h.path).path).rstrip("/") or "/"

        async def in_stream(err: HttpError) -> None:  # the error becomes the stream's last line
            await h.send_chunk(_line(wire.error_body(err.status, err.message)))
            await h.end_chunked()

        await answer(
            h,
            lambda: self._route(h, method, path),
            name="ollama",
            log=self.log,
            path=path,
            in_stream=in_stream,
            log_refused=True,
        )

    async def _route(self, h: Handler, method: str, path: str) -> None:
        if path == "/":  # Ollama's liveness probe, open like Ollama's
            self._only(method, ("GET", "HEAD"))
            return await h.send_bytes(200, "text/plain; charset=utf-8", b"Ollama is running")
        if not path.startswith("/api/"):
            raise HttpError(404, "404 page not found")
        why = self._keys.check(h.headers.get("Authorization"))
        if why is not None:
            h.close_connection = True  # the body (if any) is not read
            raise HttpError(401, f"unauthorized: {why}")
        if path == "/api/version":
            self._only(method, ("GET",))
            return await h.send_json(200, {"version": VERSION})
        if path == "/api/tags":
            self._only(method, ("GET",))
            return await h.send_json(200, models.tags(self.ctx.models()))
        if path == "/api/ps":
            self._only(method, ("GET",))
            return await h.send_json(200, models.ps(self.ctx.models()))
        if path == "/api/show":
            self._only(method, ("POST",))
            name = self._model(await self._name(h))
            facts = next(m for m in self.ctx.models() if m.name == name)
            kind = self.ctx.settings.models[name].kind
            return await h.send_json(200, models.show(facts, _capabilities(facts, kind)))
        if path == "/api/chat":
            self._only(method, ("POST",))
            return await self._chat(h)
        if path == "/api/generate":
            self._only(method, ("POST",))
            return await self._generate(h, "generate", await self._body(h))
        if path in ("/api/embed", "/api/embeddings"):
            self._only(method, ("POST",))
            endpoint = vectors.embed if path == "/api/embed" else vectors.embeddings
            return await endpoint(self, h, await self._body(h))
        if path == "/api/pull":
            self._only(method, ("POST",))
            return await self._pull(h)
        if path == "/api/delete":
            self._only(method, ("DELETE",))
            asked = await self._name(h)
            self._model(asked, verb="delete")
            raise HttpError(
                400,
                f"delete is not supported: rkllmd does not delete model files ('{asked}' stays configured)",
            )
        if path.startswith(_UNSUPPORTED):
            raise HttpError(501, f"{path} is not supported by rkllmd")
        raise HttpError(404, "404 page not found")

    @staticmethod
    def _only(method: str, allowed: tuple[str, ...]) -> None:
        if method not in allowed:
            raise HttpError(405, f"method {method} not allowed; use {' or '.join(allowed)}")

    async def _body(self, h: Handler) -> dict[str, Any]:
        return wire.decode_body(await h.read_body(self._max_body))

    async def _name(self, h: Handler) -> str:
        """The model a show or delete body names (see :func:`_named`)."""
        return _named(await self._body(h))

    def _model(self, asked: str | None, verb: str = "") -> str:
        """The configured model a request names: the name itself, without ``:latest``, or an alias
        (``*`` matches any name); none: the default model."""
        configured = self.ctx.settings.models
        if not asked:
            return self.ctx.settings.default
        for name in (asked, wire.untag(asked)):
            if name in configured:
                return name
        target = self._aliases.get(asked) or self._aliases.get(wire.untag(asked)) or self._aliases.get("*")
        if target is not None:
            return target
        known = ", ".join(wire.tag(n) for n in configured)
        prefix = f"{verb} is not supported: " if verb else ""
        raise HttpError(404, f"{prefix}model '{asked}' not found: it is not configured in rkllmd ({known})")

    # --- POST /api/pull ----------------------------------------------------------------------

    async def _pull(self, h: Handler) -> None:
        """Success for a configured model (it is already here); nothing is ever downloaded."""
        body = await self._body(h)
        asked = _named(body)
        try:
            self._model(asked)
        except HttpError:
            raise HttpError(
                404, f"pull is not supported: model '{asked}' is not configured in rkllmd"
            ) from None
        if body.get("stream") is False:
            return await h.send_json(200, {"status": "success"})
        await h.start_chunked(_NDJSON, {})
        await h.send_chunk(_line({"status": "success"}))
        await h.end_chunked()

    # --- POST /api/chat, /api/generate -------------------------------------------------------

    async def _chat(self, h: Handler) -> None:
        """A chat; a failure is told in a sentence to a client that speaks it (see :meth:`_speaks`)."""
        if not self._speaks(h):
            return await self._generate(h, "chat", await self._body(h))
        body: dict[str, Any] = {}
        try:
            body = await self._body(h)
            await self._generate(h, "chat", body)
        except HttpError as err:
            await self._say(h, err, body)

    def _speaks(self, h: Handler) -> bool:
        """Whether this chat's failures are told in a sentence: ``errors = "auto"`` means the
        ``ollama`` Python client, which Home Assistant's integration is (HA creates it with the
        library's own User-Agent, ``ollama-python/<version> (...)``, in every version: 2025.4.4
        ``ollama/__init__.py``, 2026.2.3 likewise) and which raises an error HA never catches."""
        style = self.config.errors if isinstance(self.config, Config) else "ollama"
        if style == "auto":
            return (h.headers.get("User-Agent") or "").startswith("ollama-python/")
        return style == "spoken"

    async def _say(self, h: Handler, err: HttpError, body: dict[str, Any]) -> None:
        """Answer a failed chat with a sentence as the assistant's message, and ``done_reason``
        "error"; the technical reason goes to the log. Part-way through a stream, the sentence
        follows the words already sent."""
        code = err.code if isinstance(err, wire.Failed) else spoken.code_for_status(err.status)
        said = spoken.sentence(code)
        self.log.info(
            "ollama request failed; answered with a sentence",
            status=err.status,
            code=code,
            error=err.message,
            said=said,
        )
        asked = body.get("model")
        named = asked if isinstance(asked, str) and asked else wire.tag(self.ctx.settings.default)
        shape = Shape("chat", named)
        if h.streaming:
            await h.send_chunk(_line(shape.failed(" " + said)))
            return await h.end_chunked()
        headers = {"X-Rkllmd-Error": code, **err.headers}  # Retry-After too, for a client that looks
        if body.get("stream") is False:
            return await h.send_json(200, shape.failed(said), headers)
        await h.start_chunked(_NDJSON, headers)
        await h.send_chunk(_line(shape.failed(said)))
        await h.end_chunked()

    async def _generate(self, h: Handler, kind: Kind, body: dict[str, Any]) -> None:
        ask = wire.parse(kind, body)
        name = self._model(ask.model)
        shown = ask.model or wire.tag(name)
        limit = self.ctx.context_length(name)
        if ask.num_ctx is not None and ask.num_ctx > limit:
            if isinstance(self.config, Config) and self.config.num_ctx == "refuse":
                raise HttpError(
                    400, f"num_ctx {ask.num_ctx} is above the context length of model '{shown}' ({limit})"
                )
            # num_ctx = "clamp" (the default: Home Assistant sends 8192): served with the model's own
            # context; a prompt that does not fit is still refused (context_exceeded), never cut.
            self.log.info(
                "num_ctx above the model's context; serving with the model's context",
                num_ctx=ask.num_ctx,
                context_length=limit,
                model=name,
            )
        if ask.ignored:
            self.log.debug("ollama fields accepted and ignored", options=ask.ignored)
        shape = Shape(kind, shown)
        if ask.empty:  # Ollama's load / unload request
            unload = ask.keep_alive_s == 0
            await self._control("unload" if unload else "load", name)
            return await h.send_json(200, shape.control("unload" if unload else "load"))
        rid, nonce = f"ollama-{secrets.token_hex(12)}", secrets.token_hex(8)
        payload = {**ask.fields, "id": rid, "model": name, "stream": False, "transaction": nonce}
        with self.relay.track(nonce) as slot:
            self._inject("generate", payload, key=nonce)
            deadline_s = answer_deadline_s(self.ctx.settings)
            waiter = Waiter(slot, lambda: self.ctx.cancel(rid), h.on_gone, deadline_s=deadline_s)
            try:
                if ask.stream:
                    await self._stream(h, waiter, shape, rid)
                else:
                    await self._complete(h, waiter, shape, rid)
            except ClientGone:
                self.log.info("ollama client disconnected; generation cancelled", request_id=rid)
                raise
        if ask.keep_alive_s == 0:  # after the answer, in queue order, like Ollama's keep_alive 0
            self._inject("unload", {"model": name})

    async def _complete(self, h: Handler, waiter: Waiter, shape: Shape, rid: str) -> None:
        item = await waiter.final()
        if item.status == "error":
            raise wire.outcome_error(item, self._retry_after)
        thought = str(item.data.get("thinking") or "")
        text = item.text or self._no_answer(h, shape, item.data)
        body = shape.done(text, item.data, wire.tool_calls(item.data) or None, thought)
        await h.send_json(200, body, {"X-Request-Id": rid})

    async def _stream(self, h: Handler, waiter: Waiter, shape: Shape, rid: str) -> None:
        """NDJSON. The status line waits for the first token, so that a request refused in the
        queue (busy, context too long, a bad schema) still gets its status code."""
        item: Item = await waiter.next()
        if isinstance(item, Final) and item.status == "error":
            raise wire.outcome_error(item, self._retry_after)
        await h.start_chunked(_NDJSON, {"X-Request-Id": rid})
        line = _part_line(shape)
        writer, direct = h.stream_writer(line), False
        try:
            while not isinstance(item, Final):
                await h.send_chunk(line(item))
                # The tokens still to come are written where they arrive (_streamwrite).
                if writer is not None and not direct:
                    direct = waiter.direct(writer.write)
                item = await waiter.next()
            if item.status == "error":  # failed part-way: the client raises on an error line
                raise wire.outcome_error(item, self._retry_after)
            calls = wire.tool_calls(item.data)
            if calls:
                await h.send_chunk(_line(shape.part("", calls)))
            said = "" if item.text else self._no_answer(h, shape, item.data)
            if said:
                await h.send_chunk(_line(shape.part(said)))
            await h.send_chunk(_line(shape.done("", item.data)))
            await h.end_chunked()
        except OSError:  # a write failed: the client is gone
            if not isinstance(item, Final):
                await waiter.abandon()
            raise ClientGone from None

    def _no_answer(self, h: Handler, shape: Shape, data: dict[str, Any]) -> str:
        """What a chat client that speaks its answers (:meth:`_speaks`) hears when the model's
        thought reached its cap and left no answer: a sentence, not silence (the done line still
        says ``thinking_limit``); "" otherwise."""
        if data.get("finish_reason") != "thinking_limit" or shape.kind != "chat" or not self._speaks(h):
            return ""
        return spoken.sentence("thinking_limit")

    async def _control(self, command: str, model: str) -> None:
        """Load or unload ``model`` through the queue and wait for rkllmd's answer."""
        rid, nonce = f"ollama-{secrets.token_hex(12)}", secrets.token_hex(8)
        with self.relay.track(nonce) as slot:
            self._inject(command, {"id": rid, "model": model, "transaction": nonce}, key=nonce)
            deadline_s = answer_deadline_s(self.ctx.settings)
            outcome = await Waiter(slot, lambda: self.ctx.cancel(rid), deadline_s=deadline_s).final()
        if outcome.status == "error":
            raise wire.outcome_error(outcome, self._retry_after)

    def _inject(self, command: str, payload: dict[str, Any], key: str | None = None) -> None:
        """Hand ``payload`` to rkllmd on ``command``'s topic; ``key``: its relay slot's nonce."""
        limit = self.ctx.settings.limits.max_payload_bytes
        # Never write a number rkllmd would not parse: that is a bug (a 500), never a hang.
        try:
            data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        except UnicodeEncodeError:  # "\ud800" in the body: a lone surrogate nothing could echo back
            raise HttpError(400, "the request contains an unpaired surrogate escape") from None
        if len(data) > limit:
            # Images are what makes most requests this large: then the spoken answer says so.
            pictures = payload.get("images") or any(m.get("images") for m in payload.get("messages") or ())
            raise wire.Failed(
                413,
                f"the request is {len(data)} bytes as rkllmd reads it; the limit is {limit} "
                "(limits.max_payload_bytes)",
                {},
                "image_too_large" if pictures else "payload_too_large",
            )
        topic = self.ctx.topics.request(command)
        self.ctx.inject(LocalMessage(topic, data, received_at=time.monotonic(), key=key))


def _named(body: dict[str, Any]) -> str:
    """The model a show, pull or delete body names (``model``, or the older ``name``)."""
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name:
        raise HttpError(400, "model is required")
    return name


def _capabilities(facts: ModelFacts, kind: str) -> list[str]:
    """What ``/api/show`` reports: every chat model takes tools (docs/PROTOCOL.md), images
    when it has an image encoder (``vision_encoder``, ``mmproj``), and ``think`` when it can think
    (docs/THINKING.md), as Ollama 0.9 and later list it; an embedding model embeds (/api/embed);
    a reranker does neither in Ollama's terms."""
    if kind != "chat":
        return ["embedding"] if kind == "embedding" else []
    seen = ["vision"] if facts.vision else []
    return ["completion", "tools", *seen, *(["thinking"] if facts.thinking else [])]


def _part_line(shape: Shape) -> Callable[[Piece], bytes]:
    """A text piece's whole NDJSON line, as ``_line(shape.part(text))`` writes it (a piece of
    thought's as ``_line(shape.part("", thinking=...))``), from pieces made once: this runs per
    token, on the thread that routes the tokens."""
    part, thought = shape.part(hole("text")), shape.part("", thinking=hole("text"))
    part["created_at"] = thought["created_at"] = hole("at")
    a, b, c = template(part, "at", "text")
    ta, tb, tc = template(thought, "at", "text")
    c, tc = c + b"\n", tc + b"\n"

    def line(item: Piece) -> bytes:
        if isinstance(item, Thought):
            return b"".join((ta, string(wire.now_iso()), tb, string(item.text), tc))
        return b"".join((a, string(wire.now_iso()), b, string(item), c))

    return line


def _line(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
