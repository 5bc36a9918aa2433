"""The inference loop on its own threads with a tiny in-test runtime: no broker, no model."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import pytest

from rkllmd.errors import Busy, RequestError
from rkllmd.exchange import Exchange, Final, Token
from rkllmd.generation import ChatMessage, GenerateInput
from rkllmd.loop import Event, InferenceLoop, Limits, Stats
from rkllmd.runtime.base import GenerateResult, Perf, Runtime, TokenSink
from rkllmd.runtime.models import ModelRegistry


class EchoRuntime(Runtime):
    """Echoes the last user turn word by word; ``gate`` holds a run until the test lets it go."""

    kind = "echo"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.aborted = threading.Event()
        self.opened = 0

    def open(self) -> None:
        self.opened += 1

    def generate(self, inp: GenerateInput, sink: TokenSink) -> GenerateResult:
        words = inp.last_user.split()
        for i, word in enumerate(words[: inp.max_tokens]):
            sink(word + " ", i)
            self.gate.wait(5)
            if self.aborted.is_set():
                return GenerateResult("aborted", Perf(completion_tokens=i + 1))
        reason = "length" if len(words) > inp.max_tokens else "stop"
        return GenerateResult(
            reason, Perf(prompt_tokens=len(words), completion_tokens=min(len(words), inp.max_tokens))
        )

    def abort(self) -> None:
        self.aborted.set()
        self.gate.set()

    def close(self) -> None:
        pass


@pytest.fixture
def rig() -> Iterator[tuple[InferenceLoop, EchoRuntime, queue.Queue[Event]]]:
    rt = EchoRuntime()
    events: queue.Queue[Event] = queue.Queue()
    loop = InferenceLoop(ModelRegistry({"echo": lambda: rt}), "echo", Limits(2, 5.0, 10.0), events.put)
    loop.start()
    yield loop, rt, events
    rt.gate.set()
    loop.stop(1.0)


def job(rid: str, prompt: str, max_tokens: int = 10) -> Exchange:
    inp = GenerateInput((ChatMessage("user", prompt),), max_tokens)
    return Exchange("generate", "B/request/generate", id=rid, model="echo", inp=inp)


def final_of(events: queue.Queue[Event], rid: str) -> tuple[list[str], Final]:
    """The deltas of request ``rid`` and its final reply, in the order the loop emitted them."""
    deltas: list[str] = []
    while True:
        ev = events.get(timeout=5)
        if isinstance(ev, Token) and ev.request.id == rid:
            deltas.append(ev.delta)
        if isinstance(ev, Final) and ev.request.id == rid:
            return deltas, ev


def test_generate_emits_tokens_then_one_final_with_usage(
    rig: tuple[InferenceLoop, EchoRuntime, queue.Queue[Event]],
) -> None:
    """Tokens come in order on the request's own record; the final body has text, usage and timings."""
    loop, _, events = rig
    loop.submit(job("a", "one two three"))
    deltas, final = final_of(events, "a")
    assert deltas == ["one ", "two ", "three "]
    assert final.ok and final.text == "one two three " and final.data["finish_reason"] == "stop"
    assert final.data["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert {"queue_ms", "total_ms", "ttft_ms"} <= set(final.data["timings"])
    assert final.request.run.seq == 3 and final.request.run.enqueued_at is not None


def test_max_tokens_gives_length(rig: tuple[InferenceLoop, EchoRuntime, queue.Queue[Event]]) -> None:
    """A run cut at max_tokens ends with finish_reason length."""
    loop, _, events = rig
    loop.submit(job("b", "a b c d", max_tokens=2))
    _, final = final_of(events, "b")
    assert final.data["finish_reason"] == "length" and final.text == "a b "


def test_queue_bound_duplicate_id_and_cancel(
    rig: tuple[InferenceLoop, EchoRuntime, queue.Queue[Event]],
) -> None:
    """A full queue is Busy, an id in use is refused, cancel answers queued and running jobs."""
    loop, rt, events = rig
    rt.gate.clear()  # the first job holds at its first token
    loop.submit(job("run", "x y z"))
    while not isinstance(ev := events.get(timeout=5), Token):  # running, its first token out
        assert not isinstance(ev, Final), ev
    with pytest.raises(RequestError, match="already queued or running"):
        loop.submit(job("run", "again"))
    loop.submit(job("q1", "p"))
    loop.submit(job("q2", "p"))
    with pytest.raises(Busy):
        loop.submit(job("q3", "p"))
    assert loop.cancel("q1") == "queued"
    assert loop.cancel("run") == "running"
    _, queued = final_of(events, "q1")
    assert queued.ok and queued.data["finish_reason"] == "cancelled"
    _, running = final_of(events, "run")
    assert running.data["finish_reason"] == "cancelled" and running.text == "x "
    _, last = final_of(events, "q2")
    assert last.ok and last.text == "p "


def test_control_jobs_and_stats(rig: tuple[InferenceLoop, EchoRuntime, queue.Queue[Event]]) -> None:
    """load and unload answer with their model; each job's start and end is followed by a Stats event."""
    loop, rt, events = rig
    loop.submit(Exchange("load", "", id="l1", model="echo"))
    loop.submit(Exchange("unload", "", id="u1"))
    seen: list[Event] = []
    while not any(isinstance(e, Final) and e.request.id == "u1" for e in seen):
        seen.append(events.get(timeout=5))
    seen.append(events.get(timeout=5))  # the snapshot after u1 ended
    finals = {e.request.id: e.data for e in seen if isinstance(e, Final)}
    assert finals == {"l1": {"model": "echo", "loaded": True}, "u1": {"model": "echo", "loaded": False}}
    assert rt.opened == 1 and loop.loaded_model is None
    assert sum(isinstance(e, Stats) for e in seen) >= 4  # started and ended each
    last = seen[-1]
    assert isinstance(last, Stats) and not last.stats["busy"] and last.stats["loaded_model"] is None


def test_a_job_an_idle_loop_takes_at_once_is_shown_running_never_queued(
    rig: tuple[InferenceLoop, EchoRuntime, queue.Queue[Event]],
) -> None:
    """On an idle loop a request's snapshots are: running it, then idle; one behind it is queued."""
    loop, rt, events = rig
    deadline = time.monotonic() + 5
    while not loop._waiting and time.monotonic() < deadline:  # the inference thread went to sleep
        time.sleep(0.001)
    rt.gate.clear()  # "a" stays running while "b" comes
    loop.submit(job("a", "one two"))
    seen: list[Event] = [events.get(timeout=5)]
    while not isinstance(seen[-1], Token):
        seen.append(events.get(timeout=5))
    loop.submit(job("b", "three"))
    rt.gate.set()

    def both_done(ev: Event) -> bool:
        return isinstance(ev, Stats) and ev.stats["requests"] == 2 and not ev.stats["busy"]

    while not both_done(seen[-1]):
        seen.append(events.get(timeout=5))
    snaps = [e.stats for e in seen if isinstance(e, Stats)]
    states = [(s["busy"], s["running"], s["queue_depth"]) for s in snaps]
    assert states == [(True, "a", 0), (True, "a", 1), (False, None, 1), (True, "b", 0), (False, None, 0)]


def test_stop_answers_queued_jobs_with_shutdown(
    rig: tuple[InferenceLoop, EchoRuntime, queue.Queue[Event]],
) -> None:
    """At stop a queued job gets a shutdown error and the running one is aborted after the grace."""
    loop, rt, events = rig
    rt.gate.clear()
    loop.submit(job("r", "a b"))
    loop.submit(job("w", "c"))
    while not isinstance(ev := events.get(timeout=5), Token):
        assert not isinstance(ev, Final), ev
    loop.stop(0.1)
    _, waiting = final_of(events, "w")
    assert waiting.code == "shutdown"
    _, running = final_of(events, "r")
    assert running.code == "shutdown" and running.data["text"] == "a "


TOOLS = ({"type": "function", "function": {"name": "f"}},)


def test_tool_calls_leave_the_text_and_reach_the_final(
    rig: tuple[InferenceLoop, EchoRuntime, queue.Queue[Event]],
) -> None:
    """With tools, call markup never streams; the call is in the final data with finish_reason tool_calls."""
    loop, _, events = rig
    prompt = 'ok <tool_call> {"name": "f", "arguments": {"x": 1}} </tool_call> done'
    j = job("t1", prompt, 50)
    j.inp = GenerateInput(j.inp.messages, 50, tools=TOOLS)  # type: ignore[union-attr]
    loop.submit(j)
    deltas, final = final_of(events, "t1")
    assert "tool_call" not in "".join(deltas) and final.text == "ok  done "
    calls = final.data["tool_calls"]
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [("f", {"x": 1})]
    assert final.data["finish_reason"] == "tool_calls" and calls[0]["id"].startswith("call_")


def test_output_not_matching_format_or_tool_choice_is_an_error(
    rig: tuple[InferenceLoop, EchoRuntime, queue.Queue[Event]],
) -> None:
    """A runtime without grammars is checked: wrong JSON or a missing required call is invalid_output."""
    loop, _, events = rig
    j = job("f1", "not json")
    j.inp = GenerateInput(j.inp.messages, 10, format={"type": "object"})  # type: ignore[union-attr]
    loop.submit(j)
    _, final = final_of(events, "f1")
    assert final.code == "invalid_output" and "not valid JSON" in (final.error or "")
    assert final.data["text"] == "not json "
    j = job("f2", '{"a": 1}')
    j.inp = GenerateInput(j.inp.messages, 10, format={"required": ["b"]})  # type: ignore[union-attr]
    loop.submit(j)
    _, final = final_of(events, "f2")
    assert final.code == "invalid_output" and "'b'" in (final.error or "")
    j = job("f3", "no call")
    j.inp = GenerateInput(j.inp.messages, 10, tools=TOOLS, tool_choice="required")  # type: ignore[union-attr]
    loop.submit(j)
    _, final = final_of(events, "f3")
    assert final.code == "invalid_output" and "tool call" in (final.error or "")


class CountingRuntime(EchoRuntime):
    """An in-process runtime that counts a prompt (a token a word) in a context of 4 tokens and
    reports no prompt count of its own, as a runtime without perf stats does."""

    context_length = 4

    def __init__(self) -> None:
        super().__init__()
        self.runs = 0

    def prompt_tokens(self, inp: GenerateInput) -> int | None:
        return len(inp.last_user.split())

    def generate(self, inp: GenerateInput, sink: TokenSink) -> GenerateResult:
        self.runs += 1
        result = super().generate(inp, sink)
        result.perf.prompt_tokens = None
        return result


def test_an_in_process_runtime_gets_the_context_check_a_worker_does() -> None:
    """The loop checks the prompt against the context for a runtime in its own process as the
    worker does for its own (one call, ``generate_checked``): an overlong prompt is refused with
    its overshoot before the runtime generates, and a fitting one's count is in the usage."""
    rt = CountingRuntime()
    events: queue.Queue[Event] = queue.Queue()
    loop = InferenceLoop(ModelRegistry({"echo": lambda: rt}), "echo", Limits(2, 5.0, 10.0), events.put)
    loop.start()
    try:
        loop.submit(job("long", "a b c d e"))
        deltas, refused = final_of(events, "long")
        assert not refused.ok and refused.code == "context_exceeded" and deltas == [] and rt.runs == 0
        assert refused.error is not None and "2 token(s) too many" in refused.error
        loop.submit(job("fits", "one two three"))
        _, final = final_of(events, "fits")
        assert final.ok and rt.runs == 1 and final.data["usage"]["prompt_tokens"] == 3
    finally:
        loop.stop(1.0)
