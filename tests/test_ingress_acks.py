"""When the ingress thread acknowledges a request to the broker, and what a redelivery does (no broker)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rkllmd.errors import NotFound
from rkllmd.exchange import Final
from rkllmd.ingress import Ingress
from rkllmd.journal import Journal, Unanswered
from rkllmd.protocol import Address, Incoming, Receipt, Topics
from rkllmd.settings import Settings

SETTINGS = Settings()
TOPICS = Topics("B")


class Loop:
    """Records what is queued."""

    loaded_model = None

    def __init__(self) -> None:
        self.queued: list[tuple[Any, bool]] = []

    def submit(self, job: Any, *, may_hold: bool = False) -> None:
        self.queued.append((job, may_hold))

    def queue_depth(self) -> int:
        return len(self.queued)

    def cancel(self, rid: str) -> str:
        raise NotFound(f"no {rid}")


class Plugins:
    def __init__(self, topic: str | None = None) -> None:
        self.topic, self.delivered = topic, 0

    def handles(self, topic: str) -> bool:
        return topic == self.topic

    def deliver(self, msg: Incoming) -> None:
        self.delivered += 1

    def preprocess(self, ex: Any) -> Any:
        return ex

    def reserved(self, topic: str) -> bool:
        return False


class Out:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def put(self, ev: Any) -> None:
        self.events.append(ev)


def _ingress(
    plugins: Plugins | None = None, journal: Journal | None = None
) -> tuple[Ingress, Loop, Out, list[Receipt]]:
    loop, out, acks = Loop(), Out(), []
    ing = Ingress(SETTINGS, TOPICS, plugins or Plugins(), loop, out, ack=acks.append, journal=journal)  # type: ignore[arg-type]
    return ing, loop, out, acks


def _generate(rid: str, mid: int = 1, dup: bool = False) -> Incoming:
    body = json.dumps({"id": rid, "prompt": "hi"}).encode()
    return Incoming("B/request/generate", body, "c/r", b"k", receipt=Receipt(1, mid, 1, dup), dup=dup)


def test_a_request_is_not_acknowledged_at_ingress_but_carries_its_receipt() -> None:
    """A queued request's PUBACK waits for its reply: the receipt rides on the reply address."""
    ing, loop, _, acks = _ingress()
    ing.handle(_generate("r1", mid=7))
    assert acks == []
    job, may_hold = loop.queued[0]
    assert job.address.receipt == Receipt(1, 7, 1, False) and not may_hold


def test_a_plugin_topic_message_is_acknowledged_once_handled() -> None:
    """A message with no reply of its own (a plugin's topic) is acknowledged by the ingress thread."""
    plugins = Plugins("B/plugins/x/cmd")
    ing, _, _, acks = _ingress(plugins)
    ing.handle(Incoming("B/plugins/x/cmd", b"go", receipt=Receipt(1, 3, 1)))
    assert plugins.delivered == 1 and acks == [Receipt(1, 3, 1)]


def test_a_redelivery_of_an_answered_request_is_acknowledged_and_not_run() -> None:
    """DUP of an id answered lately: acknowledged so the broker forgets it, never run twice."""
    journal = Journal(None)
    journal.answered(None, "r1")
    ing, loop, out, acks = _ingress(journal=journal)
    ing.handle(_generate("r1", mid=9, dup=True))
    assert loop.queued == [] and out.events == [] and acks == [Receipt(1, 9, 1, True)]


def test_a_redelivery_of_a_request_still_here_waits_for_the_original() -> None:
    """DUP of an id taken and not answered yet (queued, running, or its reply written and not yet
    delivered): not run again and not acknowledged before the original is answered."""
    journal = Journal(None)
    ing, loop, out, acks = _ingress(journal=journal)
    ing.handle(_generate("r1", mid=4))
    ((job, _),) = loop.queued
    ing.handle(_generate("r1", mid=4, dup=True))  # the broker's resend after a reconnect: same packet id
    assert len(loop.queued) == 1 and out.events == [] and acks == []
    # its reply delivered: the original's acknowledgement covers the resend, nothing more to send
    assert journal.answered(job.run.journal_key, "r1") == []
    ing.handle(_generate("r1", mid=4, dup=True))  # sent again once more: now answered, acknowledged
    assert len(loop.queued) == 1 and acks == [Receipt(1, 4, 1, True)]


def test_a_redelivery_under_another_packet_id_is_acknowledged_with_the_original() -> None:
    """A broker that sends the request again under a new packet id gets that one acknowledged too,
    once the original's reply is delivered, so it does not keep it in flight for ever."""
    journal = Journal(None)
    ing, loop, _, acks = _ingress(journal=journal)
    ing.handle(_generate("r1", mid=4))
    ((job, _),) = loop.queued
    ing.handle(_generate("r1", mid=11, dup=True))
    ing.handle(_generate("r1", mid=11, dup=True))
    assert len(loop.queued) == 1 and acks == []
    assert journal.answered(job.run.journal_key, "r1") == [Receipt(1, 11, 1, True)]


def test_a_redelivery_may_wait_behind_a_full_queue() -> None:
    """A request the broker sends again is never refused busy: it may be held behind the queue."""
    ing, loop, _, _ = _ingress()
    ing.handle(_generate("r2", dup=True))
    assert loop.queued[0][1] is True


def test_recovery_serves_what_comes_again_and_answers_the_rest_interrupted() -> None:
    """After a restart, a journaled request the broker sends again is served; the others get interrupted."""
    ing, loop, out, _ = _ingress()
    left = [
        Unanswered(key, rid, "generate", "B/request/generate", Address("c/r", request_id=rid), 0.0)
        for key, rid in (("k1", "r1"), ("k2", "r2"))
    ]
    ing.recover(left)
    ing.handle(_generate("r1", dup=True))
    ing.answer_unrecovered(0)
    finals = [e for e in out.events if isinstance(e, Final)]
    assert [j.id for j, _ in loop.queued] == ["r1"]
    assert [(f.request.id, f.code) for f in finals] == [("r2", "interrupted")]
    assert finals[0].request.run.journal_key == "k2"


VECTORS = Settings.model_validate(
    {
        "default_model": "chat",
        "models": {
            "chat": {"runtime": "rkllm", "path": "/nonexistent/c.rkllm"},
            "emb": {"runtime": "rkllm", "path": "/nonexistent/e.rkllm", "kind": "embedding"},
            "rr": {"runtime": "rkllm", "path": "/nonexistent/r.rkllm", "kind": "rerank"},
        },
    }
)


@pytest.mark.parametrize(
    ("command", "body"),
    [("embed", {"input": ["a", "b"]}), ("rerank", {"query": "q", "documents": ["a", "b"]})],
)
def test_a_redelivered_embed_or_rerank_is_recognised_like_a_generation(
    command: str, body: dict[str, Any]
) -> None:
    """Not only a generation: a DUP of an embed or rerank taken and then answered is not run twice."""
    journal = Journal(None)
    loop, out, acks = Loop(), Out(), []
    ing = Ingress(VECTORS, TOPICS, Plugins(), loop, out, ack=acks.append, journal=journal)  # type: ignore[arg-type]

    def msg(mid: int, dup: bool) -> Incoming:
        payload = json.dumps({"id": "v1", **body}).encode()
        receipt = Receipt(1, mid, 1, dup)
        return Incoming(f"B/request/{command}", payload, "c/r", b"k", receipt=receipt, dup=dup)

    ing.handle(msg(5, False))
    ((job, _),) = loop.queued
    ing.handle(msg(5, True))  # while it is queued: the original's answer covers it
    assert len(loop.queued) == 1 and out.events == [] and acks == []
    journal.answered(job.run.journal_key, "v1")  # its reply delivered
    ing.handle(msg(6, True))  # after the answer: acknowledged, not run
    assert len(loop.queued) == 1 and out.events == [] and acks == [Receipt(1, 6, 1, True)]
