"""A voice request never waits behind, nor is refused because of, queued embed and rerank jobs.

First the queue's rules on their own (rkllmd/jobqueue.py: order, barriers, the overtake bound,
places, held jobs), then the inference loop running them on the C double (tests/fake_rkllm),
a chat model and an embedding model, in process: the order asserted is the order of the final
replies, never a time.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import pytest

from rkllmd.embedding import VectorInput
from rkllmd.errors import Busy
from rkllmd.exchange import Exchange, Final
from rkllmd.generation import ChatMessage, GenerateInput
from rkllmd.jobqueue import JobQueue
from rkllmd.loop import Event, InferenceLoop, Limits, Stats
from rkllmd.runtime.models import ModelRegistry
from rkllmd.runtime.rkllm.runtime import RkllmRuntime
from rkllmd.runtime.rkllm.settings import RkllmSettings
from tests.rkllm_conftest_fixtures import fake_library, model_settings


def gen(rid: str, prompt: str = "turn on the light") -> Exchange:
    inp = GenerateInput((ChatMessage("user", prompt),), 16)
    return Exchange("generate", "B/request/generate", id=rid, model="chat", inp=inp)


def emb(rid: str, *texts: str, command: str = "embed") -> Exchange:
    vec = VectorInput(texts or (f"{rid} text",))
    return Exchange(command, f"B/request/{command}", id=rid, model="emb", vectors=vec)


def load(rid: str) -> Exchange:
    return Exchange("load", "B/request/load", id=rid, model="chat")


def drained(q: JobQueue) -> list[str | None]:
    order = []
    while (job := q.take()) is not None:
        order.append(job.id)
    return order


def filled(q: JobQueue, *jobs: Exchange) -> JobQueue:
    for job in jobs:
        q.add(job, may_hold=False)
    return q


# --- the queue's rules ---------------------------------------------------------------------


def test_generations_overtake_vector_jobs_which_keep_their_own_order() -> None:
    """Generations run before the embed and rerank jobs ahead of them; each kind in arrival order."""
    q = filled(JobQueue(8, 0, 4), emb("e1"), emb("r1", command="rerank"), gen("g1"), emb("e2"), gen("g2"))
    assert drained(q) == ["g1", "g2", "e1", "r1", "e2"]


def test_a_control_job_is_a_barrier_nothing_crosses() -> None:
    """load then generate keeps its meaning: nothing behind a load runs before it, and a
    generation passes only the vector jobs between it and the load."""
    q = filled(JobQueue(8, 0, 4), emb("e1"), load("l1"), gen("g1"))
    assert drained(q) == ["e1", "l1", "g1"]
    q = filled(JobQueue(8, 0, 4), emb("e1"), gen("g1"), load("l1"), emb("e2"), gen("g2"))
    assert drained(q) == ["g1", "e1", "l1", "g2", "e2"]
    q = filled(JobQueue(8, 0, 4), load("l1"), emb("e1"), gen("g1"))
    assert drained(q) == ["l1", "g1", "e1"]


def test_a_vector_job_is_overtaken_at_most_the_configured_number_of_times() -> None:
    """A steady stream of generations cannot starve an embedding: after ``overtakes`` of them it runs."""
    q = JobQueue(8, 0, 2)
    q.add(emb("e1"), may_hold=False)
    order = []
    for i in range(5):  # a new generation arrives each time one is taken
        q.add(gen(f"g{i}"), may_hold=False)
        job = q.take()
        assert job is not None
        order.append(job.id)
    assert order == ["g0", "g1", "e1", "g2", "g3"]
    assert drained(filled(JobQueue(8, 0, 0), emb("e1"), gen("g1"))) == ["e1", "g1"]  # 0: arrival order


def test_vector_jobs_fill_only_their_own_places() -> None:
    """A queue full of embeddings still takes a generation (and the reverse); each kind has ``size``."""
    q = filled(JobQueue(2, 0, 4), emb("e1"), emb("e2"))
    with pytest.raises(Busy, match=r"queue full \(2 embed and rerank jobs waiting\)"):
        q.add(emb("e3"), may_hold=False)
    filled(q, gen("g1"), load("l1"))
    with pytest.raises(Busy, match=r"queue full \(2 waiting\)"):
        q.add(gen("g2"), may_hold=False)
    assert q.depth() == 4


def test_held_jobs_take_the_places_that_come_free() -> None:
    """A fleet's or backlog's job waits behind its full places (not busy) and moves in as one frees,
    a cancelled one's included; held jobs count in the depth and are drained at stop."""
    q = filled(JobQueue(1, 2, 4), emb("e1"), gen("g1"))
    e2, g2, e3 = emb("e2"), gen("g2"), emb("e3")
    assert q.add(e2, may_hold=True) and q.add(g2, may_hold=True)
    with pytest.raises(Busy):
        q.add(e3, may_hold=True)  # held jobs are bounded too
    assert q.depth() == 4
    taken = q.take()  # g1 overtakes e1; its place goes to g2
    assert taken is not None and taken.id == "g1"
    assert [j.id for j in q.waiting()] == ["e1", "g2", "e2"]
    q.remove(next(j for j in q.waiting() if j.id == "e1"))  # cancelled: e2 moves in
    assert [j.id for j in q.waiting()] == ["g2", "e2"]
    assert [j.id for j in q.drain()] == ["g2", "e2"] and q.depth() == 0


# --- the loop on the C double ----------------------------------------------------------------


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[InferenceLoop, queue.Queue[Event]]]:
    model = tmp_path / "model.rkllm"
    model.write_bytes(b"not really a model")
    lib = fake_library("13")

    def runtime(name: str, **cfg: object) -> RkllmRuntime:
        return RkllmRuntime(name, model_settings(model, lib, **cfg), RkllmSettings(), capture_stdout=False)

    registry = ModelRegistry(
        {"chat": lambda: runtime("chat"), "emb": lambda: runtime("emb", kind="embedding", pooling="mean")}
    )
    events: queue.Queue[Event] = queue.Queue()
    loop = InferenceLoop(registry, "chat", Limits(4, 20.0, 60.0, hold=0, overtakes=4), events.put)
    loop.start()
    yield loop, events
    loop.stop(1.0)


def long_batch(rid: str) -> Exchange:
    """An embed job of 30 texts at 300 ms each (9 s): it runs until the test cancels it."""
    return emb(rid, *(f"text {i} [[delay_ms=300]]" for i in range(30)))


def wait_stats(events: queue.Queue[Event], want: dict[str, object]) -> None:
    """Read events until a snapshot shows ``want`` (no Final may come first)."""
    while True:
        ev = events.get(timeout=20)
        assert not isinstance(ev, Final), (ev.request.id, ev.data)
        if isinstance(ev, Stats) and all(ev.stats[k] == v for k, v in want.items()):
            return


def finals(events: queue.Queue[Event], n: int) -> list[Final]:
    out: list[Final] = []
    while len(out) < n:
        ev = events.get(timeout=30)
        if isinstance(ev, Final):
            out.append(ev)
    return out


def test_a_generation_queued_last_runs_before_the_queued_embeddings(
    rig: tuple[InferenceLoop, queue.Queue[Event]],
) -> None:
    loop, events = rig
    loop.submit(long_batch("e0"))
    wait_stats(events, {"running": "e0"})
    for job in (emb("e1", "alpha"), emb("e2", "beta"), emb("e3", "gamma")):
        loop.submit(job)
    loop.submit(gen("voice"))
    assert loop.queue_depth() == 4
    assert loop.cancel("e0") == "running"  # the queue is as the test built it: now let it run
    got = finals(events, 5)
    assert [f.request.id for f in got] == ["e0", "voice", "e1", "e2", "e3"]
    assert got[0].data["finish_reason"] == "cancelled"
    assert all(f.ok for f in got), [(f.request.id, f.code, f.error) for f in got]
    assert got[1].text == "TURN ON THE LIGHT" and len(got[2].data["embeddings"]) == 1


def test_a_queue_full_of_embeddings_still_takes_a_generation_and_stop_answers_all(
    rig: tuple[InferenceLoop, queue.Queue[Event]],
) -> None:
    loop, events = rig
    loop.submit(long_batch("e0"))
    wait_stats(events, {"running": "e0"})
    for i in range(1, 5):
        loop.submit(emb(f"e{i}"))
    with pytest.raises(Busy):
        loop.submit(emb("e5"))
    loop.submit(gen("voice"))  # accepted: the embeddings filled only their own places
    assert loop.cancel("e2") == "queued"
    assert loop.snapshot()["queue_depth"] == 4
    loop.stop(0.2)
    got = {f.request.id: f for f in finals(events, 6)}
    assert got["e2"].data["finish_reason"] == "cancelled"
    queued = ("e1", "e3", "e4", "voice")
    assert {rid: got[rid].code for rid in queued} == dict.fromkeys(queued, "shutdown")
    assert got["e0"].code == "shutdown"
