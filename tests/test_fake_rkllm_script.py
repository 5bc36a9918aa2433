"""The RKLLM double's FAKE_RKLLM_SCRIPT: canned replies for prompts a real client writes.

The end-to-end test with a real Home Assistant relies on it (HA writes the prompt, so no ``[[say]]``
directive can be put in it); here each rule of the file format is checked through RkllmRuntime.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from rkllmd.runtime.rkllm.runtime import RkllmRuntime
from rkllmd.runtime.rkllm.settings import RkllmSettings
from tests.rkllm_conftest_fixtures import ask, expected_text, fake_library, model_settings


def line(role: str, needle: str, say: str) -> str:
    return f"{role}\t{needle}\t{base64.b64encode(say.encode()).decode()}\n"


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[RkllmRuntime]:
    model = tmp_path / "model.rkllm"
    model.write_bytes(b"not really a model")
    r = RkllmRuntime("m", model_settings(model, fake_library("13")), RkllmSettings())
    r.open()
    yield r
    r.close()


def reply(rt: RkllmRuntime, text: str) -> str:
    out: list[str] = []
    rt.generate(ask(text), lambda delta, _id: out.append(delta))
    return "".join(out)


def test_first_matching_line_of_the_role_is_said(
    rt: RkllmRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first line whose role fits the run and whose needle is in the prompt gives the text."""
    script = tmp_path / "script.tsv"
    call = '<tool_call>\n{"name": "HassTurnOn", "arguments": {"name": "Kitchen Light"}}\n</tool_call>'
    script.write_text(
        line("tool", "kitchen", "not for a user run")
        + "a line without tabs\n"
        + line("user", "kitchen light", call)
        + line("*", "kitchen", "second match, never said")
        + line("*", "garden", "any role")
    )
    monkeypatch.setenv("FAKE_RKLLM_SCRIPT", str(script))
    assert reply(rt, "Turn on the kitchen light") == call
    assert reply(rt, "water the garden") == "any role"
    assert reply(rt, "hello there") == expected_text("hello there")  # no match: the usual words
    assert reply(rt, "kitchen [[say=aGk=]]") == "hi"  # a directive in the prompt wins


def test_unreadable_script_gives_the_usual_words(
    rt: RkllmRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_RKLLM_SCRIPT", str(tmp_path / "missing.tsv"))
    assert reply(rt, "kitchen light") == expected_text("kitchen light")
