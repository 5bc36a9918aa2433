"""Fixtures that run rkllmd as a real process against the real broker and the C runtime double."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rkllmd.bench.broker import free_port
from tests.fake_rkllm.build import build_fake
from tests.helpers import Broker, DaemonProc, Probe, write_config

Start = Callable[..., tuple[DaemonProc, str]]


@pytest.fixture(scope="session")
def fake_libs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The C double built with gcc once per session for each supported layout."""
    out = tmp_path_factory.mktemp("fakelibs")
    return {"1.2": build_fake("1.2", out), "1.3": build_fake("1.3", out), "1.3.1": build_fake("1.3.1", out)}


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tokenizer.json (word level, whitespace split) made with the tokenizers library."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["hello", "world", "the", "a", "what", "is", "capital", "of", "france", "please", "tell", "me"]
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def rkllm_config(
    tmp: Path,
    broker: Broker,
    lib: Path,
    base: str,
    *,
    limits: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    mqtt: dict[str, Any] | None = None,
    extra_models: dict[str, dict[str, Any]] | None = None,
    top: dict[str, Any] | None = None,
) -> Path:
    model_file = tmp / "fake-model.rkllm"
    model_file.write_bytes(b"RKLLM fake model for tests\n")
    cfg: dict[str, Any] = {
        "default_model": "fake",
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "base_topic": base,
            "client_id": base,
            **(mqtt or {}),
        },
        "log": {"level": "debug", "format": "json"},
        "limits": {
            "queue_size": 2,
            "first_token_timeout_s": 20.0,
            "total_timeout_s": 60.0,
            "shutdown_grace_s": 1.0,
            "max_payload_bytes": 4096,
            **(limits or {}),
        },
        "models": {
            "fake": {
                "runtime": "rkllm",
                "path": str(model_file),
                "library": str(lib),
                "max_context_len": 4096,
                **(model or {}),
            },
            "other": {"runtime": "rkllm", "path": str(model_file), "library": str(lib)},
            **(extra_models or {}),
        },
        **(top or {}),
    }
    return write_config(tmp / f"{base}.toml", cfg)


@pytest.fixture
def start_daemon(broker: Broker, fake_libs: dict[str, Path], tmp_path: Path) -> Iterator[Start]:
    """Start rkllmd on the double; waits until the default model is loaded."""
    procs: list[DaemonProc] = []

    def start(abi: str = "1.3", base: str | None = None, **kw: Any) -> tuple[DaemonProc, str]:
        base = base or f"t{len(procs)}x{abi.replace('.', '')}{tmp_path.name[-6:]}"
        cfg = rkllm_config(tmp_path, broker, fake_libs[abi], base, **kw)
        d = DaemonProc(cfg, tmp_path)
        procs.append(d)
        d.wait_ready(30)
        return d, base

    yield start
    for d in procs:
        d.stop()


def final_of(probe: Probe, topic: str, timeout: float = 20.0) -> dict[str, Any]:
    return json.loads(probe.get(topic, timeout=timeout).payload)


def start_with_both_apis(
    tmp: Path,
    broker: Broker,
    lib: Path,
    base: str,
    *,
    model: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> tuple[DaemonProc, int, int]:
    """rkllmd on the double with the http and ollama plugins in their default config, both listening;
    ``model`` adds to the default model's table, ``env`` to the process's environment.

    Returns the process and the OpenAI and Ollama ports.
    """
    openai_port, ollama_port = free_port(), free_port()
    cfg = rkllm_config(tmp, broker, lib, base, limits={"max_payload_bytes": 65536}, model=model)
    with cfg.open("a") as f:
        f.write(
            f'\n[plugins]\nenabled = ["http", "ollama"]\n[plugins.http]\nport = {openai_port}\n'
            f"[plugins.ollama]\nport = {ollama_port}\n"
        )
    d = DaemonProc(cfg, tmp, env=env)
    d.wait_ready(30)
    d.wait_log("OpenAI-compatible API listening")
    d.wait_log("Ollama-compatible API listening")
    return d, openai_port, ollama_port
