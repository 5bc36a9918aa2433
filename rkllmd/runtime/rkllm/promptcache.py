"""Prompt-cache files of one RKLLM model: where they live, what they are for, whether to trust one.

The runtime saves a cache file during a run that asks for it (``RKLLMInferParam.
prompt_cache_params``) and loads one with ``rkllm_load_prompt_cache``; the file's format is the
runtime's own, so rkllmd cannot read it. What rkllmd adds is a sidecar JSON per file recording
what the file was made from: the model file (path, size, mtime), the runtime (release, the
library's git blob id, ABI family), ``max_context_len``, and the exact prefix (the chat-template
strings and tools JSON handed to the runtime), plus the file's size and SHA-256. A file is loaded
only when its sidecar matches all of that, so a cache for another model, runtime or prefix, or a
file changed after it was saved, is never used: it is deleted and saved again.

File names are derived from hashes only (``<model key>-<prefix key>.cache`` and ``.json``) under
the configured folder; nothing a request carries names a path. Runs on the inference thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rkllmd import logface

log = logface.get_logger(__name__)

FORMAT = 1  # of the sidecar; a different one is a mismatch
CACHE_SUFFIX = ".cache"
META_SUFFIX = ".json"
TMP_SUFFIX = ".saving"


# hashlib is imported where it is used: only with prompt_cache on does the worker process map
# OpenSSL's libcrypto (3.5 MB) for it.


def _sha256_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Prefix:
    """What the runtime puts in front of every prompt: the template strings and the tools."""

    system: str
    prefix: str
    postfix: str
    tools: str = ""  # the JSON handed to rkllm_set_function_tools, "" for none

    @property
    def digest(self) -> str:
        return _sha256_text(json.dumps([self.system, self.prefix, self.postfix, self.tools]))

    @property
    def empty(self) -> bool:
        return not (self.system or self.tools)


def model_identity(
    model_file: Path, version: str, blob_id: str, family: str, max_context_len: int
) -> dict[str, Any]:
    """What a cache file is only valid for, apart from its prefix (OSError if the model is gone)."""
    st = model_file.stat()
    return {
        "format": FORMAT,
        "model_file": str(model_file.resolve()),
        "model_size": st.st_size,
        "model_mtime_ns": st.st_mtime_ns,
        "runtime_version": version,
        "library_blob_id": blob_id,
        "abi_family": family,
        "max_context_len": max_context_len,
    }


class PromptCacheStore:
    """The cache files of one model identity in ``folder``, at most ``keep`` of them."""

    def __init__(self, folder: Path, identity: Mapping[str, Any], keep: int, model: str) -> None:
        self.folder = folder
        self.identity = dict(identity)
        self.keep = keep
        self.model = model
        self.model_key = _sha256_text(json.dumps(self.identity, sort_keys=True))[:16]

    def open(self) -> None:
        """Create the folder (owner-only) and drop half-written files; OSError when it cannot."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise PermissionError(f"{self.folder} is not writable")
        for tmp in self.folder.glob(f"{self.model_key}-*{TMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                tmp.unlink()

    # ---- names ------------------------------------------------------------------------------

    def _stem(self, prefix_digest: str) -> str:
        return f"{self.model_key}-{_sha256_text(self.model_key + prefix_digest)[:32]}"

    def cache_path(self, prefix_digest: str) -> Path:
        return self.folder / (self._stem(prefix_digest) + CACHE_SUFFIX)

    def meta_path(self, prefix_digest: str) -> Path:
        return self.folder / (self._stem(prefix_digest) + META_SUFFIX)

    def saving_path(self, prefix_digest: str) -> Path:
        """Where the runtime writes a new cache; commit() moves it into place."""
        return self.folder / (self._stem(prefix_digest) + TMP_SUFFIX)

    # ---- reading ------------------------------------------------------------------------------

    def _read_meta(self, path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def problem(self, prefix_digest: str) -> str | None:
        """Why the cache for ``prefix_digest`` must not be loaded, or None when it may be.

        "missing" when there is none; anything else names what does not match.
        """
        cache, meta_path = self.cache_path(prefix_digest), self.meta_path(prefix_digest)
        if not cache.exists() and not meta_path.exists():
            return "missing"
        meta = self._read_meta(meta_path)
        if meta is None:
            return "its description (sidecar JSON) is missing or unreadable"
        if meta.get("identity") != self.identity:
            return "it was made for another model file, runtime version or context length"
        if meta.get("prefix_sha256") != prefix_digest:
            return "it was made for another system prompt, template or tools"
        try:
            size = cache.stat().st_size
        except OSError:
            return "the cache file is missing or unreadable"
        if size != meta.get("size"):
            return f"the cache file has {size} bytes, {meta.get('size')} were saved"
        try:
            digest = _sha256_file(cache)
        except OSError as exc:
            return f"the cache file cannot be read ({exc.strerror or exc})"
        if digest != meta.get("sha256"):
            return "the cache file's contents changed since it was saved"
        return None

    def usable(self, prefix_digest: str) -> Path | None:
        """The cache file for ``prefix_digest`` when it checks out; a bad one is deleted and logged."""
        why = self.problem(prefix_digest)
        if why is None:
            return self.cache_path(prefix_digest)
        if why != "missing":
            self.discard(prefix_digest, why)
        return None

    def last_used(self) -> str | None:
        """The prefix digest of this model's most recently used cache, if any."""
        best: tuple[float, str] | None = None
        for meta_path in self.folder.glob(f"{self.model_key}-*{META_SUFFIX}"):
            meta = self._read_meta(meta_path)
            if meta is None or not isinstance(meta.get("prefix_sha256"), str):
                continue
            used = float(meta.get("last_used") or 0)
            if best is None or used > best[0]:
                best = (used, meta["prefix_sha256"])
        return best[1] if best else None

    # ---- writing ------------------------------------------------------------------------------

    def commit(self, prefix_digest: str, tokens: int | None = None) -> Path | None:
        """Move a cache the runtime just saved into place and describe it; None if there is none."""
        tmp, cache = self.saving_path(prefix_digest), self.cache_path(prefix_digest)
        try:
            size = tmp.stat().st_size
            if size == 0:
                raise OSError("the runtime wrote an empty file")
            digest = _sha256_file(tmp)
            os.replace(tmp, cache)
            now = time.time()
            meta = {
                "identity": self.identity,
                "model": self.model,
                "prefix_sha256": prefix_digest,
                "size": size,
                "sha256": digest,
                "created": now,
                "last_used": now,
                "prefix_tokens": tokens,
            }
            self._write_meta(prefix_digest, meta)
        except OSError as exc:
            why = str(exc.strerror or exc)
            log.warning("rkllm_prompt_cache_not_saved", model=self.model, file=str(cache), error=why)
            with contextlib.suppress(OSError):
                tmp.unlink()
            return None
        self.prune()
        return cache

    def _write_meta(self, prefix_digest: str, meta: dict[str, Any]) -> None:
        path = self.meta_path(prefix_digest)
        tmp = path.with_suffix(META_SUFFIX + TMP_SUFFIX)
        tmp.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def touch(self, prefix_digest: str) -> None:
        """Mark the cache as the most recently used (what open() loads next time)."""
        meta = self._read_meta(self.meta_path(prefix_digest))
        if meta is None:
            return
        meta["last_used"] = time.time()
        with contextlib.suppress(OSError):
            self._write_meta(prefix_digest, meta)

    def discard(self, prefix_digest: str, reason: str) -> None:
        """Delete the cache for ``prefix_digest`` (it will be saved again) and log why."""
        log.warning(
            "rkllm_prompt_cache_invalid",
            model=self.model,
            file=str(self.cache_path(prefix_digest)),
            reason=reason,
            action="deleted; it is saved again on the next request with this prefix",
        )
        for p in (self.cache_path(prefix_digest), self.meta_path(prefix_digest)):
            with contextlib.suppress(OSError):
                p.unlink()

    def prune(self) -> None:
        """Keep this model's ``keep`` most recently used caches, delete the others."""
        metas = []
        for meta_path in self.folder.glob(f"{self.model_key}-*{META_SUFFIX}"):
            meta = self._read_meta(meta_path) or {}
            metas.append((float(meta.get("last_used") or 0), meta_path))
        metas.sort(reverse=True)
        for _, meta_path in metas[self.keep :]:
            for p in (meta_path, meta_path.with_suffix(CACHE_SUFFIX)):
                with contextlib.suppress(OSError):
                    p.unlink()
