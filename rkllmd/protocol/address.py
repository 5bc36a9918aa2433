"""Where a request's final reply goes: the ``Address`` record, the checks an id and a reply topic
must pass, and reading them from a payload that was refused before it validated.

Pure functions and data only: no network, no threads. The bottom of the package: it imports nothing
from it, so the request models (which check ``id`` and ``reply_to``) and the reply bodies (which
echo the transaction) can both build on it.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
UTF8_BOM = b"\xef\xbb\xbf"
# A payload refused before it validates (too large, a lone surrogate, invalid UTF-8, ...) is still
# read for its reply address when it is at most this many times limits.max_payload_bytes.
ADDRESS_READ_FACTOR = 4
ADDRESS_FIELDS = ("id", "reply_to", "transaction")


@dataclass(frozen=True)
class Receipt:
    """What acknowledges one QoS 1/2 message to the broker: its packet id on the connection it came
    in on. rkllmd acknowledges a request only once its final reply is delivered (docs/FLEET.md)."""

    connection: int
    mid: int
    qos: int
    dup: bool = False  # sent again by the broker (after a reconnect): rkllmd may have taken it before
    # Held for rkllmd by the broker while it was away (a kept session's queue), sent at once on the
    # reconnect: it waits its turn rather than being answered busy (docs/FLEET.md).
    backlog: bool = False


@dataclass
class Address:
    """Where a request's final reply goes and what it echoes back: the one reply-address type."""

    topic: str
    correlation_data: bytes | None = None
    request_id: str | None = None  # the id the reply carries
    transaction: Any = None
    has_transaction: bool = False
    local: bool = False  # a plugin's LocalMessage: routers only, nothing published over MQTT
    key: str | None = None  # a LocalMessage's key, whatever its payload says: how its plugin finds it
    # The request message's receipt, acknowledged to the broker once this reply is delivered;
    # None for QoS 0 and local messages.
    receipt: Receipt | None = None


def _broker_refuses(ch: str) -> bool:
    """Characters a broker may treat as malformed UTF-8 and answer by closing the connection
    (mosquitto does): controls, surrogates, non-characters. Publishing a reply to such a topic
    would disconnect rkllmd, and paho would resend it after every reconnect."""
    cp = ord(ch)
    return (
        cp <= 0x1F
        or 0x7F <= cp <= 0x9F
        or 0xD800 <= cp <= 0xDFFF
        or 0xFDD0 <= cp <= 0xFDEF
        or (cp & 0xFFFE) == 0xFFFE
    )


def check_publish_topic(topic: str, what: str) -> None:
    """Reject topics rkllmd must never publish to (wildcards, empty, $-topics, control characters)."""
    if not topic or len(topic.encode("utf-8", "surrogatepass")) > 1024:
        raise ValueError(f"{what} must be a non-empty topic under 1 KiB")
    if "+" in topic or "#" in topic:
        raise ValueError(f"{what} must not contain + or #")
    if topic.startswith("$"):
        raise ValueError(f"{what} must not start with $")
    if any(_broker_refuses(ch) for ch in topic):
        raise ValueError(f"{what} must not contain control characters, surrogates or non-characters")


def reply_folder(topic: str) -> str:
    """A reply topic's folder: every level but the last (``reply/alice/1`` -> ``reply/alice``).

    The owner of a request is whoever reads its reply; a broker's ACL grants reading by topic
    prefix, and this is the prefix a cancel must share with the request it cancels
    (docs/PROTOCOL.md, "cancel")."""
    return topic.rsplit("/", 1)[0] if "/" in topic else ""


def owned_by(address: Address | None, owner: str) -> bool:
    """Whether a request answered at ``address`` belongs to whoever reads the reply folder
    ``owner``. rkllmd's own jobs belong to nobody; a plugin's local request (HTTP) is answered
    where a request without a reply topic is, so only its id (``X-Request-Id``, which only its
    HTTP client sees) and a cancel without a reply topic reach it."""
    return address is not None and reply_folder(address.topic) == owner


def echoable(value: Any) -> bool:
    """Whether a reply can carry ``value`` back as valid JSON in UTF-8 (no lone surrogate, NaN)."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, TypeError, RecursionError):  # UnicodeEncodeError is a ValueError
        return False
    return True


def read_address(payload: bytes, max_bytes: int) -> dict[str, Any]:
    """The top-level ``id``, ``reply_to`` and ``transaction`` of a payload that decode_payload
    refused, as far as the bytes allow, so that the refusal still goes where the request asked.

    Bounded: a payload over ``ADDRESS_READ_FACTOR`` times the limit is not read at all (its refusal
    goes to the default topic); otherwise it is parsed once as JSON, invalid UTF-8 read as lone
    surrogates. Only a JSON object yields anything, and the values are not checked here: the
    caller takes an id, a reply topic or a transaction only if it is valid on its own. A
    transaction longer than the limit is left out, so a refusal is never larger than a request.
    """
    if len(payload) > ADDRESS_READ_FACTOR * max_bytes:
        return {}
    text = payload.removeprefix(UTF8_BOM).decode("utf-8", "surrogateescape").strip()
    if not text.startswith("{"):
        return {}
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(obj, dict):
        return {}
    out = {k: obj[k] for k in ADDRESS_FIELDS if k in obj}
    if "transaction" in out and not (
        echoable(out["transaction"]) and len(json.dumps(out["transaction"])) <= max_bytes
    ):
        del out["transaction"]
    return out


def new_request_id() -> str:
    return uuid.uuid4().hex[:12]
