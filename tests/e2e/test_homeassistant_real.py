"""A real Home Assistant turns a light on and off through rkllmd, set up as its users set it up.

Home Assistant (2025.4.4, see tests/e2e/ha_install.py for why that one) is installed once into a
cache outside the repository, started on a config dir in tmp with the integrations this needs, and
onboarded through its REST API. Its core **Ollama** integration is added through its config flow
and configured through its options flow with exactly what HA's frontend submits: the form's
pre-filled values (the frontend fills each field with its ``suggested_value``), "Control Home
Assistant" set to Assist, numbers as JSON numbers, which HA's NumberSelector stores as floats, so
HA sends ``"options": {"num_ctx": 8192.0}`` and ``"keep_alive": "-1.0s"`` (read in HA 2025.4.4:
components/ollama/config_flow.py, conversation.py; helpers/selector.py NumberSelector). A template
light backed by an input_boolean is exposed to Assist with the websocket command the Expose tab
uses, and the turn goes through HA's conversation API to the agent.

rkllmd runs its ``ollama`` plugin with default settings on the RKLLM C double. The double answers
HA's own prompt from a script (FAKE_RKLLM_SCRIPT, tests/fake_rkllm/fake_rkllm.c): to the user's
words it answers with a Hermes ``<tool_call>`` of the intent HA offered, to the tool result with a
sentence; rkllmd turns the markup into Ollama's ``tool_calls`` and HA runs the intent for real.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rkllmd.bench.broker import free_port
from tests.e2e.conftest import rkllm_config
from tests.e2e.ha_client import HaApi, HaError, Recorder
from tests.e2e.ha_install import HA_VERSION, HassProc, ensure_installed, find_python
from tests.helpers import Broker, DaemonProc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # the first run installs HA (minutes)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CHAT_FIXTURE = FIXTURES / f"ha_{HA_VERSION.replace('.', '_')}_chat_request.json"
AGENT_DOMAIN = "conversation."
LIGHT, POWER = "light.kitchen_light", "input_boolean.kitchen_light_power"
TURN_S = 60.0  # one conversation turn: two rounds through rkllmd on the double

CONFIGURATION = """\
homeassistant:
  name: rkllmd test home
  time_zone: UTC
  unit_system: metric
  country: DE
  language: en
http:
  server_host: 127.0.0.1
  server_port: {port}
conversation:
logger:
  default: warning
  logs:
    homeassistant.components.ollama: debug
input_boolean:
  kitchen_light_power:
    name: Kitchen light power
template:
  - light:
      - name: Kitchen Light
        unique_id: rkllmd_test_kitchen_light
        state: "{{{{ is_state('input_boolean.kitchen_light_power', 'on') }}}}"
        turn_on:
          action: input_boolean.turn_on
          target:
            entity_id: input_boolean.kitchen_light_power
        turn_off:
          action: input_boolean.turn_off
          target:
            entity_id: input_boolean.kitchen_light_power
"""


def hermes_call(name: str, arguments: dict[str, Any]) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


# The double's script: (role, words in the run's prompt, what it says; the first line that matches
# wins). A tool result comes back after a transcript of the turn so far, the model's call included
# as Hermes writes it, so the result lines come first and look for that call: since the RKLLM
# runtime sends a tool result that follows a transcript as a user turn (`<tool_response>`, 1.3.1's
# rule that a role "tool" input is JSON alone), their role is "*".
SCRIPT = [
    ("*", '{"name": "HassTurnOn", "arguments"', "The kitchen light is on now."),
    ("*", '{"name": "HassTurnOff", "arguments"', "The kitchen light is off now."),
    ("user", "Turn on the kitchen light", hermes_call("HassTurnOn", {"name": "Kitchen Light"})),
    ("user", "Turn off the kitchen light", hermes_call("HassTurnOff", {"name": "Kitchen Light"})),
]


def write_script(path: Path) -> Path:
    lines = [f"{role}\t{needle}\t{base64.b64encode(say.encode()).decode()}" for role, needle, say in SCRIPT]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Home:
    api: HaApi
    hass: HassProc
    rkllmd: DaemonProc
    recorder: Recorder
    agent: str  # the conversation entity of the Ollama agent


@pytest.fixture(scope="module")
def hass_bin() -> Path:
    python, why = find_python()
    if python is None:
        pytest.skip(why)
    return ensure_installed(python)


@pytest.fixture
def home(hass_bin: Path, broker: Broker, fake_libs: dict[str, Path], tmp_path: Path) -> Iterator[Home]:
    # rkllmd as a user runs it for HA: the ollama plugin with its defaults, on loopback, no key
    # (HA 2025.4's Ollama integration has no API-key field).
    ollama_port = free_port()
    cfg = rkllm_config(tmp_path, broker, fake_libs["1.3"], "hareal", limits={"max_payload_bytes": 1 << 20})
    with cfg.open("a") as f:
        f.write(f'\n[plugins]\nenabled = ["ollama"]\n[plugins.ollama]\nport = {ollama_port}\n')
    env = {"FAKE_RKLLM_SCRIPT": str(write_script(tmp_path / "double-script.tsv"))}
    config_dir = tmp_path / "ha-config"
    config_dir.mkdir()
    port = free_port()
    (config_dir / "configuration.yaml").write_text(CONFIGURATION.format(port=port))
    with contextlib.ExitStack() as stack:  # stops what was started, whatever fails
        codes: dict[str, int] = {}
        daemon = DaemonProc(cfg, tmp_path, env=env)
        stack.callback(lambda: codes.setdefault("rkllmd", daemon.stop()))
        recorder = Recorder(ollama_port)
        stack.callback(recorder.close)
        hass = HassProc(hass_bin, config_dir, port)
        stack.callback(lambda: codes.setdefault("hass", hass.stop()))
        daemon.wait_log('"rkllmd ready"', timeout=30)  # model loaded, requests subscribed
        daemon.wait_log("Ollama-compatible API listening", timeout=30)
        started = hass.wait_ready()
        print(f"Home Assistant {HA_VERSION} answered {started:.1f} s after start")
        api = HaApi(hass.url)
        api.onboard()
        agent = add_ollama_agent(api, f"http://127.0.0.1:{recorder.port}")
        yield Home(api, hass, daemon, recorder, agent)
    assert codes == {"hass": 0, "rkllmd": 0}, hass.log_text()[-4000:]


def add_ollama_agent(api: HaApi, url: str) -> str:
    """Settings → Add Integration → Ollama, then Configure, submitted as the frontend submits them."""
    flow = api.post("/api/config/config_entries/flow", {"handler": "ollama", "show_advanced_options": False})
    assert flow["type"] == "form" and flow["step_id"] == "user", flow
    step = api.post(f"/api/config/config_entries/flow/{flow['flow_id']}", {"url": url})
    models = step["data_schema"][0]["selector"]["select"]["options"]
    assert {"label": "fake:latest (downloaded)", "value": "fake:latest"} in models, models
    done = api.post(f"/api/config/config_entries/flow/{flow['flow_id']}", {"model": "fake:latest"})
    assert done["type"] == "create_entry", done
    entry_id = done["result"]["entry_id"]
    options = api.post("/api/config/config_entries/options/flow", {"handler": entry_id})
    form = options_form_data(options["data_schema"])
    # The one choice the user makes: Control Home Assistant → Assist.
    hass_apis = next(f for f in options["data_schema"] if f["name"] == "llm_hass_api")
    assert {"label": "Assist", "value": "assist"} in hass_apis["selector"]["select"]["options"]
    form["llm_hass_api"] = "assist"
    assert form["num_ctx"] == 8192, form  # HA's pre-filled context window, above the model's 4096
    saved = api.post(f"/api/config/config_entries/options/flow/{options['flow_id']}", form)
    assert saved["type"] == "create_entry", saved
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the entry reloads with its new options
        agents = [s["entity_id"] for s in api.get("/api/states") if s["entity_id"].startswith(AGENT_DOMAIN)]
        entries = api.get("/api/config/config_entries/entry?domain=ollama")
        if entries and entries[0]["state"] == "loaded" and "conversation.fake" in agents:
            return "conversation.fake"
        time.sleep(0.2)
    raise AssertionError(f"the Ollama agent did not load: {entries} {agents}")


def options_form_data(schema: list[dict[str, Any]]) -> dict[str, Any]:
    """What HA's frontend puts in a flow form before the user touches it: each field's
    ``suggested_value``, else its ``default`` (frontend: computeInitialHaFormData)."""
    data: dict[str, Any] = {}
    for field in schema:
        suggested = (field.get("description") or {}).get("suggested_value")
        if suggested is not None:
            data[field["name"]] = suggested
        elif "default" in field:
            data[field["name"]] = field["default"]
    return data


def converse(home: Home, text: str) -> dict[str, Any]:
    """HA's answer to ``text``, or ``{"error": ...}`` with HA's status and body when it failed."""
    api = home.api
    api.timeout = TURN_S
    start = time.monotonic()
    try:
        reply = api.post(
            "/api/conversation/process", {"text": text, "language": "en", "agent_id": home.agent}
        )
    except HaError as err:
        return {"error": str(err)[:200]}
    finally:
        print(f"{text!r}: HA answered in {time.monotonic() - start:.2f} s")
    return dict(reply)


def why(home: Home, reply: dict[str, Any]) -> str:
    """What HA answered and why, for a failed turn: HA's own error lines and rkllmd's refusals
    (HA shows the user a bare 500 or rkllmd's sentence; the reason is in the logs)."""
    lines = home.hass.log_text().splitlines()
    errors = [line for line in lines if "Error" in line and ("ollama" in line or "conversation" in line)]
    said = speech(reply) or reply.get("error")
    return "\n".join(
        [f"HA answered: {said}", "HA's log:", *errors[-2:], "rkllmd's log:", *refusals(home.rkllmd)]
    )


def speech(reply: dict[str, Any]) -> str | None:
    """What HA says back (its conversation result's plain speech); None when the turn failed."""
    said = reply.get("response", {}).get("speech", {}).get("plain", {}).get("speech")
    return None if said is None else str(said)


def refusals(daemon: DaemonProc) -> list[str]:
    """The ollama plugin's log lines about requests it refused or failed."""
    lines = [line for line in daemon.log_text().splitlines() if "rkllmd.plugin.ollama" in line]
    return [line for line in lines if "refused" in line or "failed" in line][-3:]


def wait_state(api: HaApi, entity_id: str, want: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while (state := api.state(entity_id)) != want and time.monotonic() < deadline:
        time.sleep(0.1)
    return state


def test_assist_turns_the_light_on_and_off(home: Home) -> None:
    """Through HA's conversation API and its Ollama agent, the light goes on, then off, and HA says
    the model's answer."""
    api = home.api
    api.ws_command(
        {"type": "homeassistant/expose_entity", "assistants": ["conversation"], "entity_ids": [LIGHT]}
        | {"should_expose": True}
    )
    assert api.state(LIGHT) == "off"

    on = converse(home, "Turn on the kitchen light")
    chats = home.recorder.requests("/api/chat")
    show_and_keep(chats)
    assert speech(on) == "The kitchen light is on now.", why(home, on)
    assert wait_state(api, LIGHT, "on") == "on" and api.state(POWER) == "on"

    off = converse(home, "Turn off the kitchen light")
    assert speech(off) == "The kitchen light is off now.", why(home, off)
    assert wait_state(api, LIGHT, "off") == "off" and api.state(POWER) == "off"

    first = chats[0]
    assert first["options"] == {"num_ctx": 8192.0} and first["stream"] is True
    system = first["messages"][0]
    assert system["role"] == "system" and "Kitchen Light" in system["content"]
    assert {"HassTurnOn", "HassTurnOff"} <= {t["function"]["name"] for t in first["tools"]}
    # The round after the call: HA replays rkllmd's tool call and sends the intent's result.
    *_, call, result = chats[1]["messages"]
    turn_on = {"name": "HassTurnOn", "arguments": {"name": "Kitchen Light"}}
    assert call["tool_calls"] == [{"function": turn_on}]
    assert result["role"] == "tool" and json.loads(result["content"])["response_type"] == "action_done"


def show_and_keep(chats: list[dict[str, Any]]) -> None:
    """Print what HA sent; keep the first request as the fixture other work measures models on
    (rewritten only when RKLLMD_HA_SAVE_REQUEST=1, so a run never changes the repository)."""
    assert chats, "Home Assistant sent no /api/chat request"
    for i, body in enumerate(chats):
        print(f"--- Home Assistant's /api/chat request {i + 1}:\n{json.dumps(body, indent=1)[:6000]}")
    if os.environ.get("RKLLMD_HA_SAVE_REQUEST") == "1":
        CHAT_FIXTURE.parent.mkdir(exist_ok=True)
        CHAT_FIXTURE.write_text(json.dumps(chats[0], indent=2, ensure_ascii=False) + "\n")
    # The kept request is still what HA sends: the same but for the clock in the prompt's first line.
    kept, sent = json.loads(CHAT_FIXTURE.read_text()), chats[0]
    assert without_clock(kept) == without_clock(sent), (
        "HA's request changed: rerun with RKLLMD_HA_SAVE_REQUEST=1"
    )


def without_clock(body: dict[str, Any]) -> dict[str, Any]:
    """A request with the first line of its system prompt (HA 2025.4: "Current time is ...") cut."""
    system, *rest = body["messages"]
    assert system["content"].startswith("Current time is ")
    return {**body, "messages": [{**system, "content": system["content"].split("\n", 1)[1]}, *rest]}
