"""What the ``http`` and ``ollama`` plugins and their transport (``_httpserver``) share below
the server: the error an endpoint raises (:class:`HttpError`) and the wording of the transport's
own errors (:class:`Errors`), bearer keys compared in constant time, and the config table.

The error *shape* differs between the APIs served (OpenAI's ``{"error": {...}}``, Ollama's
``{"error": "..."}``), so the server takes a function that makes an error body from a status and
a message (:data:`ErrorBody`), and an :class:`Errors` that words the errors answered there (an
API's own error class, a subclass of :class:`HttpError`, may make its own body).

Pure data and checks: no thread, no aiohttp; both ``_httpbase`` and ``_httpserver`` import it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from rkllmd.plugins import PluginConfig, PluginContext, read_secret

ErrorBody = Callable[[int, str], Any]  # (status, message) -> the JSON body of an error


class HttpError(Exception):
    """An error answered with a status code; the body comes from the server's ErrorBody."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}

    def body(self, shape: ErrorBody) -> Any:
        """The JSON body answered: the server's shape; a subclass may carry more (OpenAI's codes)."""
        return shape(self.status, self.message)


class Errors:
    """The wording of the errors this module answers by itself; an API may override any of them
    (these are the ``ollama`` plugin's)."""

    def busy(self) -> HttpError:
        """Every connection is taken: a 503 before the request is read."""
        return HttpError(503, "too many connections; try again later")

    def chunked(self) -> HttpError:
        return HttpError(411, "chunked request bodies are not accepted; send Content-Length")

    def no_length(self) -> HttpError | None:
        """A request without Content-Length; None: its body is empty."""
        return None

    def bad_length(self) -> HttpError:
        return HttpError(400, "invalid Content-Length header")

    def too_large(self, length: int, limit: int) -> HttpError:
        return HttpError(413, f"the request body is {length} bytes; the limit is {limit}")

    def body_timeout(self, seconds: float) -> HttpError:
        """The body did not arrive within the body deadline (the connection is closed)."""
        return HttpError(408, f"the request body did not arrive within {seconds:g} s")

    def internal(self, exc: Exception) -> HttpError:
        """A bug in an endpoint."""
        return HttpError(500, f"internal error: {exc}")


class Keys:
    """Bearer keys, kept as SHA-256 digests so every comparison takes the same time."""

    MISSING = "missing API key: send 'Authorization: Bearer <key>'"
    INVALID = "invalid API key"

    def __init__(self, keys: list[str]) -> None:
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: str | None) -> str | None:
        """None when the header carries a configured key (or no keys are configured); else why not."""
        if not self._digests:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return self.MISSING
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        ok = False
        for key in self._digests:  # no early exit: the time taken does not depend on which matched
            ok |= hmac.compare_digest(digest, key)
        return None if ok else self.INVALID


def load_keys(inline: list[str], key_file: Path | None) -> list[str]:
    """The configured keys; a key file that cannot be read or holds no key is an error, so that
    a mistake never leaves the API open."""
    keys = list(inline)
    if key_file is not None:
        lines = read_secret(key_file, "api_key_file").splitlines()  # refused if every user may read it
        found = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        if not found:
            raise ValueError(f"api_key_file {key_file} holds no key")
        keys.extend(found)
    return keys


def valid_keys(keys: list[str]) -> list[str]:
    """A pydantic check for inline keys: non-empty, no spaces."""
    if any(not k or k != k.strip() or " " in k for k in keys):
        raise ValueError("API keys must be non-empty and contain no spaces")
    return keys


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# --- the plugins' shared config and setup ---------------------------------------------------------


class HttpConfig(PluginConfig):
    """The config both HTTP plugins take; each sets its own default ``port``."""

    host: str = Field("127.0.0.1", description="address to listen on; 0.0.0.0 or :: for every interface")
    port: int = Field(ge=1, le=65535)
    api_keys: list[str] = Field(default_factory=list, repr=False, description="bearer tokens; none: no auth")
    api_key_file: Path | None = Field(None, description="more keys, one per line (# comments)")
    aliases: dict[str, str] = Field(
        default_factory=dict, description='model names clients send -> configured models; "*" = any other'
    )
    max_body_bytes: int | None = Field(None, ge=64, description="default: limits.max_payload_bytes")
    max_connections: int = Field(
        32, ge=1, le=4096, description="past it an idle connection is closed, or the new one gets 503"
    )
    max_connections_per_client: int = Field(8, ge=1, le=4096, description="connections from one address")
    retry_after_s: int = Field(2, ge=1, le=3600, description="Retry-After of a 503 when the queue is full")
    header_timeout_s: float = Field(10.0, gt=0, le=3600, description="a request's head, from its first byte")
    body_timeout_s: float = Field(30.0, gt=0, le=3600, description="a request's body, from its head (408)")
    idle_timeout_s: float = Field(15.0, gt=0, le=3600, description="a kept-alive connection with no request")
    read_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="a client that stops reading its answer this long is disconnected"
    )

    _keys_ok = field_validator("api_keys")(valid_keys)


def configured_keys(ctx: PluginContext, config: HttpConfig) -> list[str]:
    """Main thread: check the aliases against the models; the keys configured."""
    for alias, target in config.aliases.items():
        if target not in ctx.settings.models:
            raise ValueError(f"aliases.{alias}: {target!r} is not a configured model")
    return load_keys(config.api_keys, config.api_key_file)
