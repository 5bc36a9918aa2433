"""What a Home Assistant user is told when rkllmd fails: each failure made to happen for real (a
full queue, a prompt over the context, a native crash in the C double, a timeout, a model that
cannot load, a shutdown), asked for the way Home Assistant's Ollama agent asks, with the official
``ollama`` client.

How HA asks, and what it does with an error, read from HA 2025.4.4 ``ollama/conversation.py``
and 2026.2.3 ``ollama/entity.py`` (``_async_handle_chat_log``; 2026.11's is the same there): an
``ollama.AsyncClient(host=url)`` with the library's own headers; ``await client.chat(...,
stream=True)`` inside a ``try`` that catches ``ResponseError``, which never fires, since
``AsyncClient.chat(stream=True)`` only returns a generator and sends the request when it is first
read (ollama 0.4.7 / 0.5.1 / 0.6.2 ``_client.py``, ``AsyncClient._request``); then the lines are
read outside any ``try``, the assistant's ``content`` becomes the speech, and any error raised
there ends the turn with "Unexpected error during intent recognition" (assist_pipeline) or a bare
500 (``/api/conversation/process``). So what a user can hear is the assistant's text.
"""

from __future__ import annotations

import asyncio
import http.client
import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import pytest

from rkllmd.bench.broker import free_port
from rkllmd.testing import wait_until
from tests.e2e.conftest import rkllm_config
from tests.helpers import Broker, DaemonProc, Probe

BASE = "ollamasay"
# HA sends think from 2025.5 on; ollama 0.4.7 (HA 2025.4's pin) has no such parameter.
THINK: dict[str, Any] = (
    {"think": False} if "think" in inspect.signature(ollama.AsyncClient.chat).parameters else {}
)
SYSTEM = "You are a voice assistant for Home Assistant. An overview of the devices: Kitchen Light (off)."


def ha_turn(url: str, text: str, model: str = "fake:latest") -> tuple[str, str | None]:
    """One Assist turn as HA's Ollama agent makes it: the speech it would say, and the last
    line's done_reason. Raises whatever HA would not catch."""

    async def turn() -> tuple[str, str | None]:
        client = ollama.AsyncClient(host=url)  # HA ≤ 2026.3 sends no key
        stream = await client.chat(
            model=model,
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
            stream=True,
            keep_alive=-1,
            options={"num_ctx": 8192},  # HA's default (its UI sends 8192.0)
            **THINK,
        )
        said, reason = "", None
        async for part in stream:  # outside HA's try: an error here is a failed turn
            said += part.message.content or ""
            reason = part.done_reason if part.done else reason
        return said, reason

    return asyncio.run(turn())


class Served:
    def __init__(self, proc: DaemonProc, port: int) -> None:
        self.proc, self.port = proc, port
        self.url = f"http://127.0.0.1:{port}"

    def told(self, words: str) -> bool:
        """Whether the log has the line of a failure answered with a sentence, with ``words`` in it."""
        return any(
            "answered with a sentence" in line and words in line for line in self.proc.log_text().splitlines()
        )


def serve(
    broker: Broker, lib: Path, tmp: Path, base: str, plugin: str = "", **kw: Any
) -> tuple[DaemonProc, int]:
    port = free_port()
    cfg = rkllm_config(tmp, broker, lib, base, **kw)
    with cfg.open("a") as f:  # clamp: HA's default num_ctx (8192) above the double's 4096
        f.write(
            f'\n[plugins]\nenabled = ["ollama"]\n[plugins.ollama]\nport = {port}\nnum_ctx = "clamp"\n{plugin}'
        )
    d = DaemonProc(cfg, tmp)
    d.wait_ready(30)
    d.wait_log("Ollama-compatible API listening")
    return d, port


@pytest.fixture(scope="module")
def served(
    broker: Broker, fake_libs: dict[str, Path], tiny_tokenizer: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("ollamasay")
    extra = {
        "small": {  # a context of 32 tokens, counted by a real tokenizer
            "runtime": "rkllm",
            "path": str(tmp / "fake-model.rkllm"),
            "library": str(fake_libs["1.3"]),
            "tokenizer": str(tiny_tokenizer),
            "max_context_len": 32,
        },
        "gone": {"runtime": "rkllm", "path": str(tmp / "missing.rkllm"), "library": str(fake_libs["1.3"])},
    }
    limits = {"queue_size": 1, "total_timeout_s": 4.0}
    d, port = serve(broker, fake_libs["1.3"], tmp, BASE, limits=limits, extra_models=extra)
    yield Served(d, port)
    assert d.stop() == 0


def test_a_normal_turn_is_the_models_text(served: Served) -> None:
    said, reason = ha_turn(served.url, "[[len=3]] turn on the light")
    assert said == "TURN ON THE" and reason == "stop"


def test_queue_full_is_said_and_logged(served: Served, broker: Broker) -> None:
    """Two requests over MQTT fill the board (one running, one waiting, queue_size 1): HA's turn
    is told to try again, and the log keeps rkllmd's reason."""
    probe = Probe(broker)
    # The daemon serves the whole module: count only what these two requests log, or the wait
    # is met by earlier tests' lines and HA's turn can overtake them into the queue.
    before = served.proc.log_text().count('"request queued"')
    try:
        probe.subscribe("hold/reply")
        for rid in ("hold1", "hold2"):
            probe.publish(
                f"{BASE}/request/generate",
                {"id": rid, "prompt": "[[delay_ms=100]] [[len=200]] x"},
                response_topic="hold/reply",
            )
        assert wait_until(lambda: served.proc.log_text().count('"request queued"') >= before + 2, 10)
        said, reason = ha_turn(served.url, "turn on the kitchen light")
    finally:
        for rid in ("hold1", "hold2"):  # as their owner, from their reply folder
            probe.publish(f"{BASE}/request/cancel", rid, response_topic="hold/cancel")
        # Both answered before the next test: a cancel still on its way would leave the queue
        # full for that test's turn, which would be told to try again.
        ended: set[str] = set()
        probe.collect_until("hold/reply", lambda m: ended.add(m.json()["id"]) or len(ended) == 2, timeout=30)
        probe.close()
    assert said == "I'm busy with other requests right now. Please try again in a moment."
    assert reason == "error"
    assert served.told("queue full")


def test_prompt_over_the_context_is_said(served: Served) -> None:
    said, reason = ha_turn(served.url, "hello world " * 40, model="small")
    assert said == "That is too long for the model's context. Expose fewer entities or keep less history."
    assert reason == "error" and served.told("too many")


def test_runtime_crash_before_the_first_word_is_said(served: Served) -> None:
    said, reason = ha_turn(served.url, "[[crash_at=1]] a b c")
    assert said == "The language model crashed and is being restarted. Please try again."
    assert reason == "error" and served.told("SIGSEGV")


def test_runtime_crash_part_way_follows_the_words_already_said(served: Served) -> None:
    """The words streamed before the crash stay (HA may already be speaking them); the sentence
    follows them."""
    said, reason = ha_turn(served.url, "[[crash_at=3]] a b c d e")
    assert said == "A B The language model crashed and is being restarted. Please try again."
    assert reason == "error"
    assert ha_turn(served.url, "[[len=2]] back again") == ("BACK AGAIN", "stop")  # reloaded


def test_timeout_is_said(served: Served) -> None:
    said, reason = ha_turn(served.url, "[[delay_ms=200]] [[len=100]] slow")
    assert said.endswith(" The language model took too long to answer. Please try again.")
    assert said.startswith("SLOW") and reason == "error" and served.told("exceeded")


def test_a_model_that_cannot_load_is_said(served: Served) -> None:
    said, reason = ha_turn(served.url, "hello", model="gone")
    assert said == "The language model could not be loaded. Please check the rkllmd log."
    assert reason == "error" and served.told("does not exist")


def test_an_unknown_model_is_said(served: Served) -> None:
    said, _ = ha_turn(served.url, "hello", model="llama3.2:latest")
    assert said == "The model chosen for this assistant is not configured in rkllmd."


def test_other_clients_keep_ollamas_error_status(served: Served) -> None:
    """A client that is not the ollama Python library (curl, Open WebUI, …) still gets Ollama's
    error: the status line and ``{"error": ...}`` with the technical reason."""
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    body = {"model": "small", "messages": [{"role": "user", "content": "hello world " * 40}]}
    conn.request("POST", "/api/chat", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 400 and "too many" in json.loads(resp.read())["error"]
    conn.close()


def test_ollama_style_keeps_the_error_for_the_ollama_client(
    broker: Broker, fake_libs: dict[str, Path], tmp_path: Path
) -> None:
    """``errors = "ollama"``: the ollama client raises ResponseError with the status and reason, as
    against Ollama itself."""
    d, port = serve(broker, fake_libs["1.3"], tmp_path, f"{BASE}o", plugin='errors = "ollama"\n')
    try:
        with pytest.raises(ollama.ResponseError) as err:
            ha_turn(f"http://127.0.0.1:{port}", "[[crash_at=1]] a b c")
        assert err.value.status_code == 500 and "SIGSEGV" in err.value.error
    finally:
        assert d.stop() == 0


def test_shutdown_part_way_is_said(broker: Broker, fake_libs: dict[str, Path], tmp_path: Path) -> None:
    """rkllmd stopping mid-answer: the words so far, then that the server is restarting."""
    d, port = serve(broker, fake_libs["1.3"], tmp_path, f"{BASE}s")

    async def turn() -> tuple[str, str | None]:
        client = ollama.AsyncClient(host=f"http://127.0.0.1:{port}")
        stream = await client.chat(
            model="fake:latest",
            messages=[{"role": "user", "content": "[[delay_ms=100]] [[len=300]] bye"}],
            stream=True,
            keep_alive=-1,
            options={"num_ctx": 8192},
        )
        said, reason = "", None
        async for part in stream:
            if not said:
                d.signal()  # SIGTERM once the first word is here
            said += part.message.content or ""
            reason = part.done_reason if part.done else reason
        return said, reason

    try:
        said, reason = asyncio.run(turn())
    finally:
        assert d.stop() == 0
    assert said.startswith("BYE") and reason == "error"
    assert said.endswith(" The language model server is restarting. Please try again in a minute.")


def test_a_sentence_tells_programs_it_is_an_error(served: Served) -> None:
    """Not streamed, the answer is the sentence with done_reason "error"; over plain HTTP with the
    ollama client's User-Agent (as HA 2026.2.3's ollama 0.5.1 sends it) the code is a header too."""
    reply = ollama.Client(host=served.url, timeout=30).chat(
        model="llama3.2:latest", messages=[{"role": "user", "content": "hi"}], stream=False
    )
    assert reply.message.content == "The model chosen for this assistant is not configured in rkllmd."
    assert reply.done and reply.done_reason == "error"
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    body = {"model": "small", "messages": [{"role": "user", "content": "hello world " * 40}]}
    ua = "ollama-python/0.5.1 (x86_64 linux) Python/3.13.2"
    conn.request(
        "POST", "/api/chat", json.dumps(body), {"Content-Type": "application/json", "User-Agent": ua}
    )
    resp = conn.getresponse()
    lines = [json.loads(line) for line in resp.read().splitlines()]
    conn.close()
    assert resp.status == 200 and resp.getheader("X-Rkllmd-Error") == "context_exceeded"
    assert len(lines) == 1 and lines[0]["done"] and lines[0]["done_reason"] == "error"
    assert lines[0]["message"] == {
        "role": "assistant",
        "content": "That is too long for the model's context. Expose fewer entities or keep less history.",
    }
