"""The configured models as Ollama lists and shows them: ``/api/tags``, ``/api/ps``, ``/api/show``.

Pure functions over rkllmd's settings (and a stat of each model file), called on HTTP handler
threads. Ollama names carry a tag: a configured ``smollm2`` is listed as ``smollm2:latest``, which
is the name Home Assistant's integration matches the chosen model against.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rkllmd.settings import Settings

from .wire import tag

_FOREVER = "2318-01-01T00:00:00Z"  # rkllmd keeps a model loaded; Ollama shows that as far away
_FORMATS = {"rkllm": "rkllm", "llamacpp": "gguf"}


def _file(cfg: Any) -> Path | None:
    path = getattr(cfg, "path", None)
    return Path(path) if path else None


def _stat(cfg: Any) -> tuple[int, str]:
    """Size and modification time of the model's file, as far as it can be read."""
    path = _file(cfg)
    try:
        st = path.stat() if path is not None else None
    except OSError:
        st = None
    when = datetime.fromtimestamp(st.st_mtime, UTC) if st else datetime.fromtimestamp(0, UTC)
    return (st.st_size if st else 0), when.isoformat().replace("+00:00", "Z")


def _digest(name: str, cfg: Any) -> str:
    """A stable stand-in for Ollama's content digest: rkllmd does not hash model files."""
    return hashlib.sha256(f"{name}\0{_file(cfg) or ''}".encode()).hexdigest()


def details(cfg: Any) -> dict[str, Any]:
    runtime = str(cfg.runtime)
    return {
        "parent_model": "",
        "format": _FORMATS.get(runtime, runtime),
        "family": runtime,
        "families": [runtime],
        "parameter_size": "",
        "quantization_level": "",
    }


def _entry(name: str, cfg: Any) -> dict[str, Any]:
    size, modified = _stat(cfg)
    return {
        "name": tag(name),
        "model": tag(name),
        "modified_at": modified,
        "size": size,
        "digest": _digest(name, cfg),
        "details": details(cfg),
    }


def tags(settings: Settings) -> dict[str, Any]:
    """``GET /api/tags``: every configured model."""
    return {"models": [_entry(name, cfg) for name, cfg in settings.models.items()]}


def ps(settings: Settings, loaded: str | None) -> dict[str, Any]:
    """``GET /api/ps``: the loaded model, if any (rkllmd holds one at a time)."""
    if not loaded or loaded not in settings.models:
        return {"models": []}
    cfg = settings.models[loaded]
    entry = _entry(loaded, cfg)
    del entry["modified_at"]
    entry.update(expires_at=_FOREVER, size_vram=0, context_length=int(cfg.max_context_len))
    return {"models": [entry]}


def show(name: str, settings: Settings, capabilities: list[str]) -> dict[str, Any]:
    """``POST /api/show``: details and ``model_info`` with the context length."""
    cfg = settings.models[name]
    arch = str(cfg.runtime)
    info: dict[str, Any] = {
        "general.architecture": arch,
        "general.basename": name,
        f"{arch}.context_length": int(cfg.max_context_len),
    }
    _, modified = _stat(cfg)
    return {
        "modelfile": f"# served by rkllmd; configured as [models.{name}]\n",
        "parameters": "",
        "template": "",
        "license": "",
        "details": details(cfg),
        "model_info": info,
        "capabilities": capabilities,
        "modified_at": modified,
    }
