"""The dispatcher: the one thread that publishes what happens to requests, and runs the routers.

Threads: ``Dispatcher`` runs the *dispatcher* thread and owns its queue; ``put`` may be called
from any thread (the inference loop's ``emit``, the ingress thread's answers, plugins' stats
refresh) and only enqueues. Every event is a ``Token``, a ``Final`` or loop ``Stats``: tokens
become stream chunks, each Final becomes the request's one reply (its body laid out by
rkllmd.protocol), and both go to the plugin routers. ``<base>/stats`` is published on every change
the loop reports, at most once per ``STATS_MIN_INTERVAL_S`` (``StatsThrottle``, in
rkllmd.statsthrottle: leading and trailing, so the last state always goes out); a pending
trailing publish is the only thing that gives the queue wait a timeout. A request with
``"sentences": true`` has its tokens cut into whole sentences here too (rkllmd.sentences, one
chunker per request), never on the inference thread.

Stream chunks (``ChunkJoiner``, in rkllmd.streamchunks): the tokens of a request that wait in
the queue together leave as one chunk with their joined text, so a stream that falls behind
catches up instead of queueing one message per token; ``[stream] coalesce_ms`` also holds tokens
that come within that long of the request's last chunk. Each chunk's ``seq`` counts chunks,
from 0, with no gaps.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from rkllmd import protocol
from rkllmd.bus import Bus
from rkllmd.commands import spec_of
from rkllmd.exchange import Exchange, Final, Token
from rkllmd.journal import Journal
from rkllmd.loop import Event, Stats
from rkllmd.plugins.host import PluginHost
from rkllmd.protocol import Topics
from rkllmd.sentences import Utterances
from rkllmd.settings import StreamSettings
from rkllmd.statsthrottle import StatsThrottle
from rkllmd.streamchunks import ChunkJoiner

log = structlog.get_logger("rkllmd")

# The stats topic is retained and read by dashboards (the Home Assistant sensors); a burst of
# changes (a queue filling up, short jobs back to back) is folded into one publish per interval.
STATS_MIN_INTERVAL_S = 0.25

_END = object()
MAX_BATCH = 10_000  # events taken from the queue at once: a bound on what one pass holds


@dataclass(frozen=True)
class Delivered:
    """The broker has a request's final reply (its PUBACK): now the request itself is acknowledged."""

    final: Final


class Dispatcher:
    """Publishes stream chunks, final replies, stats and info; routes tokens and replies."""

    def __init__(
        self,
        bus: Bus,
        topics: Topics,
        plugins: PluginHost,
        info: Callable[[], dict[str, Any]],
        journal: Journal | None = None,
        stream: StreamSettings | None = None,
    ):
        """``info`` builds the retained info topic, re-published whenever the loaded model changed;
        ``journal`` learns which requests were answered (rkllmd/journal.py); ``stream`` is the
        ``[stream]`` table (QoS, the text topic, the coalescing window)."""
        self.bus, self.topics, self.plugins, self._info = bus, topics, plugins, info
        self.journal = journal if journal is not None else Journal(None)
        self.on_model_change: Callable[[], None] = lambda: None  # after a load or unload (dispatcher thread)
        self._info_loaded: str | None = None  # the loaded model the last info named
        self._events: queue.Queue[Event | Delivered | object] = queue.Queue()
        self._gate = StatsThrottle(STATS_MIN_INTERVAL_S)  # dispatcher thread only
        self.stream = stream if stream is not None else StreamSettings()
        self._joiner = ChunkJoiner(self.stream.coalesce_ms / 1000)  # dispatcher thread only
        self._speech: dict[str, Utterances] = {}  # request id -> its sentence chunker (dispatcher thread)
        self._thread = threading.Thread(target=self._main, name="dispatcher", daemon=True)

    # --- any thread ------------------------------------------------------------------------

    def put(self, event: Event | Delivered) -> None:
        """Queue an event for the dispatcher thread; never blocks."""
        self._events.put(event)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Main thread: publish what is queued and the last held stats, then end the thread."""
        self._events.put(_END)
        self._thread.join(timeout=10)

    def publish_info(self) -> None:
        info = self._info()
        self._info_loaded = info.get("loaded_model")
        self.bus.publish_json(self.topics.info, info, retain=True)

    # --- dispatcher thread -----------------------------------------------------------------

    def _main(self) -> None:
        gate, joiner = self._gate, self._joiner
        while True:
            # Blocks without a timeout unless a trailing stats publish or a held chunk is due:
            # no idle wakeups.
            now = time.monotonic()
            batch = self._next_batch(_soonest(gate.wait_s(now), joiner.wait_s(now)))
            ended = _END in batch
            if ended:
                batch = batch[: batch.index(_END)]
            events = joiner.feed(batch, time.monotonic(), flush=ended)
            for i, ev in enumerate(events):
                try:
                    if isinstance(ev, Final):
                        # The loop hands a job's reply and the state after it over together.
                        after = events[i + 1] if i + 1 < len(events) else None
                        self._end(ev, after if isinstance(after, Stats) else None)
                    elif isinstance(ev, Stats) and i and isinstance(events[i - 1], Final):
                        pass  # published with the reply before it
                    elif isinstance(ev, (Token, Stats)):
                        self._dispatch(ev)
                    elif isinstance(ev, Delivered):
                        self._delivered(ev.final)
                except Exception:  # a failed publish must not stop the replies that follow
                    log.exception("dispatch failed")
                if isinstance(ev, Final):
                    joiner.forget(ev.request)
            try:
                self._publish_stats(gate.due(time.monotonic(), force=ended))
            except Exception:
                log.exception("dispatch failed")
            if ended:
                return

    def _next_batch(self, timeout: float | None) -> list[Any]:
        """The next event and whatever else waits behind it (up to ``MAX_BATCH``); [] on timeout."""
        try:
            batch = [self._events.get(timeout=timeout)]
        except queue.Empty:
            return []
        with contextlib.suppress(queue.Empty):
            while len(batch) < MAX_BATCH:
                batch.append(self._events.get_nowait())
        return batch

    # --- the inference thread: a request's chunks straight from where its tokens arrive ------

    def streams_directly(self, job: Exchange) -> bool:
        """Whether ``job``'s chunks may be published, and its tokens routed, by the thread they
        arrive on instead of this dispatcher's (rkllmd/jobs.py asks once per run, and only when
        that thread is the inference thread, never a runtime's callback thread): nothing but
        the stream and direct routers (an HTTP plugin's relay) want its tokens, so skipping the
        hand-over costs nothing and saves a thread wake-up per token."""
        if job.sentences or self.stream.coalesce_ms != 0 or self.plugins.routes_tokens(job, direct=False):
            return False
        if job.local:  # an interface plugin's request: its tokens go to its router, not the broker
            return job.address is not None and self.plugins.routes_tokens(job, direct=True)
        return job.stream and job.id is not None

    def publish_chunk(self, job: Exchange, seq: int, delta: str, thinking: str = "") -> None:
        """One stream chunk and its bare text (and thought), or a local request's token to the
        direct routers (the inference thread for a direct stream, else this dispatcher's). The bus
        writes in call order, so a run's chunks precede its end message."""
        if job.local:
            self.plugins.route_direct(Token(job, seq, delta, thinking))
            return
        assert job.id is not None
        body = protocol.stream_chunk(job.id, seq, delta, job.attempt, thinking)
        messages = [(self.topics.stream(job.id), body)]
        if delta and self.stream.text_topic:  # the chunk and its copies in one write
            messages.append((self.topics.stream_text(job.id), delta.encode()))
        if thinking and self.stream.thinking_topic:
            messages.append((self.topics.stream_thinking(job.id), thinking.encode()))
        self.bus.stream(messages, self.stream.qos)

    # --- dispatcher thread -----------------------------------------------------------------

    def _dispatch(self, ev: Token | Stats) -> None:
        """A token (its chunk, sentences, routers) or a stats snapshot; a Final goes to _end."""
        if isinstance(ev, Token):
            job = ev.request
            if job.stream and job.id is not None:
                self.publish_chunk(job, ev.seq, ev.delta, ev.thinking)
            if job.sentences and job.id is not None and ev.delta:  # thought is never spoken
                speech = self._speech.get(job.id) or self._speech.setdefault(
                    job.id, Utterances(self.stream.sentence_max_chars, self.stream.sentence_min_chars)
                )
                self._say(job.id, speech.feed(ev.delta))
            if job.address is not None and self.plugins.has_routers:
                self.plugins.route(ev)
        else:
            self._publish_stats(self._gate.offer(ev.stats, time.monotonic()))

    def _end(self, final: Final, stats: Stats | None) -> None:
        """A request's end: a job's end messages, the reply and the stats after it leave in one TCP
        segment (one broker wake-up, and their PUBACKs come back together); then the rest.

        Only bus calls run inside ``together()``, which holds the bus's lock: a callback that takes
        a lock of its own there (the fleet's model topics) would deadlock with a thread that holds
        that lock and publishes (the fleet's start, on the main thread)."""
        job = final.request
        ended = job.run.enqueued_at is not None  # it went through the queue: a job's end
        snapshot = self._gate.offer(stats.stats, time.monotonic()) if stats is not None else None
        body = self._stats(snapshot) if snapshot is not None else None  # plugins' figures, unlocked
        if ended:
            self._log_end(final)
        with self.bus.together():
            try:
                if ended:
                    self._end_messages(final)
                self._reply(final)
            finally:  # the state after it goes out whatever became of the reply
                if body is not None:
                    self.bus.publish_json(self.topics.stats, body, retain=True)
        command = spec_of(job.command)
        # A generate, embed or rerank for another model loads it first (a swap): the info and a
        # fleet's per-model topics follow that as they follow a load.
        swapped = (
            stats is not None and stats.stats.get("loaded_model", self._info_loaded) != self._info_loaded
        )
        if ended and (swapped or (command is not None and command.changes_model)):
            self.publish_info()
            self.on_model_change()
        if self.plugins.has_routers and job.address is not None:
            job.id = job.id or job.address.request_id
            self.plugins.route(final)

    def _chunks_sent(self, job: Exchange) -> int:
        """The end message's ``seq``: chunks sent, by the inference thread or by this one."""
        return job.run.seq if job.run.direct_stream else self._joiner.sent(job)

    def _log_end(self, final: Final) -> None:
        job = final.request
        if final.ok:
            log.info(
                "request done",
                request_id=job.id,
                kind=job.command,
                finish_reason=final.data.get("finish_reason"),
                tokens=final.data.get("usage", {}).get("completion_tokens"),
                ttft_ms=final.data.get("timings", {}).get("ttft_ms"),
            )
        else:
            log.warning(
                "request failed", request_id=job.id, kind=job.command, code=final.code, error=final.error
            )

    def _end_messages(self, final: Final) -> None:
        """The stream's end message, its /text and /thinking ends, the sentences' last (bus calls)."""
        job, command = final.request, spec_of(final.request.command)
        if command is None or not command.generates or job.id is None:
            return
        if job.stream:
            finish = str(final.data.get("finish_reason", "stop")) if final.ok else "error"
            self.bus.publish(
                self.topics.stream(job.id),
                protocol.stream_end(job.id, self._chunks_sent(job), finish, final.status, job.attempt),
            )
            if self.stream.text_topic:
                self.bus.publish(self.topics.stream_text(job.id), b"\n")
            if self.stream.thinking_topic and (job.run.thoughts or (job.inp and job.inp.thinking.on)):
                self.bus.publish(self.topics.stream_thinking(job.id), b"\n")
        if job.sentences:
            self._end_sentences(job.id, final)

    def _say(self, request_id: str, sentences: list[str]) -> None:
        """Each whole sentence as one plain-text message (docs/PROTOCOL.md, "Sentences")."""
        topic = self.topics.stream_sentences(request_id)
        for sentence in sentences:
            self.bus.publish(topic, sentence.encode(), droppable=True)

    def _end_sentences(self, request_id: str, final: Final) -> None:
        """The answer's last sentence, unless it was cancelled or failed half-way, then the empty
        message that ends the sentences."""
        speech = self._speech.pop(request_id, None)
        if speech is not None and final.ok and final.data.get("finish_reason") != "cancelled":
            self._say(request_id, speech.finish())
        self.bus.publish(self.topics.stream_sentences(request_id), b"")

    def _reply(self, final: Final) -> None:
        """The request's one final reply, to its address (the routers get it after, from _end)."""
        address = final.request.address
        if address is None:  # rkllmd's own job (the startup load): nobody to answer
            return
        if not address.local:
            body = protocol.reply_body(
                final.status, final.data, final.code, final.error, address.request_id, address
            )
            if self.topics.node is not None:
                body["node"] = self.topics.node  # in a fleet: the board that answered
            # Only once the broker has the reply is the request acknowledged (docs/FLEET.md):
            # killed before that, the broker still holds the request and can send it again.
            self.bus.publish(
                address.topic,
                protocol.to_json(body),
                correlation_data=address.correlation_data,
                content_type="application/json",
                then=lambda: self.put(Delivered(final)),
            )

    def _delivered(self, final: Final) -> None:
        """A reply reached the broker: acknowledge its request, and the journal closes it."""
        address = final.request.address
        if address is None:
            return
        # Remembered by id for a redelivery's sake only if it ran (a cancel's address names the
        # request it cancelled; a refusal of a reused id names the request that holds it). On disk
        # before the acknowledgement: a power cut between them must not answer it twice.
        queued = final.request.run.enqueued_at is not None
        again = self.journal.answered(final.request.run.journal_key, address.request_id if queued else None)
        if address.receipt is not None:
            self.bus.ack(address.receipt)
        for receipt in again:  # the broker sent it again under another packet id while it was open
            self.bus.ack(receipt)

    def _publish_stats(self, stats: dict[str, Any] | None) -> None:
        """Publish a snapshot the throttle let through, retained; None: nothing."""
        if stats is not None:
            self.bus.publish_json(self.topics.stats, self._stats(stats), retain=True)

    def _stats(self, stats: dict[str, Any]) -> dict[str, Any]:
        """The stats topic: the loop's counters, plus what plugins contribute under ``plugins``.

        Without the running request's id: every user may read this topic, and an id is what a
        cancel names (docs/PROTOCOL.md, "cancel"); ``busy`` says that something runs."""
        public = {k: v for k, v in stats.items() if k != "running"}
        extra = self.plugins.stats()
        return {**public, "plugins": extra} if extra else public


def _soonest(*waits: float | None) -> float | None:
    """The shortest of the waits given, None (wait for ever) when none is."""
    known = [w for w in waits if w is not None]
    return min(known) if known else None
