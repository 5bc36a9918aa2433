"""The sampling options are declared once (rkllmd.generation.Sampling) and every interface and
runtime reads that declaration: an option added there reaches the runtime's input from an MQTT
request, an OpenAI request and an Ollama request, or a test here fails naming it."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest

from rkllmd.exchange import Exchange
from rkllmd.generation import SAMPLING_OPTIONS, Option, Sampling
from rkllmd.ingress import Gate, admit
from rkllmd.plugins.builtin.http import wire as openai_wire
from rkllmd.plugins.builtin.ollama import wire as ollama_wire
from rkllmd.protocol import GENERATE_NUMBERS, Incoming, LocalMessage, Topics
from rkllmd.runtime.registry import kinds
from rkllmd.runtime.rkllm._lib import SUPPORTED, spec_for
from rkllmd.runtime.rkllm.param import SAMPLING as RKLLM_SAMPLING
from rkllmd.settings import Settings

DOCS = Path(__file__).resolve().parent.parent / "docs"
GATE = Gate(Settings.model_validate({}), Topics("B"), lambda ex: ex)
IDS = [o.name for o in SAMPLING_OPTIONS]


def wire_value(option: Option) -> Any:
    """The option's example as JSON carries it (stop strings as an array)."""
    return list(option.example) if option.kind == "strings" else option.example


def sampled(fields: dict[str, Any], *, local: bool) -> Sampling:
    """The runtime's sampling for a generate request with ``fields``, through real admission."""
    payload = json.dumps({"id": "s-1", **fields}).encode()
    msg = (
        LocalMessage("B/request/generate", payload, key="k")
        if local
        else Incoming("B/request/generate", payload)
    )
    out = admit(msg, GATE)
    assert isinstance(out, Exchange), out
    assert out.inp is not None
    return out.inp.sampling


def expect(option: Option, sampling: Sampling) -> None:
    got = getattr(sampling, option.name)
    assert got == option.example, f"{option.name}: sent {option.example!r}, the runtime got {got!r}"
    assert got != getattr(Sampling(), option.name), "the example must differ from the default"


@pytest.mark.parametrize("option", SAMPLING_OPTIONS, ids=IDS)
def test_every_option_reaches_the_runtime_from_mqtt(option: Option) -> None:
    expect(option, sampled({"prompt": "hi", option.name: wire_value(option)}, local=False))


@pytest.mark.parametrize("option", SAMPLING_OPTIONS, ids=IDS)
@pytest.mark.parametrize("kind", ["chat", "text"])
def test_every_option_reaches_the_runtime_from_openai(option: Option, kind: openai_wire.Kind) -> None:
    assert option.openai, f"{option.name} has no OpenAI name: give it one, or say here why not"
    body: dict[str, Any] = {"model": "m", option.openai: wire_value(option)}
    body |= {"messages": [{"role": "user", "content": "hi"}]} if kind == "chat" else {"prompt": "hi"}
    expect(option, sampled(openai_wire.parse(kind, body).fields, local=True))


@pytest.mark.parametrize("option", SAMPLING_OPTIONS, ids=IDS)
@pytest.mark.parametrize("kind", ["chat", "generate"])
def test_every_option_reaches_the_runtime_from_ollama(option: Option, kind: ollama_wire.Kind) -> None:
    assert option.ollama, f"{option.name} has no Ollama option name: give it one, or say here why not"
    body: dict[str, Any] = {"options": {option.ollama: wire_value(option)}}
    body |= {"messages": [{"role": "user", "content": "hi"}]} if kind == "chat" else {"prompt": "hi"}
    ask = ollama_wire.parse(kind, body)
    assert not ask.ignored
    expect(option, sampled(ask.fields, local=True))


@pytest.mark.parametrize("option", SAMPLING_OPTIONS, ids=IDS)
def test_every_option_is_checked_against_its_declared_bounds(option: Option) -> None:
    """A value past a bound is refused on MQTT as bad_request naming the field."""
    step = 1 if option.kind == "integer" else 1e-3
    past = {"ge": -step, "gt": 0, "le": step}  # how far past each bound
    for bound, offset in past.items():
        limit = getattr(option, bound)
        if limit is None:
            continue
        value = limit + offset
        payload = json.dumps({"prompt": "x", option.name: value}).encode()
        out = admit(Incoming("B/request/generate", payload), GATE)
        assert not isinstance(out, Exchange), f"{option.name}={value} passed its bound {bound}"
        assert out.code == "bad_request" and option.name in (out.error or "")


def test_the_numbers_table_is_the_declaration() -> None:
    numeric = {o.name: o.kind for o in SAMPLING_OPTIONS if o.kind != "strings"}
    assert {"max_tokens": "integer", "max_thinking_tokens": "integer", **numeric} == GENERATE_NUMBERS


def test_every_option_is_honoured_by_a_runtime_and_every_runtime_honours_declared_options() -> None:
    declared = {o.name for o in SAMPLING_OPTIONS}
    honoured: set[str] = set()
    for kind in kinds().values():
        assert kind.sampling <= declared, f"{kind.name} honours undeclared {kind.sampling - declared}"
        honoured |= kind.sampling
    assert honoured == declared, f"declared but no runtime honours: {declared - honoured}"


def test_llamacpp_passes_its_options_under_names_llama_generate_takes() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    from rkllmd.runtime.llamacpp.sampling import SAMPLING

    params = inspect.signature(llama_cpp.Llama.generate).parameters
    assert set(SAMPLING.values()) <= set(params), set(SAMPLING.values()) - set(params)


@pytest.mark.parametrize("version", sorted(SUPPORTED))
def test_rkllm_sets_its_options_on_fields_the_structs_have(version: str) -> None:
    """ctypes takes an unknown attribute silently, so a misspelt field would sample nothing."""
    spec = spec_for(version)
    structs = [spec.Param] + ([spec.SamplingParam] if spec.SamplingParam is not None else [])
    for struct in structs:
        names = {f[0] for f in struct._fields_}  # type: ignore[misc]
        assert set(RKLLM_SAMPLING) <= names, f"{struct.__name__} lacks {set(RKLLM_SAMPLING) - names}"


@pytest.mark.parametrize("option", SAMPLING_OPTIONS, ids=IDS)
def test_every_option_is_documented_on_each_interface(option: Option) -> None:
    protocol_md = (DOCS / "PROTOCOL.md").read_text()
    assert f"| `{option.name}`" in protocol_md or f"`{option.name}` |" in protocol_md
    assert f"`{option.openai}`" in (DOCS / "HTTP.md").read_text()
    assert f"`{option.ollama}`" in (DOCS / "HOMEASSISTANT.md").read_text()


def test_every_honoured_number_has_a_model_default() -> None:
    """A runtime reads ``Sampling.value(name, cfg)``: the request's value, else the model's. An
    option a runtime honours needs a key in that runtime's [models.X] table, or runs would get None."""
    for kind in kinds().values():
        numbers = {o.name for o in SAMPLING_OPTIONS if o.kind != "strings" and o.name in kind.sampling}
        missing = numbers - set(kind.settings.model_fields)
        assert not missing, f"[models.X] of runtime {kind.name} has no default for {missing}"
