"""The MQTT protocol: topic names, what a command is, request parsing, every reply body.

Pure functions and data only: no network, no threads. docs/PROTOCOL.md describes the same
thing for users; keep the two in step.

The modules import one way only, each from those above it:

    numbers.py    JSON text refusing non-finite numbers; the generate request's numeric fields
    address.py    the reply Address, id and reply-topic checks, reading a refused payload's address
    requests.py   the request models; tools, tool_choice, format and tool-turn checks
    commands.py   what a command is to the protocol (Command); rkllmd/commands/ declares each one;
                  the command each model kind takes, as a wrong_model_kind refusal names it
    topics.py     Topics and the messages that arrive on them (Incoming, LocalMessage)
    payload.py    bytes to a request dict (decode_payload), then to its model (validate)
    replies.py    every reply body and stream chunk

The sampling options (``SAMPLING_OPTIONS``, declared on ``rkllmd.generation.Sampling``) are
re-exported here for the interfaces that map their own request fields onto them.

Importers use ``rkllmd.protocol`` itself: the names below are the package's surface, so a
module can move inside the package without any importer changing.
"""

from __future__ import annotations

from rkllmd.generation import SAMPLING_OPTIONS, Option
from rkllmd.protocol.address import (
    ADDRESS_FIELDS,
    ADDRESS_READ_FACTOR,
    ID_RE,
    UTF8_BOM,
    Address,
    Receipt,
    check_publish_topic,
    echoable,
    new_request_id,
    owned_by,
    read_address,
    reply_folder,
)
from rkllmd.protocol.commands import SERVES, Command, use_for, use_named
from rkllmd.protocol.numbers import GENERATE_NUMBERS, NotANumber, NumberKind, as_number, describe, loads, what
from rkllmd.protocol.payload import MAX_JSON_DEPTH, decode_payload, validate
from rkllmd.protocol.replies import (
    ModelFacts,
    cancel_data,
    cleared_data,
    embedding_data,
    encoded_vector,
    generation_data,
    loaded_data,
    model_facts,
    models_data,
    partial_data,
    reply_body,
    rerank_data,
    stream_chunk,
    stream_end,
    to_json,
)
from rkllmd.protocol.requests import (
    CancelRequest,
    EmbedRequest,
    EmptyPromptValue,
    FunctionCallIn,
    GenerateRequest,
    MessageIn,
    ModelRequest,
    NoArgsRequest,
    Req,
    RerankRequest,
    ToolCallIn,
)
from rkllmd.protocol.topics import Incoming, LocalMessage, Topics, reply_to_refusal

__all__ = [
    "ADDRESS_FIELDS",
    "ADDRESS_READ_FACTOR",
    "GENERATE_NUMBERS",
    "ID_RE",
    "MAX_JSON_DEPTH",
    "SAMPLING_OPTIONS",
    "SERVES",
    "UTF8_BOM",
    "Address",
    "CancelRequest",
    "Command",
    "EmbedRequest",
    "EmptyPromptValue",
    "FunctionCallIn",
    "GenerateRequest",
    "Incoming",
    "LocalMessage",
    "MessageIn",
    "ModelFacts",
    "ModelRequest",
    "NoArgsRequest",
    "NotANumber",
    "NumberKind",
    "Option",
    "Receipt",
    "Req",
    "RerankRequest",
    "ToolCallIn",
    "Topics",
    "as_number",
    "cancel_data",
    "check_publish_topic",
    "cleared_data",
    "decode_payload",
    "describe",
    "echoable",
    "embedding_data",
    "encoded_vector",
    "generation_data",
    "loaded_data",
    "loads",
    "model_facts",
    "models_data",
    "new_request_id",
    "owned_by",
    "partial_data",
    "read_address",
    "reply_body",
    "reply_folder",
    "reply_to_refusal",
    "rerank_data",
    "stream_chunk",
    "stream_end",
    "to_json",
    "use_for",
    "use_named",
    "validate",
    "what",
]
