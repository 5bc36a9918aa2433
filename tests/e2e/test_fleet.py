"""Fleet mode: three boards on the C double behind one request topic, one real mosquitto."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import rkllm_config
from tests.helpers import Broker, DaemonProc, Msg, Probe, probe, write_config

Board = Callable[..., DaemonProc]


def _prompt(text: str, delay_ms: int = 20, tokens: int = 8) -> str:
    return f"[[delay_ms={delay_ms}]] [[len={tokens}]] {text}"


@pytest.fixture
def fleet(broker: Broker, fake_libs: dict[str, Path], tmp_path: Path) -> Iterator[tuple[str, Board]]:
    """Start boards of one fleet (group ``home``) on the double; each waits until its model is loaded."""
    base = f"fl{uuid.uuid4().hex[:6]}"
    procs: list[DaemonProc] = []

    def board(
        node: str, *, wait: bool = True, sections: dict[str, Any] | None = None, **kw: Any
    ) -> DaemonProc:
        folder = tmp_path / node
        folder.mkdir(exist_ok=True)
        mqtt = {
            "client_id": f"{base}-{node}",
            "clean_start": False,
            "redelivery_wait_s": 1.0,
            **kw.pop("mqtt", {}),
        }
        cfg = rkllm_config(folder, broker, fake_libs["1.3"], base, mqtt=mqtt, **kw)
        full = tomllib.loads(cfg.read_text())
        full = {"state_dir": str(folder / "state"), **full, "fleet": {"group": "home", "node_id": node}}
        write_config(cfg, {**full, **(sections or {})})
        d = DaemonProc(cfg, folder)
        procs.append(d)
        if wait:
            d.wait_ready(30)
        return d

    yield base, board
    for d in procs:
        if d.proc.poll() is None:
            d.stop()


def _send(p: Probe, base: str, rid: str, prompt: str, topic: str | None = None) -> None:
    p.publish(
        topic or f"{base}/request/generate",
        {"id": rid, "prompt": prompt, "stream": False},
        response_topic=f"{base}-test/reply",
        correlation_data=rid.encode(),
    )


def _finals(p: Probe, base: str, want: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(out) < want:
        out.append(p.get(f"{base}-test/reply", timeout=max(0.01, deadline - time.monotonic())).json())
    return out


def _quiet(p: Probe, base: str, seconds: float) -> list[dict[str, Any]]:
    """Every reply that still arrives within ``seconds`` (there should be none)."""
    extra: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return extra
        try:
            extra.append(p.get(f"{base}-test/reply", timeout=left).json())
        except TimeoutError:
            return extra


def test_requests_spread_over_every_board(fleet: tuple[str, Board], broker: Broker) -> None:
    """The broker gives each of three boards a share of the group's requests."""
    base, board = fleet
    for n in ("b0", "b1", "b2"):
        board(n)
    with probe(broker) as p:
        p.subscribe(f"{base}-test/reply")
        for i in range(9):
            _send(p, base, f"s{i}", _prompt(f"spread {i}", delay_ms=30))
        finals = _finals(p, base, 9)
    assert all(f["status"] == "ok" for f in finals), finals
    served = Counter(f["node"] for f in finals)
    assert set(served) == {"b0", "b1", "b2"}, served


def test_no_busy_while_a_board_is_idle(fleet: tuple[str, Board], broker: Broker) -> None:
    """With every board's queue full, more requests wait at the broker or on a board, never answered busy."""
    base, board = fleet
    for n in ("b0", "b1", "b2"):
        board(n, limits={"queue_size": 1})
    with probe(broker) as p:
        p.subscribe(f"{base}-test/reply")
        for i in range(12):  # room for 6 (1 running + 1 queued per board): half of them must wait
            _send(p, base, f"bp{i}", _prompt(f"pressure {i}", delay_ms=40, tokens=10))
        finals = _finals(p, base, 12, timeout=60)
    codes = Counter(f.get("code") or f["status"] for f in finals)
    assert codes == {"ok": 12}, codes
    assert set(Counter(f["node"] for f in finals)) == {"b0", "b1", "b2"}


def test_a_model_only_one_board_has_goes_to_that_board(fleet: tuple[str, Board], broker: Broker) -> None:
    """A request on a model's own topic reaches only the board that has the model configured."""
    base, board = fleet
    board("b0")
    board("b1")
    board("b2", extra_models={"big": {"runtime": "rkllm", "path": "/dev/null", "library": "/dev/null"}})
    with probe(broker) as p:
        p.subscribe(f"{base}-test/reply")
        for i in range(4):
            # an unknown runtime file: the board that has "big" answers (with a load error), no other
            _send(p, base, f"m{i}", "hello", topic=f"{base}/request/generate/big")
        finals = _finals(p, base, 4)
    assert {f["node"] for f in finals} == {"b2"}, finals


def test_cancel_reaches_the_board_that_runs_the_request(fleet: tuple[str, Board], broker: Broker) -> None:
    """A cancel sent to the group stops the request on whichever board runs it, with one answer."""
    base, board = fleet
    for n in ("b0", "b1", "b2"):
        board(n)
    with probe(broker) as p:
        p.subscribe(f"{base}-test/reply", f"{base}-test/cancel", f"{base}/node/+/stats")
        for i in range(3):  # one long request per board
            _send(p, base, f"long{i}", _prompt(f"long {i}", delay_ms=100, tokens=100))
        # Every board runs one: each says busy in a live stats message (a fixed wait could end
        # before a board had even received its request on a busy machine).
        busy: set[str] = set()

        def all_busy(m: Msg) -> bool:
            if not m.retain and m.json()["busy"]:
                busy.add(m.topic.split("/")[-2])
            return busy == {"b0", "b1", "b2"}

        p.collect_until(f"{base}/node/+/stats", all_busy, timeout=30)
        cancels = []
        for i in reversed(range(3)):  # the broker's next pick is rarely the board that runs it
            p.publish(
                f"{base}/request/cancel",
                {"id": f"long{i}"},
                response_topic=f"{base}-test/cancel",
                correlation_data=f"c{i}".encode(),
            )
            cancels.append(p.get(f"{base}-test/cancel", timeout=10).json())
        finals = _finals(p, base, 3)
        p.publish(f"{base}/request/cancel", {"id": "nobody-has-this"}, response_topic=f"{base}-test/cancel")
        missing = p.get(f"{base}-test/cancel", timeout=10).json()
        more = _quiet(p, base, 1.5) + [m.json() for m in p.drain() if m.topic.endswith("/test/cancel")]
    assert all(c["status"] == "ok" and c["data"]["was"] == "running" for c in cancels), cancels
    assert {f["data"]["finish_reason"] for f in finals} == {"cancelled"}, finals
    ran_on = {f["id"]: f["node"] for f in finals}
    assert len(set(ran_on.values())) == 3
    passed_on = [c for c in cancels if c["node"] != ran_on[c["id"]]]
    assert passed_on, "every cancel reached the board that ran its request: the passing on went untested"
    assert all(c["data"]["cancelled_on"] == ran_on[c["id"]] for c in passed_on), passed_on
    assert missing["status"] == "error" and missing["code"] == "not_found", missing
    assert more == []


def test_kill_9_of_a_board_loses_nothing_and_answers_nothing_twice(
    fleet: tuple[str, Board], broker: Broker
) -> None:
    """A board killed mid-generation answers its requests after the restart; each request gets one reply."""
    base, board = fleet
    victim = board("b0")
    board("b1")
    board("b2")
    with probe(broker) as p:
        p.subscribe(f"{base}-test/reply")
        ids = [f"k{i}" for i in range(9)]
        for rid in ids:
            _send(p, base, rid, _prompt(f"kill {rid}", delay_ms=60, tokens=20))
        time.sleep(0.6)  # every board runs one and holds the rest
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(10)
        board("b0")  # systemd's Restart= would do this; the broker kept its session
        finals = _finals(p, base, len(ids), timeout=60)
        finals += _quiet(p, base, 3.0)
    count = Counter(f["id"] for f in finals)
    assert count == Counter(ids), sorted(
        str((f["id"], f.get("node"), f.get("code"), f["data"].get("finish_reason"))) for f in finals
    )
    assert all(f["status"] == "ok" for f in finals), finals


def test_a_kill_with_a_clean_session_is_answered_interrupted(
    fleet: tuple[str, Board], broker: Broker
) -> None:
    """Where the broker cannot send a killed board's requests again, the restarted board answers them."""
    base, board = fleet
    victim = board("b0", mqtt={"clean_start": True})
    with probe(broker) as p:
        p.subscribe(f"{base}-test/reply")
        for i in range(3):
            _send(p, base, f"c{i}", _prompt(f"clean {i}", delay_ms=100, tokens=50))
        # Journaled before queued: killed any sooner, a request the board had not taken yet is
        # simply lost with the clean session, and nobody could answer it.
        for i in range(3):
            victim.wait_event("request queued", request_id=f"c{i}")
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(10)
        board("b0", mqtt={"clean_start": True})
        finals = _finals(p, base, 3, timeout=30)
        finals += _quiet(p, base, 1.5)
    assert Counter(f["id"] for f in finals) == Counter(["c0", "c1", "c2"]), finals
    assert {f["code"] for f in finals} == {"interrupted"}, finals


def test_each_board_publishes_under_its_node_and_the_leader_the_group_view(
    fleet: tuple[str, Board], broker: Broker
) -> None:
    """Boards' state and stats live under <base>/node/<id>/; <base>/fleet/stats counts the boards."""
    base, board = fleet
    board("b0")
    board("b1")
    with probe(broker) as p:
        p.subscribe(f"{base}/node/+/state", f"{base}/fleet/stats", f"{base}-test/reply")
        states = {p.get(f"{base}/node/+/state").topic for _ in range(2)}
        _send(p, base, "v1", _prompt("view", delay_ms=5))
        answer = _finals(p, base, 1)[0]
        view = p.collect_until(
            f"{base}/fleet/stats", lambda m: m.json().get("last_node") == answer["node"], timeout=10
        )[-1].json()
    assert states == {f"{base}/node/b0/state", f"{base}/node/b1/state"}
    assert view["boards_online"] == 2 and view["leader"] == "b0"
    assert set(view["nodes"]) == {"b0", "b1"}


def test_home_assistant_sees_one_device_per_board_and_one_for_the_fleet(
    fleet: tuple[str, Board], broker: Broker
) -> None:
    """With the homeassistant plugin each board announces its own device and the same fleet device."""
    base, board = fleet
    prefix = f"ha{uuid.uuid4().hex[:6]}"
    plugins = {"plugins": {"enabled": ["homeassistant"], "homeassistant": {"discovery_prefix": prefix}}}
    with probe(broker) as p:
        p.subscribe(f"{prefix}/device/+/config")
        board("b0", sections=plugins)
        board("b1", sections=plugins)
        configs: dict[str, Any] = {}
        deadline = time.monotonic() + 15
        while len(configs) < 3 and time.monotonic() < deadline:
            m = p.get(f"{prefix}/device/+/config", timeout=max(0.01, deadline - time.monotonic()))
            configs[m.topic] = m.json()
    fleet_dev = [c for c in configs.values() if c["dev"]["mdl"] == "LLM fleet"]
    boards = [c for c in configs.values() if c["dev"]["mdl"] != "LLM fleet"]
    assert len(fleet_dev) == 1 and len(boards) == 2, list(configs)
    f = fleet_dev[0]["cmps"]
    assert f["prompt"]["cmd_t"] == f"{base}/request/generate"
    assert f["queue_depth"]["stat_t"] == f"{base}/fleet/stats"
    assert [a["topic"] for a in fleet_dev[0]["avty"]] == [f"{base}/fleet/state"]  # offline with no board
    stats_topics = sorted(b["cmps"]["queue_depth"]["stat_t"] for b in boards)
    assert stats_topics == [f"{base}/node/b0/stats", f"{base}/node/b1/stats"]
    assert {b["cmps"]["prompt"]["cmd_t"] for b in boards} == {
        f"{base}/node/b0/request/generate",
        f"{base}/node/b1/request/generate",
    }
    assert all(b["dev"]["via_device"] == fleet_dev[0]["dev"]["ids"][0] for b in boards)


def test_rkllmd_ask_works_unchanged_against_a_fleet(fleet: tuple[str, Board], broker: Broker) -> None:
    """`rkllmd ask` publishes to the group's topic and prints the answer of whichever board took it."""
    base, board = fleet
    board("b0")
    board("b1")
    cmd = [sys.executable, "-m", "rkllmd", "ask", "[[len=3]] fleet hello", "--port", str(broker.port)]
    out = subprocess.run(
        [*cmd, "--base-topic", base, "--timeout", "30", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RKLLMD_CONFIG": ""},
    )
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply["status"] == "ok" and reply["node"] in ("b0", "b1")
    assert reply["data"]["text"].strip()


@pytest.mark.parametrize("how", ["load", "generate"])
def test_with_models_loaded_a_board_serves_a_model_topic_only_while_loaded(
    fleet: tuple[str, Board], broker: Broker, how: str
) -> None:
    """fleet.models = "loaded": a board joins a model's topic when it loads the model and leaves on
    unload; a generation for another model that loads it (a swap) counts as a load."""
    base, board = fleet
    board("b0", sections={"fleet": {"group": "home", "node_id": "b0", "models": "loaded"}})
    board("b1")  # has "fake" and "other" configured: serves both topics all along
    with probe(broker) as p:
        p.subscribe(f"{base}-test/reply", f"{base}-test/load", f"{base}/node/b0/serves")
        for i in range(4):
            _send(p, base, f"o{i}", "[[len=2]] other", topic=f"{base}/request/generate/other")
        before = _finals(p, base, 4)
        if how == "load":
            p.publish(f"{base}/node/b0/request/load", {"model": "other"}, response_topic=f"{base}-test/load")
        else:
            swap = {"prompt": "[[len=2]] swap", "model": "other"}
            p.publish(f"{base}/node/b0/request/generate", swap, response_topic=f"{base}-test/load")
        assert p.get(f"{base}-test/load", timeout=20).json()["status"] == "ok"
        # b0 says what it serves after it subscribed the model's topics, on the same connection:
        # once the broker passes that on, it has read the subscription too.
        p.collect_until(f"{base}/node/b0/serves", lambda m: "other" in m.json()["models"], timeout=20)
        for i in range(4):
            _send(p, base, f"p{i}", "[[len=2]] other", topic=f"{base}/request/generate/other")
        after = _finals(p, base, 4)
    assert {f["node"] for f in before} == {"b1"}, before
    assert {f["node"] for f in after} == {"b0", "b1"}, after


def test_the_http_and_ollama_apis_run_on_their_own_board_in_a_fleet(
    fleet: tuple[str, Board], broker: Broker
) -> None:
    """A board's OpenAI and Ollama APIs answer as on a single board, and the request runs on that board."""
    import ollama
    import openai

    from rkllmd.bench.broker import free_port

    _, board = fleet
    http_port, ollama_port = free_port(), free_port()
    plugins = {
        "plugins": {
            "enabled": ["http", "ollama"],
            "http": {"port": http_port},
            "ollama": {"port": ollama_port},
        }
    }
    b0 = board("b0", sections=plugins)
    board("b1")
    b0.wait_log("Ollama-compatible API listening")
    oa = openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="none", max_retries=0, timeout=30)
    chat = oa.chat.completions.create(model="fake", messages=[{"role": "user", "content": "[[len=3]] hi"}])
    assert chat.choices[0].message.content
    reply = ollama.Client(host=f"http://127.0.0.1:{ollama_port}", timeout=30).chat(
        model="fake", messages=[{"role": "user", "content": "[[len=3]] hello"}]
    )
    assert reply.message.content and reply.done
    ran_here = [ln for ln in b0.log_text().splitlines() if '"request done"' in ln and '"generate"' in ln]
    assert len(ran_here) == 2, "both API requests ran on the board that received them"
