"""embed and rerank over MQTT: rkllmd as a process on real mosquitto and the C double, whose
hidden states and logits are derived from the text, so the vectors and scores are checked exactly."""

from __future__ import annotations

import base64
import json
import math
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rkllmd import protocol
from rkllmd.embedding import (
    QWEN3_RERANK_INSTRUCTION,
    QWEN3_RERANK_TEMPLATE,
    normalized,
    rerank_text,
    yes_no_score,
)
from tests.e2e.conftest import final_of
from tests.fake_rkllm import vectors
from tests.helpers import Broker, DaemonProc, Probe, write_config


def vector_config(
    tmp: Path, broker: Broker, lib: Path, tokenizer: Path, base: str, limits: dict[str, Any] | None = None
) -> Path:
    model_file = tmp / "fake-model.rkllm"
    model_file.write_bytes(b"RKLLM fake model for tests\n")
    common = {"runtime": "rkllm", "path": str(model_file), "library": str(lib)}
    return write_config(
        tmp / f"{base}.toml",
        {
            "default_model": "chat",
            "mqtt": {"host": broker.host, "port": broker.port, "base_topic": base, "client_id": base},
            "log": {"level": "debug", "format": "json"},
            "limits": {
                "queue_size": 4,
                "first_token_timeout_s": 20.0,
                "total_timeout_s": 60.0,
                "shutdown_grace_s": 1.0,
                "max_payload_bytes": 65536,
                **(limits or {}),
            },
            "models": {
                "chat": {**common},
                "emb": {**common, "kind": "embedding", "pooling": "mean"},
                "mat": {**common, "kind": "embedding", "matryoshka": True, "input_template": "query: {text}"},
                "short": {**common, "kind": "embedding", "tokenizer": str(tokenizer), "max_context_len": 32},
                "rr": {**common, "kind": "rerank", "rerank_token_ids": [7, 3]},
            },
        },
    )


class Daemons:
    """``daemons(**limits)`` starts rkllmd on the vector models and returns its base topic;
    ``procs[base]`` is the process, for its log."""

    def __init__(self, broker: Broker, lib: Path, tokenizer: Path, tmp: Path) -> None:
        self.broker, self.lib, self.tokenizer, self.tmp = broker, lib, tokenizer, tmp
        self.procs: dict[str, DaemonProc] = {}

    def __call__(self, **limits: Any) -> str:
        base = f"v{len(self.procs)}{self.tmp.name[-6:]}"
        cfg = vector_config(self.tmp, self.broker, self.lib, self.tokenizer, base, limits)
        d = self.procs[base] = DaemonProc(cfg, self.tmp)
        d.wait_ready(30)
        return base


@pytest.fixture
def daemon(
    broker: Broker, fake_libs: dict[str, Path], tiny_tokenizer: Path, tmp_path: Path
) -> Iterator[Daemons]:
    daemons = Daemons(broker, fake_libs["1.3"], tiny_tokenizer, tmp_path)
    yield daemons
    for d in daemons.procs.values():
        d.stop()


def mean_vector(text: str) -> list[float]:
    rows = vectors.hidden_rows(text)
    return normalized([math.fsum(r[j] for r in rows) / len(rows) for j in range(16)])


def close(a: list[float], b: list[float]) -> bool:
    return all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-7) for x, y in zip(a, b, strict=True))


def ask(
    probe: Probe, base: str, command: str, payload: dict[str, Any], timeout: float = 20.0
) -> dict[str, Any]:
    probe.subscribe(f"{base}/response/{command}")
    probe.publish(f"{base}/request/{command}", payload)
    return final_of(probe, f"{base}/response/{command}", timeout)


def test_mosquitto_rr_embeds_plain_text_with_the_first_embedding_model(
    daemon: Daemons, broker: Broker
) -> None:
    base = daemon()
    out = subprocess.run(
        ["mosquitto_rr", "-h", broker.host, "-p", str(broker.port), "-t", f"{base}/request/embed",
         "-e", f"{base}-rr/reply", "-m", "the quick brown fox", "-W", "20"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    reply = json.loads(out.stdout)
    assert reply["status"] == "ok", reply
    data = reply["data"]
    assert data["model"] == "emb" and data["dimensions"] == 16 and data["encoding"] == "float"
    (vec,) = data["embeddings"]
    assert close(vec, mean_vector("the quick brown fox"))
    assert data["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    assert data["timings"]["total_ms"] >= 0


def test_a_list_in_order_base64_and_matryoshka_dimensions(daemon: Daemons, mqtt_probe: Probe) -> None:
    base = daemon()
    texts = ["alpha beta", "gamma", "delta epsilon zeta"]
    reply = ask(mqtt_probe, base, "embed", {"id": "e1", "model": "mat", "input": texts, "dimensions": 5,
                                            "encoding": "base64"})  # fmt: skip
    assert reply["status"] == "ok" and reply["id"] == "e1", reply
    assert reply["data"]["dimensions"] == 5
    for text, b64 in zip(texts, reply["data"]["embeddings"], strict=True):
        got = list(struct.unpack("<5f", base64.b64decode(b64)))
        full = normalized(vectors.hidden_rows(f"query: {text}")[-1])  # input_template, last pooling
        assert close(got, normalized(full[:5]))


def test_rerank_orders_by_the_yes_no_logits(daemon: Daemons, mqtt_probe: Probe) -> None:
    base = daemon()
    docs = ["paris is in france", "bananas are yellow", "the sky is blue", {"text": "berlin is in germany"}]
    reply = ask(mqtt_probe, base, "rerank", {"query": "where is paris", "documents": docs, "top_n": 3,
                                             "return_documents": True})  # fmt: skip
    assert reply["status"] == "ok", reply
    plain = [d if isinstance(d, str) else d["text"] for d in docs]
    scores = []
    for d in plain:
        logits = vectors.last_logits(
            rerank_text(QWEN3_RERANK_TEMPLATE, QWEN3_RERANK_INSTRUCTION, "where is paris", d)
        )
        scores.append(yes_no_score(logits[7], logits[3]))
    expected = sorted(range(4), key=lambda i: -scores[i])[:3]
    results = reply["data"]["results"]
    assert [r["index"] for r in results] == expected
    for r in results:
        assert math.isclose(r["relevance_score"], scores[r["index"]], rel_tol=1e-9)
        assert r["document"] == {"text": plain[r["index"]]}
    assert reply["data"]["model"] == "rr" and reply["data"]["usage"]["prompt_tokens"] > 0


@pytest.mark.parametrize(
    ("command", "payload", "code", "needle"),
    [
        ("embed", {"input": []}, "empty_input", "input is empty"),
        ("embed", {"input": ["fine", "  "]}, "empty_input", "input[1] is empty"),
        ("embed", {"input": ["a", 3]}, "wrong_type", "[1] must be a string"),
        ("embed", {"input": {"text": "a"}}, "wrong_type", "a string or a list"),
        ("embed", {"input": ["a"] * 5}, "too_many_inputs", "holds 5 texts; one request may hold 4"),
        ("embed", {}, "empty_input", "input is required"),
        (
            "embed",
            {"input": "a", "model": "chat"},
            "wrong_model_kind",
            "serves chat requests, not embedding: use generate (embedding models:",
        ),
        ("embed", {"input": "a", "model": "emb", "dimensions": 4}, "bad_request", "does not take dimensions"),
        (
            "embed",
            {"input": "a", "model": "mat", "dimensions": 99},
            "bad_request",
            "more than model 'mat' gives",
        ),
        ("embed", {"input": "a " * 40, "model": "short"}, "context_exceeded", "input 0 is 40 tokens"),
        ("embed", {"input": ["a b"] * 4, "model": "short"}, "too_many_inputs", "max_embed_tokens"),
        ("rerank", {"query": "", "documents": ["x"]}, "empty_input", "query is empty"),
        ("rerank", {"documents": ["x"]}, "empty_input", "query is required"),
        ("rerank", {"query": "q", "documents": []}, "empty_input", "documents is empty"),
        ("rerank", {"query": "q"}, "empty_input", "documents is required"),
        ("rerank", {"query": "q", "documents": "x"}, "wrong_type", "must be a list"),
        ("rerank", {"query": "q", "documents": ["x"], "model": "emb"}, "wrong_model_kind", "not rerank"),
        ("generate", {"prompt": "hi", "model": "emb"}, "wrong_model_kind", "not chat: use embed"),
        ("generate", {"prompt": "hi", "model": "rr"}, "wrong_model_kind", "not chat: use rerank"),
    ],
)
def test_bad_input_is_refused_in_the_protocols_shape(
    daemon: Daemons, mqtt_probe: Probe, command: str, payload: dict[str, Any], code: str, needle: str
) -> None:
    base = daemon(max_embed_inputs=4, max_embed_tokens=7)
    reply = ask(mqtt_probe, base, command, {"id": "bad", **payload})
    assert reply["status"] == "error" and reply["code"] == code, reply
    assert needle in reply["error"]
    # nothing else is refused with it
    ok = ask(mqtt_probe, base, "embed", {"id": "good", "input": "still fine"})
    assert ok["status"] == "ok" and ok["id"] == "good"


def test_a_refusal_before_acceptance_has_no_id_when_the_request_gave_none(
    daemon: Daemons, mqtt_probe: Probe
) -> None:
    """rkllmd makes an id only for a request it accepts (docs/PROTOCOL.md, "Errors"): a refusal at
    admission has the request's own id or none, and the client matches it by its transaction."""
    base = daemon()
    refused = ask(mqtt_probe, base, "rerank", {"query": "q", "transaction": 7})
    assert (refused["code"], refused["transaction"]) == ("empty_input", 7) and "id" not in refused, refused
    named = ask(mqtt_probe, base, "rerank", {"query": "q", "id": "mine", "transaction": 8})
    assert (named["code"], named["id"], named["transaction"]) == ("empty_input", "mine", 8), named
    accepted = ask(mqtt_probe, base, "embed", {"input": "fine", "transaction": 9})
    assert accepted["status"] == "ok" and protocol.ID_RE.match(accepted["id"]), accepted


def test_the_topic_may_name_the_model_and_the_payload_wins(daemon: Daemons, mqtt_probe: Probe) -> None:
    """embed/<model> as generate/<model>: plain text on a model's topic runs on that model."""
    base = daemon()
    mqtt_probe.subscribe(f"{base}/response/embed")
    mqtt_probe.publish(f"{base}/request/embed/mat", "hello there")
    plain = final_of(mqtt_probe, f"{base}/response/embed", 20)
    assert plain["status"] == "ok" and plain["data"]["model"] == "mat", plain
    mqtt_probe.publish(f"{base}/request/embed/mat", {"input": "hello", "model": "emb"})
    named = final_of(mqtt_probe, f"{base}/response/embed", 20)
    assert named["data"]["model"] == "emb" and close(named["data"]["embeddings"][0], mean_vector("hello"))
    mqtt_probe.subscribe(f"{base}/response/rerank")
    mqtt_probe.publish(f"{base}/request/rerank/emb", {"query": "q", "documents": ["d"]})
    wrong = final_of(mqtt_probe, f"{base}/response/rerank", 20)
    assert wrong["code"] == "wrong_model_kind", wrong


LONG = [f"w{i}" for i in range(40)]  # 40 words: 40 tokens to the tiny tokenizer, 40 rows to the double


def test_truncate_cuts_a_long_input_at_its_end_by_the_models_tokens(
    daemon: Daemons, mqtt_probe: Probe
) -> None:
    """truncate: true keeps the first context - 1 tokens (31 of model short's 32) of a text longer than
    the context, its other texts as they are; without it the same request is refused."""
    base = daemon()
    body = {"id": "t1", "input": [" ".join(LONG), "hello world"], "model": "short", "truncate": True}
    out = ask(mqtt_probe, base, "embed", body)
    assert out["status"] == "ok", out
    cut, whole = out["data"]["embeddings"]
    assert close(cut, normalized(vectors.hidden_rows(" ".join(LONG[:31]))[-1]))  # last-token pooling
    assert close(whole, normalized(vectors.hidden_rows("hello world")[-1]))
    assert out["data"]["usage"]["prompt_tokens"] == 31 + 2
    refused = ask(mqtt_probe, base, "embed", {**body, "id": "t2", "truncate": False})
    assert refused["code"] == "context_exceeded" and "input 0 is 40 tokens" in refused["error"], refused


def test_cancel_ends_a_batch_and_the_queue_goes_on(daemon: Daemons, mqtt_probe: Probe) -> None:
    base = daemon()
    mqtt_probe.subscribe(f"{base}/response/embed", f"{base}/response/cancel", f"{base}/response/generate")
    texts = [f"text {i} [[delay_ms=300]]" for i in range(30)]
    mqtt_probe.publish(f"{base}/request/embed", {"id": "long", "input": texts})
    mqtt_probe.publish(f"{base}/request/generate", {"id": "voice", "prompt": "turn on the light"})
    # The batch runs once its model is loaded (for it: the log line carries its id); a fixed wait
    # could end before that on a busy machine, and the cancel would find it queued.
    daemon.procs[base].wait_event("model loaded", model="emb", request_id="long")
    t0 = time.monotonic()
    mqtt_probe.publish(f"{base}/request/cancel", {"id": "long"})
    got = {m.topic.rsplit("/", 1)[1]: m.json() for m in (mqtt_probe.get(timeout=20) for _ in range(3))}
    assert got["cancel"]["status"] == "ok" and got["cancel"]["data"]["was"] == "running", json.dumps(
        {k: {**v, "data": {**v["data"], "embeddings": None}} for k, v in got.items()}
    )
    assert got["embed"]["status"] == "ok" and got["embed"]["data"]["finish_reason"] == "cancelled"
    assert got["generate"]["status"] == "ok" and got["generate"]["data"]["text"] == "TURN ON THE LIGHT"
    assert time.monotonic() - t0 < 5.0  # within an input or two of the cancel, not the batch's 9 s


def test_a_queued_embed_or_rerank_cancelled_ends_without_a_generations_fields(
    daemon: Daemons, mqtt_probe: Probe
) -> None:
    """Cancelled while queued, an embed or rerank ends as one cancelled while running does
    (docs/PROTOCOL.md): model and finish_reason, no text or completion tokens of a generation."""
    base = daemon()
    queued = [
        ("embed", {"id": "q-emb", "model": "emb", "input": ["later"]}),
        ("rerank", {"id": "q-rr", "model": "rr", "query": "q", "documents": ["d"]}),
    ]
    _queue_behind_a_long_batch(mqtt_probe, base, queued)
    mqtt_probe.collect_until(f"{base}/stats", lambda m: m.json()["queue_depth"] == 2)
    for rid in ("q-emb", "q-rr", "e0"):
        mqtt_probe.publish(f"{base}/request/cancel", {"id": rid})
    got = {r["id"]: r for r in _replies(mqtt_probe, base, 6) if "was" not in r["data"]}
    assert got["q-emb"]["data"] == {"model": "emb", "finish_reason": "cancelled"}, got["q-emb"]
    assert got["q-rr"]["data"] == {"model": "rr", "finish_reason": "cancelled"}, got["q-rr"]
    assert got["e0"]["data"] == {"model": "emb", "finish_reason": "cancelled"}, got["e0"]


def test_the_info_topic_follows_the_model_an_embed_or_generate_loaded(
    daemon: Daemons, mqtt_probe: Probe, broker: Broker
) -> None:
    """An embed on the chat default swaps the models; the retained info then names the model
    loaded (docs/PROTOCOL.md, "State, info, stats"), as after a load, and again after the
    generation that loads the chat model back."""

    def info_loaded() -> Any:
        out = subprocess.run(
            ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-t", f"{base}/info", "-C", "1",
             "-W", "5"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return json.loads(out.stdout)["loaded_model"]

    def info_comes_to(name: str) -> Any:
        """The info goes out after the reply: what it names once it names ``name``, or after 10 s."""
        deadline = time.monotonic() + 10
        while (loaded := info_loaded()) != name and time.monotonic() < deadline:
            time.sleep(0.1)
        return loaded

    base = daemon()
    assert info_loaded() == "chat"
    assert ask(mqtt_probe, base, "embed", {"model": "emb", "input": "x"})["status"] == "ok"
    assert info_comes_to("emb") == "emb"
    assert ask(mqtt_probe, base, "generate", {"prompt": "hi"})["status"] == "ok"
    assert info_comes_to("chat") == "chat"


def test_the_watchdog_ends_a_batch_that_makes_no_progress(daemon: Daemons, mqtt_probe: Probe) -> None:
    # 2 s: the 600 ms input below stays well under it on a busy machine too
    base = daemon(first_token_timeout_s=2.0)
    t0 = time.monotonic()
    reply = ask(mqtt_probe, base, "embed", {"input": ["slow [[delay_ms=8000]]", "two"]}, timeout=30)
    assert reply["status"] == "error" and reply["code"] == "timeout", reply
    assert "no input done within 2 s" in reply["error"]
    assert time.monotonic() - t0 < 6.0  # aborted, not waited out
    ok = ask(mqtt_probe, base, "embed", {"input": ["fast", "[[delay_ms=600]] under the limit"]})
    assert ok["status"] == "ok" and len(ok["data"]["embeddings"]) == 2


def test_a_runtime_crash_costs_the_batch_only(daemon: Daemons, mqtt_probe: Probe) -> None:
    """The runtime runs in its worker process: a native crash mid-batch is one error reply, the
    model is loaded again, and the next request is served."""
    base = daemon()
    reply = ask(
        mqtt_probe, base, "embed", {"id": "boom", "input": ["fine", "[[crash_at=1]] boom"]}, timeout=30
    )
    assert reply["status"] == "error" and reply["code"] == "runtime_crashed", reply
    again = ask(mqtt_probe, base, "embed", {"id": "after", "input": "fine"}, timeout=30)
    assert again["status"] == "ok" and close(again["data"]["embeddings"][0], mean_vector("fine"))


def _queue_behind_a_long_batch(probe: Probe, base: str, queued: list[tuple[str, dict[str, Any]]]) -> None:
    """A 9-s embed batch ("e0") runs; ``queued`` is published behind it; the stats show them all
    queued (the order of replies is then the queue's, whatever the machine's speed)."""
    probe.subscribe(f"{base}/stats", f"{base}/response/+")
    probe.collect_until(f"{base}/stats", lambda m: not m.json()["busy"])  # the startup load is over
    batch = [f"text {i} [[delay_ms=300]]" for i in range(30)]
    probe.publish(f"{base}/request/embed", {"id": "e0", "model": "emb", "input": batch})
    probe.collect_until(f"{base}/stats", lambda m: m.json()["busy"])  # e0 runs: nothing else was sent
    for command, payload in queued:
        probe.publish(f"{base}/request/{command}", payload)


def _replies(probe: Probe, base: str, n: int) -> list[dict[str, Any]]:
    """The next ``n`` final replies (cancel's included), in the order they arrived."""
    return [probe.get(f"{base}/response/+", timeout=30).json() for _ in range(n)]


def test_a_voice_request_runs_before_the_embed_batches_queued_ahead_of_it(
    daemon: Daemons, mqtt_probe: Probe
) -> None:
    """Open WebUI sends a document's batches at once: a generation published after them is answered
    before them, and they are all answered, in their own order (docs/EMBEDDINGS.md)."""
    base = daemon()
    queued = [("embed", {"id": f"e{i}", "model": "emb", "input": [f"chunk {i}"]}) for i in (1, 2, 3)]
    voice = ("generate", {"id": "voice", "prompt": "lights on"})
    _queue_behind_a_long_batch(mqtt_probe, base, [*queued, voice])
    mqtt_probe.collect_until(f"{base}/stats", lambda m: m.json()["queue_depth"] == 4)
    mqtt_probe.publish(f"{base}/request/cancel", {"id": "e0"})  # the queue is built: let it run
    replies = [r for r in _replies(mqtt_probe, base, 6) if "was" not in r["data"]]  # cancel's: "was"
    assert [(r["id"], r["status"]) for r in replies] == [
        ("e0", "ok"), ("voice", "ok"), ("e1", "ok"), ("e2", "ok"), ("e3", "ok")
    ], replies  # fmt: skip
    assert replies[0]["data"]["finish_reason"] == "cancelled" and replies[1]["data"]["text"] == "LIGHTS ON"
    for i, reply in enumerate(replies[2:], 1):
        assert close(reply["data"]["embeddings"][0], mean_vector(f"chunk {i}"))


def test_a_queue_full_of_embed_batches_still_takes_a_voice_request(
    daemon: Daemons, mqtt_probe: Probe
) -> None:
    """queue_size embed batches wait: one more batch is refused busy, a generation is not."""
    base = daemon()
    queued = [("embed", {"id": f"e{i}", "model": "emb", "input": [f"chunk {i}"]}) for i in (1, 2, 3, 4)]
    _queue_behind_a_long_batch(mqtt_probe, base, queued)
    mqtt_probe.collect_until(f"{base}/stats", lambda m: m.json()["queue_depth"] == 4)
    mqtt_probe.publish(f"{base}/request/embed", {"id": "e5", "model": "emb", "input": ["one too many"]})
    refused = mqtt_probe.get(f"{base}/response/embed", timeout=20).json()
    assert refused["id"] == "e5" and refused["code"] == "busy", refused
    mqtt_probe.publish(f"{base}/request/generate", {"id": "voice", "prompt": "lights on"})
    mqtt_probe.collect_until(f"{base}/stats", lambda m: m.json()["queue_depth"] == 5)
    mqtt_probe.publish(f"{base}/request/cancel", {"id": "e0"})
    replies = [r for r in _replies(mqtt_probe, base, 7) if "was" not in r["data"]]
    assert [(r["id"], r["status"]) for r in replies] == [
        ("e0", "ok"), ("voice", "ok"), ("e1", "ok"), ("e2", "ok"), ("e3", "ok"), ("e4", "ok")
    ], replies  # fmt: skip
    assert replies[1]["data"]["text"] == "LIGHTS ON"
