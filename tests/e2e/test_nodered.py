"""rkllmd as Node-RED 4.1.15's own MQTT nodes use it: the flow docs/PROTOCOL.md shows, run for real.

Node-RED (``NODE_RED_VERSION``, from the npm registry, cached: tests/e2e/nodered_install.py) runs
headless on a user dir in tmp, its editor and admin API on a free loopback port, with the
documented flow loaded from docs/PROTOCOL.md, only its broker address and topic prefix changed to
the test's. The test presses the flow's inject buttons through the admin API (``POST
/inject/<id>``), as the editor does, and reads what Node-RED received from a ``file`` node that
writes each message the flow's ``mqtt in`` nodes (and its ``change`` node) pass on, one JSON line
each. rkllmd runs on the C runtime double, whose answer is the prompt's words in upper case.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rkllmd.bench.broker import free_port
from tests.e2e.conftest import Start
from tests.e2e.nodered_install import (
    NODE_RED_VERSION,
    NodeRedProc,
    NodeRedUnavailable,
    ensure_installed,
    find_node,
)
from tests.helpers import Broker, Probe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # the first run installs Node-RED

DOC = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
CAPTURE = "test_capture"  # the test's function node in front of the file node
PING = "test-ping"  # the Correlation Data of the test's own messages to the flow's mqtt in nodes


def doc_flow() -> list[dict[str, Any]]:
    """The JSON flow under "### Node-RED" in docs/PROTOCOL.md."""
    text = DOC.read_text()
    section = text[text.index("### Node-RED") :]
    found = re.search(r"```json\n(.*?)\n```", section, re.S)
    assert found, "docs/PROTOCOL.md's Node-RED section has no ```json flow"
    flow: list[dict[str, Any]] = json.loads(found.group(1))
    return flow


def expected_text(prompt: str) -> str:
    """The double's answer: each whitespace-separated word of the prompt in ASCII upper case."""
    return " ".join(w.upper() for w in prompt.split())


def flow_for_test(
    broker: Broker, base: str, out: Path, injects: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The documented flow pointed at the test's broker and base topic, plus the capture nodes."""
    flow = doc_flow()
    nodes = {n["id"]: n for n in flow}
    nodes["rkllmd_broker"].update(broker=broker.host, port=str(broker.port))
    for n in flow:  # the docs use the default base topic `rkllmd`
        if "topic" in n:
            n["topic"] = n["topic"].replace("rkllmd/", f"{base}/")
        for rule in n.get("rules", []):
            if rule["tot"] == "str":
                rule["to"] = rule["to"].replace("rkllmd/", f"{base}/")
    for src in ("rkllmd_request", "rkllmd_reply", "rkllmd_stream"):
        nodes[src]["wires"][0].append(CAPTURE)
    capture = (
        "const c = msg.correlationData;\n"
        "msg.payload = JSON.stringify({topic: msg.topic ?? null, payload: msg.payload, msgid: msg._msgid,\n"
        "    correlationData: Buffer.isBuffer(c) ? c.toString() : (c ?? null),\n"
        "    responseTopic: msg.responseTopic ?? null});\n"
        "return msg;"
    )
    flow.append(
        {
            "id": CAPTURE,
            "type": "function",
            "z": "rkllmd_tab",
            "func": capture,
            "outputs": 1,
            "wires": [["test_file"]],
        }
    )
    flow.append(
        {
            "id": "test_file",
            "type": "file",
            "z": "rkllmd_tab",
            "filename": str(out),
            "filenameType": "str",
            "appendNewline": True,
            "createDir": True,
            "overwriteFile": "false",
            "encoding": "utf8",
            "wires": [[]],
        }
    )
    flow.extend(injects)
    return flow


def inject_node(node_id: str, payload: str, payload_type: str, reply_topic: str, corr: str) -> dict[str, Any]:
    """An inject node that sets the v5 properties itself, wired to the documented ``mqtt out``."""
    props = [
        {"p": "payload"},
        {"p": "responseTopic", "v": reply_topic, "vt": "str"},
        {"p": "correlationData", "v": corr, "vt": "str"},
    ]
    return {
        "id": node_id,
        "type": "inject",
        "z": "rkllmd_tab",
        "props": props,
        "repeat": "",
        "once": False,
        "topic": "",
        "payload": payload,
        "payloadType": payload_type,
        "wires": [["rkllmd_generate"]],
    }


def records(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def wait_records(out: Path, pred: Any, nr: NodeRedProc, timeout: float = 20.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in records(out) if pred(r)]
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(
        f"Node-RED received nothing matching in {timeout} s: {records(out)}\n{nr.log_text()[-3000:]}"
    )


def wait_subscribed(
    nr: NodeRedProc, out: Path, probe: Probe, topics: list[str], timeout: float = 30.0
) -> None:
    """Until the flow's ``mqtt in`` nodes pass on a ping sent to each topic: they subscribe after
    the flows start, and a reply published before that would be lost."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = {r["topic"] for r in records(out) if r["correlationData"] == PING}
        if got >= set(topics):
            return
        for topic in set(topics) - got:
            probe.publish(topic, "ping", correlation_data=PING.encode(), qos=0)
        time.sleep(0.3)
    raise AssertionError(
        f"Node-RED's mqtt in nodes did not subscribe in {timeout} s:\n{nr.log_text()[-3000:]}"
    )


@pytest.fixture(scope="module")
def node_red() -> tuple[str, Path]:
    try:
        node, npm = find_node()
        return node, ensure_installed(npm)
    except NodeRedUnavailable as e:
        pytest.skip(str(e))


INJECTS = {  # id: (payload, payload type, correlation data)
    "t_plain": ("hello world", "str", "plain-1"),
    "t_bad_type": ('{"prompt": "hello world", "max_tokens": "64"}', "json", "bad-1"),
    "t_null_absent": (
        '{"prompt": "tell me the capital", "max_tokens": null, "stream": null}',
        "json",
        "null-1",
    ),
    "t_null_prompt": ('{"prompt": null}', "json", "null-2"),
}


@pytest.fixture
def flow_run(
    node_red: tuple[str, Path], start_daemon: Start, broker: Broker, mqtt_probe: Probe, tmp_path: Path
) -> Iterator[tuple[NodeRedProc, Path, str]]:
    _d, base = start_daemon()
    out = tmp_path / "received.jsonl"
    reply_topic = f"nodered/{base}/reply"
    injects = [inject_node(i, p, t, reply_topic, c) for i, (p, t, c) in INJECTS.items()]
    node, red = node_red
    nr = NodeRedProc(node, red, tmp_path / "node-red", free_port(), flow_for_test(broker, base, out, injects))
    try:
        nr.wait_ready()
        wait_subscribed(nr, out, mqtt_probe, [reply_topic, f"{base}/stream/ping/text"])
        yield nr, out, base
    finally:
        nr.stop()


def test_documented_flow_gets_its_reply_by_correlation_and_the_tokens(
    flow_run: tuple[NodeRedProc, Path, str],
) -> None:
    """Pressing *Ask* in the documented flow: the change node's JSON request is answered ok on the
    reply topic, parsed, with the request's ``_msgid`` back as Correlation Data; the stream's text
    topic carried the same text, token by token, then a newline."""
    nr, out, base = flow_run
    assert nr.get_json("/settings")["version"] == NODE_RED_VERSION
    nr.inject("rkllmd_ask")
    sent = wait_records(out, lambda r: r["topic"] is None and r["correlationData"] is not None, nr)[0]
    assert sent["payload"] == {"prompt": "What is the capital of France?", "max_tokens": 64}
    assert sent["correlationData"] == sent["msgid"] and sent["responseTopic"] == f"nodered/{base}/reply"
    reply = wait_records(
        out, lambda r: r["topic"] == f"nodered/{base}/reply" and r["correlationData"] != PING, nr
    )[0]
    assert reply["correlationData"] == sent["msgid"]
    body = reply["payload"]
    assert isinstance(body, dict), f"auto-detect did not parse the reply: {body!r}"
    assert body["status"] == "ok", body
    assert body["data"]["text"] == expected_text("What is the capital of France?")
    stream_topic = f"{base}/stream/{body['id']}/text"
    end = wait_records(out, lambda r: r["topic"] == stream_topic and r["payload"] == "\n", nr)
    assert end
    pieces = [r["payload"] for r in records(out) if r["topic"] == stream_topic]
    assert "".join(pieces) == body["data"]["text"] + "\n"


def test_plain_text_bad_requests_and_null_fields_from_node_red(
    flow_run: tuple[NodeRedProc, Path, str],
) -> None:
    """Each request gets one reply at its Response Topic with its own Correlation Data: a plain
    string prompt is answered; ``max_tokens`` as a string (``wrong_type``) and ``prompt: null`` get the error
    envelope; a null optional field takes its default."""
    nr, out, base = flow_run
    for node_id in INJECTS:
        nr.inject(node_id)
    reply_topic = f"nodered/{base}/reply"
    want = {corr for _p, _t, corr in INJECTS.values()}
    wait_records(out, lambda r: r["topic"] == reply_topic and r["correlationData"] == "null-2", nr)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        replies = {
            r["correlationData"]: r["payload"]
            for r in records(out)
            if r["topic"] == reply_topic and r["correlationData"] != PING
        }
        if set(replies) >= want:
            break
        time.sleep(0.1)
    assert set(replies) == want, replies
    assert replies["plain-1"]["status"] == "ok" and replies["plain-1"]["data"]["text"] == "HELLO WORLD"
    bad = replies["bad-1"]
    assert bad["status"] == "error" and bad["code"] == "wrong_type" and "max_tokens" in bad["error"], bad
    assert bad["data"] == {}
    assert replies["null-1"]["status"] == "ok", replies["null-1"]
    assert replies["null-1"]["data"]["text"] == expected_text("tell me the capital")
    assert replies["null-2"]["status"] == "error" and replies["null-2"]["code"] == "empty_prompt", replies[
        "null-2"
    ]
    replies_seen = [r for r in records(out) if r["topic"] == reply_topic and r["correlationData"] != PING]
    assert len(replies_seen) == len(want), "a request got more than one final reply"
