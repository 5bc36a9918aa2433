"""OpenAI's error envelope ``{"error": {message, type, param, code}}``, and the errors the HTTP
plumbing answers by itself, worded as OpenAI's. Pure data (no threads, no sockets).
"""

from __future__ import annotations

from typing import Any

from rkllmd.plugins.builtin._httpconfig import ErrorBody, Errors, HttpError


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
