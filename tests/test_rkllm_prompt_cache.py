"""The RKLLM prompt cache and prefix reuse, through ctypes against the C double."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import ValidationError

from rkllmd.generation import ChatMessage, GenerateInput
from rkllmd.protocol import GenerateRequest
from rkllmd.runtime.rkllm.prompt import CHATML
from rkllmd.runtime.rkllm.runtime import RkllmRuntime
from rkllmd.runtime.rkllm.settings import RkllmModelSettings, RkllmSettings
from tests.rkllm_conftest_fixtures import FakeIntrospect, ask, expected_text, fake_library, model_settings

ABIS = ["12", "13", "120"]
# An HA-like system prompt: long, fixed from turn to turn.
SYSTEM = "You control a smart home. " + " ".join(f"light.room_{i} (off)" for i in range(60))
NAME = re.compile(r"^[0-9a-f]{16}-[0-9a-f]{32}\.(cache|json)$")


def prefix_words(system: str) -> int:
    """Words the double finds shared by the saved prefix and any prompt: system text, then prefix."""
    return len((CHATML.system.replace("{system}", system) + " " + CHATML.prefix).split())


@pytest.fixture
def model(tmp_path: Path) -> Path:
    p = tmp_path / "model.rkllm"
    p.write_bytes(b"not really a model")
    return p


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "prompt-cache"


@pytest.fixture
def make_rt(model: Path, folder: Path) -> Iterator[Any]:
    opened: list[RkllmRuntime] = []

    def make(abi: str = "13", lib: Path | None = None, **cfg: Any) -> RkllmRuntime:
        cfg.setdefault("prompt_cache", True)
        cfg.setdefault("prompt_cache_dir", folder)
        settings = model_settings(cfg.pop("path", model), lib or fake_library(abi), **cfg)
        rt = RkllmRuntime("m", settings, RkllmSettings(), capture_stdout=False)
        opened.append(rt)
        rt.open()
        return rt

    yield make
    for rt in opened:
        rt.close()


def stats(abi: str = "13") -> FakeIntrospect:
    st = FakeIntrospect(fake_library(abi))
    st.reset()
    return st


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def turn(rt: RkllmRuntime, question: str, system: str = SYSTEM) -> str:
    out: list[str] = []
    rt.generate(ask(question, system=system), lambda t, _i: out.append(t))
    return "".join(out)


@pytest.mark.parametrize("abi", ABIS)
def test_cache_is_saved_under_the_folder_and_loaded_at_the_next_model_load(
    make_rt: Any, folder: Path, abi: str
) -> None:
    """The first turn saves the prefix's cache in the folder; a reload loads it and the next turn uses it."""
    st = stats(abi)
    rt = make_rt(abi)
    assert turn(rt, "turn the lights on") == expected_text("turn the lights on")
    assert st.stat("prompt_cache_saves") == 1
    names = files(folder)
    assert len(names) == 2 and all(NAME.match(n) for n in names), names
    rt.close()

    rt2 = make_rt(abi)
    assert st.stat("prompt_cache_loads") == 2  # after the save, and now at model load
    assert rt2.prompt_cache_file is not None and rt2.prompt_cache_file.parent == folder
    assert turn(rt2, "is the door locked") == expected_text("is the door locked")
    assert st.stat("prompt_cache_saves") == 1  # nothing saved again
    assert st.stat("last_prompt_cache_used") == prefix_words(SYSTEM)
    assert st.stat("last_prefill_computed") == 6  # the question and the postfix only


def test_warm_turn_skips_the_fixed_prefix_and_history_goes_after_it(make_rt: Any) -> None:
    """The runtime's in-memory system cache makes turn 2 warm without a file; the prefix is byte-stable."""
    st = stats()
    rt = make_rt(prompt_cache=False)
    turn(rt, "first question")
    cold, system_seen = st.stat("last_prefill_computed"), st.text("system_prompt")
    assert st.stat("last_prefill_reused") == 0
    chat = GenerateInput(
        messages=(
            ChatMessage("system", SYSTEM),
            ChatMessage("user", "first question"),
            ChatMessage("assistant", "FIRST QUESTION"),
            ChatMessage("user", "second one"),
        ),
        max_tokens=8,
    )
    rt.generate(chat, lambda _t, _i: None)
    assert st.text("system_prompt") == system_seen  # the earlier turn went into the prompt, not the system
    assert "first question" in st.text("prompt") and st.text("prompt").endswith("second one")
    assert st.stat("last_prefill_reused") == len(CHATML.system.replace("{system}", SYSTEM).split())
    assert st.stat("last_prefill_computed") < cold // 4
    assert st.stat("prompt_cache_saves") == 0


def test_a_changed_system_prompt_releases_the_cache_and_saves_another(make_rt: Any, folder: Path) -> None:
    """A new system prompt never runs with the old cache: it is released and the new prefix gets its own."""
    st = stats()
    rt = make_rt()
    turn(rt, "hello there")
    other = SYSTEM.replace("smart home", "holiday flat")
    assert turn(rt, "hello again", system=other) == expected_text("hello again")
    assert st.stat("prompt_cache_releases") == 1 and st.stat("prompt_cache_saves") == 2
    assert st.stat("last_prompt_cache_used") == prefix_words(other)
    assert len(files(folder)) == 4
    rt.close()
    # The model loads the cache used last, the holiday flat's.
    rt = make_rt()
    turn(rt, "and now", system=other)
    assert st.stat("prompt_cache_saves") == 2 and st.stat("last_prompt_cache_used") == prefix_words(other)


def test_no_system_prompt_means_no_cache(make_rt: Any, folder: Path) -> None:
    """A prompt with nothing fixed in front of it saves nothing."""
    st = stats()
    rt = make_rt()
    rt.generate(ask("just words"), lambda _t, _i: None)
    assert st.stat("prompt_cache_saves") == 0 and files(folder) == []


def _cache_files(folder: Path) -> tuple[Path, Path]:
    cache = next(folder.glob("*.cache"))
    return cache, cache.with_suffix(".json")


def _reload_logs(make_rt: Any, **cfg: Any) -> tuple[RkllmRuntime, list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as logs:
        rt = make_rt(**cfg)
    return rt, logs


@pytest.mark.parametrize(
    "damage",
    ["contents", "truncated", "no sidecar", "bad sidecar", "no cache file", "foreign file"],
)
def test_a_bad_cache_file_is_logged_deleted_and_rebuilt(make_rt: Any, folder: Path, damage: str) -> None:
    """A corrupt, half-gone or foreign cache file: the model loads, the log says why, a turn rebuilds it."""
    st = stats()
    rt = make_rt()
    turn(rt, "first")
    rt.close()
    cache, meta = _cache_files(folder)
    if damage == "contents":
        data = bytearray(cache.read_bytes())
        data[-1] ^= 0x20
        cache.write_bytes(bytes(data))
    elif damage == "truncated":
        cache.write_bytes(cache.read_bytes()[:20])
    elif damage == "no sidecar":
        meta.unlink()
    elif damage == "bad sidecar":
        meta.write_text("{not json")
    elif damage == "no cache file":
        cache.unlink()
    else:  # the runtime's own check: a file it did not save for this model, described as if it had been
        text = cache.read_text().replace("model_size ", "model_size 9")
        cache.write_text(text)

        m = json.loads(meta.read_text())
        m["size"], m["sha256"] = len(text.encode()), hashlib.sha256(text.encode()).hexdigest()
        meta.write_text(json.dumps(m))
    with structlog.testing.capture_logs() as logs:
        rt = make_rt()
        assert rt.prompt_cache_file is None
        assert turn(rt, "second") == expected_text("second")
    bad = [e for e in logs if e["event"] == "rkllm_prompt_cache_invalid"]
    assert len(bad) == 1 and bad[0]["reason"], logs
    if damage == "foreign file":
        assert "refused" in bad[0]["reason"] and "another model" in st.text("prompt_cache_error")
    assert st.stat("prompt_cache_saves") == 2 and cache.exists() and rt.prompt_cache_file == cache


def test_a_cache_for_another_model_file_or_runtime_version_is_never_loaded(
    make_rt: Any, model: Path, folder: Path
) -> None:
    """A changed model file or another runtime release makes other file names: the old cache is not loaded."""
    st = stats()
    rt = make_rt()
    turn(rt, "first")
    rt.close()
    model.write_bytes(b"another model, another size")
    rt = make_rt()
    assert st.stat("prompt_cache_loads") == 1 and rt.prompt_cache_file is None
    turn(rt, "second")
    assert st.stat("prompt_cache_saves") == 2
    rt.close()
    older = fake_library("13", "1.3.0-older")
    # The pin makes rkllmd accept the renamed build; its caches are its own.
    old_st = FakeIntrospect(older)
    old_st.reset()
    rt = make_rt(lib=older, runtime_version="1.3.0")
    assert rt.prompt_cache_file is None and old_st.stat("prompt_cache_loads") == 0
    turn(rt, "third")
    assert old_st.stat("prompt_cache_saves") == 1 and len(files(folder)) == 6


def test_an_unusable_folder_leaves_the_model_serving_without_a_cache(make_rt: Any, tmp_path: Path) -> None:
    """A cache folder that cannot be created is logged; the model loads and answers."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    st = stats()
    rt, logs = _reload_logs(make_rt, prompt_cache_dir=blocker / "cache")
    assert any(e["event"] == "rkllm_prompt_cache_unavailable" for e in logs)
    assert turn(rt, "still fine") == expected_text("still fine")
    assert st.stat("prompt_cache_saves") == 0


def test_keep_history_drops_the_priming_turn(make_rt: Any) -> None:
    """With keep_history the save run's empty turn is cleared again, the system prompt kept."""
    st = stats()
    rt = make_rt(keep_history=True)
    turn(rt, "one two")
    assert st.stat("prompt_cache_saves") == 1
    assert rt.kv_cache_size() == len(CHATML.system.replace("{system}", SYSTEM).split()) + 2 + 2


def test_the_folder_comes_from_the_config_only() -> None:
    """prompt_cache_dir must be absolute, and no request field can name a cache path."""
    with pytest.raises(ValidationError, match="absolute"):
        RkllmModelSettings(runtime="rkllm", path=Path("/m"), prompt_cache_dir=Path("cache"))
    with pytest.raises(ValidationError, match="absolute"):
        RkllmSettings(prompt_cache_dir=Path("../cache"))
    for field in ("prompt_cache_path", "prompt_cache_dir", "prompt_cache"):
        with pytest.raises(ValidationError):
            GenerateRequest.model_validate({"prompt": "hi", field: "/tmp/evil"})


def test_a_library_without_the_prompt_cache_functions_serves_without_a_cache(
    make_rt: Any, folder: Path
) -> None:
    """A build that does not export rkllm_load_prompt_cache loads, logs why, and writes nothing."""
    from tests.fake_rkllm.build import build_fake
    from tests.rkllm_conftest_fixtures import BUILD_DIR

    lib = build_fake("13", BUILD_DIR, omit=["rkllm_load_prompt_cache"])
    with structlog.testing.capture_logs() as logs:
        rt = make_rt(lib=lib)
    assert any(e["event"] == "rkllm_prompt_cache_unavailable" for e in logs)
    assert turn(rt, "no cache here") == expected_text("no cache here")
    assert not folder.exists() or files(folder) == []
