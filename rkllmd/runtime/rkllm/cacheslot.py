"""Which prompt cache the RKLLM runtime holds, and when to load, release or save one.

docs/RKLLM.md#prompt-cache. The runtime holds at most one cache, that of the prefix (chat
template and tools) it was last handed; ``CacheSlot`` keeps it so: before a run it releases a
cache of another prefix, then loads the current prefix's file (rkllmd.runtime.rkllm.promptcache
says whether one can be trusted), or has the runtime save one by a run of the prefix alone
(``RkllmRuntime._run_prefix``: the native run stays with the runtime). Whatever goes wrong is
logged and the model serves without a cache. Runs on the inference thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkllmd import logface
from rkllmd.errors import LibraryVersionError, RuntimeCallError
from rkllmd.runtime.rkllm.promptcache import Prefix, PromptCacheStore, model_identity

if TYPE_CHECKING:
    from rkllmd.runtime.rkllm._handle import RkllmHandle
    from rkllmd.runtime.rkllm._lib import RkllmLibrary

# The runtime's own logger: these lines are the runtime's, as they were before the slot had a module.
log = logface.get_logger("rkllmd.runtime.rkllm.runtime")


@dataclass(frozen=True)
class PrefixRun:
    """How a run of the prefix alone, asked to save its cache, ended."""

    rc: int
    error: bool  # the runtime reported RKLLM_RUN_ERROR
    prefill_tokens: int | None
    aborted: bool  # abort() came during it: nothing is wrong with the prefix


class CacheSlot:
    """The prompt cache one open model holds (``prompt_cache`` on); empty when off or unusable."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._store: PromptCacheStore | None = None
        self._loaded: str | None = None  # prefix digest of the cache the runtime holds
        self._failed: set[str] = set()  # prefixes whose cache could not be saved: not retried

    def open(self, lib: RkllmLibrary, handle: RkllmHandle, cfg: Any, rk: Any) -> None:
        """Set up the model's cache folder and load its last used cache (``cfg.prompt_cache`` on).

        Whatever is wrong (the folder, a library without the two functions) is logged, and the
        model serves without a cache; a bad cache file is deleted and saved again later.
        """
        self._store, self._loaded = None, None
        if not cfg.prompt_cache:
            return
        folder = cfg.prompt_cache_dir or rk.prompt_cache_dir
        missing = [f for f in ("rkllm_load_prompt_cache", "rkllm_release_prompt_cache") if not lib.has(f)]
        if missing:
            reason = f"the library does not export {', '.join(missing)}"
            log.warning("rkllm_prompt_cache_unavailable", model=self.model, reason=reason)
            return
        try:
            identity = model_identity(
                cfg.path, lib.version, lib.detection.blob_id, lib.spec.family, cfg.max_context_len
            )
            store = PromptCacheStore(folder, identity, rk.prompt_cache_keep, self.model)
            store.open()
        except OSError as exc:
            why = str(exc)
            log.warning("rkllm_prompt_cache_unavailable", model=self.model, folder=str(folder), reason=why)
            return
        self._store = store
        last = store.last_used()
        if last is not None:
            self._load(handle, last, "model load")

    def closed(self) -> None:
        """The model was destroyed, which frees a loaded prompt cache."""
        self._store, self._loaded = None, None

    def use(
        self, handle: RkllmHandle, prefix: Prefix | None, run_prefix: Callable[[Path], PrefixRun]
    ) -> None:
        """Before a run: have the runtime hold the cache of ``prefix``, and only that one.

        A cache of another prefix is released first (never used for a prompt it was not made
        for); the current prefix's file is loaded, or saved by ``run_prefix`` (the prefix alone,
        saving its cache to the path given).
        """
        store = self._store
        if store is None:
            return
        digest = prefix.digest if prefix is not None else None
        if digest == self._loaded:
            return
        if self._loaded is not None:
            self._release(handle)
        if prefix is None or digest is None or digest in self._failed:
            return
        if not self._load(handle, digest, "prefix changed"):
            self._save(handle, store, digest, run_prefix)

    @property
    def file(self) -> Path | None:
        """The cache file the runtime holds now, or None."""
        if self._store is None or self._loaded is None:
            return None
        return self._store.cache_path(self._loaded)

    def _load(self, handle: RkllmHandle, digest: str, when: str) -> bool:
        store = self._store
        assert store is not None
        path = store.usable(digest)
        if path is None:
            return False
        try:
            handle.load_prompt_cache(path)
        except (RuntimeCallError, LibraryVersionError) as exc:
            store.discard(digest, f"rkllm_load_prompt_cache refused it ({exc})")
            return False
        self._loaded = digest
        store.touch(digest)
        log.info("rkllm_prompt_cache_loaded", model=self.model, file=str(path), at=when)
        return True

    def _release(self, handle: RkllmHandle) -> None:
        self._loaded = None
        try:
            handle.release_prompt_cache()
        except RuntimeCallError as exc:
            log.warning("rkllm_prompt_cache_release_failed", model=self.model, rc=exc.rc)
        log.info("rkllm_prompt_cache_released", model=self.model, reason="the prefix changed")

    def _save(
        self,
        handle: RkllmHandle,
        store: PromptCacheStore,
        digest: str,
        run_prefix: Callable[[Path], PrefixRun],
    ) -> None:
        """One run of the prefix alone that saves its cache, then that cache loaded.

        The saved prefill is the prefix's and nothing of any request's, so a later prompt that
        starts with the same prefix can use it whatever its question. The run also fills the
        runtime's in-memory system-prompt cache, so the request that follows is warm already.
        """
        tmp = store.saving_path(digest)
        t0 = time.monotonic()
        run = run_prefix(tmp)
        if run.aborted:
            tmp.unlink(missing_ok=True)
            return
        path = None
        if run.rc == 0 and not run.error:
            path = store.commit(digest, run.prefill_tokens)
        else:
            log.warning("rkllm_prompt_cache_not_saved", model=self.model, rc=run.rc, error=run.error)
            tmp.unlink(missing_ok=True)
        if path is None:
            self._failed.add(digest)  # serve without a cache rather than pay for a save each turn
            return
        ms = round((time.monotonic() - t0) * 1e3, 1)
        size = path.stat().st_size
        log.info("rkllm_prompt_cache_saved", model=self.model, file=str(path), bytes=size, ms=ms)
        if not self._load(handle, digest, "saved"):
            self._failed.add(digest)
