"""From the dispatcher thread to the HTTP handler threads: one queue per request in flight.

Shared by the HTTP interface plugins (``http``, ``ollama``): each has its own Relay.

The router runs on rkllmd's dispatcher thread, which publishes every MQTT reply: it only looks up
the request's queue and copies the event into it (never blocks, never touches a socket). Each HTTP
handler thread reads its own queue through a :class:`Waiter`, which also watches the client's
socket and cancels the generation when the client goes away.
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

TICK_S = 0.2  # how often a waiting handler looks at its client's socket

Item = str | Final  # a text delta, or the final reply


class ClientGone(Exception):
    """The HTTP client disconnected; its generation was cancelled."""


@dataclass
class _Slot:
    nonce: str  # our request's transaction: tells it from an MQTT request reusing its id
    items: queue.SimpleQueue[Item]


class Relay:
    """Requests this plugin injected, by rkllmd request id, and the router that feeds them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        self._closed = False

    @contextlib.contextmanager
    def track(self, request_id: str, nonce: str) -> Iterator[queue.SimpleQueue[Item]]:
        """Register a request before it is injected, so no event can come before its queue
        (HTTP handler thread); the slot goes when the handler is done with it."""
        slot = _Slot(nonce, queue.SimpleQueue())
        with self._lock:
            if self._closed:
                slot.items.put(_STOPPED)
            self._slots[request_id] = slot
        try:
            yield slot.items
        finally:
            with self._lock:
                self._slots.pop(request_id, None)

    def route(self, event: Token | Final) -> None:
        """Router (dispatcher thread): copy the event into its request's queue, if it is ours."""
        req = event.request
        with self._lock:
            slot = self._slots.get(req.id or "")
        if slot is None or req.original.get("transaction") != slot.nonce:
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
        self, items: queue.SimpleQueue[Item], cancel: Callable[[], object], client_gone: Callable[[], bool]
    ) -> None:
        self._items, self._cancel, self._client_gone = items, cancel, client_gone
        self._next_check = time.monotonic() + TICK_S

    def next(self) -> Item:
        """Block until the next delta or the final reply; a client gone meanwhile is cancelled.

        The socket is looked at once per tick even while deltas stream in: a non-streaming
        client writes nothing back, so only this check notices it has gone."""
        while True:
            now = time.monotonic()
            if now >= self._next_check:
                self._next_check = now + TICK_S
                if self._client_gone():
                    self.abandon()
                    raise ClientGone
            try:
                return self._items.get(timeout=max(0.0, self._next_check - now))
            except queue.Empty:
                pass

    def final(self) -> Final:
        """Block until the final reply, skipping the deltas before it (they add up to its text)."""
        item = self.next()
        while not isinstance(item, Final):
            item = self.next()
        return item

    def abandon(self) -> None:
        """Cancel the generation, once rkllmd has it. A request still on its way to the queue
        (injected, not yet taken by the ingress thread) is not found yet: try again each tick
        until the cancel lands or the final reply shows it has ended anyway."""
        while True:
            try:
                self._cancel()
                return
            except NotFound:
                pass
            try:
                item = self._items.get(timeout=TICK_S)
            except queue.Empty:
                continue
            if isinstance(item, Final):
                return
