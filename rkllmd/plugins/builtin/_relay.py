"""From rkllmd's threads to the HTTP server's event loop: one queue per request in flight.

Shared by the HTTP interface plugins (``http``, ``ollama``): each has its own Relay.

The router runs on rkllmd's inference thread for tokens (a direct router: no dispatcher wake-up
per token) and on its dispatcher thread for final replies: it looks up the request's
:class:`Slot` and hands the event to the loop that owns it (one ``call_soon_threadsafe`` for all
the events that came since the loop last took them; never blocks). Once a streamed answer has
begun, its endpoint attaches a writer (_streamwrite) and the router writes each token to the
client's socket itself, as rkllmd's inference thread publishes an MQTT stream's chunks: the loop
is not woken per token (docs/ARCHITECTURE.md, "One exception, for cost"). Each request's endpoint
(a coroutine on the plugin's server thread) reads its slot through a :class:`Waiter`, which is
told when the client disconnects and then cancels the generation.

Every request a plugin injects ends: it is injected as a LocalMessage whose ``key`` is its slot's
nonce, and ingress puts that key on the reply's Address before reading the payload, so the final
reply, a refusal of bytes ingress could not even parse included, finds its slot here. Should a bug
lose it anyway, the Waiter's deadline answers the client, and a cancel of a request rkllmd never
took gives up after a bounded wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from rkllmd.plugins import Exchange, Final, NotFound, Settings, Token

TICK_S = 0.2  # how often a cancel that found no request yet is tried again
# How long a cancel keeps trying to find a request that rkllmd has not taken yet: ingress takes an
# injected request within milliseconds, and its refusal, if any, arrives as a final reply.
ABANDON_S = 10.0
# A runtime's model load is bounded by the worker's own timeout (rkllmd/runtime/worker.py).
_LOAD_S = 600.0


@dataclass(frozen=True)
class Thought:
    """A piece of a thinking model's thought: never part of the answer's text (rkllmd/thinking.py)."""

    text: str


Piece = str | Thought  # what a token brings: a text delta, or a piece of thought
Item = Piece | Final  # ... or the final reply


class ClientGone(Exception):
    """The HTTP client disconnected; its generation was cancelled."""


def answer_deadline_s(settings: Settings) -> float:
    """The longest an injected request can wait for its final reply when nothing is wrong: every
    job ahead of it in a full queue (generations' and embed/rerank jobs' places both, and the
    generations that may overtake an embed or rerank job, rkllmd/jobqueue.py), and its own, each
    at its limits (a model load, the whole generation, the abort grace, the watchdog's margin).
    A Waiter gives up after this."""
    lim = settings.limits
    job_s = _LOAD_S + lim.total_timeout_s + lim.abort_grace_s + max(5.0, lim.shutdown_grace_s)
    return (2 * lim.queue_size + lim.background_overtakes + 1) * job_s


def no_answer(deadline_s: float) -> Final:
    """The final reply a Waiter makes up when rkllmd gave none within its deadline (a bug)."""
    return Final(
        Exchange("generate", ""),
        "error",
        {},
        "internal_error",
        f"rkllmd gave no answer within {deadline_s:.0f} s; the request was cancelled",
    )


class Slot:
    """One request's events on their way to its endpoint (on the server's event loop).

    Events are collected under a lock and the loop is woken once for all that came since it last
    looked (one ``call_soon_threadsafe`` per batch, not per token). Once the endpoint has begun
    its stream it may attach a writer (:meth:`Waiter.direct`): a token is then written by the
    thread routing it, and the loop is not woken at all until the final reply."""

    def __init__(self) -> None:
        self.items: asyncio.Queue[Item] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._pending: list[Item] = []  # put, not yet handed to the loop
        self._writer: Callable[[Piece], bool] | None = None

    def put(self, item: Item) -> None:
        """Any thread: write a token through the attached writer, or hand ``item`` to the waiting
        endpoint on its loop; never blocks."""
        with self._lock:
            if self._writer is not None and not isinstance(item, Final) and self._writer(item):
                return
            self._pending.append(item)
            if len(self._pending) > 1:  # the loop is already called for the ones before
                return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the plugin has stopped
            self.loop.call_soon_threadsafe(self._hand_over)

    def _hand_over(self) -> None:  # the server thread
        with self._lock:
            items, self._pending = self._pending, []
        for item in items:
            self.items.put_nowait(item)

    def attach(self, writer: Callable[[Piece], bool]) -> bool:
        """Server thread: tokens go to ``writer`` from now on; False (nothing attached) while
        some are still on their way to the endpoint, which writes those first."""
        with self._lock:
            if self._pending or not self.items.empty():
                return False
            self._writer = writer
            return True

    def detach(self) -> None:
        """Server thread: no more tokens to the writer; one being written is finished first."""
        with self._lock:
            self._writer = None


class Relay:
    """Requests this plugin injected, by the key (nonce) of their LocalMessage, and the router
    that feeds them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[str, Slot] = {}
        self._closed = False

    @contextlib.contextmanager
    def track(self, nonce: str) -> Iterator[Slot]:
        """Register a request before it is injected, so no event can come before its queue
        (server thread, in the endpoint's coroutine); the slot goes when the endpoint is done.
        The request must be injected as a LocalMessage with ``key=nonce``: that is how its
        events are found, since its payload may be refused before rkllmd reads an id from it."""
        slot = Slot()
        with self._lock:
            if self._closed:
                slot.items.put_nowait(_STOPPED)
            self._slots[nonce] = slot
        try:
            yield slot
        finally:
            with self._lock:
                self._slots.pop(nonce, None)
            slot.detach()  # a router that found the slot just before writes nothing more

    def route(self, event: Token | Final) -> None:
        """Router (inference thread for tokens, dispatcher thread for finals): hand the event to
        its request's queue, if it is ours."""
        address = event.request.address
        if address is None or address.key is None:
            return  # not a plugin's LocalMessage: an MQTT request, whatever id it reuses
        with self._lock:
            slot = self._slots.get(address.key)
        if slot is None:
            return
        if isinstance(event, Token):
            if event.thinking:
                slot.put(Thought(event.thinking))
            if event.delta:
                slot.put(event.delta)
        else:
            slot.put(dataclasses.replace(event, data=dict(event.data)))  # a copy: nothing shared

    def close(self) -> None:
        """Teardown (main thread): answer every waiting endpoint; nothing more will be routed."""
        with self._lock:
            self._closed = True
            slots = list(self._slots.values())
        for slot in slots:
            slot.put(_STOPPED)


_STOPPED = Final(Exchange("generate", ""), "error", {}, "shutdown", "rkllmd is shutting down")
# Put by the transport when the client disconnects, and by the Waiter's timer at its deadline;
# never answered, only read by the Waiter.
_GONE = Final(Exchange("generate", ""), "error", {}, "client_gone", "the client disconnected")
_EXPIRED = Final(Exchange("generate", ""), "error", {}, "internal_error", "no answer in time")


class Waiter:
    """An endpoint's view of its request: the next item, or :class:`ClientGone` (server thread)."""

    def __init__(
        self,
        slot: Slot,
        cancel: Callable[[], object],
        on_gone: Callable[[Callable[[], None]], None] | None = None,
        *,
        deadline_s: float,
        abandon_s: float = ABANDON_S,
    ) -> None:
        """``on_gone(fn)`` has ``fn`` called when the client disconnects (the transport's
        :meth:`~rkllmd.plugins.builtin._httpserver.Handler.on_gone`); None: nobody watches.
        ``deadline_s``: from now, the longest to wait for the final reply (answer_deadline_s);
        ``abandon_s``: how long a cancel looks for a request rkllmd has not taken yet."""
        items = slot.items
        self._slot, self._items, self._cancel = slot, items, cancel
        self._deadline_s, self._abandon_s = deadline_s, abandon_s
        # One timer for the whole request, not one per token: at the deadline it queues _EXPIRED.
        self._timer = asyncio.get_running_loop().call_later(deadline_s, items.put_nowait, _EXPIRED)
        if on_gone is not None:
            on_gone(lambda: items.put_nowait(_GONE))

    async def next(self) -> Item:
        """The next delta or the final reply; a client gone meanwhile is cancelled (ClientGone).
        Past the deadline the request is cancelled and the answer is an internal error.

        A non-streaming client writes nothing back, so only the transport's word that the
        connection was lost tells it has gone: that comes into the same queue."""
        item = await self._items.get()
        if isinstance(item, Final):  # the tokens are over: the endpoint writes from here on
            self._slot.detach()
        if item is _GONE:
            await self.abandon()
            raise ClientGone
        if item is _EXPIRED:
            await self.abandon()
            return no_answer(self._deadline_s)
        if isinstance(item, Final):
            self._timer.cancel()
        return item

    def direct(self, writer: Callable[[Piece], bool]) -> bool:
        """The endpoint has begun its stream (server thread): the tokens still to come are
        written by ``writer`` (a _streamwrite.StreamWriter's) on the thread that routes them,
        and :meth:`next` returns only the final reply, or the tokens the writer refused. False
        while tokens are still on their way here: write those (:meth:`next`), then ask again."""
        return self._slot.attach(writer)

    async def final(self) -> Final:
        """The final reply, skipping the deltas before it (they add up to its text)."""
        item = await self.next()
        while not isinstance(item, Final):
            item = await self.next()
        return item

    async def abandon(self) -> bool:
        """Cancel the generation, once rkllmd has it; False when it could not be found in time.
        A request still on its way to the queue (injected, not yet taken by the ingress thread) is
        not found yet: try again each tick until the cancel lands, the final reply shows it has
        ended anyway, or ``abandon_s`` has passed (a request rkllmd never took is never found)."""
        self._timer.cancel()
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._abandon_s
        while True:
            try:
                self._cancel()
                return True
            except NotFound:
                pass
            if loop.time() >= give_up:
                return False
            try:
                async with asyncio.timeout(TICK_S):
                    item = await self._items.get()
            except TimeoutError:
                continue
            if isinstance(item, Final) and item is not _GONE and item is not _EXPIRED:
                return True


async def one_answer(
    relay: Relay,
    inject: Callable[[str], object],
    cancel: Callable[[], object],
    on_gone: Callable[[Callable[[], None]], None] | None,
    deadline_s: float,
) -> Final:
    """Inject one request with no stream (``inject(nonce)`` sends it keyed by the nonce) and
    await its final reply (server thread); ClientGone when the client leaves first (the request is
    cancelled). An embed or rerank request is this: one answer, no tokens."""
    nonce = secrets.token_hex(8)
    with relay.track(nonce) as items:
        inject(nonce)
        return await Waiter(items, cancel, on_gone, deadline_s=deadline_s).final()
