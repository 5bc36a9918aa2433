"""The official clients' embeddings calls against rkllmd as a process (both HTTP plugins, real
mosquitto, loopback only): on the C double, whose vectors the test computes exactly, and on the
real SmolLM2 through llama.cpp, where similar texts must come out closer than unrelated ones.

The clients are the pinned versions the suite installs once into ~/.cache/rkllmd/clients
(tests/e2e/test_ha_replay.py: ``pinned``), run in a subprocess (tests/e2e/embed_driver.py).
``POST /v1/rerank`` has no official client: it is driven with http.client in the shape Jina's and
Cohere's clients send.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from rkllmd.bench.broker import free_port
from rkllmd.embedding import (
    QWEN3_RERANK_INSTRUCTION,
    QWEN3_RERANK_TEMPLATE,
    normalized,
    rerank_text,
    yes_no_score,
)
from tests.e2e.test_embed_daemon import close, mean_vector
from tests.e2e.test_ha_replay import pinned, replay, text_of
from tests.fake_rkllm import vectors
from tests.helpers import Broker, DaemonProc, Probe, write_config

DRIVER = Path(__file__).with_name("embed_driver.py")
OPENAI, OLLAMA = ("openai", "3.26.0"), ("ollama", "0.6.2")


class Served:
    def __init__(self, proc: DaemonProc, base: str, openai_port: int, ollama_port: int) -> None:
        self.proc, self.base = proc, base
        self.openai_port, self.ollama_port = openai_port, ollama_port
        self.openai = f"http://127.0.0.1:{openai_port}/v1"
        self.ollama = f"http://127.0.0.1:{ollama_port}"


def serve(tmp: Path, broker: Broker, base: str, models: dict[str, Any]) -> Served:
    openai_port, ollama_port = free_port(), free_port()
    cfg = write_config(
        tmp / f"{base}.toml",
        {
            "default_model": next(iter(models)),
            "mqtt": {"host": broker.host, "port": broker.port, "base_topic": base, "client_id": base},
            "log": {"level": "debug", "format": "json"},
            "limits": {"queue_size": 4, "max_payload_bytes": 262144, "max_embed_inputs": 64},
            "models": models,
            "plugins": {
                "enabled": ["http", "ollama"],
                "http": {"port": openai_port},
                "ollama": {"port": ollama_port},
            },
        },
    )
    d = DaemonProc(cfg, tmp)
    d.wait_ready(60)
    d.wait_log("OpenAI-compatible API listening")
    d.wait_log("Ollama-compatible API listening")
    return Served(d, base, openai_port, ollama_port)


@pytest.fixture(scope="module")
def double(
    broker: Broker, fake_libs: dict[str, Path], tiny_tokenizer: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("embedclients")
    model = tmp / "m.rkllm"
    model.write_bytes(b"fake")
    common = {"runtime": "rkllm", "path": str(model), "library": str(fake_libs["1.3"])}
    served = serve(
        tmp,
        broker,
        "embclients",
        {
            "chat": common,
            "emb": {**common, "kind": "embedding", "pooling": "mean"},
            "mat": {**common, "kind": "embedding", "matryoshka": True},
            "rr": {**common, "kind": "rerank", "rerank_token_ids": [7, 3]},
            "short": {**common, "kind": "embedding", "tokenizer": str(tiny_tokenizer), "max_context_len": 32},
        },
    )
    yield served
    assert served.proc.stop() == 0


def call(client: tuple[str, str], url: str, kwargs: dict[str, Any], what: str = "embed") -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(pinned(*client))}
    spec = {"client": client[0], "url": url, "call": what, "kwargs": kwargs}
    proc = subprocess.run(
        [sys.executable, str(DRIVER), json.dumps(spec)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["version"] == client[1]  # the pinned client ran, not the virtualenv's
    return out


TEXTS = ["the cat sat on the mat", "dogs bark", "a b c d e"]


@pytest.mark.parametrize("encoding", [None, "float", "base64"])
def test_openai_client_gets_the_exact_vectors(double: Served, encoding: str | None) -> None:
    # the client asks for base64 by default and decodes it itself
    kwargs: dict[str, Any] = {"model": "emb", "input": TEXTS}
    if encoding is not None:
        kwargs["encoding_format"] = encoding
    out = call(OPENAI, double.openai, kwargs)
    assert out["model"] == "emb"
    for text, vec in zip(TEXTS, out["vectors"], strict=True):
        assert close(vec, mean_vector(text))
    assert out["usage"] == {"prompt_tokens": 6 + 2 + 5, "total_tokens": 13}


def test_openai_client_one_string_and_matryoshka_dimensions(double: Served) -> None:
    out = call(OPENAI, double.openai, {"model": "mat", "input": "hello there", "dimensions": 4})
    (vec,) = out["vectors"]
    assert close(vec, normalized(normalized(vectors.hidden_rows("hello there")[-1])[:4]))


@pytest.mark.parametrize(
    ("kwargs", "status", "needle", "param"),
    [
        ({"model": "emb", "input": []}, 400, "input is empty", "input"),
        ({"model": "emb", "input": ["ok", ""]}, 400, "input[1] is empty", "input[1]"),
        ({"model": "emb", "input": ["x"] * 65}, 400, "one request may hold 64", "input"),
        ({"model": "emb", "input": [[1, 2, 3]]}, 400, "Token arrays are not supported", "input"),
        ({"model": "emb", "input": "x", "dimensions": 8}, 400, "does not take dimensions", "dimensions"),
        (
            {"model": "chat", "input": "x"},
            400,
            "serves chat requests, not embedding: use /v1/chat/completions (embedding models:",
            "model",
        ),
        ({"model": "nope", "input": "x"}, 404, "does not exist", "model"),
    ],
)
def test_openai_client_bad_input_is_a_clear_error(
    double: Served, kwargs: dict[str, Any], status: int, needle: str, param: str
) -> None:
    """Each refusal as the official client (openai 3.26.0) raises it: the status, the message, and
    the ``param`` its error object names (``BadRequestError.param``), as OpenAI's own sets it."""
    out = call(OPENAI, double.openai, {**kwargs, "encoding_format": "float"})
    assert out["error"]["status"] == status, out
    assert needle in out["error"]["message"]
    assert out["error"]["param"] == param == out["error"]["body"]["param"], out
    ok = call(OPENAI, double.openai, {"model": "emb", "input": "fine"})  # nothing else refused
    assert close(ok["vectors"][0], mean_vector("fine"))


def test_ollama_client_embed_and_the_older_embeddings(double: Served) -> None:
    out = call(OLLAMA, double.ollama, {"model": "emb", "input": TEXTS})
    assert out["model"] == "emb" and out["usage"]["prompt_tokens"] == 13
    assert all(close(v, mean_vector(t)) for t, v in zip(TEXTS, out["vectors"], strict=True))
    one = call(OLLAMA, double.ollama, {"model": "emb:latest", "input": "dogs bark"})
    assert close(one["vectors"][0], mean_vector("dogs bark"))
    old = call(OLLAMA, double.ollama, {"model": "emb", "prompt": "dogs bark"}, what="embeddings")
    assert close(old["vectors"][0], mean_vector("dogs bark"))


@pytest.mark.parametrize(
    ("kwargs", "status", "needle"),
    [
        ({"model": "emb", "input": []}, 400, "input is empty"),
        ({"model": "chat", "input": "x"}, 400, "not embedding: use /api/chat ("),
        ({"model": "rr", "input": "x"}, 400, "not embedding: use /v1/rerank ("),
        ({"model": "short", "input": ["a", "a " * 40], "truncate": False}, 400, "input 1 is 40 tokens"),
    ],
)
def test_ollama_client_bad_input_is_a_clear_error(
    double: Served, kwargs: dict[str, Any], status: int, needle: str
) -> None:
    out = call(OLLAMA, double.ollama, kwargs)
    assert out["error"]["status"] == status and needle in out["error"]["message"], out


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"model": "emb"}, "prompt is required"),  # no prompt: ollama 0.6.2 sends none
        ({"model": "emb", "prompt": "  "}, "prompt is empty"),
    ],
)
def test_ollama_client_older_embeddings_names_its_prompt(
    double: Served, kwargs: dict[str, Any], needle: str
) -> None:
    """/api/embeddings takes `prompt`, not /api/embed's `input`: its refusal names the field the
    client sent, not an `input` it never had (ollama client 0.6.2)."""
    out = call(OLLAMA, double.ollama, kwargs, what="embeddings")
    assert out["error"]["status"] == 400 and needle in out["error"]["message"], out


def test_ollama_client_truncates_by_default_as_ollama_does(double: Served) -> None:
    """Ollama's /api/embed cuts an input longer than the context (truncate defaults to true); the
    older /api/embeddings and OpenAI's endpoint refuse it, as theirs do."""
    words = [f"w{i}" for i in range(40)]  # 40 tokens to model short (context 32)
    out = call(OLLAMA, double.ollama, {"model": "short", "input": " ".join(words)})
    (vec,) = out["vectors"]
    assert close(vec, normalized(vectors.hidden_rows(" ".join(words[:31]))[-1]))
    assert out["usage"]["prompt_tokens"] == 31
    old = call(OLLAMA, double.ollama, {"model": "short", "prompt": " ".join(words)}, what="embeddings")
    assert old["error"]["status"] == 400 and "input 0 is 40 tokens" in old["error"]["message"], old
    oa = call(OPENAI, double.openai, {"model": "short", "input": " ".join(words)})
    assert oa["error"]["status"] == 400 and oa["error"]["body"]["code"] == "context_length_exceeded", oa
    bad = {"model": "short", "input": "a", "truncate": "yes"}
    status, body = _post(double.ollama_port, "/api/embed", bad)
    assert status == 400 and "truncate must be true or false" in body["error"], body


def _post(port: int, path: str, body: Any) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read())
    conn.close()
    return out


def test_wrong_types_the_clients_would_not_send(double: Served) -> None:
    """A raw body with the wrong types: each API's error shape, naming the field."""
    status, body = _post(double.ollama_port, "/api/embed", {"model": "emb", "input": ["a", 1]})
    assert status == 400 and "input: [1] must be a string, not int" in body["error"], body
    status, body = _post(double.openai_port, "/v1/embeddings", {"model": "emb", "input": 5})
    assert status == 400 and body["error"]["code"] == "invalid_type", body
    assert "must be a string or a list of strings" in body["error"]["message"]
    status, body = _post(
        double.openai_port, "/v1/embeddings", {"model": "emb", "input": "x", "encoding_format": "hex"}
    )
    assert status == 400 and body["error"]["param"] == "encoding_format", body
    status, body = _post(double.ollama_port, "/api/embeddings", {"model": "emb", "prompt": ""})
    assert status == 400 and "prompt is empty" in body["error"], body


def test_rerank_endpoint_in_the_jina_cohere_shape(double: Served) -> None:
    docs = ["paris is in france", "bananas are yellow", "the sky is blue"]
    status, body = _post(
        double.openai_port,
        "/v1/rerank",
        {
            "model": "rr",
            "query": "paris",
            "documents": docs,
            "top_n": 2,
            "return_documents": True,
        },
    )
    assert status == 200, body
    assert body["model"] == "rr" and len(body["results"]) == 2 and body["usage"]["total_tokens"] > 0
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    assert all(r["document"] == {"text": docs[r["index"]]} for r in body["results"])


@pytest.mark.parametrize(
    ("body", "code", "says", "param"),
    [
        ({"query": "paris", "documents": []}, "empty_input", "documents is empty", "documents"),
        ({"query": "paris"}, "empty_input", "documents is required", "documents"),
        ({"query": "paris", "documents": ["a", " "]}, "empty_input", "documents[1] is empty", "documents[1]"),
        ({"query": " ", "documents": ["a"]}, "empty_input", "query is empty", "query"),
        ({"documents": ["a"]}, "empty_input", "query is required", "query"),
        ({"query": "q", "documents": ["d"] * 65}, "too_many_inputs", "may hold 64", "documents"),
        (
            {"model": "emb", "query": "q", "documents": ["d"]},
            "wrong_model_kind",
            "serves embedding requests, not rerank: use /v1/embeddings (rerank models: rr)",
            "model",
        ),
    ],
)
def test_rerank_endpoint_refusals_name_the_field(
    double: Served, body: dict[str, Any], code: str, says: str, param: str
) -> None:
    """A missing field is told from an empty one, and OpenAI's error object names it in ``param``."""
    status, out = _post(double.openai_port, "/v1/rerank", {"model": "rr", **body})
    assert status == 400, out
    err = out["error"]
    assert (err["code"], err["param"]) == (code, param) and says in err["message"], err


@pytest.mark.parametrize(
    ("port", "path", "body", "says"),
    [
        ("openai", "/v1/chat/completions", {"model": "emb"}, "not chat: use /v1/embeddings"),
        ("openai", "/v1/chat/completions", {"model": "rr"}, "not chat: use /v1/rerank"),
        ("ollama", "/api/chat", {"model": "emb", "stream": False}, "not chat: use /api/embed"),
        ("ollama", "/api/chat", {"model": "rr", "stream": False}, "not chat: use /v1/rerank"),
    ],
)
def test_a_chat_to_a_model_of_another_kind_names_this_apis_endpoint(
    double: Served, port: str, path: str, body: dict[str, Any], says: str
) -> None:
    """Over HTTP the refusal names the endpoint to use, not the MQTT command ("use embed")."""
    messages = [{"role": "user", "content": "hi"}]
    status, out = _post(getattr(double, f"{port}_port"), path, {**body, "messages": messages})
    err = out["error"]
    message = err["message"] if isinstance(err, dict) else err
    assert status == 400 and says in message, out
    if isinstance(err, dict):
        assert (err["code"], err["param"]) == ("wrong_model_kind", "model"), err


def test_rerank_endpoint_passes_the_requests_instruction(double: Served) -> None:
    """`instruction` replaces the model's rerank_instruction (docs/EMBEDDINGS.md) here as over MQTT:
    the score is the yes/no logits of the prompt with that instruction in it."""
    asked = {"model": "rr", "query": "paris", "documents": ["paris is in france"]}
    for instruction in (None, "Find documents about fruit"):
        body = asked if instruction is None else {**asked, "instruction": instruction}
        status, out = _post(double.openai_port, "/v1/rerank", body)
        assert status == 200, out
        prompt = rerank_text(
            QWEN3_RERANK_TEMPLATE, instruction or QWEN3_RERANK_INSTRUCTION, "paris", "paris is in france"
        )
        logits = vectors.last_logits(prompt)
        assert math.isclose(
            out["results"][0]["relevance_score"], yes_no_score(logits[7], logits[3]), rel_tol=1e-9
        )


SAID = "The kitchen light is on."


def test_a_voice_chat_is_answered_before_the_embedding_batches_queued_ahead_of_it(
    double: Served, mqtt_probe: Probe
) -> None:
    """Open WebUI indexing a document sends its embedding batches at once to ``/v1/embeddings``
    (here the openai 3.26.0 client, one thread each); Home Assistant's voice request, a streamed
    ``/api/chat`` from the ollama 0.6.2 client HA 2026.11 pins (with its own User-Agent,
    ``ollama-python/0.6.2``, as HA sends it), comes after them and is answered before them, while
    a batch runs; every batch gets its vectors, none refused busy (docs/EMBEDDINGS.md, "A long
    batch does not starve a voice request")."""
    stats = f"{double.base}/stats"
    mqtt_probe.subscribe(stats)
    mqtt_probe.collect_until(stats, lambda m: not m.json()["busy"] and m.json()["queue_depth"] == 0)
    # The batch in progress: 50 texts at 300 ms, 15 s on the double, however long the clients'
    # start takes on a busy machine; each queued batch takes 300 ms, so that its answer cannot
    # reach its client in the same instant as the one answered before it.
    running = [f"page {i} [[delay_ms=300]]" for i in range(50)]
    queued = {f"e{i}": [f"chunk {i} [[delay_ms=300]]", f"more of chunk {i}"] for i in (1, 2, 3)}
    answers: dict[str, dict[str, Any]] = {}
    done_at: dict[str, float] = {}  # when each call returned to the test: its client's process ended

    def embed(name: str, texts: list[str]) -> None:  # on a pool thread
        answers[name] = call(
            OPENAI, double.openai, {"model": "emb", "input": texts, "encoding_format": "float"}
        )
        done_at[name] = time.monotonic()

    def chat() -> None:  # on a pool thread: HA 2026.11's call (tests/e2e/test_ha_replay.py)
        user = {"role": "user", "content": f"[[say={base64.b64encode(SAID.encode()).decode()}]] lights on"}
        ha = {"stream": True, "keep_alive": -1, "options": {"num_ctx": 8192.0}, "think": False}
        answers["voice"] = replay(*OLLAMA, double.ollama, model="chat", messages=[user], **ha)
        done_at["voice"] = time.monotonic()

    def depth_is(n: int) -> Callable[[Any], bool]:
        return lambda m: m.json()["busy"] and m.json()["queue_depth"] == n

    with ThreadPoolExecutor(max_workers=5) as pool:
        jobs = [pool.submit(embed, "running", running)]
        mqtt_probe.collect_until(stats, depth_is(0))  # it runs: nothing else was sent
        jobs += [pool.submit(embed, name, texts) for name, texts in queued.items()]
        mqtt_probe.collect_until(stats, depth_is(3))  # all three wait behind it
        jobs.append(pool.submit(chat))
        mqtt_probe.collect_until(stats, depth_is(4))  # the chat too, last
        for job in jobs:
            job.result(timeout=60)
    for name, texts in {"running": running, **queued}.items():
        out = answers[name]
        assert "error" not in out, (name, out["error"])
        assert all(close(v, mean_vector(t)) for t, v in zip(texts, out["vectors"], strict=True)), name
    voice = answers["voice"]
    assert "error" not in voice and text_of(voice["parts"]) == SAID, voice
    # The batch in progress ends first, then the chat; the queued batches keep their arrival order
    # among themselves, which concurrent clients do not fix.
    order = sorted(done_at, key=done_at.__getitem__)
    assert order[:2] == ["running", "voice"], {n: round(done_at[n], 3) for n in order}


# --- the real SmolLM2 through llama.cpp ---------------------------------------------------------------

SIMILAR = ["The cat sleeps on the warm sofa.", "A kitten is napping on the couch."]
UNRELATED = "Quarterly tax filings are due in April."


@pytest.fixture(scope="module")
def smol(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    pytest.importorskip("llama_cpp")
    from rkllmd.runtime.llamacpp import embedded_model_path

    if embedded_model_path() is None:
        pytest.skip("the embedded SmolLM2 model is not installed")
    tmp = tmp_path_factory.mktemp("embsmol")
    smol = {
        "runtime": "llamacpp",
        "kind": "embedding",
        "pooling": "mean",
        "max_context_len": 512,
        "n_threads": 2,
    }
    served = serve(tmp, broker, "embsmol", {"smol": smol})
    yield served
    assert served.proc.stop() == 0


def cos(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))


@pytest.mark.model
@pytest.mark.parametrize("client", [OPENAI, OLLAMA])
def test_smollm2_similar_texts_are_closer_than_unrelated_ones(smol: Served, client: tuple[str, str]) -> None:
    url = smol.openai if client is OPENAI else smol.ollama
    out = call(client, url, {"model": "smol", "input": [*SIMILAR, UNRELATED]})
    cat, kitten, tax = out["vectors"]
    assert len(cat) == 576 and math.isclose(cos(cat, cat), 1.0, rel_tol=1e-5)
    assert cos(cat, kitten) > cos(cat, tax) + 0.05 and cos(cat, kitten) > cos(kitten, tax) + 0.05
    assert out["usage"]["prompt_tokens"] > 10


@pytest.mark.model
def test_smollm2_input_longer_than_the_context_is_refused(smol: Served) -> None:
    out = call(OPENAI, smol.openai, {"model": "smol", "input": ["fine", "word " * 600]})
    assert out["error"]["status"] == 400 and "input 1 is" in out["error"]["message"], out
    assert out["error"]["body"]["code"] == "context_length_exceeded"
