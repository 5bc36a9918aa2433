"""RKLLM 1.3.1: its layout (1.3.0 with an audio part appended to the multimodal input) proven by
size and offset on both sides, and a library with the 1.3.1 SDK line served through the runtime,
the double checking the size of the input struct it receives."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from ctypes import POINTER, Structure, c_uint8, cast, pointer
from pathlib import Path
from typing import Any

import pytest
import structlog

from rkllmd.errors import LibraryVersionError
from rkllmd.generation import ChatMessage, GenerateInput, ToolCall
from rkllmd.runtime.rkllm import _abi_1_3
from rkllmd.runtime.rkllm import _abi_common as c
from rkllmd.runtime.rkllm._lib import RkllmLibrary
from rkllmd.runtime.rkllm.runtime import RkllmRuntime
from rkllmd.runtime.rkllm.settings import RkllmSettings
from tests.fake_rkllm.build import build_fake, probe_layout
from tests.rkllm_conftest_fixtures import (
    BUILD_DIR,
    FakeIntrospect,
    ask,
    expected_text,
    fake_library,
    model_settings,
)

LP64 = ctypes.sizeof(ctypes.c_void_p) == 8 and ctypes.sizeof(ctypes.c_size_t) == 8


def _abs(cls: type[Structure], path: str) -> int:
    """Absolute offset of a dotted member such as ``multimodal_input.audio.n_audio``."""
    offset, current = 0, cls
    for part in path.split("."):
        offset += getattr(current, part).offset
        fields = dict((f[0], f[1]) for f in current._fields_)
        if part not in fields:  # a member of the anonymous union
            union = fields["u"]
            fields = dict((f[0], f[1]) for f in union._fields_)
        current = fields[part]
    return offset


@pytest.mark.skipif(not LP64, reason="the figures are those of an LP64 target (aarch64, x86_64)")
def test_aarch64_figures_of_the_1_3_1_layout() -> None:
    """The issue's figures, by ctypes and by gcc's sizeof/offsetof on the double's header.

    On LP64 every member of the three sub-structs is 8 bytes (pointer or size_t), so the audio
    part is 6 x 8 = 48 bytes appended at 8 + 64 + 72 = 144: 144 -> 192, RKLLMInput 16 + 192 = 208.
    AArch64 and x86_64 lay these structs out alike (fact sheet), so this is the board's layout too.
    """
    assert ctypes.sizeof(_abi_1_3.RKLLMAudioInput) == 6 * 8 == 48
    assert ctypes.sizeof(_abi_1_3.RKLLMMultiModalInput) == 144
    assert ctypes.sizeof(_abi_1_3.RKLLMMultiModalInput131) == 144 + 48 == 192
    assert ctypes.sizeof(_abi_1_3.RKLLMInput) == 160
    assert ctypes.sizeof(_abi_1_3.RKLLMInput131) == 16 + 192 == 208
    for cls in (_abi_1_3.RKLLMInput, _abi_1_3.RKLLMInput131):
        assert _abs(cls, "prompt_input") == _abs(cls, "multimodal_input") == 16  # the union stays put
        assert (_abs(cls, "role"), _abs(cls, "enable_thinking"), _abs(cls, "input_type")) == (0, 8, 12)
    audio = {
        "audio_embed": 160,
        "n_audio_tokens": 168,
        "n_audio": 176,
        "audio_start": 184,
        "audio_end": 192,
        "audio_content": 200,
    }
    for field, off in audio.items():
        assert _abs(_abi_1_3.RKLLMInput131, f"multimodal_input.audio.{field}") == off, field
    # the image and video parts do not move
    for path in ("multimodal_input.image.image_height", "multimodal_input.video.frame_height"):
        assert _abs(_abi_1_3.RKLLMInput131, path) == _abs(_abi_1_3.RKLLMInput, path)

    c130, c131 = probe_layout("13", BUILD_DIR), probe_layout("131", BUILD_DIR)
    assert (c130["RKLLMMultiModalInput"]["size"], c131["RKLLMMultiModalInput"]["size"]) == (144, 192)
    assert (c130["RKLLMInput"]["size"], c131["RKLLMInput"]["size"]) == (160, 208)
    assert c131["RKLLMMultiModalInput"]["fields"]["audio"] == 144
    assert c131["RKLLMInput"]["fields"]["multimodal_input"] == 16
    assert c131["RKLLMAudioInput"]["fields"] == {k: v - 160 for k, v in audio.items()}


def test_1_3_1_changes_nothing_but_the_multimodal_input() -> None:
    """Every other struct of the 1.3.1 double equals 1.3.0's, and the spec shares their classes."""
    c130, c131 = probe_layout("13", BUILD_DIR), probe_layout("131", BUILD_DIR)
    changed = {"RKLLMMultiModalInput", "RKLLMInput", "RKLLMAudioInput"}
    assert set(c131) - set(c130) == {"RKLLMAudioInput"}
    for name in set(c130) - changed:
        assert c131[name] == c130[name], name
    s130, s131 = _abi_1_3.SPEC, _abi_1_3.SPEC_1_3_1
    for attr in ("Param", "ExtendParam", "InferParam", "Result", "Callback", "SamplingParam"):
        assert getattr(s131, attr) is getattr(s130, attr), attr
    assert s131.Input is _abi_1_3.RKLLMInput131 and s131.family == "F'" and s130.family == "F"


# ---- served through the runtime --------------------------------------------------------------


@pytest.fixture
def rt131(tmp_path: Path) -> Iterator[Any]:
    model = tmp_path / "model.rkllm"
    model.write_bytes(b"not really a model")
    opened: list[RkllmRuntime] = []

    def make(**cfg: Any) -> RkllmRuntime:
        rt = RkllmRuntime("m", model_settings(model, fake_library("131"), **cfg), RkllmSettings())
        rt.open()
        opened.append(rt)
        return rt

    yield make
    for rt in opened:
        rt.close()


def stats() -> FakeIntrospect:
    return FakeIntrospect(fake_library("131"))


def test_a_1_3_1_library_is_served_with_its_own_struct_size(rt131: Any) -> None:
    """The SDK line places it, the load log says where the layout comes from, and the input struct
    the double receives is 1.3.1's: 208 bytes, nothing stray after the prompt pointer."""
    with structlog.testing.capture_logs() as logs:
        rt = rt131()
    assert (rt.lib.version, rt.lib.detection.method) == ("1.3.1", "string")
    loaded = next(e for e in logs if e["event"] == "rkllm_library_loaded")
    assert loaded["version"] == "1.3.1" and loaded["abi_family"] == "F'"
    assert "second-hand" in loaded["layout_source"] and "not reachable" in loaded["layout_source"]
    st = stats()
    st.reset()
    sink: list[str] = []
    res = rt.generate(ask("alpha beta gamma", max_tokens=3), lambda text, _id: sink.append(text))
    assert "".join(sink) == expected_text("alpha beta gamma") and res.finish_reason in ("stop", "length")
    assert st.stat("run") == 1
    assert st.stat("input_size") == ctypes.sizeof(rt.lib.spec.Input) == 208
    assert st.stat("input_stray_bytes") == 0


def test_the_double_notices_an_input_struct_of_the_1_3_0_size(rt131: Any) -> None:
    """The check can fail: a 160-byte (1.3.0) input followed by other memory shows up as stray bytes."""
    rt = rt131()

    class Short(Structure):  # a 1.3.0 RKLLMInput and whatever memory comes after it
        _fields_ = [("inp", _abi_1_3.RKLLMInput), ("after", c_uint8 * 48)]

    buf = Short()
    ctypes.memset(buf.after, 0xA5, 48)
    buf.inp.role = b"user"
    buf.inp.input_type = c.RKLLM_INPUT_PROMPT
    buf.inp.prompt_input = b"one two"
    infer = rt.lib.spec.InferParam()
    st = stats()
    as131 = cast(pointer(buf), POINTER(_abi_1_3.RKLLMInput131)).contents
    assert rt.handle.run(as131, infer) == 0
    assert st.stat("input_size") == 208 and st.stat("input_stray_bytes") == 48


def test_audio_fields_arrive_where_the_double_reads_them(rt131: Any) -> None:
    """A multimodal input written through ctypes is read by the C side at the same offsets."""
    rt = rt131()
    inp = _abi_1_3.RKLLMInput131()
    inp.role = b"user"
    inp.input_type = c.RKLLM_INPUT_MULTIMODAL
    mm = inp.multimodal_input
    mm.prompt = b"<audio> what is said"
    mm.image.n_image = 0
    mm.video.n_video = 0
    mm.audio.n_audio = 2
    mm.audio.n_audio_tokens = 750
    mm.audio.audio_start = b"<|audio_bos|>"
    mm.audio.audio_content = b"<|AUDIO|>"
    st = stats()
    assert rt.handle.run(inp, rt.lib.spec.InferParam()) == 0
    assert (st.stat("last_n_audio"), st.stat("last_n_audio_tokens")) == (2, 750)
    assert (st.text("audio_start"), st.text("audio_content")) == ("<|audio_bos|>", "<|AUDIO|>")
    assert st.text("prompt") == "<audio> what is said"


def _tool_turns(result: str) -> tuple[ChatMessage, ...]:
    return (
        ChatMessage("user", "weather in Paris?"),
        ChatMessage("assistant", "", (ToolCall("c1", "get_weather", {"city": "Paris"}),)),
        ChatMessage("tool", result, tool_call_id="c1"),
    )


WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize(
    ("result", "sent"),
    [("sunny and warm", '"sunny and warm"'), ('{"temp": 21}', '{"temp": 21}'), ("", '""'), ("NaN", '"NaN"')],
)
def test_a_tool_result_goes_as_json_text(rt131: Any, result: str, sent: str) -> None:
    """1.3.1 refuses a role "tool" input that is not JSON: rkllmd sends JSON as it is, other text
    as a JSON string, and the run succeeds."""
    rt = rt131(keep_history=True)  # the result alone is the input (no transcript in front)
    st = stats()
    st.reset()
    rt.generate(GenerateInput(_tool_turns(result), 20, tools=WEATHER), lambda _t, _i: None)
    assert st.text("role") == "tool" and st.text("prompt") == sent
    assert st.stat("tool_not_json") == 0 and st.stat("run") == 1


def test_tool_results_after_a_transcript_go_as_text_in_a_user_turn(rt131: Any) -> None:
    """Without keep_history the earlier turns are text in front of the results, which is not JSON:
    the run is a user turn with the results as <tool_response> blocks."""
    rt = rt131()
    st = stats()
    st.reset()
    rt.generate(GenerateInput(_tool_turns("sunny"), 20, tools=WEATHER), lambda _t, _i: None)
    assert st.text("role") == "user" and st.text("prompt").endswith(
        "<tool_response>\nsunny\n</tool_response>"
    )
    assert st.stat("tool_not_json") == 0


def test_the_double_refuses_a_tool_input_that_is_not_json(rt131: Any) -> None:
    """What the rule guards against: role "tool" with plain text makes rkllm_run return -1."""
    rt = rt131()
    inp = rt.lib.spec.Input()
    inp.role = b"tool"
    inp.input_type = c.RKLLM_INPUT_PROMPT
    inp.prompt_input = b"sunny and warm"
    st = stats()
    st.reset()
    assert rt.handle.run(inp, rt.lib.spec.InferParam()) == -1
    assert st.stat("tool_not_json") == 1 and st.stat("run") == 0


def test_a_release_after_1_3_1_is_refused() -> None:
    """A 1.3.2 SDK line is refused by name, newer than the newest layout known."""
    lib = build_fake("131", BUILD_DIR, version="1.3.2")
    with pytest.raises(LibraryVersionError) as ei:
        RkllmLibrary.open(lib)
    msg = str(ei.value)
    assert "is RKLLM runtime 1.3.2 (by its RKLLM SDK line), which rkllmd does not support" in msg
    assert "newer than 1.3.1" in msg and 'runtime_version = "1.3.1"' in msg
