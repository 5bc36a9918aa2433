"""An rkllmd error as one short sentence a person can hear, for the HTTP interface plugins.

Home Assistant's Ollama integration does not catch an error raised while it reads the answer
stream, which is where the ``ollama`` client raises every error of a streamed chat (its
``AsyncClient.chat(stream=True)`` returns a generator that sends the request only when first
read; ollama 0.4.7, 0.5.1 and 0.6.2, ``_client.py`` ``AsyncClient._request``; HA 2025.4.4
``ollama/conversation.py``, 2026.2.3 and 2026.11 ``ollama/entity.py``
``OllamaBaseLLMEntity._async_handle_chat_log``). The turn then ends as "Unexpected error during
intent recognition" in the Assist pipeline, or a bare 500 from ``/api/conversation/process``,
whatever the server said. What Home Assistant does speak is the assistant's text: so a plugin that
wants a person to hear why answers with one of these sentences as the assistant's message, and
logs the technical reason (docs/HOMEASSISTANT.md, "When something goes wrong").

The sentences are short, name no internals and say what to do. They are keyed by rkllmd's stable
error codes (rkllmd/errors.py); errors a plugin raises by itself carry only an HTTP status, which
:func:`code_for_status` turns into the nearest code.
"""

from __future__ import annotations

_SENTENCES: dict[str, str] = {
    "busy": "I'm busy with other requests right now. Please try again in a moment.",
    "shutdown": "The language model server is restarting. Please try again in a minute.",
    "interrupted": "The language model server restarted before I could answer. Please ask again.",
    "model_load_failed": "The language model could not be loaded. Please check the rkllmd log.",
    "runtime_not_installed": "The language model's runtime is not installed. Please check the rkllmd log.",
    "runtime_version": "The language model's runtime does not fit this rkllmd. Please check the rkllmd log.",
    "runtime_crashed": "The language model crashed and is being restarted. Please try again.",
    "runtime_error": "The language model failed to answer. Please try again.",
    "timeout": "The language model took too long to answer. Please try again.",
    "context_exceeded": "That is too long for the model's context. "
    "Expose fewer entities or keep less history.",
    # an AI Task's camera snapshot over the default 256 KiB is the likeliest cause, then a long prompt
    "payload_too_large": "That request is too large for rkllmd. Send a smaller picture, "
    "or expose fewer entities or keep less history.",
    "unknown_model": "The model chosen for this assistant is not configured in rkllmd.",
    "wrong_model_kind": "The model chosen for this assistant is not a chat model. Choose one that is.",
    "invalid_output": "The model's answer did not have the required form. Please try again.",
    "plugin_error": "An rkllmd plugin could not handle the request. Its log says why.",
    "bad_image": "I could not read that image. Please send a JPEG, PNG or WebP picture.",
    "image_too_large": "That image is too large for me. Please send a smaller picture.",
    "images_unsupported": "This model cannot see images. Choose a vision model in rkllmd for pictures.",
    "too_many_images": "That is more pictures than I can look at at once. Please send fewer.",
    # not an error: the model's thought reached max_thinking_tokens before any answer
    "thinking_limit": "I thought about that for too long to answer. Please ask again, or turn thinking off.",
}
_INVALID = "rkllmd refused the request as invalid. Its log says why."  # the client's (or rkllmd's) bug
_OTHER = "Something went wrong in the language model server. Its log says what."
_INVALID_CODES = (
    "bad_request",
    "bad_json",
    "wrong_type",
    "empty_prompt",
    "not_found",
    "unknown_command",
    "empty_input",
    "too_many_inputs",
)


def sentence(code: str | None) -> str:
    """What a person is told for an error with rkllmd's ``code`` (None or unknown: a general one)."""
    if code in _INVALID_CODES:
        return _INVALID
    return _SENTENCES.get(code or "", _OTHER)


def code_for_status(status: int) -> str:
    """The rkllmd code nearest to an HTTP status a plugin answered by itself (no rkllmd code)."""
    if status == 404:
        return "unknown_model"  # the one 404 a chat request meets: a model rkllmd does not have
    if status == 413:
        return "payload_too_large"
    if status == 503:
        return "busy"  # every connection taken
    if 400 <= status < 500:
        return "bad_request"
    return "internal_error"
