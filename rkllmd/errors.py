"""One small error hierarchy; every error carries the stable code used in replies.

The codes are part of the MQTT protocol (docs/PROTOCOL.md): automations match on them,
so never rename one.
"""

from __future__ import annotations

from typing import Any


class RkllmdError(Exception):
    """Base of every error rkllmd raises on purpose."""

    code = "internal_error"

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


# --- bad requests (the client's fault; reply and carry on) -------------------------------


class RequestError(RkllmdError):
    """A request that cannot be served as sent."""

    code = "bad_request"


class BadJson(RequestError):
    code = "bad_json"


class WrongType(RequestError):
    code = "wrong_type"


class EmptyPrompt(RequestError):
    code = "empty_prompt"


class PayloadTooLarge(RequestError):
    code = "payload_too_large"


class UnknownModel(RequestError):
    code = "unknown_model"


class ContextExceeded(RequestError):
    code = "context_exceeded"


class UnknownCommand(RequestError):
    code = "unknown_command"


class NotFound(RequestError):
    code = "not_found"


class BadImage(RequestError):
    """An image rkllmd cannot use: not JPEG, PNG or WebP, unreadable, or cut short."""

    code = "bad_image"


class ImageTooLarge(BadImage):
    """An image over the byte or pixel bound (decompression bombs included)."""

    code = "image_too_large"


class TooManyImages(RequestError):
    """More images in the current turn than the model's ``max_images``."""

    code = "too_many_images"


class ImagesUnsupported(RequestError):
    """Images sent to a model that cannot see them (no vision encoder configured)."""

    code = "images_unsupported"


class WrongModelKind(RequestError):
    """The model serves another kind of request (chat, embedding, rerank: its ``kind``)."""

    code = "wrong_model_kind"


class EmptyInput(RequestError):
    """An embed or rerank request with nothing to embed or score, or an empty text in it."""

    code = "empty_input"


class TooManyInputs(RequestError):
    """More inputs, or more tokens, in one embed or rerank job than the limits allow."""

    code = "too_many_inputs"


# --- the daemon cannot take it now -------------------------------------------------------


class Busy(RkllmdError):
    code = "busy"


class ShuttingDown(RkllmdError):
    code = "shutdown"


class Interrupted(RkllmdError):
    """rkllmd was killed (or crashed) while the request waited or ran; the restarted daemon says so."""

    code = "interrupted"


# --- generation ended early --------------------------------------------------------------


class GenerationTimeout(RkllmdError):
    code = "timeout"


class InvalidOutput(RkllmdError):
    """The output does not match the asked ``format`` or ``tool_choice`` (a runtime without grammars)."""

    code = "invalid_output"


# --- runtime (native library or llama.cpp) ------------------------------------------------


class RuntimeFailure(RkllmdError):
    """The inference runtime failed; the daemon goes on."""

    code = "runtime_error"


class RuntimeNotInstalled(RuntimeFailure):
    """A model names a runtime whose Python extra or native library is missing."""

    code = "runtime_not_installed"


class RuntimeCrashed(RuntimeFailure):
    """The runtime's worker process died (segfault, abort) or was killed as wedged."""

    code = "runtime_crashed"


class ModelLoadError(RuntimeFailure):
    code = "model_load_failed"


class LibraryVersionError(RuntimeFailure):
    """The native runtime library could not be placed, or lacks a function this call needs."""

    code = "runtime_version"


class RuntimeCallError(RuntimeFailure):
    """A C function of the runtime returned an error code."""

    def __init__(self, function: str, rc: int, detail: str = "") -> None:
        msg = f"{function} returned {rc}"
        if detail:
            msg += f": {detail}"
        super().__init__(msg, function=function, rc=rc)
        self.function = function
        self.rc = rc


class ConfigError(RkllmdError):
    """The configuration is invalid; fatal at startup."""

    code = "config_error"
