"""Tool calling and structured output: the tool-call formats (parser, prompt rendering, grammar;
one module per model family in ``formats/``), chosen per model, and JSON-schema checks.

Pure functions and data only (no threads): a format's parser runs wherever the token sink runs
(the inference thread), rendering and grammars in the runtimes, schema checks at admission and
after a run. docs/TOOLS.md describes the formats per model family.
"""

from rkllmd.toolcalls.calls import new_call_id
from rkllmd.toolcalls.format import CallGrammar, CallParser, ToolFormat
from rkllmd.toolcalls.formats import choose, get, names
from rkllmd.toolcalls.schema import MAX_SCHEMA_BYTES, check_schema, format_schema, tool_call_schema, validate

__all__ = [
    "MAX_SCHEMA_BYTES",
    "CallGrammar",
    "CallParser",
    "ToolFormat",
    "check_schema",
    "choose",
    "format_schema",
    "get",
    "names",
    "new_call_id",
    "tool_call_schema",
    "validate",
]
