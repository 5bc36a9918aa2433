"""Tool calling and structured output: call formats (tags, parser, grammar), tool rendering,
JSON-schema checks.

Pure functions and data only (no threads): the parser runs wherever the token sink runs (the
inference thread), rendering runs in the runtimes, schema checks at admission and after a run.
docs/TOOLS.md describes the formats per model family.
"""

from rkllmd.toolcalls.format import HERMES, CallFormat, CallGrammar
from rkllmd.toolcalls.parser import HermesParser, new_call_id
from rkllmd.toolcalls.render import (
    assistant_text,
    call_block,
    hermes_system_block,
    response_block,
    system_with_tools,
)
from rkllmd.toolcalls.schema import MAX_SCHEMA_BYTES, check_schema, format_schema, tool_call_schema, validate

__all__ = [
    "HERMES",
    "MAX_SCHEMA_BYTES",
    "CallFormat",
    "CallGrammar",
    "HermesParser",
    "assistant_text",
    "call_block",
    "check_schema",
    "format_schema",
    "hermes_system_block",
    "new_call_id",
    "response_block",
    "system_with_tools",
    "tool_call_schema",
    "validate",
]
