"""Bad input and load against one running rkllmd over real mosquitto: property-based fuzzing of every
request topic's payload (hypothesis) and a burst of 1,000 requests into a small queue.

Replies are matched to requests by MQTT v5 correlation data (or a unique ``transaction`` where the
fuzzed ``reply_to`` decides the topic); every wait is bounded.

Deterministic by default (``derandomize``, no example database). For a deeper local run:
``RKLLMD_FUZZ_EXAMPLES=5000 RKLLMD_FUZZ_RANDOM=1 pytest tests/e2e/test_hardening_fuzz.py``.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.e2e.conftest import rkllm_config
from tests.helpers import REPO, DaemonProc, Msg, Probe, start_broker

BASE = "fz"
MAX_PAYLOAD = 4096
TOKENS_CAP = 16
COMMANDS = ["generate", "embed", "rerank", "cancel", "models", "load", "unload", "clear_cache"]
MODEL_TOPICS = ("generate", "embed", "rerank")  # commands whose topic may name a model

FUZZ = settings(
    max_examples=int(os.environ.get("RKLLMD_FUZZ_EXAMPLES", "400")),
    derandomize=os.environ.get("RKLLMD_FUZZ_RANDOM") != "1",
    database=None,
    deadline=None,
    print_blob=True,
    # no shrinking: the daemon has state, so a shrunk example says less than the one that failed,
    # and each attempt that loses a reply costs a full timeout
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def documented_codes() -> set[str]:
    """The error codes listed in the Errors table of docs/PROTOCOL.md."""
    text = (REPO / "docs" / "PROTOCOL.md").read_text()
    section = text.split("## Errors", 1)[1].split("\n## ", 1)[0]
    codes = set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M))
    assert {"bad_json", "busy", "bad_request", "internal_error"} <= codes
    return codes


CODES = documented_codes() - {"internal_error"}  # internal_error is documented as "a bug"


class Fuzzer:
    """The probe and bookkeeping one module's worth of fuzzing shares."""

    def __init__(self, probe: Probe, daemon: DaemonProc, everything: Probe) -> None:
        self.p = probe
        self.all = everything
        self.d = daemon
        self.n = itertools.count()
        self.cases = 0
        self.reply_topic = f"{BASE}-replies/{uuid.uuid4().hex[:6]}"
        self.probe_topics: set[str] = set()
        self.deaf: str | None = None  # set at the first missing reply: later examples fail at once

    def check_alive(self) -> None:
        assert self.deaf is None, f"rkllmd stopped answering earlier: {self.deaf}"
        assert self.d.proc.poll() is None, f"rkllmd exited with {self.d.proc.returncode}"

    def send(self, batch: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        """Publish each (topic, payload) with a Response Topic and unique correlation data; return
        every reply in the same order (AssertionError if one is missing)."""
        self.check_alive()
        want: dict[bytes, int] = {}
        infos = []
        for i, (topic, payload) in enumerate(batch):
            corr = f"c{next(self.n)}".encode()
            want[corr] = i
            infos.append(self._publish(topic, payload, corr))
        for info in infos:
            info.wait_for_publish(10)
        got: dict[int, dict[str, Any]] = {}
        while len(got) < len(batch):
            try:
                m = self.p.get(self.reply_topic, timeout=10)
            except TimeoutError:
                missing = [batch[i] for i in range(len(batch)) if i not in got]
                self.deaf = f"no reply to {missing[:3]!r} ({len(missing)} missing)"
                raise AssertionError(self.deaf) from None
            i = want.get(m.correlation_data or b"", -1)
            if i >= 0:
                got[i] = reply_body(m)
        self.cases += len(batch)
        return [got[i] for i in range(len(batch))]

    def _publish(self, topic: str, payload: bytes, corr: bytes) -> Any:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = corr
        return self.p.client.publish(topic, payload, qos=1, properties=props)


def reply_body(m: Msg) -> dict[str, Any]:
    body = json.loads(m.payload)
    assert isinstance(body, dict), body
    return body


def check_envelope(body: dict[str, Any], sent: tuple[str, bytes]) -> None:
    """One reply in the documented envelope: ok, or error with a documented code and a message."""
    assert body["status"] in ("ok", "error"), (sent, body)
    assert isinstance(body["data"], dict), (sent, body)
    if body["status"] == "error":
        assert body["code"] in CODES, (sent, body)
        assert isinstance(body["error"], str) and body["error"], (sent, body)


@pytest.fixture(scope="module")
def fuzz_daemon(fake_libs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzer]:
    """One rkllmd for the whole module, on the C double, with a small queue and token cap, on its own
    broker whose per-client queue holds a whole burst (mosquitto drops beyond 1,000 by default)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    broker = start_broker(tmp, extra_conf="max_queued_messages 20000\n")
    snaps = tmp / "snaps"  # an image folder: {"path": ...} is read only in it
    snaps.mkdir()
    (snaps / "snap.png").write_bytes(base64.b64decode(TINY_PNG))
    common = {"runtime": "rkllm", "path": str(tmp / "fake-model.rkllm"), "library": str(fake_libs["1.3"])}
    cfg = rkllm_config(
        tmp,
        broker,
        fake_libs["1.3"],
        BASE,
        limits={
            "queue_size": 4,
            "max_payload_bytes": MAX_PAYLOAD,
            "max_tokens": 4,
            "max_tokens_cap": TOKENS_CAP,
        },
        extra_models={  # the vector commands' own checks run only on a model of their kind
            "emb": {**common, "kind": "embedding", "matryoshka": True},
            "rr": {**common, "kind": "rerank", "rerank_token_ids": [7, 3]},
        },
        top={"images": {"folder": str(snaps)}},
    )
    d = DaemonProc(cfg, tmp)
    p = Probe(broker)
    everything = Probe(broker)  # subscribed to '#' by the reply_to test; kept apart from the replies
    try:
        d.wait_ready(30)
        f = Fuzzer(p, d, everything)
        p.subscribe(f.reply_topic)
        yield f
        # still alive, still answering
        assert d.proc.poll() is None
        (ok,) = f.send([(f"{BASE}/request/generate", b"still here")])
        assert ok["status"] == "ok", ok
        log = d.log_text()
        assert "Traceback" not in log and '"dispatch failed"' not in log, log[-3000:]
    finally:
        p.close()
        everything.close()
        assert d.stop() == 0
        broker.stop()


# --- strategies ---------------------------------------------------------------------------------

SURROGATES = st.sampled_from(["\ud800", "\udfff", "\ud83d"])
ODD_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "+",
            "#",
            "a/+/b",
            "a/#",
            "$SYS/x",
            "/",
            "//",
            "a b",
            "é/ü",
            "\u202e",
            "\ufeff",
            "x" * 65,
            "x" * 64,
            "a:b.c-d_e",
            "../../etc/passwd",
            "%2F",
            "\n",
        ]
    ),
    st.tuples(st.text(max_size=5), SURROGATES, st.text(max_size=5)).map("".join),
)
BOUNDARY_NUMBERS = st.sampled_from(
    [
        0,
        1,
        -1,
        TOKENS_CAP,
        TOKENS_CAP + 1,
        2**31 - 1,
        2**31,
        2**63,
        -(2**63),
        10**30,
        0.0,
        -0.0,
        0.5,
        1.0,
        1.5,
        5.0,
        5.0000001,
        10.0,
        -2.0,
        2.0,
        1e308,
        -1e308,
        5e-324,
        float("nan"),
        float("inf"),
        float("-inf"),
    ]
)
JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), ODD_TEXT, BOUNDARY_NUMBERS)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(ODD_TEXT, inner, max_size=4)),
    max_leaves=12,
)
FIELDS = [
    "prompt",
    "messages",
    "system",
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repeat_penalty",
    "frequency_penalty",
    "presence_penalty",
    "seed",
    "stop",
    "stream",
    "id",
    "transaction",
    "reply_to",
    "library",
    "path",
    "plugin",
    "runtime",
    # embed, rerank, images, thinking, tools (the newer surface)
    "input",
    "query",
    "documents",
    "dimensions",
    "top_n",
    "truncate",
    "encoding",
    "instruction",
    "images",
    "think",
    "max_thinking_tokens",
    "tools",
]
MESSAGES = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "tool", "root", ""]), "content": ODD_TEXT}
    ),
    max_size=4,
)


def tiny_png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


TINY_PNG = tiny_png()
IMAGE = st.one_of(
    st.sampled_from(
        [
            TINY_PNG,
            "data:image/png;base64," + TINY_PNG,
            "data:image/gif;base64," + TINY_PNG,
            TINY_PNG[:-2],
            "/9j/",
            "http://camera/snap.jpg",
            {"path": "snap.png"},
            {"path": "../fake-model.rkllm"},
            {"path": "/proc/self/environ"},
            {"path": "/dev/zero"},
            {"path": "snap.png\x00"},
            {"path": ""},
        ]
    ),
    st.fixed_dictionaries({"path": ODD_TEXT}),
    JSON_VALUE,
)
FIELD_VALUE = {
    "prompt": st.one_of(ODD_TEXT, JSON_VALUE),
    "messages": st.one_of(MESSAGES, JSON_VALUE),
    "max_tokens": st.one_of(BOUNDARY_NUMBERS, JSON_VALUE),
    "temperature": st.one_of(BOUNDARY_NUMBERS, JSON_VALUE),
    "top_p": BOUNDARY_NUMBERS,
    "top_k": BOUNDARY_NUMBERS,
    "seed": BOUNDARY_NUMBERS,
    "model": st.one_of(
        st.sampled_from(["fake", "other", "emb", "rr", "/tmp/fake-model.rkllm", "../fake"]), ODD_TEXT
    ),
    "stream": st.one_of(st.booleans(), JSON_VALUE),
    "input": st.one_of(ODD_TEXT, st.lists(ODD_TEXT, max_size=80), JSON_VALUE),
    "documents": st.one_of(st.lists(ODD_TEXT, max_size=80), JSON_VALUE),
    "dimensions": st.one_of(BOUNDARY_NUMBERS, JSON_VALUE),
    "top_n": st.one_of(BOUNDARY_NUMBERS, JSON_VALUE),
    "max_thinking_tokens": st.one_of(BOUNDARY_NUMBERS, JSON_VALUE),
    "truncate": st.one_of(st.booleans(), BOUNDARY_NUMBERS, JSON_VALUE),
    "think": st.one_of(st.sampled_from([True, False, "low", "high", "max", ""]), JSON_VALUE),
    "images": st.one_of(st.lists(IMAGE, max_size=20), JSON_VALUE),
}


@st.composite
def request_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A JSON object of real field names (and a few forbidden ones) with plausible or hostile values."""
    names = draw(st.lists(st.sampled_from(FIELDS), max_size=6, unique=True))
    obj = {n: draw(FIELD_VALUE.get(n, st.one_of(ODD_TEXT, JSON_VALUE))) for n in names}
    if draw(st.booleans()):
        obj["prompt"] = draw(st.text(min_size=1, max_size=30))
    return obj


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()  # ASCII, lone surrogates as \\ud800 escapes


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 8))
    if kind == 0:  # anything at all
        return draw(st.binary(max_size=200))
    if kind == 1:  # invalid UTF-8 inside otherwise fine text or JSON
        good = draw(st.sampled_from([b"hello ", b'{"prompt": "hi', b"", b"{"]))
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"]))
        return good + bad
    if kind == 2:  # deep nesting, balanced or not
        n = draw(st.integers(1, 2000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('{"prompt":[', "]}")]))
        tail = closer * n if draw(st.booleans()) else closer * draw(st.integers(0, n))
        return (opener * n + "1" + tail).encode()[: MAX_PAYLOAD + 10]
    if kind == 3:  # around and over the payload limit
        size = draw(st.sampled_from([MAX_PAYLOAD - 1, MAX_PAYLOAD, MAX_PAYLOAD + 1, 3 * MAX_PAYLOAD]))
        return (b'{"prompt":"' + b"a " * size)[:size] if draw(st.booleans()) else b"x" * size
    if kind == 4:  # plain text
        return draw(ODD_TEXT).encode("utf-8", "surrogatepass")
    if kind == 5:  # JSON that is not an object
        return dumps(draw(st.one_of(st.lists(JSON_VALUE, max_size=3), JSON_LEAF)))
    if kind == 6:  # broken JSON
        text = dumps(draw(request_objects()))
        cut = draw(st.integers(0, max(0, len(text) - 1)))
        return text[:cut] + draw(st.sampled_from([b"", b",", b"}", b"]]", b"\x00", b'"']))
    return dumps(draw(request_objects()))  # the common case: a field-by-field hostile object


def valid_topic(t: str) -> bool:
    """A topic the broker lets a client publish to (mosquitto closes the connection otherwise)."""
    from rkllmd.protocol import check_publish_topic

    try:
        check_publish_topic(t, "topic")
    except ValueError:
        return False
    return True


ODD_SUFFIX = st.one_of(
    st.sampled_from(
        [
            "",
            "/",
            "generate/",
            "generate/fake",
            "generate/nope",
            "generate/a/b",
            "GENERATE",
            "models/x",
            "cancel/fake",
            "generate/../fake",
            "bridge",
            " generate",
            "generate ",
        ]
    ),
    st.text(min_size=1, max_size=20),
)
TOPICS = st.one_of(
    st.sampled_from([f"{BASE}/request/{c}" for c in COMMANDS]),
    ODD_SUFFIX.map(lambda s: f"{BASE}/request/{s}").filter(valid_topic),
)


@FUZZ
@given(batch=st.lists(st.tuples(TOPICS, payloads()), min_size=4, max_size=24))
def test_fuzz_every_request_is_answered_with_a_documented_code(
    fuzz_daemon: Fuzzer, batch: list[tuple[str, bytes]]
) -> None:
    """Random, hostile and boundary payloads on every request topic (and odd topics under the base):
    each one gets exactly one reply in the envelope, with a code from docs/PROTOCOL.md."""
    for sent, body in zip(batch, fuzz_daemon.send(batch), strict=True):
        check_envelope(body, sent)
        if sent[0] not in {f"{BASE}/request/{c}" for c in COMMANDS} and not sent[0].startswith(
            tuple(f"{BASE}/request/{c}/" for c in MODEL_TOPICS)
        ):
            assert body["code"] == "unknown_command", (sent, body)
        if len(sent[1]) > MAX_PAYLOAD and body["status"] == "error":
            assert body["code"] in ("payload_too_large", "unknown_command"), (sent, body)


@FUZZ
@given(reply_to=ODD_TEXT, rid=ODD_TEXT, command=st.sampled_from(["generate", "cancel", "load"]))
def test_fuzz_odd_reply_to_and_ids_without_a_response_topic(
    fuzz_daemon: Fuzzer, reply_to: str, rid: str, command: str
) -> None:
    """Without a v5 Response Topic the reply goes to a valid ``reply_to``, else to the default topic
    with bad_request: odd ids and reply topics are refused, never a crash or a publish to a wildcard."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    f = fuzz_daemon
    f.check_alive()
    corr = f"rt{next(f.n)}".encode()  # copied onto the reply wherever it goes
    obj: dict[str, Any] = {"transaction": corr.decode(), "reply_to": reply_to, "id": rid}
    if command == "generate":
        obj["prompt"] = "hi"
    if command == "load":
        obj["model"] = "fake"
    if "#" not in f.probe_topics:
        f.all.subscribe("#")
        f.probe_topics.add("#")
    props = Properties(PacketTypes.PUBLISH)
    props.CorrelationData = corr
    f.all.client.publish(f"{BASE}/request/{command}", dumps(obj), qos=1, properties=props).wait_for_publish(5)
    for _ in range(500):  # everything under '#' arrives here; skip what is not ours
        try:
            m = f.all.get("#", timeout=10)
        except TimeoutError:
            break
        if m.correlation_data != corr or m.payload == dumps(obj):  # not ours, or our own request
            continue
        body = reply_body(m)
        check_envelope(body, (m.topic, dumps(obj)))
        assert "+" not in m.topic and "#" not in m.topic and not m.topic.startswith("$")
        if m.topic != reply_to:  # refused reply topic: the default one, and the request is refused too
            assert m.topic == f"{BASE}/response/{command}", (m.topic, body)
            assert body["status"] == "error" and body["code"] == "bad_request", (reply_to, body)
        f.cases += 1
        return
    f.deaf = f"no reply to {obj!r}"
    raise AssertionError(f.deaf)


@pytest.mark.parametrize("response_topic", ["a/#", "a/+/b", "$SYS/broker/x", "#"])
def test_v5_response_topic_rkllmd_must_not_publish_to_is_refused(
    fuzz_daemon: Fuzzer, response_topic: str
) -> None:
    """mosquitto passes wildcards and $-topics on as a Response Topic; rkllmd refuses the request with
    bad_request on the default reply topic instead of publishing there."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    f = fuzz_daemon
    f.check_alive()
    f.p.subscribe(f"{BASE}/response/generate")
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = response_topic
    props.CorrelationData = b"odd-rt"
    f.p.client.publish(f"{BASE}/request/generate", b"hello", qos=1, properties=props).wait_for_publish(5)
    for _ in range(50):
        m = f.p.get(f"{BASE}/response/generate", timeout=15)
        if m.correlation_data == b"odd-rt":
            body = reply_body(m)
            assert body["status"] == "error" and body["code"] == "bad_request", body
            assert "Response Topic" in body["error"]
            return
    raise AssertionError("no reply on the default topic")


def test_fuzzing_ran_thousands_of_cases(fuzz_daemon: Fuzzer) -> None:
    """The two fuzz tests above together sent at least a thousand requests (guards against a
    settings change that silently shrinks the run)."""
    if os.environ.get("RKLLMD_FUZZ_EXAMPLES"):
        pytest.skip("example count overridden")
    print(f"fuzzing sent {fuzz_daemon.cases} requests")
    assert fuzz_daemon.cases >= 2000, fuzz_daemon.cases


def test_burst_of_1000_requests_into_a_small_queue(fuzz_daemon: Fuzzer) -> None:
    """1,000 generate requests at once, every 25th followed by a cancel of it, into a queue of 4: each
    one gets its own final reply, ok (finished or cancelled) or busy, and each cancel an answer too."""
    f = fuzz_daemon
    gen = f"{BASE}/request/generate"
    batch: list[tuple[str, bytes]] = []
    for i in range(1000):
        batch.append((gen, dumps({"id": f"b{i}", "prompt": "[[delay_ms=2]] [[len=2]] x"})))
        if i % 25 == 0:
            batch.append((f"{BASE}/request/cancel", f"b{i}".encode()))
    counts: dict[str, int] = {}
    for (topic, payload), body in zip(batch, f.send(batch), strict=True):
        check_envelope(body, (topic, payload))
        if topic == gen:
            assert body["id"] == json.loads(payload)["id"], body
            kind = body["data"].get("finish_reason") if body["status"] == "ok" else body["code"]
            assert kind in ("stop", "cancelled", "busy"), body
        else:
            kind = "cancel:" + (body["data"]["was"] if body["status"] == "ok" else body["code"])
            assert kind in ("cancel:queued", "cancel:running", "cancel:not_found"), body
        counts[kind] = counts.get(kind, 0) + 1
    assert sum(v for k, v in counts.items() if not k.startswith("cancel:")) == 1000
    assert counts.get("stop", 0) >= 1 and counts.get("busy", 0) >= 1, counts
