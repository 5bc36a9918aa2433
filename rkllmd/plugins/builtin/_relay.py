"""From the dispatcher thread to the HTTP handler threads: one queue per request in flight.

Shared by the HTTP interface plugins (``http``, ``ollama``): each has its own Relay.

The router runs on rkllmd's dispatcher thread, which publishes every MQTT reply: it only looks up
the request's queue and copies the event into it (never blocks, never touches a socket). Each HTTP
handler thread reads its own queue through a :class:`Waiter`, which also watches the client's
socket and cancels the generation when the client goes away.

Every request a plugin injects ends: it is injected as a LocalMessage whose ``key`` is its slot's
nonce, and ingress puts that key on the reply's Address before reading the payload, so the final
reply, a refusal of bytes ingress could not even parse included, finds its slot here. Should a bug
lose it anyway, the Waiter's deadline answers the client, and a cancel of a request rkllmd never
took gives up after a bounded wait.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from rkllmd.errors import NotFound
from rkllmd.exchange import Exchange
from rkllmd.plugins import Final, Token
from rkllmd.settings import Settings

TICK_S = 0.2  # how often a waiting handler looks at its client's socket
# How long a cancel keeps trying to find a request that rkllmd has not taken yet: ingress takes an
# injected request within milliseconds, and its refusal, if any, arrives as a final reply.
ABANDON_S = 10.0
# A runtime's model load is bounded by the worker's own timeout (rkllmd/runtime/worker.py).
_LOAD_S = 600.0

Item = str | Final  # a text delta, or the final reply


class ClientGone(Exception):
    """The HTTP client disconnected; its generation was cancelled."""


def answer_deadline_s(settings: Settings) -> float:
    """The longest an injected request can wait for its final reply when nothing is wrong: every
    job ahead of it in a full queue, and its own, each at its limits (a model load, the whole
    generation, the abort grace, the watchdog's margin). A Waiter gives up after this."""
    lim = settings.limits
    job_s = _LOAD_S + lim.total_timeout_s + lim.abort_grace_s + max(5.0, lim.shutdown_grace_s)
    return (lim.queue_size + 1) * job_s


def no_answer(deadline_s: float) -> Final:
    """The final reply a Waiter makes up when rkllmd gave none within its deadline (a bug)."""
    return Final(
        Exchange("generate", ""),
        "error",
        {},
        "internal_error",
        f"rkllmd gave no answer within {deadline_s:.0f} s; the request was cancelled",
    )


@dataclass
class _Slot:
    request_id: str
    items: queue.SimpleQueue[Item]


class Relay:
    """Requests this plugin injected, by the key (nonce) of their LocalMessage, and the router
    that feeds them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        self._closed = False

    @contextlib.contextmanager
    def track(self, request_id: str, nonce: str) -> Iterator[queue.SimpleQueue[Item]]:
        """Register a request before it is injected, so no event can come before its queue
        (HTTP handler thread); the slot goes when the handler is done with it. The request must
        be injected as a LocalMessage with ``key=nonce``: that is how its events are found, since
        its payload may be refused before rkllmd reads an id from it."""
        slot = _Slot(request_id, queue.SimpleQueue())
        with self._lock:
            if self._closed:
                slot.items.put(_STOPPED)
            self._slots[nonce] = slot
        try:
            yield slot.items
        finally:
            with self._lock:
                self._slots.pop(nonce, None)

    def route(self, event: Token | Final) -> None:
        """Router (dispatcher thread): copy the event into its request's queue, if it is ours."""
        address = event.request.address
        if address is None or address.key is None:
            return  # not a plugin's LocalMessage: an MQTT request, whatever id it reuses
        with self._lock:
            slot = self._slots.get(address.key)
        if slot is None:
            return
        if isinstance(event, Token):
            slot.items.put(event.delta)
        else:
            slot.items.put(dataclasses.replace(event, data=dict(event.data)))  # a copy: nothing shared

    def close(self) -> None:
        """Teardown (main thread): answer every waiting handler; nothing more will be routed."""
        with self._lock:
            self._closed = True
            slots = list(self._slots.values())
        for slot in slots:
            slot.items.put(_STOPPED)


_STOPPED = Final(Exchange("generate", ""), "error", {}, "shutdown", "rkllmd is shutting down")


class Waiter:
    """A handler's view of its request: the next item, or :class:`ClientGone` (handler thread)."""

    def __init__(
        self,
        items: queue.SimpleQueue[Item],
        cancel: Callable[[], object],
        client_gone: Callable[[], bool],
        *,
        deadline_s: float,
        abandon_s: float = ABANDON_S,
    ) -> None:
        """``deadline_s``: from now, the longest to wait for the final reply (answer_deadline_s);
        ``abandon_s``: how long a cancel looks for a request rkllmd has not taken yet."""
        self._items, self._cancel, self._client_gone = items, cancel, client_gone
        self._deadline_s, self._abandon_s = deadline_s, abandon_s
        self._deadline = time.monotonic() + deadline_s
        self._next_check = time.monotonic() + TICK_S

    def next(self) -> Item:
        """Block until the next delta or the final reply; a client gone meanwhile is cancelled.
        Past the deadline the request is cancelled and the answer is an internal error.

        The socket is looked at once per tick even while deltas stream in: a non-streaming
        client writes nothing back, so only this check notices it has gone."""
        while True:
            now = time.monotonic()
            if now >= self._deadline:
                self.abandon()
                return no_answer(self._deadline_s)
            if now >= self._next_check:
                self._next_check = now + TICK_S
                if self._client_gone():
                    self.abandon()
                    raise ClientGone
            try:
                return self._items.get(timeout=max(0.0, min(self._next_check, self._deadline) - now))
            except queue.Empty:
                pass

    def final(self) -> Final:
        """Block until the final reply, skipping the deltas before it (they add up to its text)."""
        item = self.next()
        while not isinstance(item, Final):
            item = self.next()
        return item

    def abandon(self) -> bool:
        """Cancel the generation, once rkllmd has it; False when it could not be found in time.
        A request still on its way to the queue (injected, not yet taken by the ingress thread) is
        not found yet: try again each tick until the cancel lands, the final reply shows it has
        ended anyway, or ``abandon_s`` has passed (a request rkllmd never took is never found)."""
        give_up = time.monotonic() + self._abandon_s
        while True:
            try:
                self._cancel()
                return True
            except NotFound:
                pass
            if time.monotonic() >= give_up:
                return False
            try:
                item = self._items.get(timeout=TICK_S)
            except queue.Empty:
                continue
            if isinstance(item, Final):
                return True
