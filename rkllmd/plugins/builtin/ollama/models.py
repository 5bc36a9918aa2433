"""The configured models as Ollama lists and shows them: ``/api/tags``, ``/api/ps``, ``/api/show``.

Pure functions over the models' facts (``PluginContext.models()``, the one source every list of
models is built from) and a stat of each model file, called on HTTP handler threads. Ollama names
carry a tag: a configured ``smollm2`` is listed as ``smollm2:latest``, which is the name Home
Assistant's integration matches the chosen model against.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rkllmd.plugins import ModelFacts

from .wire import tag

_FOREVER = "2318-01-01T00:00:00Z"  # rkllmd keeps a model loaded; Ollama shows that as far away
_FORMATS = {"rkllm": "rkllm", "llamacpp": "gguf"}


def _stat(m: ModelFacts) -> tuple[int, str]:
    """Size and modification time of the model's file, as far as it can be read."""
    path = Path(m.path) if m.path else None
    try:
        st = path.stat() if path is not None else None
    except OSError:
        st = None
    when = datetime.fromtimestamp(st.st_mtime, UTC) if st else datetime.fromtimestamp(0, UTC)
    return (st.st_size if st else 0), when.isoformat().replace("+00:00", "Z")


def _digest(m: ModelFacts) -> str:
    """A stable stand-in for Ollama's content digest: rkllmd does not hash model files."""
    return hashlib.sha256(f"{m.name}\0{m.path or ''}".encode()).hexdigest()


def details(m: ModelFacts) -> dict[str, Any]:
    runtime = m.runtime
    return {
        "parent_model": "",
        "format": _FORMATS.get(runtime, runtime),
        "family": runtime,
        "families": [runtime],
        "parameter_size": "",
        "quantization_level": "",
    }


def _entry(m: ModelFacts) -> dict[str, Any]:
    size, modified = _stat(m)
    return {
        "name": tag(m.name),
        "model": tag(m.name),
        "modified_at": modified,
        "size": size,
        "digest": _digest(m),
        "details": details(m),
    }


def tags(models: list[ModelFacts]) -> dict[str, Any]:
    """``GET /api/tags``: every configured model."""
    return {"models": [_entry(m) for m in models]}


def ps(models: list[ModelFacts]) -> dict[str, Any]:
    """``GET /api/ps``: the loaded model, if any (rkllmd holds one at a time)."""
    out = []
    for m in models:
        if m.loaded:
            entry = _entry(m)
            del entry["modified_at"]
            entry.update(expires_at=_FOREVER, size_vram=0, context_length=m.context_length)
            out.append(entry)
    return {"models": out}


def show(m: ModelFacts, capabilities: list[str]) -> dict[str, Any]:
    """``POST /api/show``: details and ``model_info`` with the context length."""
    arch = m.runtime
    info: dict[str, Any] = {
        "general.architecture": arch,
        "general.basename": m.name,
        f"{arch}.context_length": m.context_length,
    }
    _, modified = _stat(m)
    return {
        "modelfile": f"# served by rkllmd; configured as [models.{m.name}]\n",
        "parameters": "",
        "template": "",
        "license": "",
        "details": details(m),
        "model_info": info,
        "capabilities": capabilities,
        "modified_at": modified,
    }
