"""OpenAI's error envelope ``{"error": {message, type, param, code}}``, the errors the HTTP
plumbing answers by itself, worded as OpenAI's, and an rkllmd error reply as OpenAI's error
(``api_error``). Pure data (no threads, no sockets).
"""

from __future__ import annotations

import re
from typing import Any

from rkllmd import protocol
from rkllmd.plugins import Final
from rkllmd.plugins.builtin._httpconfig import ErrorBody, Errors, HttpError

from . import parts


class ApiError(HttpError):
    """An error answered as OpenAI does: a status code and ``{"error": {...}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, headers)
        self.type, self.param, self.code = type, param, code

    def body(self, shape: ErrorBody | None = None) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def error_body(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error shape for an error without a code (the HTTP parser's own: a bad request line)."""
    return ApiError(status, message, code=None).body()


class OpenAIErrors(Errors):
    """The errors the HTTP plumbing answers by itself, worded and coded as OpenAI's."""

    def busy(self) -> HttpError:
        return ApiError(503, "Too many connections; try again later.", type="server_error", code="busy")

    def chunked(self) -> HttpError:
        return self._length_required()

    def no_length(self) -> HttpError | None:
        return self._length_required()

    def bad_length(self) -> HttpError:
        return ApiError(400, "Invalid Content-Length header.", code="bad_request")

    def too_large(self, length: int, limit: int) -> HttpError:
        return ApiError(
            413, f"The request body is {length} bytes; the limit is {limit}.", code="payload_too_large"
        )

    def internal(self, exc: Exception) -> HttpError:
        return ApiError(500, f"internal error: {exc}", type="server_error", code="internal_error")

    @staticmethod
    def _length_required() -> HttpError:
        return ApiError(411, "A Content-Length header is required.", code="length_required")


# rkllmd error code -> (HTTP status, OpenAI error type, OpenAI error code)
_ERRORS: dict[str, tuple[int, str, str]] = {
    "bad_json": (400, "invalid_request_error", "bad_json"),
    "wrong_type": (400, "invalid_request_error", "invalid_type"),
    "bad_request": (400, "invalid_request_error", "invalid_value"),
    "empty_prompt": (400, "invalid_request_error", "empty_prompt"),
    "payload_too_large": (413, "invalid_request_error", "payload_too_large"),
    "unknown_model": (404, "invalid_request_error", "model_not_found"),
    "context_exceeded": (400, "invalid_request_error", "context_length_exceeded"),
    "bad_image": (400, "invalid_request_error", "invalid_image"),
    "images_unsupported": (400, "invalid_request_error", "images_unsupported"),
    "image_too_large": (413, "invalid_request_error", "image_too_large"),
    "empty_input": (400, "invalid_request_error", "empty_input"),
    "too_many_inputs": (400, "invalid_request_error", "too_many_inputs"),
    "too_many_images": (400, "invalid_request_error", "too_many_images"),
    "wrong_model_kind": (400, "invalid_request_error", "wrong_model_kind"),
    "busy": (503, "server_error", "busy"),
    "shutdown": (503, "server_error", "shutdown"),
    "model_load_failed": (503, "server_error", "model_load_failed"),
    "runtime_not_installed": (503, "server_error", "runtime_not_installed"),
    "runtime_version": (503, "server_error", "runtime_version"),
}


# the endpoint here for each rkllmd command, which a wrong_model_kind refusal names ("use embed")
_ENDPOINTS = {"generate": "/v1/chat/completions", "embed": "/v1/embeddings", "rerank": "/v1/rerank"}
# request fields named alike in rkllmd's requests and OpenAI's (and the Jina/Cohere rerank's): a
# refusal whose message begins with one names it ("input[1] is empty", "dimensions 8 is refused",
# "documents is required"), and that is OpenAI's ``param``
_FIELDS = "input|documents|query|dimensions|top_n|instruction|return_documents"
_FIELD = re.compile(rf"(?:{_FIELDS})(?:\[\d+\])?(?!\w)")


def api_error(
    outcome: Final, *, retry_after_s: int, param: str, places: dict[str, str] | None = None
) -> ApiError:
    """The HTTP answer to an rkllmd error reply; anything unlisted is a 500 ``server_error``; an
    image named as the client sent it (``places``: parts.as_sent). ``param`` is the field the
    endpoint's prompt or texts are in, the ``param`` of a refusal about all of them."""
    code = outcome.code or "internal_error"
    status, type_, oa_code = _ERRORS.get(code, (500, "server_error", code))
    headers = {"Retry-After": str(retry_after_s)} if status == 503 and code in ("busy", "shutdown") else {}
    message, part = parts.as_sent(outcome.error or code, places or {})
    if code == "wrong_model_kind":
        message = protocol.use_named(message, _ENDPOINTS)
    where = _param(code, message, param, part) if type_ == "invalid_request_error" else None
    return ApiError(status, message, type=type_, param=where, code=oa_code, headers=headers)


def _param(code: str, message: str, texts: str, part: str | None) -> str | None:
    """OpenAI's ``param`` of a refusal: the request field at fault, as the client named it. The
    reply's code and message are all there is to go by (in a fleet it comes over MQTT from
    another board), and rkllmd's messages name the field first (docs/EMBEDDINGS.md, "Bad input")."""
    if part is not None:  # an image content part: too many of them is the part, a bad one its URL
        return part if code == "too_many_images" else f"{part}.image_url.url"
    if code in ("unknown_model", "wrong_model_kind"):
        return "model"
    field = _FIELD.match(message)
    if field is not None:
        return field.group()
    about_all = ("context_exceeded", "too_many_inputs", "empty_input", "empty_prompt", "too_many_images")
    return texts if code in about_all else None
