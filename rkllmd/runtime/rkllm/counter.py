"""Token counts from the model's ``tokenizer.json`` (the ``tokenizer`` key), on any thread.

The NPU runtime has no tokenizer API, so counts come from the Hugging Face tokenizer of the model,
when the config names one; the runtime counts with it too. One tokenizer per file, kept for the
life of the process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkllmd.runtime.base import LazyCounter, TokenCounter

if TYPE_CHECKING:
    from rkllmd.runtime.rkllm.settings import RkllmModelSettings

_counters: dict[Path, LazyCounter] = {}
_lock = threading.Lock()


def load_tokenizer(path: Path) -> Any:
    """A ``tokenizers.Tokenizer`` read from ``path`` (the package is imported here, not before)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def count_with(tokenizer: Any, text: str) -> int:
    """Tokens ``text`` takes, without the special tokens a model adds around a prompt."""
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def token_counter(cfg: RkllmModelSettings) -> TokenCounter | None:
    """A counter with the model's tokenizer.json, or None when the config names none."""
    path = cfg.tokenizer
    if path is None:
        return None
    with _lock:
        if path not in _counters:
            _counters[path] = LazyCounter(lambda: _counting(load_tokenizer(path)), str(path))
        return _counters[path]


def _counting(tokenizer: Any) -> Callable[[str], int]:
    return lambda text: count_with(tokenizer, text)
