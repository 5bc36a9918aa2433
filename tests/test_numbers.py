"""Numbers as clients send them, on every interface: whole-number floats for integers, no
non-finite numbers, and a plugin's request that always reaches its final reply.

What the clients send, read from their code:
- Home Assistant 2026.11.0, homeassistant/components/ollama/entity.py and config_flow.py: the
  agent's ``num_ctx`` comes from a NumberSelector (stored as a float: ``8192.0``, or the int
  constant 8192 when never edited) and is sent as ``options={"num_ctx": ...}``.
- Home Assistant 2025.4.4, homeassistant/components/ollama/conversation.py: the same options, and
  ``keep_alive=f"{keep_alive}s"``, so a float setting sends ``"-1.0s"``.
- Home Assistant 2026.11.0, homeassistant/components/llama_cpp/entity.py: ``max_tokens``,
  ``top_p`` and ``temperature`` from NumberSelectors (``3000.0`` once edited).
- Ollama (github ollama/ollama, api/types.go ``Options.FromMap``): an integer option takes a JSON
  float ("when JSON unmarshals numbers, it uses float64, not int"); a string or a bool is refused
  ("option %q must be of type integer"). ``Duration.UnmarshalJSON``: keep_alive is a number of
  seconds or a Go duration string.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from rkllmd import protocol
from rkllmd.commands import COMMANDS
from rkllmd.errors import NotFound, RkllmdError
from rkllmd.exchange import Exchange, Final
from rkllmd.ingress import Gate, admit
from rkllmd.plugins.builtin._httpconfig import HttpError
from rkllmd.plugins.builtin._relay import Item, Relay, Slot, Waiter
from rkllmd.plugins.builtin.http import wire as openai_wire
from rkllmd.plugins.builtin.ollama import wire as ollama_wire
from rkllmd.protocol import LocalMessage, Topics
from rkllmd.settings import Settings

NON_FINITE = ["1e999", "-1e999", "NaN", "Infinity", "-Infinity"]
# The generate request's numeric fields (docs/PROTOCOL.md), written out: the test states the contract.
INTEGERS = ["max_tokens", "top_k", "seed"]
NUMBERS = [*INTEGERS, "temperature", "top_p", "repeat_penalty", "frequency_penalty", "presence_penalty"]
SETTINGS = Settings.model_validate({})


def with_number(body: dict[str, Any], path: list[str], literal: str) -> bytes:
    """``body`` as JSON text with the number at ``path`` written as ``literal`` (1e999, NaN, ...)."""
    obj = json.loads(json.dumps(body))
    cur = obj
    for key in path[:-1]:
        cur = cur.setdefault(key, {})
    cur[path[-1]] = "@NUMBER@"
    return json.dumps(obj).replace('"@NUMBER@"', literal).encode()


# --- MQTT ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", INTEGERS)
def test_mqtt_integer_fields_take_whole_floats(name: str) -> None:
    """max_tokens, top_k and seed take 40.0 as 40; 40.5, true and "40" are wrong_type naming the field."""
    req = protocol.validate(COMMANDS["generate"], {"prompt": "x", name: 40.0})
    assert getattr(req, name) == 40 and isinstance(getattr(req, name), int)
    for bad in (40.5, True, "40"):
        with pytest.raises(RkllmdError) as err:
            protocol.validate(COMMANDS["generate"], {"prompt": "x", name: bad})
        assert err.value.code == "wrong_type" and f"{name}: expected an integer" in err.value.message


@pytest.mark.parametrize("literal", NON_FINITE)
@pytest.mark.parametrize("name", NUMBERS)
def test_mqtt_payload_refuses_non_finite_numbers(name: str, literal: str) -> None:
    """Every numeric field: 1e999, -1e999, NaN and Infinity are bad_json, saying why."""
    with pytest.raises(RkllmdError) as err:
        protocol.decode_payload(with_number({"prompt": "x"}, [name], literal), COMMANDS["generate"], 65536)
    assert err.value.code == "bad_json" and "finite numbers only" in err.value.message


# --- the OpenAI API -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens", "seed", "top_k", "n"])
def test_openai_integer_fields_take_whole_floats(name: str) -> None:
    """HA's llama_cpp integration sends max_tokens as its NumberSelector stored it (3000.0)."""
    body = {"messages": [{"role": "user", "content": "hi"}], name: 1.0}
    ask = openai_wire.parse("chat", body)
    target = "max_tokens" if name == "max_completion_tokens" else name
    if name != "n":
        assert ask.fields[target] == 1 and isinstance(ask.fields[target], int)
    for bad in (1.5, True, "1"):
        with pytest.raises(openai_wire.ApiError) as err:
            openai_wire.parse("chat", {**body, name: bad})
        assert err.value.status == 400 and err.value.code == "invalid_type" and err.value.param == name


@pytest.mark.parametrize("literal", NON_FINITE)
def test_openai_body_refuses_non_finite_numbers(literal: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(openai_wire.ApiError) as err:
        openai_wire.decode_body(with_number(body, ["temperature"], literal))
    assert err.value.status == 400 and err.value.code == "bad_json"
    assert "finite numbers only" in err.value.message


# --- the Ollama API -----------------------------------------------------------------------------


def test_ollama_options_as_home_assistant_sends_them() -> None:
    """num_ctx 8192.0 and num_predict/top_k/seed as whole floats are Ollama's integers."""
    ask = ollama_wire.parse(
        "chat",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "options": {
                "num_ctx": 8192.0,
                "num_predict": 100.0,
                "top_k": 40.0,
                "seed": 7.0,
                "temperature": 1,
            },
            "keep_alive": "-1.0s",  # HA 2025.4.4's f"{keep_alive}s" of a float setting
        },
    )
    assert ask.num_ctx == 8192 and isinstance(ask.num_ctx, int)
    assert ask.fields["max_tokens"] == 100 and ask.fields["top_k"] == 40 and ask.fields["seed"] == 7
    assert all(isinstance(ask.fields[k], int) for k in ("max_tokens", "top_k", "seed"))
    assert ask.fields["temperature"] == 1.0 and ask.keep_alive_s is None


@pytest.mark.parametrize("name", ["num_ctx", "num_predict", "top_k", "seed"])
@pytest.mark.parametrize("bad", [4096.5, True, "4096"])
def test_ollama_integer_options_refuse_fractions_bools_and_strings(name: str, bad: Any) -> None:
    """Ollama refuses a string or a bool for an integer option too; rkllmd also refuses 4096.5."""
    with pytest.raises(HttpError) as err:
        ollama_wire.parse("chat", {"messages": [{"role": "user", "content": "hi"}], "options": {name: bad}})
    assert err.value.status == 400
    assert f"invalid type for options.{name}: expected an integer" in err.value.message


@pytest.mark.parametrize("literal", NON_FINITE)
def test_ollama_body_refuses_non_finite_numbers(literal: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(HttpError) as err:
        ollama_wire.decode_body(with_number(body, ["options", "temperature"], literal))
    assert err.value.status == 400 and "finite numbers only" in err.value.message


# --- every injected request reaches its relay ---------------------------------------------------


def test_a_refused_local_message_reaches_its_relay_whatever_its_payload() -> None:
    """Ingress refuses bytes it cannot read (here Infinity, as the plugins once re-encoded 1e999):
    the refusal still carries the LocalMessage's key, so the plugin's relay gets its final."""
    relay = Relay()
    gate = Gate(SETTINGS, Topics("B"), lambda ex: ex)

    async def one(payload: bytes) -> Item:  # the relay's queues live on the plugin's event loop
        with relay.track("nonce-1") as slot:
            out = admit(LocalMessage("B/request/generate", payload, key="nonce-1"), gate)
            assert isinstance(out, Final) and out.code == "bad_json"
            relay.route(out)
            return await asyncio.wait_for(slot.items.get(), 1)

    for payload in (b'{"id":"http-1","prompt":"x","temperature":Infinity}', b"{not json", b'["x"]'):
        got = asyncio.run(one(payload))
        assert isinstance(got, Final) and got.code == "bad_json"


def test_an_mqtt_request_is_never_routed_to_a_plugin_slot() -> None:
    """An MQTT request reusing the id and transaction of a plugin's request has no key: not routed."""
    relay = Relay()
    gate = Gate(SETTINGS, Topics("B"), lambda ex: ex)

    async def routed() -> bool:
        with relay.track("nonce-1") as slot:
            out = admit(
                protocol.Incoming("B/request/generate", b'{"id":"http-1","transaction":"nonce-1"}'), gate
            )
            assert isinstance(out, Final)
            relay.route(out)
            await asyncio.sleep(0)  # an event routed to the slot would be in its queue by now
            return not slot.items.empty()

    assert not asyncio.run(routed())


def test_a_waiter_past_its_deadline_answers_an_error_and_gives_up_cancelling() -> None:
    """No final reply ever comes (a lost request): the waiter answers internal_error once its
    deadline passes, and its cancel, never finding the request, stops trying."""
    cancels: list[int] = []

    def cancel() -> None:
        cancels.append(1)
        raise NotFound("no such request")

    async def wait() -> Final:
        return await Waiter(Slot(), cancel, deadline_s=0.3, abandon_s=0.5).final()

    final = asyncio.run(wait())
    assert final.status == "error" and final.code == "internal_error"
    assert "no answer within" in (final.error or "") and cancels


def test_abandon_ends_when_the_final_reply_comes() -> None:
    """A cancel of a request not yet found stops as soon as its final reply arrives."""

    def cancel() -> None:
        raise NotFound("not yet")

    async def abandon() -> bool:
        slot = Slot()
        slot.put(Final(Exchange("generate", "t"), "error", {}, "bad_json", "x"))
        return await Waiter(slot, cancel, deadline_s=60).abandon()

    assert asyncio.run(abandon())


def test_a_local_message_ingress_fails_on_still_gets_a_final_for_its_relay() -> None:
    """Should ingress itself fail on a plugin's message (a bug), the plugin still gets a final
    reply under its key: its client is answered, not left waiting."""
    from rkllmd.ingress import Ingress
    from tests.test_ingress_acks import Loop, Out, Plugins

    class Broken(Plugins):
        def handles(self, topic: str) -> bool:
            raise RuntimeError("a bug in a plugin host")

    out = Out()
    ingress = Ingress(SETTINGS, Topics("B"), Broken(), Loop(), out)  # type: ignore[arg-type]
    ingress._handle_guarded(LocalMessage("B/request/generate", b'{"prompt":"x"}', key="nonce-9"))
    [final] = out.events
    assert isinstance(final, Final) and final.status == "error" and final.code == "internal_error"
    relay = Relay()

    async def routed() -> Item:
        with relay.track("nonce-9") as slot:
            relay.route(final)
            return await asyncio.wait_for(slot.items.get(), 1)

    assert asyncio.run(routed()) is not None
