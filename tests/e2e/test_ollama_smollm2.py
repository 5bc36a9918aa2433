"""The official ``ollama`` client against rkllmd's ollama plugin, on real text from SmolLM2."""

from __future__ import annotations

from collections.abc import Iterator

import ollama
import pytest

from rkllmd.bench.broker import free_port
from tests.helpers import Broker, DaemonProc, write_config

pytestmark = pytest.mark.model
BASE = "ollamam"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "seed": 1, "num_predict": 16}


@pytest.fixture(scope="module")
def client(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ollama.Client]:
    """rkllmd on its embedded SmolLM2 with the ollama plugin (no auth) on a free loopback port."""
    tmp = tmp_path_factory.mktemp("ollamam")
    port = free_port()
    cfg = write_config(
        tmp / "ollamam.toml",
        {
            "mqtt": {"host": broker.host, "port": broker.port, "base_topic": BASE, "client_id": BASE},
            "log": {"format": "json"},
            # errors = "ollama": the refusal below is checked as Ollama's status, which the ollama
            # client otherwise gets as a sentence (test_ollama_spoken_errors.py)
            "plugins": {"enabled": ["ollama"], "ollama": {"port": port, "errors": "ollama"}},
        },
    )
    d = DaemonProc(cfg, tmp)
    d.wait_ready(60)
    yield ollama.Client(host=f"http://127.0.0.1:{port}", timeout=60)
    assert d.stop() == 0


def test_streamed_chat_names_paris_with_ollama_timings(client: ollama.Client) -> None:
    """A streamed chat as Home Assistant sends it answers the question; the done line has the counts."""
    parts = list(
        client.chat(
            model="smollm2:latest",
            messages=FRANCE,
            stream=True,
            keep_alive=-1,
            options={**GREEDY, "num_ctx": 2048},
        )
    )
    assert "Paris" in "".join(p.message.content or "" for p in parts)
    last = parts[-1]
    assert last.done and last.done_reason in ("stop", "length")
    assert (last.prompt_eval_count or 0) > 5 and 0 < (last.eval_count or 0) <= 16
    assert (last.prompt_eval_duration or 0) > 0 and (last.eval_duration or 0) > 0


def test_generate_and_show(client: ollama.Client) -> None:
    """/api/generate answers whole; /api/show reports the model's context length."""
    r = client.generate(model="smollm2", prompt="What is the capital of France?", options=GREEDY)
    assert "Paris" in r.response and r.done
    info = client.show("smollm2:latest").modelinfo or {}
    assert info["llamacpp.context_length"] == 2048


def test_home_assistants_default_num_ctx_is_served_with_the_models_context(client: ollama.Client) -> None:
    """Home Assistant's default num_ctx, 8192.0 as its number field stores it, is above SmolLM2's
    2048: served with the model's context; a prompt that does not fit 2048 is still refused whole."""
    options = {**GREEDY, "num_ctx": 8192.0}
    parts = list(client.chat(model="smollm2:latest", messages=FRANCE, stream=True, options=options))
    assert "Paris" in "".join(p.message.content or "" for p in parts) and parts[-1].done
    long = [{"role": "user", "content": "hello world " * 1500}]
    with pytest.raises(ollama.ResponseError) as err:
        list(client.chat(model="smollm2:latest", messages=long, stream=True, options=options))
    assert err.value.status_code == 400 and "2048" in err.value.error


def test_think_reaches_a_model_that_does_not_think_and_changes_nothing(client: ollama.Client) -> None:
    """HA's "Think before responding" on SmolLM2 (its template has no thinking switch): the same
    greedy answer as without, all of it content, no thinking."""

    def ask(think: bool) -> list[ollama.ChatResponse]:
        return list(
            client.chat(model="smollm2:latest", messages=FRANCE, stream=True, think=think, options=GREEDY)
        )

    on, off = ask(True), ask(False)
    text = "".join(p.message.content or "" for p in on)
    assert "Paris" in text and text == "".join(p.message.content or "" for p in off)
    assert not any(p.message.thinking for p in on)
