"""A fleet with a board that dies and stays dead: three boards on the C double, one real mosquitto.

Clients publish at a steady pace while one board is killed with -9 and left dead past
``fleet.takeover_grace_s``: every request is answered exactly once, none is silently lost, and
the board's return answers nothing twice (docs/FLEET.md, "When a board dies").
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from typing import Any

from tests.e2e import test_fleet
from tests.e2e.test_fleet import Board, _finals, _prompt, _quiet, _send
from tests.helpers import Broker, DaemonProc, Probe, probe, wait_retained

fleet = test_fleet.fleet  # the same boards fixture

GRACE_S = 2.0
BIG = {"big": {"runtime": "rkllm", "path": "/dev/null", "library": "/dev/null"}}


def _fleet_cfg(node: str) -> dict[str, Any]:
    return {"fleet": {"group": "home", "node_id": node, "takeover_grace_s": GRACE_S}}


def _kill(d: DaemonProc) -> None:
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(10)


def _paced(p: Probe, base: str, prefix: str, count: int, every_s: float, at: dict[int, Any]) -> list[str]:
    """Send ``count`` requests one every ``every_s``; ``at[i]()`` runs just before request ``i``."""
    ids = []
    for i in range(count):
        if i in at:
            at[i]()
        rid = f"{prefix}{i}"
        _send(p, base, rid, _prompt(f"paced {rid}", delay_ms=20, tokens=15))
        ids.append(rid)
        time.sleep(every_s)
    return ids


def _summary(finals: list[dict[str, Any]]) -> list[str]:
    return sorted(
        f"{f['id']} {f.get('node')} {f.get('code') or f['data'].get('finish_reason')}" for f in finals
    )


def test_a_dead_boards_kept_session_is_taken_over_and_nothing_is_lost_or_doubled(
    fleet: tuple[str, Board], broker: Broker
) -> None:
    """Kept sessions: what mosquitto keeps routing to the dead board is served by the others once the
    grace is over (its in-flight requests run again); a request for a model only it had is answered
    unknown_model; its return answers nothing twice."""
    base, board = fleet
    board("b0", sections=_fleet_cfg("b0"))
    board("b1", sections=_fleet_cfg("b1"))
    victim = board("b2", sections=_fleet_cfg("b2"), extra_models=BIG)
    with probe(broker) as p:
        p.subscribe(f"{base}-test/reply")
        ids = _paced(p, base, "k", 40, 0.2, {6: lambda: _kill(victim)})
        _send(p, base, "big1", "hello", topic=f"{base}/request/generate/big")
        finals = _finals(p, base, len(ids) + 1, timeout=40)
        board("b2", sections=_fleet_cfg("b2"), extra_models=BIG)
        finals += _quiet(p, base, 3.0)
    count = Counter(f["id"] for f in finals)
    assert count == Counter([*ids, "big1"]), _summary(finals)
    by_id = {f["id"]: f for f in finals}
    assert by_id["big1"]["code"] == "unknown_model", by_id["big1"]
    assert all(by_id[i]["status"] == "ok" for i in ids), _summary(finals)
    assert "b2" not in {by_id[i]["node"] for i in ids[8:]}, _summary(finals)


def test_with_clean_sessions_the_others_serve_at_once_and_the_leader_answers_what_the_dead_board_held(
    fleet: tuple[str, Board], broker: Broker
) -> None:
    """Clean sessions: mosquitto deletes the dead board's requests in flight (eclipse-mosquitto #2662);
    new ones go to the others at once, a model only it had is answered at once, and what it held is
    answered `interrupted` by the leader after the grace, from the list the board kept retained; its
    return answers none of them again."""
    base, board = fleet
    clean = {"clean_start": True}
    board("b0", sections=_fleet_cfg("b0"), mqtt=clean)
    board("b1", sections=_fleet_cfg("b1"), mqtt=clean)
    victim = board("b2", sections=_fleet_cfg("b2"), extra_models=BIG, mqtt=clean)
    with probe(broker) as p:
        p.subscribe(f"{base}-test/reply")
        ids = _paced(p, base, "c", 24, 0.2, {6: lambda: _kill(victim)})
        _send(p, base, "big2", "hello", topic=f"{base}/request/generate/big")
        finals = _finals(p, base, len(ids) + 1, timeout=40)  # the dead board's, once the grace is over
        board("b2", sections=_fleet_cfg("b2"), extra_models=BIG, mqtt=clean)
        finals += _quiet(p, base, 2.0)
    assert Counter(f["id"] for f in finals) == Counter([*ids, "big2"]), _summary(finals)
    by_id = {f["id"]: f for f in finals}
    assert by_id["big2"]["code"] == "unknown_model", by_id["big2"]
    interrupted = [i for i in ids if by_id[i].get("code") == "interrupted"]
    assert interrupted and all(by_id[i]["node"] == "b0" for i in interrupted), _summary(finals)
    assert all(by_id[i]["status"] == "ok" for i in ids if i not in interrupted), _summary(finals)


def test_the_leaders_death_then_every_boards_is_told_by_the_retained_fleet_state(
    fleet: tuple[str, Board], broker: Broker
) -> None:
    """The leader dies: the next one takes its session over and says the fleet is online with two
    boards; all die: the retained fleet state says offline; one returns: online, and it serves."""
    base, board = fleet
    boards = {n: board(n, sections=_fleet_cfg(n)) for n in ("b0", "b1", "b2")}
    state = f"{base}/fleet/state"
    with probe(broker) as p:
        p.subscribe(f"{base}-test/reply", state)
        ids = _paced(p, base, "l", 24, 0.2, {6: lambda: _kill(boards["b0"])})
        finals = _finals(p, base, len(ids), timeout=40)
        two = p.collect_until(state, lambda m: m.json().get("boards_online") == 2, timeout=10)[-1].json()
        _kill(boards["b1"])
        _kill(boards["b2"])
    assert Counter(f["id"] for f in finals) == Counter(ids), _summary(finals)
    assert all(f["status"] == "ok" for f in finals), _summary(finals)
    assert two["state"] == "online" and two["boards"] == ["b1", "b2"], two
    with probe(broker) as p:  # a client that comes later reads the retained state
        # The broker sends the last leader's Will once it sees the connection gone (b2 may have
        # said online as the leader between the two kills): wait for it, do not time it.
        gone = wait_retained(p, state, lambda v: v is not None and v["state"] == "offline", timeout=30)
        assert gone["state"] == "offline", gone
        p.subscribe(state)
        board("b2", sections=_fleet_cfg("b2"))
        back = p.collect_until(state, lambda m: m.json().get("state") == "online", timeout=10)[-1].json()
        p.subscribe(f"{base}-test/reply")
        _send(p, base, "again", _prompt("again"))
        again = _finals(p, base, 1)[0]
    assert back["boards_online"] == 1 and back["leader"] == "b2", back
    assert again["status"] == "ok" and again["node"] == "b2"
