"""The request journal: what a killed run took and never answered survives into the next run."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from rkllmd.exchange import Exchange
from rkllmd.journal import Journal
from rkllmd.protocol import Address


def _ex(rid: str, corr: bytes | None = b"c1", local: bool = False) -> Exchange:
    address = Address(
        topic="rk/reply",
        correlation_data=corr,
        request_id=rid,
        transaction={"t": 1},
        has_transaction=True,
        local=local,
    )
    return Exchange(command="generate", topic="rk/request/generate", id=rid, address=address)


def test_a_request_taken_and_not_answered_is_left_for_the_next_run(tmp_path: Path) -> None:
    """The next run gets back where each unanswered reply goes, correlation data and transaction included."""
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    a, b = _ex("a"), _ex("b", corr=None)
    j.took(a)
    j.took(b)
    j.answered(a.run.journal_key, "a")
    left = Journal(path).recover()
    assert [u.request_id for u in left] == ["b"]
    assert left[0].address.topic == "rk/reply" and left[0].address.correlation_data is None
    assert left[0].address.transaction == {"t": 1} and left[0].address.has_transaction
    assert left[0].command == "generate"


def test_an_unanswered_request_stays_open_across_a_second_kill(tmp_path: Path) -> None:
    """Recovering does not close an entry: only its answer (or a redelivery) does."""
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    j.took(_ex("a"))
    first = Journal(path).recover()
    second = Journal(path)
    again = second.recover()
    assert [u.request_id for u in again] == ["a"] and again[0].key == first[0].key
    second.forget(again[0].key)
    assert Journal(path).recover() == []


def test_answered_ids_are_remembered_across_a_restart(tmp_path: Path) -> None:
    """A redelivery of a request answered just before the kill is recognised by the next run."""
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    a = _ex("a")
    j.took(a)
    j.answered(a.run.journal_key, "a")
    nxt = Journal(path)
    nxt.recover()
    assert nxt.answered_recently("a") and not nxt.answered_recently("b")


def test_a_line_cut_short_by_the_kill_is_skipped(tmp_path: Path) -> None:
    """A half-written last line does not stop the others being read."""
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    j.took(_ex("a"))
    j.close()
    with path.open("a") as fh:
        fh.write('{"op": "took", "key": "x", "id": "b", "cm')
    assert [u.request_id for u in Journal(path).recover()] == ["a"]


def test_local_requests_are_not_journaled_and_no_file_means_memory_only(tmp_path: Path) -> None:
    """HTTP-style local requests have nobody to answer over MQTT; without a path nothing is written."""
    j = Journal(tmp_path / "j.jsonl")
    j.took(_ex("a", local=True))
    assert Journal(tmp_path / "j.jsonl").recover() == []
    mem = Journal(None)
    mem.took(_ex("b"))
    assert mem.recover() == []
    mem.answered(None, "b")
    assert mem.answered_recently("b")


def test_the_journal_is_0600_whatever_the_umask_and_a_loose_one_is_tightened(tmp_path: Path) -> None:
    """Under umask 000 (the loosest) the journal, its rewrite and its folder are the owner's alone;
    a journal an older rkllmd left 0644 is made 0600 when it is next written."""
    old = os.umask(0)
    try:
        path = tmp_path / "state" / "journal.jsonl"
        j = Journal(path)
        j.recover()  # rewrites (creates) the file
        j.took(_ex("a"))
        j.close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        path.chmod(0o644)
        j = Journal(path)
        j.recover()
        j.took(_ex("b"))
        j.close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_a_redelivery_is_open_while_taken_and_answered_once_delivered(tmp_path: Path) -> None:
    """What a DUP is to this run: new before it was taken, open until its reply is delivered (its
    reply may be written and still on its way), then answered."""
    j = Journal(tmp_path / "journal.jsonl")
    a = _ex("a")
    assert j.seen_again("a", None) == "new"
    j.took(a)
    assert j.seen_again("a", None) == "open"
    j.answered(a.run.journal_key, "a")
    assert j.seen_again("a", None) == "answered"


def test_taken_but_unanswered_is_new_again_after_a_restart(tmp_path: Path) -> None:
    """After a kill a written reply may have died with the process: the next run serves the
    redelivered request again instead of counting on that reply."""
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    j.took(_ex("a"))
    nxt = Journal(path)
    assert [u.request_id for u in nxt.recover()] == ["a"]
    assert nxt.seen_again("a", None) == "new"
