"""Stream chunks: tokens that wait together leave as one chunk, the text unchanged, seq gap-free."""

from __future__ import annotations

import contextlib
from typing import Any

from rkllmd.dispatch import Dispatcher
from rkllmd.exchange import Exchange, Final, Token
from rkllmd.loop import Stats
from rkllmd.plugins import PluginHost
from rkllmd.protocol import Address, Topics
from rkllmd.settings import Settings, StreamSettings
from rkllmd.streamchunks import ChunkJoiner
from rkllmd.testing import FakeServices


def job(rid: str) -> Exchange:
    return Exchange(command="generate", topic="b/request/generate", id=rid)


def tokens(ex: Exchange, *deltas: str) -> list[Token]:
    return [Token(ex, i, d) for i, d in enumerate(deltas)]


def test_tokens_waiting_together_become_one_chunk_before_the_final() -> None:
    """Queued tokens of a request join into one chunk before its Final; other events keep their order."""
    joiner = ChunkJoiner(0.0)
    a = job("a")
    stats = Stats({"n": 1})
    final = Final(a, "ok", {})
    out = joiner.feed([*tokens(a, "Par", "is", " is"), stats, final], 1.0)
    assert out[0] is stats
    assert isinstance(out[1], Token) and out[1].delta == "Paris is" and out[1].seq == 0
    assert out[2] is final and joiner.sent(a) == 1


def test_seq_counts_chunks_across_batches_and_requests_do_not_mix() -> None:
    """Each request's chunks are numbered 0, 1, 2 ... over batches; two requests keep apart."""
    joiner = ChunkJoiner(0.0)
    a, b = job("a"), job("b")
    first = joiner.feed([Token(a, 0, "x")], 1.0)
    second = joiner.feed([Token(a, 1, "y"), Token(b, 0, "p"), Token(a, 2, "z")], 1.1)
    chunks = [(t.request.id, t.seq, t.delta) for t in first + second]
    assert chunks == [("a", 0, "x"), ("a", 1, "yz"), ("b", 0, "p")]
    joiner.forget(a)
    assert joiner.sent(a) == 0 and joiner.sent(b) == 1


def test_a_window_holds_what_comes_soon_after_a_chunk_and_the_first_never_waits() -> None:
    """With coalesce_ms, text within the window waits for it to pass, then goes as one chunk."""
    joiner = ChunkJoiner(0.05)
    a = job("a")
    assert [t.delta for t in joiner.feed([Token(a, 0, "one")], 10.0)] == ["one"]  # first: at once
    assert joiner.wait_s(10.0) is None
    assert joiner.feed([Token(a, 1, " two")], 10.01) == []
    assert joiner.feed([Token(a, 2, " three")], 10.02) == []
    wait = joiner.wait_s(10.02)
    assert wait is not None and abs(wait - 0.03) < 1e-9
    assert joiner.feed([], 10.04) == []  # not yet
    due = joiner.feed([], 10.05)
    assert [(t.seq, t.delta) for t in due] == [(1, " two three")] and joiner.wait_s(10.05) is None


def test_a_final_or_a_stop_hands_on_held_text_at_once() -> None:
    """Held text never outlives its request: the Final takes it along, and so does the dispatcher's stop."""
    joiner = ChunkJoiner(1.0)
    a, b = job("a"), job("b")
    joiner.feed([Token(a, 0, "A"), Token(b, 0, "B")], 5.0)
    final = Final(a, "ok", {})
    out = joiner.feed([Token(a, 1, "a"), final], 5.1)
    assert [getattr(e, "delta", e) for e in out] == ["a", final]
    joiner.feed([Token(b, 1, "b")], 5.2)
    assert [t.delta for t in joiner.feed([], 5.3, flush=True)] == ["b"]


def test_joined_chunks_keep_the_exact_text_of_split_characters() -> None:
    """Deltas that cut a text anywhere join back to exactly that text."""
    text = "Grüße, € 5 — 日本語 🙂 fin"
    joiner = ChunkJoiner(0.0)
    a = job("a")
    out: list[Any] = []
    pieces, i, width = [], 0, 1
    while i < len(text):  # cut at odd places: 1, 2, 3, 1, 2, 3 ... characters
        pieces.append(text[i : i + width])
        i, width = i + width, width % 3 + 1
    for i in range(0, len(pieces), 2):  # two at a time, as if they had queued up together
        out += joiner.feed(tokens(a, *pieces[i : i + 2]), float(i))
    assert "".join(t.delta for t in out) == text
    assert [t.seq for t in out] == list(range(len(out)))


class _Bus:
    """Records what the dispatcher publishes."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, int | None]] = []

    def publish(self, topic: str, payload: bytes | str, *, qos: int | None = None, **kw: Any) -> None:
        self.sent.append((topic, payload.encode() if isinstance(payload, str) else payload, qos))

    def publish_json(self, topic: str, obj: Any, **kw: Any) -> None:
        self.sent.append((topic, b"", kw.get("qos")))

    def stream(self, messages: list[tuple[str, bytes]], qos: int = 0) -> None:
        self.sent.extend((topic, payload, qos) for topic, payload in messages)

    def together(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def _run(stream: StreamSettings) -> list[tuple[str, bytes, int | None]]:
    bus = _Bus()
    host = PluginHost(FakeServices(Settings(), Topics("b")), [], remove_disabled=False)
    d = Dispatcher(bus, Topics("b"), host, dict, stream=stream)  # type: ignore[arg-type]
    ex = job("r1")
    ex.address = Address(topic="b/response/generate", request_id="r1")
    ex.run.enqueued_at = 1.0
    d.start()
    for t in tokens(ex, "a", "b", "c"):
        d.put(t)
    d.put(Final(ex, "ok", {"text": "abc", "finish_reason": "stop"}))
    d.stop()
    return [m for m in bus.sent if m[0].startswith("b/stream/")]


def test_stream_chunks_go_at_the_stream_qos_and_the_text_topic_can_be_off() -> None:
    """[stream] qos sets the chunks' QoS; text_topic = false leaves <id>/text silent."""
    sent = _run(StreamSettings(qos=1, text_topic=False))
    assert sent and not [m for m in sent if m[0].endswith("/text")]
    chunks = [m for m in sent if b'"delta"' in m[1]]
    assert chunks and all(q == 1 for _, _, q in chunks)
    default = _run(StreamSettings())
    deltas = [q for t, p, q in default if b'"delta"' in p or (t.endswith("/text") and p != b"\n")]
    assert len(deltas) >= 2 and set(deltas) == {0}  # QoS 0 by default, /text on


class _CorkBus(_Bus):
    """Records each publish with whether it was made inside ``together()``; can fail one topic."""

    def __init__(self, fail_topic: str | None = None) -> None:
        super().__init__()
        self.fail_topic, self.corked = fail_topic, False
        self.log: list[tuple[str, bool]] = []

    @contextlib.contextmanager
    def together(self) -> Any:
        self.corked = True
        try:
            yield
        finally:
            self.corked = False

    def publish(self, topic: str, payload: bytes | str, *, qos: int | None = None, **kw: Any) -> None:
        if topic == self.fail_topic:
            raise OSError("the broker went away")
        self.log.append((topic, self.corked))

    def publish_json(self, topic: str, obj: Any, **kw: Any) -> None:
        self.log.append((topic, self.corked))


def _end_of_job(bus: _CorkBus, ex: Exchange, data: dict[str, Any], stats: dict[str, Any]) -> Dispatcher:
    """``ex``'s Final and the stats after it, handed over together as the loop does (one pass
    takes both), through a dispatcher on ``bus``; returned once it has stopped."""
    host = PluginHost(FakeServices(Settings(), Topics("b")), [], remove_disabled=False)
    d = Dispatcher(bus, Topics("b"), host, dict)  # type: ignore[arg-type]
    ex.address = Address(topic="me/reply", request_id=str(ex.id))
    ex.run.enqueued_at = 1.0
    d.put(Final(ex, "ok", data))
    d.put(Stats(stats))
    return d


def _streamed(rid: str) -> Exchange:
    ex = job(rid)
    ex.stream = True
    return ex


def test_a_jobs_end_its_reply_and_the_stats_after_it_leave_together() -> None:
    """The end messages, the reply and the stats the loop sent with it are published in one go."""
    bus = _CorkBus()
    d = _end_of_job(bus, _streamed("r1"), {"text": "abc", "finish_reason": "stop"}, {"busy": False})
    d.start()
    d.stop()
    topics = ["b/stream/r1", "b/stream/r1/text", "me/reply", "b/stats"]
    assert bus.log == [(t, True) for t in topics]


def test_the_stats_after_a_reply_go_out_even_when_the_reply_cannot() -> None:
    """A reply that fails to publish does not take the state after it along."""
    bus = _CorkBus(fail_topic="me/reply")
    d = _end_of_job(bus, _streamed("r1"), {"text": "abc", "finish_reason": "stop"}, {"busy": False})
    d.start()
    d.stop()
    assert ("b/stats", True) in bus.log


def test_a_model_change_is_announced_outside_the_bus_lock() -> None:
    """After a load, the info topic and the model-change callback run with the bus free: the
    callback takes the fleet's lock, which another thread holds while it publishes."""
    bus = _CorkBus()
    load = Exchange(command="load", topic="b/request/load", id="l1")
    d = _end_of_job(bus, load, {"model": "m", "loaded": True}, {"busy": False, "loaded_model": "m"})
    changed: list[bool] = []
    d.on_model_change = lambda: changed.append(bus.corked)
    d.start()
    d.stop()
    assert changed == [False]
    assert ("b/info", False) in bus.log and ("me/reply", True) in bus.log


def test_local_tokens_go_from_the_inference_thread_to_a_direct_router_without_the_dispatcher() -> None:
    """An HTTP plugin's request (local) whose tokens only a direct router wants (its relay): the
    thread the tokens arrive on routes them (one wake-up fewer per token); a router that must run
    on the dispatcher keeps them there."""
    seen: list[tuple[str, str]] = []
    host = PluginHost(FakeServices(Settings(), Topics("b")), [], remove_disabled=False)
    host.add("route", ("relay", lambda e: seen.append((type(e).__name__, e.delta)), "local", True))
    d = Dispatcher(_Bus(), Topics("b"), host, dict)  # type: ignore[arg-type]
    local = job("h1")
    local.address = Address(topic="b/response/generate", request_id="h1", local=True)
    local.stream = False
    assert d.streams_directly(local)
    d.publish_chunk(local, 0, "hi")  # as the inference thread does for a direct run
    assert seen == [("Token", "hi")]
    remove = host.add("route", ("other", lambda e: None, "local", False))
    assert not d.streams_directly(local)
    remove()
    mqtt = job("m1")  # an MQTT request is not held back by a router of local tokens
    mqtt.address = Address(topic="b/response/generate", request_id="m1")
    mqtt.stream = True
    assert d.streams_directly(mqtt)
