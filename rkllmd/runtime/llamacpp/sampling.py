"""The sampling options (rkllmd.generation.SAMPLING_OPTIONS) the llama.cpp runtime honours.

Its own module, light and free of pydantic, so that both the runtime (in the worker) and the
kind (``kind.py``, which must not import the runtime) read it.
"""

from __future__ import annotations

__all__ = ["HONOURED", "SAMPLING"]

# The options passed to llama_cpp.Llama.generate, by that method's names; the request's value,
# else the model's (Sampling.value).
SAMPLING = {
    "temperature": "temp",
    "top_p": "top_p",
    "top_k": "top_k",
    "repeat_penalty": "repeat_penalty",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}
# Every option it honours: seed and stop too, applied apart (set_seed, the stop-string scan).
HONOURED = frozenset(SAMPLING) | {"seed", "stop"}
