"""The Home Assistant turn: a long fixed system prompt with tools, then a short question.

HA's conversation agents send the same system prompt (instructions and every exposed entity)
and the same tool list on every turn, so what a user waits for is the prefill of that prefix
unless the runtime reuses it. A case with ``kind = "ha_turn"`` measures three turns per run:

- **cold**: a system prompt no cache has seen (a fresh session line at its start);
- **warm**: the next turn, same system prompt and tools, another question;
- **reload**: the model unloaded and loaded again, then that turn once more (what a prompt-cache
  file brings; without one it is as slow as cold).

Each is reported as case ``<id>:cold``, ``<id>:warm``, ``<id>:reload``. The prompt is built here,
deterministically, in the shape of HA's: instructions, the areas and devices as YAML, and HA's
intent tools as OpenAI-style functions.
"""

from __future__ import annotations

import uuid
from typing import Any

from rkllmd.sentences import first_sentence_at

PHASES = ("cold", "warm", "reload")

_INSTRUCTIONS = """You are a voice assistant for Home Assistant.
Answer questions about the world truthfully.
Answer in plain text. Keep it simple and to the point.
When controlling Home Assistant always call the intent tools. Use HassTurnOn to lock and \
HassTurnOff to unlock a lock. When controlling a device, prefer passing just name and domain. \
When controlling an area, prefer passing just area name and domain.
When a user asks to turn on all devices of a specific type, ask user to specify an area, unless \
there is only one device of that type.
This device is not able to start timers.
You ARE equipped to answer questions about the current state of the home using the \
`GetLiveContext` tool. This is a primary function. Do not state you lack the functionality if \
the question requires live data.
Static Context: An overview of the areas and the devices in this smart home:
"""

_AREAS = [
    "Kitchen", "Living Room", "Dining Room", "Hallway", "Bedroom", "Guest Room", "Office",
    "Bathroom", "Laundry", "Garage", "Garden", "Porch",
]  # fmt: skip
_DEVICES = [
    ("light", "Ceiling Light", ["main light"]),
    ("light", "Lamp", []),
    ("switch", "Socket", ["plug"]),
    ("sensor", "Temperature", []),
    ("sensor", "Humidity", []),
    ("binary_sensor", "Window", ["window contact"]),
    ("cover", "Blinds", ["shades"]),
    ("climate", "Thermostat", ["heating"]),
    ("media_player", "Speaker", []),
]

_TOOLS: list[tuple[str, str, dict[str, Any]]] = [
    ("HassTurnOn", "Turns on/opens/presses a device or entity", {"name": "string", "area": "string",
     "floor": "string", "domain": "array", "device_class": "array"}),
    ("HassTurnOff", "Turns off/closes a device or entity", {"name": "string", "area": "string",
     "floor": "string", "domain": "array", "device_class": "array"}),
    ("HassLightSet", "Sets the brightness percentage or color of a light", {"name": "string",
     "area": "string", "floor": "string", "color": "string", "temperature": "integer",
     "brightness": "integer"}),
    ("HassClimateSetTemperature", "Sets the target temperature of a climate device or entity",
     {"name": "string", "area": "string", "floor": "string", "temperature": "number"}),
    ("HassSetPosition", "Sets the position of a device or entity", {"name": "string",
     "area": "string", "floor": "string", "domain": "array", "position": "integer"}),
    ("HassMediaPause", "Pauses a media player", {"name": "string", "area": "string"}),
    ("HassMediaUnpause", "Resumes a media player", {"name": "string", "area": "string"}),
    ("HassMediaNext", "Skips a media player to the next item", {"name": "string", "area": "string"}),
    ("HassSetVolume", "Sets the volume percentage of a media player", {"name": "string",
     "area": "string", "volume_level": "integer"}),
    ("HassCancelAllTimers", "Cancels all timers", {"area": "string"}),
    ("GetLiveContext", "Provides real-time information about the CURRENT state, value, or mode of "
     "devices, sensors, entities, or areas. Use this tool for: 1. Answering questions about current "
     "conditions (e.g., 'Is the light on?'). 2. As the first step in conditional actions (e.g., "
     "'If the weather is rainy, turn off sprinklers' requires checking the weather first).", {}),
]  # fmt: skip


def system_prompt(areas: int = 4) -> str:
    """HA's instructions and the exposed entities of ``areas`` areas (36 entities for 4) as YAML.

    With SmolLM2's tokenizer: 964 tokens for 4 areas (183 more per area), and the tools' JSON
    1,008, so about 2,000 tokens of fixed prefix, the size the issue asks the benchmark for.
    """
    lines = [_INSTRUCTIONS.rstrip("\n"), "```yaml"]
    for area in _AREAS[:areas]:
        slug = area.lower().replace(" ", "_")
        for domain, kind, aliases in _DEVICES:
            lines.append(f"- names: {area} {kind}")
            lines.append(f"  domain: {domain}")
            lines.append(f"  areas: {area}")
            if aliases:
                lines.append(f"  aliases: {', '.join(f'{slug} {a}' for a in aliases)}")
    lines.append("```")
    return "\n".join(lines)


def tools() -> list[dict[str, Any]]:
    """HA's intent tools as the OpenAI-style function list HA's LLM integrations send."""
    out = []
    for name, description, params in _TOOLS:
        props = {
            k: ({"type": "array", "items": {"type": "string"}} if t == "array" else {"type": t})
            for k, t in params.items()
        }
        out.append(
            {
                "type": "function",
                "function": {
                    "name": name,
                    "description": description,
                    "parameters": {"type": "object", "properties": props, "required": []},
                },
            }
        )
    return out


def session_system(run: int) -> str:
    """The system prompt of run ``run``: a session line no earlier run used, then HA's prompt.

    The line goes first, so no cache (in memory or a file) holds any of the prompt: a cold turn.
    """
    return f"Session {run}-{uuid.uuid4().hex[:8]}.\n{system_prompt()}"


def request(system: str, prompt: str, max_tokens: int, temperature: float, seed: int) -> dict[str, Any]:
    """The generate payload of one turn, as HA's ollama or OpenAI-compatible agent would make it."""
    return {
        "system": system,
        "prompt": prompt,
        "tools": tools(),
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
    }


def first_sentence_ms(deltas: list[str], times: list[float], t0: float, t_end: float) -> float | None:
    """Milliseconds from ``t0`` until the first sentence to say was complete, by the rules the
    sentence stream publishes with (rkllmd.sentences.first_sentence_at); an answer whose first
    sentence ends only with the answer completes at ``t_end``."""
    got = first_sentence_at(zip(times, deltas, strict=True), t_end)
    return (got[0] - t0) * 1e3 if got is not None else None
