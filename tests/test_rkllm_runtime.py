"""RkllmRuntime end to end through ctypes against the C double, for each ABI family."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from rkllmd.errors import LibraryVersionError, ModelLoadError, RuntimeCallError, RuntimeFailure
from rkllmd.generation import ChatMessage, GenerateInput
from rkllmd.runtime.rkllm._handle import default_param
from rkllmd.runtime.rkllm.prompt import CHATML
from rkllmd.runtime.rkllm.runtime import RkllmRuntime
from rkllmd.runtime.rkllm.settings import ChatTemplate, RkllmSettings
from tests.rkllm_conftest_fixtures import (
    FakeIntrospect,
    ask,
    expected_text,
    expected_tokens,
    fake_library,
    model_settings,
)

ABIS = ["12", "13", "120"]


class Sink:
    """Collects deltas and token ids; can be told to raise at the n-th call."""

    def __init__(self, raise_at: int | None = None) -> None:
        self.deltas: list[str] = []
        self.ids: list[int | None] = []
        self.threads: set[int] = set()
        self.raise_at = raise_at

    def __call__(self, text: str, token_id: int | None) -> None:
        self.threads.add(threading.get_ident())
        if self.raise_at is not None and len(self.deltas) + 1 == self.raise_at:
            raise ValueError("sink refuses")
        self.deltas.append(text)
        self.ids.append(token_id)

    @property
    def text(self) -> str:
        return "".join(self.deltas)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    p = tmp_path / "model.rkllm"
    p.write_bytes(b"not really a model")
    return p


@pytest.fixture(params=ABIS)
def abi(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_rt(model: Path) -> Iterator[Any]:
    opened: list[RkllmRuntime] = []

    def make(abi: str, *, capture: bool = False, rk: RkllmSettings | None = None, **cfg: Any) -> RkllmRuntime:
        settings = model_settings(cfg.pop("path", model), fake_library(abi), **cfg)
        rt = RkllmRuntime("m", settings, rk or RkllmSettings(), capture_stdout=capture)
        opened.append(rt)
        return rt

    yield make
    for rt in opened:
        rt.close()


@pytest.fixture
def rt(make_rt: Any, abi: str) -> RkllmRuntime:
    r: RkllmRuntime = make_rt(abi)
    r.open()
    return r


def stats(abi: str) -> FakeIntrospect:
    return FakeIntrospect(fake_library(abi))


def test_streams_exact_text_in_order(rt: RkllmRuntime, abi: str) -> None:
    """The double's deterministic tokens reach the sink in order, one delta per token."""
    prompt = "the quick brown fox"
    sink = Sink()
    res = rt.generate(ask(prompt), sink)
    assert sink.deltas == [t.decode() for t in expected_tokens(prompt)]
    assert sink.ids == [100, 101, 102, 103]
    assert res.finish_reason == "stop"
    assert res.perf.completion_tokens == 4
    assert sink.threads == {threading.get_ident()}  # the callback runs on the calling thread
    assert stats(abi).stat("callback_on_caller_thread") == 1


def test_split_utf8_character_arrives_whole(rt: RkllmRuntime) -> None:
    """A character split over a WAITING and a NORMAL callback reaches the sink in one piece."""
    prompt = "alpha beta gamma delta epsilon [[split_utf8]]"
    sink = Sink()
    rt.generate(ask(prompt), sink)
    assert sink.text == expected_text(prompt, split=True)
    assert "€" in sink.deltas
    assert all("\ufffd" not in d for d in sink.deltas)


def test_max_tokens_gives_finish_length(rt: RkllmRuntime, abi: str) -> None:
    """max_tokens stops the run after exactly that many tokens with finish_reason length."""
    sink = Sink()
    res = rt.generate(ask("a b c d e f g h [[len=30]]", max_tokens=5), sink)
    assert res.finish_reason == "length"
    assert sink.text == expected_text("a b c d e f g h", 5)
    assert res.perf.completion_tokens == 5
    limit = stats(abi).stat("last_limit")
    assert limit == (5 if abi == "13" else -1)  # 1.3 passes it per run; older ones abort


def test_model_max_new_tokens_caps_requests(make_rt: Any, abi: str) -> None:
    """The model's max_new_tokens caps a larger request."""
    rt = make_rt(abi, max_new_tokens=3)
    rt.open()
    res = rt.generate(ask("a b c d e f", max_tokens=50), Sink())
    assert (res.finish_reason, res.perf.completion_tokens) == ("length", 3)


def test_error_state_raises_runtime_failure(rt: RkllmRuntime) -> None:
    """An ERROR callback makes generate raise RuntimeCallError naming rkllm_run and its code."""
    sink = Sink()
    with pytest.raises(RuntimeFailure) as ei:
        rt.generate(ask("one two three four [[fail_at=3]]"), sink)
    err = ei.value
    assert isinstance(err, RuntimeCallError)
    assert (err.function, err.rc) == ("rkllm_run", -1)
    assert "rkllm_run" in str(err) and "-1" in str(err)
    assert sink.text == "ONE TWO"
    assert rt.generate(ask("still works"), Sink()).finish_reason == "stop"


def test_init_failure_by_model_path(make_rt: Any, abi: str, tmp_path: Path) -> None:
    """rkllm_init returning -1 becomes ModelLoadError naming the function and code."""
    bad = tmp_path / "fail-init.rkllm"
    bad.write_bytes(b"x")
    rt = make_rt(abi, path=bad)
    with pytest.raises(ModelLoadError) as ei:
        rt.open()
    assert ei.value.data["function"] == "rkllm_init" and ei.value.data["rc"] == -1
    assert isinstance(ei.value.__cause__, RuntimeCallError)
    assert rt.handle is None


def test_init_failure_by_env(make_rt: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """FAKE_RKLLM_FAIL_INIT=1 makes init fail; ModelLoadError results."""
    monkeypatch.setenv("FAKE_RKLLM_FAIL_INIT", "1")
    with pytest.raises(ModelLoadError, match="rkllm_init"):
        make_rt("13").open()


def test_missing_model_file(make_rt: Any, tmp_path: Path) -> None:
    """A model path that does not exist is refused before rkllm_init."""
    with pytest.raises(ModelLoadError, match="does not exist"):
        make_rt("12", path=tmp_path / "nope.rkllm").open()


def test_abort_from_another_thread(rt: RkllmRuntime) -> None:
    """abort() from another thread ends a long run promptly with finish_reason aborted."""
    sink = Sink()
    timer = threading.Timer(0.15, rt.abort)
    t0 = time.monotonic()
    timer.start()
    res = rt.generate(ask("go [[delay_ms=20]] [[len=1000]]", max_tokens=5000), sink)
    elapsed = time.monotonic() - t0
    timer.join()
    assert res.finish_reason == "aborted"
    assert elapsed < 2.0
    assert 0 < len(sink.deltas) < 1000
    assert rt.generate(ask("next one"), Sink()).finish_reason == "stop"


def test_abort_when_idle_is_a_noop(rt: RkllmRuntime, abi: str) -> None:
    """abort() without a running generate does nothing and does not poison the next run."""
    before = stats(abi).stat("abort")
    rt.abort()
    assert stats(abi).stat("abort") == before
    assert rt.generate(ask("x y"), Sink()).finish_reason == "stop"


def test_raising_sink_ends_cleanly(rt: RkllmRuntime, abi: str) -> None:
    """A sink that raises stops the run (no pause, no hang), re-raises, and the model stays usable."""
    st = stats(abi)
    st.reset()
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="sink refuses"):
        rt.generate(ask("a b c d [[len=200]] [[delay_ms=5]]"), Sink(raise_at=2))
    assert time.monotonic() - t0 < 2.0
    assert st.stat("pauses") == 0 and st.stat("nonzero_cb_rc") == 0
    assert rt.generate(ask("after"), Sink()).finish_reason == "stop"


def test_raising_callback_body_still_returns_zero(
    rt: RkllmRuntime, abi: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even an exception escaping the callback body hands the runtime 0, never a pause."""
    handle = rt.handle
    assert handle is not None

    def boom(state: int, result: Any) -> None:
        raise RuntimeError("callback bug")

    monkeypatch.setattr(handle, "_on_result", boom)
    st = stats(abi)
    st.reset()
    assert handle.run(*_raw_inputs(rt, "one two three")) == 0
    assert st.stat("pauses") == 0 and st.stat("nonzero_cb_rc") == 0


def _raw_inputs(rt: RkllmRuntime, prompt: str) -> tuple[Any, Any]:
    assert rt.lib is not None
    spec = rt.lib.spec
    rin, infer = spec.Input(), spec.InferParam()
    if spec.has_role:
        rin.role = b"user"
    rin.prompt_input = prompt.encode()
    return rin, infer


def test_perf_stats_are_populated(rt: RkllmRuntime, abi: str) -> None:
    """Perf carries the runtime's prefill/generate numbers (1.2.1+) and our token count."""
    res = rt.generate(ask("one two three four five"), Sink())
    perf = res.perf
    assert perf.completion_tokens == 5
    if abi == "120":
        assert perf.prefill_ms is None and perf.memory_mb is None
    else:
        assert perf.prompt_tokens == 5
        assert perf.prefill_ms == pytest.approx(7.5)
        assert perf.decode_ms is not None and perf.decode_ms >= 0
        assert perf.memory_mb == pytest.approx(123.5)


@pytest.mark.parametrize("abi_kv", ["12", "13"])
def test_keep_history_kv_cache_and_clear(make_rt: Any, abi_kv: str) -> None:
    """With keep_history the KV cache grows across turns; clear_cache resets it (keeping the system)."""
    rt = make_rt(abi_kv, keep_history=True, system_prompt="be brief")
    rt.open()
    assert stats(abi_kv).stat("last_n_batch") == 1
    rt.generate(ask("a b c"), Sink())
    first = rt.kv_cache_size()
    assert first == 6  # 3 prompt words + 3 generated tokens
    rt.generate(ask("d e"), Sink())
    assert rt.kv_cache_size() == first + 4
    assert stats(abi_kv).stat("last_keep_history") == 1
    rt.clear_cache(keep_system_prompt=True)
    assert rt.kv_cache_size() == len(CHATML.system.replace("{system}", "be brief").split())
    rt.clear_cache(keep_system_prompt=False)
    assert rt.kv_cache_size() == 0


def test_kv_cache_size_needs_1_2_1(make_rt: Any) -> None:
    """On a 1.2.0 runtime kv_cache_size raises the requires-runtime error; clear_cache still works."""
    rt = make_rt("120", keep_history=True)
    rt.open()
    rt.generate(ask("a b"), Sink())
    with pytest.raises(LibraryVersionError, match=r"requires runtime ≥ 1\.2\.1, loaded 1\.2\.0"):
        rt.kv_cache_size()
    rt.clear_cache(False)
    assert stats("120").stat("clear_kv_cache") >= 1


def test_chat_template_set_only_when_changed(make_rt: Any, abi: str) -> None:
    """The system prompt reaches set_chat_template once per change, rendered with ChatML by default."""
    rt = make_rt(abi)
    rt.open()
    st = stats(abi)
    st.reset()
    rt.generate(ask("hi"), Sink())
    assert st.stat("set_chat_template") == 0  # nothing configured: the model's own template
    rt.generate(ask("hi", system="You are terse."), Sink())
    rt.generate(ask("again", system="You are terse."), Sink())
    assert st.stat("set_chat_template") == 1
    assert st.text("system_prompt") == "<|im_start|>system\nYou are terse.<|im_end|>\n"
    rt.generate(ask("hi", system="Now verbose."), Sink())
    assert st.stat("set_chat_template") == 2
    rt.generate(ask("no system"), Sink())
    assert st.stat("set_chat_template") == 3 and st.text("system_prompt") == ""


def test_configured_chat_template(make_rt: Any) -> None:
    """A model chat_template is used with {system} replaced by the model's system prompt."""
    tpl = ChatTemplate(system="<<SYS>>{system}<</SYS>>", prefix="[INST]", postfix="[/INST]")
    rt = make_rt("13", chat_template=tpl, system_prompt="be kind")
    rt.open()
    rt.generate(ask("hello"), Sink())
    assert stats("13").text("system_prompt") == "<<SYS>>be kind<</SYS>>"


def test_sampling_and_role_reach_the_runtime(make_rt: Any, abi: str) -> None:
    """1.3 takes per-request sampling; older releases keep the init values; role is user."""
    rt = make_rt(abi, top_k=11, temperature=0.5, enabled_cpus=[0, 2])
    rt.open()
    rt.generate(ask("x", temperature=0.25, top_k=7), Sink())
    st = stats(abi)
    if abi == "13":
        assert (st.stat("last_top_k"), st.stat("last_temperature_milli")) == (7, 250)
    else:
        assert (st.stat("last_top_k"), st.stat("last_temperature_milli")) == (11, 500)
    assert (st.stat("last_cpus_mask"), st.stat("last_cpus_num")) == (0b101, 2)
    if abi != "120":
        assert st.text("role") == "user"


def test_close_is_idempotent(rt: RkllmRuntime, abi: str) -> None:
    """close() destroys once; a second close is harmless; generate afterwards is a RuntimeFailure."""
    st = stats(abi)
    live = st.stat("live")
    rt.close()
    assert st.stat("live") == live - 1
    rt.close()
    assert st.stat("live") == live - 1
    with pytest.raises(RuntimeFailure, match="not open"):
        rt.generate(ask("x"), Sink())


def test_describe(rt: RkllmRuntime, abi: str) -> None:
    """describe() names the runtime, detected version, how it was detected and the library path."""
    d = rt.describe()
    assert d["runtime"] == "rkllm"
    assert d["version"] == {"120": "1.2.0", "12": "1.2.3", "13": "1.3.0"}[abi]
    assert d["version_source"] == "string"
    assert d["library"] == str(fake_library(abi))
    assert rt.context_length == 4096
    assert d["tool_format"] == rt.tool_format.name == "hermes"


def test_tool_format_auto_reads_the_configured_template(make_rt: Any) -> None:
    """``auto`` on RKLLM reads what it can: a configured template that writes <tool_call> is
    Hermes; so is a Qwen model by name, and the fallback; a named format is taken as named."""
    tpl = {"system": "<|im_start|>system\n{system}<tools></tools><tool_call>", "prefix": "", "postfix": ""}
    assert make_rt("13", chat_template=tpl).tool_format.name == "hermes"
    assert make_rt("13", tool_format="hermes").tool_format.name == "hermes"


def test_library_not_loaded_before_open(model: Path) -> None:
    """Importing and constructing the runtime loads no library; open() does."""
    lib = fake_library("13")
    code = f"""
import sys
from pathlib import Path
from rkllmd.runtime.rkllm.runtime import RkllmRuntime
from rkllmd.runtime.rkllm.settings import RkllmModelSettings, RkllmSettings
def mapped():
    return {str(lib)!r} in open("/proc/self/maps").read()
cfg = RkllmModelSettings(runtime="rkllm", path=Path({str(model)!r}), library=Path({str(lib)!r}))
rt = RkllmRuntime("m", cfg, RkllmSettings(), capture_stdout=False)
assert not mapped(), "loaded at construction"
assert "rkllmd.runtime.rkllm._abi_1_3" not in sys.modules
rt.open()
assert mapped(), "not loaded by open"
rt.close()
print("OK")
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout


def test_stdout_capture_logs_runtime_lines(make_rt: Any) -> None:
    """With capture on, the runtime's fd-1 lines become "rkllm" log records and fd 1 is restored."""
    before = os.fstat(1)
    rt = make_rt("12", capture=True, rk=RkllmSettings(log_level=1))
    with structlog.testing.capture_logs() as logs:
        rt.open()
        during = os.fstat(1)
        rt.generate(ask("a b"), Sink())
        rt.close()
    after = os.fstat(1)
    assert (during.st_ino, during.st_dev) != (before.st_ino, before.st_dev)
    assert (after.st_ino, after.st_dev) == (before.st_ino, before.st_dev)
    events = [e["event"] for e in logs if e.get("src") == "rkllm-stdout"]
    assert any("rkllm-runtime version: 1.2.3" in e for e in events)
    assert any("fake perf" in e for e in events)  # printed because RKLLM_LOG_LEVEL=1 was set


def test_stdout_capture_off_leaves_fd1_alone(make_rt: Any) -> None:
    """With capture off, fd 1 is never replaced."""
    before = os.fstat(1)
    rt = make_rt("13", capture=False)
    rt.open()
    assert os.fstat(1).st_ino == before.st_ino
    rt.close()


def test_count_tokens_with_a_tokenizer(make_rt: Any, tmp_path: Path) -> None:
    """With tokenizer.json set, count_tokens and prompt_tokens use it; without, they return None."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    rt = make_rt("13", tokenizer=path)
    assert rt.count_tokens("hello big world") == 3
    assert rt.prompt_tokens(ask("hello world")) == 2
    assert make_rt("13").count_tokens("x") is None


# ---- the lower-level handle API -------------------------------------------------------------


@pytest.mark.parametrize("abi_h", ["12", "13"])
def test_handle_api(make_rt: Any, abi_h: str, tmp_path: Path) -> None:
    """LoRA, prompt cache, function tools, cross-attention and is_running work with arg validation."""
    rt = make_rt(abi_h)
    rt.open()
    h = rt.handle
    assert h is not None
    lora = tmp_path / "lora.rkllm"
    lora.write_bytes(b"x")
    h.load_lora(lora, "style", 0.5)
    with pytest.raises(RuntimeCallError, match="rkllm_load_lora returned -1"):
        h.load_lora(tmp_path / "missing", "x")
    with pytest.raises(RuntimeCallError, match="rkllm_load_prompt_cache returned -1"):
        h.load_prompt_cache(lora)  # not a prompt cache (tests/test_rkllm_prompt_cache.py loads real ones)
    h.release_prompt_cache()
    with pytest.raises(RuntimeCallError):
        h.load_prompt_cache(tmp_path / "missing")
    h.set_function_tools("sys", '[{"name": "f"}]', "<tool_response>")
    assert stats(abi_h).text("tools") == '[{"name": "f"}]'
    with pytest.raises(RuntimeCallError, match="rkllm_set_function_tools"):
        h.set_function_tools("sys", "not json", "<tool_response>")
    h.set_cross_attn_params([0.1] * 4, [0.2] * 4, [1.0, 1.0], [0, 1], 2)
    with pytest.raises(RuntimeCallError):
        h.set_cross_attn_params([], [], [], [], 0)
    assert h.native_is_running() == (0 if abi_h == "13" else 1)  # idle; the headers disagree on meaning
    assert not h.running
    h.clear_kv_cache(False)
    assert h.get_kv_cache_size() == [0]


def test_handle_clear_ranges_and_defaults(make_rt: Any) -> None:
    """Range clearing works on 1.2.1+, and createDefaultParam returns the runtime's defaults."""
    rt = make_rt("12", keep_history=True)
    rt.open()
    assert rt.lib is not None and rt.handle is not None
    rt.generate(ask("a b c"), Sink())
    rt.handle.clear_kv_cache(False, [(0, 2)])
    assert rt.kv_cache_size() == 4
    with pytest.raises(RuntimeCallError):
        rt.handle.clear_kv_cache(False, [(3, 99)])
    p = default_param(rt.lib)
    assert (p.max_context_len, p.top_k, p.extend_param.n_batch, p.extend_param.enabled_cpus_mask) == (
        512,
        40,
        1,
        0xF0,
    )


def test_handle_on_1_2_0_lacks_newer_functions(make_rt: Any, tmp_path: Path) -> None:
    """The 1.2.0 handle refuses 1.2.1 functions and range clears with the requires-runtime error."""
    rt = make_rt("120")
    rt.open()
    h = rt.handle
    assert h is not None
    with pytest.raises(LibraryVersionError, match=r"rkllm_set_function_tools requires runtime ≥ 1\.2\.1"):
        h.set_function_tools("s", "[]", "t")
    with pytest.raises(LibraryVersionError, match=r"rkllm_set_cross_attn_params requires runtime ≥ 1\.2\.1"):
        h.set_cross_attn_params([0.0], [0.0], [0.0], [0], 1)
    with pytest.raises(LibraryVersionError, match=r"with ranges requires runtime ≥ 1\.2\.1"):
        h.clear_kv_cache(False, [(0, 1)])


def test_run_async_without_is_async_runs_synchronously(make_rt: Any) -> None:
    """rkllm_run_async on a handle initialised with is_async=false runs like rkllm_run, on this thread."""
    rt = make_rt("13")
    rt.open()
    h = rt.handle
    assert h is not None
    got: list[tuple[int, int]] = []
    done = threading.Event()

    def on_result(state: int, result: Any) -> None:
        got.append((state, threading.get_ident()))
        if state == 2:
            done.set()

    h._on_result = on_result
    assert h.run(*_raw_inputs(rt, "a b"), use_async=True) == 0
    assert done.is_set() and {t for _, t in got} == {threading.get_ident()}


def test_earlier_chat_turns_reach_the_runtime_without_keep_history(make_rt: Any) -> None:
    """Without keep_history, earlier turns of a chat are sent in front of the last one, not dropped."""
    from rkllmd.generation import ChatMessage, GenerateInput

    r: RkllmRuntime = make_rt("13")
    r.open()
    chat = GenerateInput(
        messages=(
            ChatMessage("system", "be brief"),
            ChatMessage("user", "alpha"),
            ChatMessage("assistant", "beta"),
            ChatMessage("user", "gamma"),
        ),
        max_tokens=64,
    )
    sink = Sink()
    r.generate(chat, sink)
    words = "".join(sink.deltas).split()
    assert {"ALPHA", "BETA", "GAMMA"} <= set(words)
    assert "BE" not in words  # the system prompt goes through the chat template, not the prompt


def test_only_the_last_turn_is_sent_with_keep_history(make_rt: Any) -> None:
    """With keep_history the runtime holds the conversation, so only the newest turn is sent."""
    from rkllmd.generation import ChatMessage, GenerateInput

    r: RkllmRuntime = make_rt("13", keep_history=True)
    r.open()
    chat = GenerateInput(
        messages=(
            ChatMessage("user", "alpha"),
            ChatMessage("assistant", "beta"),
            ChatMessage("user", "gamma"),
        ),
        max_tokens=64,
    )
    sink = Sink()
    r.generate(chat, sink)
    assert "".join(sink.deltas).split() == ["GAMMA"]


# --- tools --------------------------------------------------------------------------------------

WEATHER = ({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},)


def say(text: str, chunk: int = 3) -> str:
    """The double's directive that makes it emit ``text`` verbatim, ``chunk`` bytes per token."""
    import base64

    return f"[[say={base64.b64encode(text.encode()).decode()}]] [[chunk={chunk}]]"


def test_say_emits_exact_text_in_chunks(rt: RkllmRuntime) -> None:
    """[[say=B64]] makes the double emit the decoded text verbatim, split every [[chunk]] bytes."""
    sink = Sink()
    rt.generate(ask(say("<tool_call>{}</tool_call>", 4)), sink)
    assert sink.text == "<tool_call>{}</tool_call>"
    assert sink.deltas[:3] == ["<too", "l_ca", "ll>{"]


@pytest.mark.parametrize("abi_tools", ["12", "13"])
def test_tools_go_to_set_function_tools_once(make_rt: Any, abi_tools: str) -> None:
    """1.2.1+ gets the tools through rkllm_set_function_tools, again only when they change."""
    rt = make_rt(abi_tools)
    rt.open()
    st = stats(abi_tools)
    st.reset()
    inp = GenerateInput((ChatMessage("user", "[[say_tools]]"),), 200, tools=WEATHER)
    sink = Sink()
    rt.generate(inp, sink)
    rt.generate(inp, Sink())
    assert st.stat("set_function_tools") == 1
    assert json.loads(sink.text) == list(WEATHER) == json.loads(st.text("tools"))
    rt.generate(ask("plain"), Sink())  # tools gone: an empty list, once
    rt.generate(ask("plain"), Sink())
    assert st.stat("set_function_tools") == 2 and st.text("tools") == "[]"


def _tool_turns() -> tuple[ChatMessage, ...]:
    from rkllmd.generation import ToolCall

    return (
        ChatMessage("user", "weather in Paris?"),
        ChatMessage("assistant", "", (ToolCall("c1", "get_weather", {"city": "Paris"}),)),
        ChatMessage("tool", "sunny", tool_call_id="c1"),
    )


def test_tool_result_goes_back_with_role_tool(make_rt: Any) -> None:
    """1.3 with keep_history: the tool result alone is the run's input, role "tool", as JSON text."""
    rt = make_rt("13", keep_history=True)
    rt.open()
    sink = Sink()
    rt.generate(GenerateInput(_tool_turns(), 100, tools=WEATHER), sink)
    st = stats("13")
    assert st.text("role") == "tool" and st.text("prompt") == '"sunny"'
    assert sink.text.endswith('"SUNNY"')


def test_tool_result_after_a_transcript_is_a_user_turn(make_rt: Any) -> None:
    """Without keep_history the earlier turns (the call) go in front as text, which is not the JSON
    a role "tool" input must be: the run is a user turn with the result as a <tool_response> block."""
    rt = make_rt("13")
    rt.open()
    sink = Sink()
    rt.generate(GenerateInput(_tool_turns(), 100, tools=WEATHER), sink)
    st = stats("13")
    assert st.text("role") == "user"
    assert st.text("prompt").endswith("\n\n<tool_response>\nsunny\n</tool_response>")
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in st.text("prompt")
    assert sink.text.endswith("SUNNY </TOOL_RESPONSE>")


def test_tools_in_the_system_prompt_without_the_tool_api(make_rt: Any) -> None:
    """1.2.0 has no rkllm_set_function_tools: the Hermes block is in the system prompt, results as text."""
    rt = make_rt("120")
    rt.open()
    rt.generate(GenerateInput(_tool_turns(), 100, tools=WEATHER), Sink())
    st = stats("120")
    assert "<tools>" in st.text("system_prompt") and '"get_weather"' in st.text("system_prompt")
    assert st.text("prompt").endswith("<tool_response>\nsunny\n</tool_response>")
