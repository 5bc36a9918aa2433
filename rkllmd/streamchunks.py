"""Stream chunks out of a request's tokens: which of the tokens the dispatcher took at once leave
together as one chunk, and when a chunk held by ``[stream] coalesce_ms`` is due.

Threads: ``ChunkJoiner`` is used on the dispatcher thread only (rkllmd.dispatch); each chunk's
``seq`` counts a request's chunks, from 0, with no gaps.
"""

from __future__ import annotations

from typing import Any

from rkllmd.exchange import Exchange, Final, Token


class _Stream:
    """One request's chunks so far (ChunkJoiner)."""

    __slots__ = ("job", "last", "sent", "texts", "thoughts")

    def __init__(self, job: Exchange) -> None:
        self.job = job
        self.texts: list[str] = []  # deltas not yet in a chunk
        self.thoughts: list[str] = []  # their thought (a thinking model's), joined apart
        self.sent = 0  # chunks handed on; the next chunk's seq
        self.last: float | None = None  # monotonic time of the last chunk


class ChunkJoiner:
    """Turns each request's Token events into its stream chunks; used on the dispatcher thread only.

    ``feed`` takes the events the dispatcher took from its queue at once and gives them back in
    order, each request's tokens joined into one Token with the chunk's ``seq`` (0, 1, 2, ... per
    request, no gaps), placed after the other events and before the request's Final. With a
    window (``coalesce_ms``), a request's text that comes within ``window_s`` of its last chunk is
    held until the window has passed (``wait_s`` says when), then leaves as one chunk; the first
    chunk of a request never waits. Joining never changes the text, only how it is cut.
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._streams: dict[int, _Stream] = {}  # id(exchange) -> its chunks; the exchange is kept

    def feed(self, events: list[Any], now: float, *, flush: bool = False) -> list[Any]:
        """``events`` in order with their tokens joined; ``flush`` hands on every held text too."""
        out: list[Any] = []
        for ev in events:
            if isinstance(ev, Token):
                st = self._streams.get(id(ev.request))
                if st is None:
                    st = self._streams[id(ev.request)] = _Stream(ev.request)
                st.texts.append(ev.delta)
                if ev.thinking:
                    st.thoughts.append(ev.thinking)
                continue
            if isinstance(ev, Final):  # the request's last text goes before its reply
                st = self._streams.get(id(ev.request))
                if st is not None and st.texts:
                    out.append(self._chunk(st, now))
            out.append(ev)
        out.extend(self._chunk(st, now) for st in list(self._streams.values()) if self._ready(st, now, flush))
        return out

    def wait_s(self, now: float) -> float | None:
        """Seconds until a held text is due, None while nothing is held."""
        due = [st.last + self.window_s for st in self._streams.values() if st.texts and st.last is not None]
        return max(0.0, min(due) - now) if due else None

    def sent(self, job: Exchange) -> int:
        """Chunks handed on for ``job`` so far: its end message's ``seq``."""
        st = self._streams.get(id(job))
        return st.sent if st is not None else 0

    def forget(self, job: Exchange) -> None:
        """The request has ended (after its Final is dispatched)."""
        self._streams.pop(id(job), None)

    def _ready(self, st: _Stream, now: float, flush: bool) -> bool:
        if not st.texts:
            return False
        return flush or st.last is None or now - st.last >= self.window_s

    def _chunk(self, st: _Stream, now: float) -> Token:
        tok = Token(st.job, st.sent, "".join(st.texts), "".join(st.thoughts))
        st.texts, st.thoughts, st.sent, st.last = [], [], st.sent + 1, now
        return tok
