"""The request journal: what this board took from the broker and has not answered yet.

A request is acknowledged to the broker only once its final reply is delivered (rkllmd/bus.py),
so a broker that keeps the session sends an unanswered request again after a kill -9. Where it
cannot (a clean session, or a session that expired), the journal is how the restarted daemon
still answers: every request it took and did not answer gets an ``interrupted`` error reply. It
also remembers which requests were answered lately, so a broker's redelivery of one (DUP) is not
run twice, and which requests this run took and has not answered yet (queued, running, or their
reply written and on its way to the broker), so a redelivery of one of those after a reconnect is
not run twice either: the original's reply answers it. docs/FLEET.md has the exact semantics.

Threads: ``took`` and ``seen_again`` run on the ingress thread, ``answered`` on the dispatcher
thread, and ``recover`` on the main thread before either starts; one lock, so a redelivery is
either still open here or answered, never neither. The file is optional (with
``state_dir`` set): JSON lines, each fsynced before it counts (``fsync``, default on: a request
taken is on disk before it is queued, an answer before its request is acknowledged, so a power
cut loses neither; a killed process's writes survive in the page cache even without), rewritten
short (fsynced, renamed, the folder fsynced) at startup and when it grows. Prompts are never
written, only where each reply goes.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog

from rkllmd.exchange import Exchange
from rkllmd.private import open_private
from rkllmd.protocol import Address, Receipt

log = structlog.get_logger("rkllmd.journal")

# Rewrite the file once this many lines were appended since the last rewrite.
_COMPACT_EVERY = 2000

# What a redelivered request (DUP) is to this run: see Journal.seen_again.
Seen = Literal["answered", "open", "new"]


@dataclass(frozen=True)
class Unanswered:
    """A request the previous run took and never answered: enough to send its error reply."""

    key: str
    request_id: str
    command: str
    topic: str
    address: Address
    taken_at: float  # wall clock
    attempt: int = 1  # how many runs took it so far (a request sent again streams anew, PROTOCOL.md)


@dataclass
class _Taken:
    """A request this run took and has not answered: its journal key, the packet id its reply will
    acknowledge, and redeliveries of it under another packet id, acknowledged with it."""

    key: str
    mid: int | None
    again: list[Receipt] = field(default_factory=list)


def _address_json(a: Address) -> dict[str, Any]:
    out: dict[str, Any] = {"topic": a.topic, "id": a.request_id}
    if a.correlation_data is not None:
        out["corr"] = base64.b64encode(a.correlation_data).decode()
    if a.has_transaction:
        out["transaction"] = a.transaction
    return out


def address_of(obj: dict[str, Any]) -> Address:
    """The reply address a journal line's ``to`` holds (also read from a fleet board's open list)."""
    return _address_of(obj)


def _address_of(obj: dict[str, Any]) -> Address:
    corr = obj.get("corr")
    return Address(
        topic=str(obj["topic"]),
        correlation_data=base64.b64decode(corr) if isinstance(corr, str) else None,
        request_id=obj.get("id"),
        transaction=obj.get("transaction"),
        has_transaction="transaction" in obj,
    )


class Journal:
    """Open requests and recently answered ids, in memory and (with a path) in a file."""

    def __init__(self, path: Path | None, window_s: float = 600.0, *, fsync: bool = True) -> None:
        self.path = path
        self.window_s = window_s
        self.fsync = fsync
        self._lock = threading.Lock()
        self._open: dict[str, dict[str, Any]] = {}  # journal key -> its line
        self._answered: collections.OrderedDict[str, float] = collections.OrderedDict()  # id -> monotonic
        # Request id -> what this run took under that id and has not answered yet (in memory only:
        # after a kill, a reply that was written may have died in the MQTT library's queue).
        self._taken: dict[str, list[_Taken]] = {}
        self._file: Any = None
        self._appended = 0
        # Told every change of the open requests, holding the lock (so in order): a fleet board with
        # a clean session publishes them for the leader, who answers them if it dies (fleetwatch).
        self.on_open: Callable[[list[dict[str, Any]]], None] | None = None

    # --- main thread, before the other threads start ------------------------------------------

    def recover(self) -> list[Unanswered]:
        """Read what the previous run left open, start a fresh file, return the open requests."""
        if self.path is None:
            return []
        left: dict[str, dict[str, Any]] = {}
        answered: dict[str, float] = {}  # id -> wall clock of its answer
        try:
            with self.path.open(encoding="utf-8") as fh:
                for line in fh:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue  # a line cut short by the kill
                    key = entry.get("key") if isinstance(entry, dict) else None
                    if not isinstance(key, str):
                        continue
                    if entry.get("op") == "took":
                        left[key] = entry
                    else:  # answered, or forgotten (redelivered and served by the next run)
                        left.pop(key, None)
                        rid, at = entry.get("id"), entry.get("at")
                        if isinstance(rid, str) and isinstance(at, (int, float)):
                            answered[rid] = float(at)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("cannot read the request journal", path=str(self.path), error=str(exc))
        out: list[Unanswered] = []
        for key, e in left.items():
            try:
                to = _address_of(e["to"])
                attempt = int(e.get("attempt", 1))
                out.append(
                    Unanswered(key, str(e["id"]), str(e["cmd"]), str(e["topic"]), to, float(e["at"]), attempt)
                )
            except (KeyError, TypeError, ValueError):
                log.warning("skipping an unreadable journal entry", key=key)
                continue
        with self._lock:
            # Still open until answered now (redelivered and served, or told it was interrupted),
            # so a second kill before that loses nothing either.
            self._open = {u.key: left[u.key] for u in out}
            # What the previous run answered lately: the broker may send one of them again
            # (its acknowledgement was lost with the process), and it must not run twice.
            now_wall, now = time.time(), time.monotonic()
            for rid, at in sorted(answered.items(), key=lambda kv: kv[1]):
                if now_wall - at <= self.window_s:
                    self._answered[rid] = now - (now_wall - at)
            self._rewrite_locked()
        return out

    # --- ingress thread ------------------------------------------------------------------------

    def took(self, ex: Exchange) -> None:
        """A request from the broker is about to be queued: it is open until ``answered``.

        Written before the request is queued, so its answer can never be journaled first."""
        if ex.address is None or ex.address.local or ex.id is None:
            return
        key = uuid.uuid4().hex[:16]
        entry = {
            "op": "took",
            "key": key,
            "id": ex.id,
            "cmd": ex.command,
            "topic": ex.topic,
            "to": _address_json(ex.address),
            "at": round(time.time(), 3),
            "attempt": ex.attempt,
        }
        ex.run.journal_key = key
        mid = ex.address.receipt.mid if ex.address.receipt is not None else None
        with self._lock:
            self._open[key] = entry
            self._taken.setdefault(ex.id, []).append(_Taken(key, mid))
            self._append_locked(entry)
            self._tell_locked()

    def forget(self, key: str) -> None:
        """An open request of the previous run came again from the broker and is served anew."""
        with self._lock:
            if self._open.pop(key, None) is not None:
                self._append_locked({"op": "forgotten", "key": key})
                self._tell_locked()

    def answered_recently(self, request_id: str) -> bool:
        """Whether a reply to this id was delivered within the window (a redelivery of it is a duplicate)."""
        with self._lock:
            self._prune_locked(time.monotonic())
            return request_id in self._answered

    def seen_again(self, request_id: str, receipt: Receipt | None) -> Seen:
        """What a request the broker sent again (DUP) is to this run: ``answered`` (its reply was
        delivered within the window: acknowledge it now), ``open`` (taken by this run and not answered
        yet: queued, running, or its reply written and on its way; the original's acknowledgement
        covers it, and ``receipt`` is kept for that if its packet id differs), or ``new`` (run it).

        ``open`` holds across a reconnect because the MQTT library keeps a written QoS 1 reply until
        the broker acknowledges it and sends it again on the new connection, whatever the session."""
        with self._lock:
            self._prune_locked(time.monotonic())
            if request_id in self._answered:
                return "answered"
            taken = self._taken.get(request_id)
            if not taken:
                return "new"
            first = taken[0]
            if receipt is not None and receipt.mid != first.mid and receipt not in first.again:
                first.again.append(receipt)
            return "open"

    # --- dispatcher thread ---------------------------------------------------------------------

    def answered(self, key: str | None, request_id: str | None) -> list[Receipt]:
        """A request's final reply is with the broker (``key``: its journal key, if it has one).

        Returns the receipts of its redeliveries under another packet id, to acknowledge too."""
        now = time.monotonic()
        with self._lock:
            if request_id is not None:
                self._answered[request_id] = now
                self._answered.move_to_end(request_id)
                self._prune_locked(now)
            entry = self._open.pop(key, None) if key is not None else None
            if entry is None:
                return []
            line = {"op": "answered", "key": key, "id": request_id, "at": round(time.time(), 3)}
            self._append_locked(line)
            self._tell_locked()
            return self._untake_locked(str(entry.get("id")), key)

    def tell(self) -> None:
        """Tell ``on_open`` what is open now (main thread, once it is set)."""
        with self._lock:
            self._tell_locked()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None

    # --- holding the lock ----------------------------------------------------------------------

    def _tell_locked(self) -> None:
        if self.on_open is not None:
            self.on_open(
                [{k: e[k] for k in ("id", "cmd", "topic", "to") if k in e} for e in self._open.values()]
            )

    def _untake_locked(self, request_id: str, key: str | None) -> list[Receipt]:
        taken = self._taken.get(request_id, [])
        for i, t in enumerate(taken):
            if t.key == key:
                del taken[i]
                if not taken:
                    del self._taken[request_id]
                return t.again
        return []

    def _prune_locked(self, now: float) -> None:
        while self._answered:
            at = next(iter(self._answered.values()))
            if now - at <= self.window_s and len(self._answered) <= 100_000:
                break
            self._answered.popitem(last=False)

    def _append_locked(self, entry: dict[str, Any]) -> None:
        if self.path is None:
            return
        if self._appended >= _COMPACT_EVERY:
            self._rewrite_locked()
        try:
            if self._file is None:
                self._file = open_private(self.path, "a")  # 0600: every request's reply address
            self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self._file.flush()  # into the page cache: it survives a kill -9 of this process
            if self.fsync:
                os.fsync(self._file.fileno())  # and onto the disk: it survives a power cut
            self._appended += 1
        except OSError as exc:
            log.error("cannot write the request journal", path=str(self.path), error=str(exc))

    def _rewrite_locked(self) -> None:
        """Replace the file by the open requests and the recent answers (atomically)."""
        if self.path is None:
            return
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            now_wall, now = time.time(), time.monotonic()
            with open_private(tmp, "w") as fh:
                for rid, at in self._answered.items():
                    line = {"op": "answered", "key": "", "id": rid, "at": round(now_wall - (now - at), 3)}
                    fh.write(json.dumps(line, ensure_ascii=False) + "\n")
                for entry in self._open.values():
                    fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            if self.fsync:  # the rename itself lives in the folder
                folder = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(folder)
                finally:
                    os.close(folder)
        except OSError as exc:
            log.error("cannot rewrite the request journal", path=str(self.path), error=str(exc))
        self._appended = 0
