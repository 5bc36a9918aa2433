"""Each plugin that ships with rkllmd, on its own, through the testing kit (no broker, no model)."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from rkllmd.errors import RequestError
from rkllmd.plugins.builtin import homeassistant, npu, sessions
from rkllmd.protocol import Topics
from rkllmd.settings import Settings
from rkllmd.testing import PluginHarness

# --- templates ----------------------------------------------------------------------------------

TEMPLATES = {
    "templates": {
        "kitchen": {
            "prompt": "In the {area}: {question}",
            "system": "You are the assistant of the {area}.",
        }
    },
    "models": {"smollm2": {"prompt": "Answer briefly. {prompt}"}},
}


def test_named_template_consumes_its_variables() -> None:
    """A request naming a template gets prompt and system rendered from its own extra fields."""
    with PluginHarness("templates", TEMPLATES) as h:
        req = h.preprocess(
            {"template": "kitchen", "area": "kitchen", "question": "Is the oven on?", "id": "k1"}
        )
        assert req.payload == {
            "prompt": "In the kitchen: Is the oven on?",
            "system": "You are the assistant of the kitchen.",
            "id": "k1",
        }


def test_model_template_wraps_plain_prompts() -> None:
    """Without a template field, the template of the request's model applies; {prompt} is its prompt."""
    with PluginHarness("templates", TEMPLATES) as h:
        assert h.preprocess("What time is it?").payload["prompt"] == "Answer briefly. What time is it?"


def test_template_errors_are_clear() -> None:
    """A missing variable or unknown template is a bad_request naming the plugin; typos still fail."""
    with PluginHarness("templates", TEMPLATES) as h:
        with pytest.raises(
            RequestError, match="plugin 'templates': template 'kitchen' needs the field 'area'"
        ):
            h.preprocess({"template": "kitchen", "question": "?"})
        with pytest.raises(RequestError, match="unknown template 'hall'"):
            h.preprocess({"template": "hall", "prompt": "x"})
        with pytest.raises(RequestError, match="unknown field"):
            h.preprocess({"template": "kitchen", "area": "a", "question": "q", "colour": "red"})


def test_template_topic_reenters_as_generate() -> None:
    """A message on the template's own topic is handed back to the daemon as a generate request."""
    with PluginHarness("templates", TEMPLATES) as h:
        h.message(
            "rkllmd/plugins/templates/kitchen", {"area": "hall", "question": "?"}, response_topic="me/r"
        )
        (msg,) = h.services.injected
        assert msg.topic == "rkllmd/request/generate" and msg.response_topic == "me/r"
        assert json.loads(msg.payload) == {"area": "hall", "question": "?", "template": "kitchen"}


def test_template_config_rejects_attribute_access() -> None:
    """Templates may only use plain variables: `{x.__class__}` is a config error."""
    with pytest.raises(ValueError, match="plain"):
        PluginHarness("templates", {"templates": {"t": {"prompt": "{x.__class__}"}}})


# --- sessions -----------------------------------------------------------------------------------


def small_settings() -> Settings:
    return Settings(
        models={"m": {"runtime": "llamacpp", "max_context_len": 64}},
        limits={"max_tokens": 8},
    )


def test_session_history_is_kept_and_trimmed() -> None:
    """Turns of a session come back as messages, oldest dropped first to fit the context budget."""
    with PluginHarness(
        "sessions", {"reserve_tokens": 0, "per_message_tokens": 0}, settings=small_settings()
    ) as h:
        for i in range(6):
            req = h.preprocess({"session": "s", "prompt": f"question {i} " + "word " * 8})
            h.finish(req, f"answer {i} " + "word " * 8)
        msgs = h.generate_input(req).messages
        # budget 64 - 8 = 56 tokens; each turn is 10 words: the new prompt and the 4 newest turns fit
        assert [m.role for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
        assert msgs[0].content.startswith("question 3") and msgs[-1].content.startswith("question 5")
        assert h.stats() == {"sessions": {"sessions": 1}}


def test_session_counts_with_the_models_tokenizer() -> None:
    """The budget is counted with the tokenizer the daemon lends (here: one token per character)."""
    counted: list[tuple[str, str]] = []

    def chars(model: str, text: str) -> int:
        counted.append((model, text))
        return len(text)

    with PluginHarness(
        "sessions",
        {"reserve_tokens": 0, "per_message_tokens": 0},
        settings=small_settings(),
        count_tokens=chars,
    ) as h:
        h.finish(h.preprocess({"session": "s", "prompt": "a" * 10}), "b" * 10)
        h.finish(h.preprocess({"session": "s", "prompt": "c" * 10}), "d" * 10)
        req = h.preprocess({"session": "s", "prompt": "e" * 20})
        # budget 64 - 8 = 56: e(20) c d b fit, a does not, and b alone (an answer) is dropped
        assert [m["content"][0] for m in req.payload["messages"]] == ["c", "d", "e"]
        assert counted[-1][0] == "m"


def test_session_expires_and_clears() -> None:
    """An idle session is forgotten; the clear topic and session_reset empty it on demand."""
    with PluginHarness("sessions", {"idle_timeout_s": 0.05}) as h:
        h.finish(h.preprocess({"session": "s", "prompt": "hi"}), "hello")
        assert len(h.preprocess({"session": "s", "prompt": "again"}).payload["messages"]) == 3
        assert h.wait(lambda: h.stats()["sessions"]["sessions"] == 0, 1)
        assert len(h.preprocess({"session": "s", "prompt": "anew"}).payload["messages"]) == 1

    with PluginHarness("sessions") as h:
        h.finish(h.preprocess({"session": "s", "prompt": "hi"}), "hello")
        h.message("rkllmd/plugins/sessions/clear", "s")
        assert h.published("rkllmd/plugins/sessions/response")[-1].json()["data"] == {
            "session": "s",
            "cleared": True,
        }
        h.finish(h.preprocess({"session": "t", "prompt": "hi"}), "hello")
        assert (
            len(h.preprocess({"session": "t", "session_reset": True, "prompt": "x"}).payload["messages"]) == 1
        )


def test_session_ignores_errors_and_cancelled_answers() -> None:
    """Only answers that finished well join the history."""
    with PluginHarness("sessions") as h:
        h.finish(h.preprocess({"session": "s", "prompt": "one"}), status="error", code="busy", error="full")
        h.finish(h.preprocess({"session": "s", "prompt": "two"}), "partial", finish_reason="cancelled")
        assert len(h.preprocess({"session": "s", "prompt": "three"}).payload["messages"]) == 1


def test_trim_never_starts_with_an_assistant_turn() -> None:
    """Trimming drops whole turns and never leaves an answer without its question."""
    hist = [{"role": "user", "content": "q " * 5}, {"role": "assistant", "content": "a"}]
    assert sessions.trim(hist, [{"role": "user", "content": "n"}], 3, lambda t: len(t.split()), 0) == []


# --- republish ----------------------------------------------------------------------------------


def test_republish_routes_text_and_json() -> None:
    """Answers go to configured topics as rendered text or the whole reply; filters apply."""
    cfg = {
        "routes": [
            {"topic": "tts/say", "payload": "{text}", "when_field": "speak"},
            {"topic": "log/llm", "payload": "json", "only": "all", "retain": True, "qos": 1},
            {"topic": "log/errors", "payload": "{id} {code}: {error}", "only": "error"},
        ]
    }
    with PluginHarness("republish", cfg) as h:
        spoken = h.preprocess({"prompt": "hi", "speak": True, "id": "a"})
        assert "speak" not in spoken.payload
        h.finish(spoken, "Hello there")
        h.finish(h.preprocess({"prompt": "quiet", "id": "b"}), "shh")
        h.finish(h.preprocess({"prompt": "x", "id": "c"}), status="error", code="busy", error="queue full")
        assert [p.text for p in h.published("tts/say")] == ["Hello there"]
        logged = h.published("log/llm")
        assert [p.json()["id"] for p in logged] == ["a", "b", "c"] and logged[0].retain and logged[0].qos == 1
        assert [p.text for p in h.published("log/errors")] == ["c busy: queue full"]


def test_republish_rejects_bad_routes() -> None:
    """A wildcard topic or unknown template variable is a config error."""
    with pytest.raises(ValueError, match="must not contain"):
        PluginHarness("republish", {"routes": [{"topic": "a/#"}]})
    with pytest.raises(ValueError, match="unknown variable"):
        PluginHarness("republish", {"routes": [{"topic": "a", "payload": "{answer}"}]})


def test_republish_sentences_as_they_are_written() -> None:
    """A sentences route publishes each whole sentence while the answer streams, the rest at the end."""
    cfg = {
        "routes": [
            {"topic": "tts/say", "sentences": True, "when_field": "speak"},
            {"topic": "tts/log", "sentences": True, "payload": "json", "models": ["other"]},
            {"topic": "answers", "payload": "{text}"},
        ]
    }
    with PluginHarness("republish", cfg) as h:
        req = h.preprocess({"prompt": "hi", "speak": True, "id": "a"})
        h.stream(req, ["Sure! The kitchen ", "light is **on**. Dr. Smith", " says hi", " e.g. to"])
        assert [p.text for p in h.published("tts/say")] == ["Sure! The kitchen light is on."]
        h.stream(req, [" you. Bye"])
        assert h.published("tts/say")[-1].text == "Dr. Smith says hi e.g. to you."
        text = "Sure! The kitchen light is **on**. Dr. Smith says hi e.g. to you. Bye"
        h.finish(req, text)
        assert [p.text for p in h.published("tts/say")][-1] == "Bye"
        assert h.published("tts/log") == [] and [p.text for p in h.published("answers")] == [text]
        quiet = h.preprocess({"prompt": "hi", "id": "b"})  # no "speak": that route stays silent
        h.stream(quiet, ["One sentence here. Another one."])
        h.finish(quiet, "One sentence here. Another one.")
        assert len(h.published("tts/say")) == 3


def test_republish_sentences_json_and_cancel() -> None:
    """JSON sentence messages carry id and seq; a cancelled answer's half sentence is not sent."""
    cfg = {"routes": [{"topic": "tts", "sentences": True, "payload": "json"}], "sentence_min_chars": 0}
    with PluginHarness("republish", cfg) as h:
        req = h.preprocess({"prompt": "hi", "id": "c"})
        h.stream(req, ["Ok. Fine. And then we went"])
        h.finish(req, "Ok. Fine. And then we went", finish_reason="cancelled")
        assert [p.json() for p in h.published("tts")] == [
            {"id": "c", "seq": 0, "text": "Ok."},
            {"id": "c", "seq": 1, "text": "Fine."},
        ]


def test_republish_rejects_bad_sentence_routes() -> None:
    """A sentences route knows only the variables of a sentence, never only errors, and sane limits."""
    with pytest.raises(ValueError, match="unknown variable"):
        PluginHarness(
            "republish", {"routes": [{"topic": "a", "sentences": True, "payload": "{finish_reason}"}]}
        )
    with pytest.raises(ValueError, match="only must be"):
        PluginHarness("republish", {"routes": [{"topic": "a", "sentences": True, "only": "error"}]})
    with pytest.raises(ValueError, match="min_chars"):
        PluginHarness("republish", {"sentence_min_chars": 500})


# --- transcript ---------------------------------------------------------------------------------


def test_transcript_writes_lines_and_rotates(tmp_path: Path) -> None:
    """Each request and reply is one JSON line with prompt and answer whole; files rotate by size."""
    path = tmp_path / "t.jsonl"
    with PluginHarness("transcript", {"path": str(path), "max_bytes": 2048, "backups": 2}) as h:
        for i in range(12):
            h.finish(h.preprocess({"prompt": f"q{i} " + "x" * 300, "id": f"r{i}"}), f"answer {i}")
        h.finish(h.preprocess({"prompt": "bad", "id": "e"}), status="error", code="busy", error="full")
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["t.jsonl", "t.jsonl.1", "t.jsonl.2"]
    assert all(f.stat().st_size <= 2048 for f in files)
    lines = [json.loads(x) for f in reversed(files) for x in f.read_text().splitlines()]
    assert [r["id"] for r in lines] == [f"r{i}" for i in range(12 - len(lines) + 1, 12)] + ["e"]
    assert lines[-1]["status"] == "error" and lines[-1]["code"] == "busy"
    assert lines[-2]["request"]["prompt"] == "q11 " + "x" * 300 and lines[-2]["text"] == "answer 11"


def test_transcript_files_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    """Every prompt and answer is private: under umask 000 the transcript and its rotated files are
    0600; files an older rkllmd left 0644 are tightened when the plugin starts."""
    old = os.umask(0)
    try:
        path = tmp_path / "t.jsonl"
        with PluginHarness("transcript", {"path": str(path), "max_bytes": 1024, "backups": 2}) as h:
            for i in range(6):
                h.finish(h.preprocess({"prompt": f"q{i} " + "x" * 300, "id": f"r{i}"}), f"answer {i}")
        files = sorted(tmp_path.iterdir())
        assert [f.name for f in files] == ["t.jsonl", "t.jsonl.1", "t.jsonl.2"]
        assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o600 for f in files}
        for f in files:
            f.chmod(0o644)
        with PluginHarness("transcript", {"path": str(path), "max_bytes": 1024, "backups": 2}) as h:
            assert h.state == "running"
        assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o600 for f in files}
    finally:
        os.umask(old)


def test_transcript_unwritable_path_is_fatal(tmp_path: Path) -> None:
    """A transcript path that cannot be created disables the plugin at setup."""
    (tmp_path / "file").write_text("")
    with PluginHarness("transcript", {"path": str(tmp_path / "file" / "t.jsonl")}) as h:
        assert h.state == "failed" and "FileExistsError" in h.status()["error"]


# --- Home Assistant -----------------------------------------------------------------------------

# Keys as Home Assistant documents them for MQTT discovery (integrations/mqtt, "Supported
# abbreviations"), limited to those this plugin uses, plus each platform's own option names.
KNOWN_KEYS = {
    "p",
    "name",
    "uniq_id",
    "stat_t",
    "val_tpl",
    "cmd_t",
    "pl_prs",
    "ops",
    "json_attr_t",
    "unit_of_meas",
    "stat_cla",
    "dev_cla",
    "ic",
    "ent_cat",
    "evt_typ",
    "max",
    "mode",
}
TOPIC_KEYS = {"stat_t", "cmd_t", "json_attr_t"}


def ha_payload(**cfg: Any) -> tuple[str, dict[str, Any]]:
    with PluginHarness("homeassistant", cfg) as h:
        (msg,) = h.published("homeassistant/device/+/config")
        return msg.topic, msg.json()


def test_ha_discovery_follows_device_discovery_format() -> None:
    """Device discovery: dev and o at the root, every component with p and a stable uniq_id."""
    topic, p = ha_payload()
    assert topic == "homeassistant/device/rkllmd/config"
    assert set(p) == {"dev", "o", "avty", "cmps", "qos"}
    assert p["o"]["name"] == "rkllmd" and p["dev"]["ids"] == ["rkllmd_rkllmd"] and p["dev"]["name"]
    assert p["avty"] == [
        {
            "topic": "rkllmd/state",
            "value_template": "{{ 'online' if value_json.state == 'online' else 'offline' }}",
        }
    ]
    for key, c in p["cmps"].items():
        assert re.fullmatch(r"[a-z_]+", key)
        assert c["p"] in {"sensor", "binary_sensor", "button", "select", "text", "event"}
        assert c["uniq_id"] == f"rkllmd_rkllmd_{key}"
        assert set(c) <= KNOWN_KEYS, set(c) - KNOWN_KEYS
    cmps = p["cmps"]
    assert cmps["model"]["ops"] == ["smollm2"] and cmps["model"]["cmd_t"] == "rkllmd/request/load"
    assert cmps["prompt"]["max"] == 255 and cmps["answer"]["evt_typ"] == ["answer", "error"]
    assert "npu_load" not in cmps
    assert ha_payload() == (topic, p)  # the same again: unique ids stable across restarts


def test_ha_node_id_and_npu_sensor() -> None:
    """node_id names the device topic and ids; the NPU sensor is added on request."""
    topic, p = ha_payload(node_id="board-1", npu_sensor=True, suggested_area="Office")
    assert topic == "homeassistant/device/board-1/config"
    assert p["cmps"]["npu_load"]["uniq_id"] == "rkllmd_board-1_npu_load"
    assert p["dev"]["sa"] == "Office"


def test_ha_answer_keeps_long_text_in_attributes() -> None:
    """The last answer is retained JSON: the state template cuts it at 250, attributes keep it whole."""
    long = "word " * 200
    with PluginHarness("homeassistant") as h:
        h.finish(h.preprocess({"prompt": "tell me", "id": "a1"}), long)
        ans = h.published("rkllmd/plugins/homeassistant/answer")[-1]
        assert ans.retain and ans.json()["text"] == long and ans.json()["prompt"] == "tell me"
        ev = h.published("rkllmd/plugins/homeassistant/event")[-1].json()
        assert ev["event_type"] == "answer" and ev["id"] == "a1"
        tpl = homeassistant.discovery_payload(_ctx(h), homeassistant.Config())["cmps"]["last_answer"][
            "val_tpl"
        ]
        assert "[:250]" in tpl


def _ctx(h: PluginHarness) -> Any:
    from rkllmd.plugins import PluginContext

    return PluginContext(h.host, h.plugin)


def test_ha_birth_resends_discovery_after_a_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """HA's birth message re-sends discovery (after a random delay within birth_delay_s, so a
    fleet's boards do not all answer at once) and then the states."""
    drawn: list[tuple[float, float]] = []

    def longest(a: float, b: float) -> float:  # the draw's upper end: "not at once" is then certain
        drawn.append((a, b))
        return b

    monkeypatch.setattr(homeassistant.random, "uniform", longest)
    with PluginHarness("homeassistant", {"birth_delay_s": 0.5}) as h:
        h.message("homeassistant/status", "offline")
        h.message("homeassistant/status", "online")
        assert len(h.published("homeassistant/device/+/config")) == 1  # not at once
        assert drawn == [(0, 0.5)]
        assert h.wait(lambda: len(h.published("homeassistant/device/+/config")) == 2)
        assert h.services.stats_refreshes == 1


def test_ha_cancel_button_cancels_the_running_request() -> None:
    """Pressing cancel cancels whatever runs, and does nothing when idle."""
    with PluginHarness("homeassistant") as h:
        h.message("rkllmd/plugins/homeassistant/cancel", "PRESS")
        h.services.current_stats = {"busy": True, "running": "r9"}
        h.message("rkllmd/plugins/homeassistant/cancel", "PRESS")
        assert h.services.cancelled == ["r9"]


def test_ha_remove_clears_what_was_published() -> None:
    """When disabled, the plugin empties its retained discovery, using the marker it left."""
    with PluginHarness("homeassistant") as h:
        marker = h.services.retained["rkllmd/plugins/homeassistant/discovery"]
    assert json.loads(marker) == {"topics": ["homeassistant/device/rkllmd/config"]}
    svc = h.services
    ctx = _ctx(h)
    homeassistant.remove(ctx)
    h.host.deliver(homeassistant.Message("rkllmd/plugins/homeassistant/discovery", marker))
    assert "homeassistant/device/rkllmd/config" not in svc.retained
    assert "rkllmd/plugins/homeassistant/discovery" not in svc.retained


def test_ha_topics_follow_base_topic() -> None:
    """Every topic in the payload moves with mqtt.base_topic."""
    s = Settings(mqtt={"base_topic": "llm/box"})
    with PluginHarness("homeassistant", settings=s) as h:
        p = h.published("homeassistant/device/+/config")[0].json()
    topics = {c[k] for c in p["cmps"].values() for k in TOPIC_KEYS if k in c}
    t = Topics("llm/box")
    assert topics == {
        t.state,
        t.stats,
        t.request("load"),
        t.request("generate"),
        t.request("unload"),
        "llm/box/plugins/homeassistant/cancel",
        "llm/box/plugins/homeassistant/answer",
        "llm/box/plugins/homeassistant/event",
    }


# --- NPU load -----------------------------------------------------------------------------------


def test_npu_parses_both_formats() -> None:
    """Multi-core (RK3588) and single-core load lines both parse; anything else is None."""
    assert npu.parse("NPU load:  Core0: 37%, Core1:  0%, Core2:  8%,\n") == {
        "load_percent": 15.0,
        "cores": [37, 0, 8],
    }
    assert npu.parse("NPU load:  25%\n") == {"load_percent": 25.0, "cores": [25]}
    assert npu.parse("garbage") is None


def test_npu_load_in_stats_only_when_readable(tmp_path: Path) -> None:
    """With the file, stats carry the load; without it, nothing is added and nothing fails."""
    f = tmp_path / "load"
    with PluginHarness("npu", {"path": str(f), "interval_s": 0}) as h:
        assert h.stats() == {} and h.state == "running"
        f.write_text("NPU load:  Core0: 50%, Core1: 10%, Core2:  0%,\n")
        assert h.stats() == {"npu": {"load_percent": 20.0, "cores": [50, 10, 0]}}


def test_npu_refreshes_stats_while_busy(tmp_path: Path) -> None:
    """With an interval, the stats topic is re-published while a request runs, not when idle."""
    with PluginHarness("npu", {"path": str(tmp_path / "none"), "interval_s": 0.01}) as h:
        assert not h.wait(lambda: h.services.stats_refreshes > 0, 0.1)
        h.services.current_stats = {"busy": True}
        assert h.wait(lambda: h.services.stats_refreshes > 0)
