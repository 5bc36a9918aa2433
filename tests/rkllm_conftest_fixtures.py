"""Helpers shared by the tests of the RKLLM binding (plain functions; fixtures live in the test files)."""

from __future__ import annotations

import ctypes
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from rkllmd.generation import ChatMessage, GenerateInput, Sampling
from rkllmd.runtime.rkllm.settings import RkllmModelSettings
from tests.fake_rkllm.build import build_fake

# gcc output is cached here across sessions (file names carry a hash of the sources).
BUILD_DIR = Path(os.environ.get("RKLLMD_FAKE_BUILD_DIR", Path(tempfile.gettempdir()) / "rkllmd-fake-rkllm"))
LAYOUT_JSON = Path(
    os.environ.get("RKLLM_LAYOUT_JSON", Path(__file__).resolve().parents[2] / "shared/docs/rkllm-layout.json")
)


def fake_library(abi: str, version: str | None = None) -> Path:
    """The double built for ``abi`` ("120", "12", "13"), optionally claiming another version."""
    return build_fake(abi, BUILD_DIR, version)


def layout_json() -> dict[str, Any] | None:
    """The fact sheet's machine-readable layouts, or None when ../shared is not beside the repo."""
    if not LAYOUT_JSON.is_file():
        return None
    data: dict[str, Any] = json.loads(LAYOUT_JSON.read_text())
    return data


def model_settings(model: Path, library: Path, **kw: Any) -> RkllmModelSettings:
    return RkllmModelSettings(runtime="rkllm", path=model, library=library, **kw)


def ask(text: str, max_tokens: int = 64, system: str | None = None, **sampling: Any) -> GenerateInput:
    msgs = ([ChatMessage("system", system)] if system else []) + [ChatMessage("user", text)]
    return GenerateInput(messages=tuple(msgs), max_tokens=max_tokens, sampling=Sampling(**sampling))


def expected_tokens(prompt: str, n: int | None = None, split: bool = False) -> list[bytes]:
    """The byte strings the double emits for ``prompt`` (mirrors fake_rkllm.c, directives removed)."""
    words = []
    for w in prompt.split():
        if not (w.startswith("[[") and w.endswith("]]")):
            words.append(w.upper())
    words = words or ["EMPTY"]
    n = len(words) if n is None else n
    out = []
    for i in range(n):
        if split and i == 1:
            out.append(" \u20ac".encode()[:3])
        elif split and i == 2:
            out.append("\u20ac".encode()[2:])
        else:
            out.append(((" " if i else "") + words[i % len(words)]).encode())
    return out


def expected_text(prompt: str, n: int | None = None, split: bool = False) -> str:
    return b"".join(expected_tokens(prompt, n, split)).decode()


class FakeIntrospect:
    """The double's test-only exports: counters and last strings, shared by every instance."""

    def __init__(self, library: Path) -> None:
        self._lib = ctypes.CDLL(str(library))
        self._lib.fake_rkllm_stat.argtypes = [ctypes.c_char_p]
        self._lib.fake_rkllm_stat.restype = ctypes.c_int
        self._lib.fake_rkllm_str.argtypes = [ctypes.c_char_p]
        self._lib.fake_rkllm_str.restype = ctypes.c_char_p

    def stat(self, name: str) -> int:
        value: int = self._lib.fake_rkllm_stat(name.encode())
        assert value != -12345, f"unknown stat {name}"
        return value

    def text(self, name: str) -> str:
        raw: bytes = self._lib.fake_rkllm_str(name.encode())
        return raw.decode()

    def reset(self) -> None:
        self._lib.fake_rkllm_reset_stats()
