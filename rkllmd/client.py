"""``rkllmd ask``: publish one request, print tokens as they arrive, end with a summary line.

Threads: paho's network thread only copies messages into a queue; the calling thread prints.
"""

from __future__ import annotations

import json
import queue
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from rkllmd.mqttconnect import set_nodelay
from rkllmd.protocol import Topics


@dataclass
class AskOptions:
    prompt: str
    host: str = "127.0.0.1"
    port: int = 1883
    base_topic: str = "rkllmd"
    model: str | None = None
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    timeout: float = 120.0
    as_json: bool = False
    username: str | None = None
    password: str | None = None


def ask(opts: AskOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run one request against a daemon; returns an exit code (0 ok, 1 error reply, 2 no answer)."""
    topics = Topics(opts.base_topic)
    rid = "ask-" + uuid.uuid4().hex[:10]
    # A reply never goes under the base topic (rkllmd refuses its own namespace); reply/<user>/ is
    # what the shipped ACL lets a user read (config/mosquitto/rkllmd.acl).
    user = opts.username if opts.username and not any(c in opts.username for c in "+#/") else "ask"
    reply_topic = f"reply/{user}/{rid}"
    inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
    connected: queue.Queue[Any] = queue.Queue()

    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=rid, protocol=mqtt.MQTTv5
    )
    if opts.username:
        client.username_pw_set(opts.username, opts.password)

    def on_connect(c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        set_nodelay(c)
        connected.put(rc)

    client.on_connect = on_connect
    client.on_message = lambda c, u, m: inbox.put((m.topic, bytes(m.payload)))
    try:
        client.connect(opts.host, opts.port, keepalive=30)
    except OSError as exc:
        print(f"rkllmd ask: cannot reach the MQTT broker at {opts.host}:{opts.port}: {exc}", file=err)
        return 2
    client.loop_start()
    try:
        try:
            rc = connected.get(timeout=10)
        except queue.Empty:
            print(f"rkllmd ask: the broker at {opts.host}:{opts.port} did not answer", file=err)
            return 2
        if getattr(rc, "is_failure", False):
            print(f"rkllmd ask: the broker refused the connection: {rc}", file=err)
            return 2
        # A single board's state, or every board's in a fleet (docs/FLEET.md): for the timeout's hint.
        states = [(topics.state, 1), (topics.node_topic("+", "state"), 1)]
        client.subscribe([(topics.stream(rid), 1), (reply_topic, 1), *states])
        time.sleep(0.2)  # let the subscriptions settle (the retained state arrives meanwhile)
        req: dict[str, Any] = {"id": rid, "prompt": opts.prompt, "stream": not opts.as_json}
        for key in ("model", "system", "max_tokens", "temperature"):
            val = getattr(opts, key)
            if val is not None:
                req[key] = val
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = reply_topic
        props.CorrelationData = rid.encode()
        client.publish(topics.request("generate"), json.dumps(req), qos=1, properties=props)
        return _collect(inbox, topics, rid, reply_topic, opts, out, err)
    finally:
        client.disconnect()
        client.loop_stop()


def _collect(
    inbox: queue.Queue[tuple[str, bytes]],
    topics: Topics,
    rid: str,
    reply_topic: str,
    opts: AskOptions,
    out: TextIO,
    err: TextIO,
) -> int:
    deadline = time.monotonic() + opts.timeout
    state = None
    boards: dict[str, str] = {}  # a fleet's boards and their states
    heard = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            if boards:
                hint = " (boards: " + ", ".join(f"{n} {s}" for n, s in sorted(boards.items())) + ")"
            else:
                hint = f" (its last state: {state})" if state else " (no rkllmd state seen on the broker)"
            what = "stopped answering" if heard else "did not answer"
            print(f"\nrkllmd ask: rkllmd {what} within {opts.timeout:g} s{hint}", file=err)
            return 2
        try:
            topic, payload = inbox.get(timeout=min(left, 0.5))
        except queue.Empty:
            continue
        if topic == topics.state or (topic.startswith(f"{topics.base}/node/") and topic.endswith("/state")):
            try:
                said = str(json.loads(payload).get("state"))
            except (ValueError, AttributeError):
                said = payload.decode(errors="replace")
            if topic == topics.state:
                state = said
            else:
                boards[topic.split("/")[-2]] = said
            continue
        heard = True
        if topic == topics.stream(rid):
            chunk = json.loads(payload)
            if "delta" in chunk:
                out.write(chunk["delta"])
                out.flush()
            continue
        if topic == reply_topic:
            reply = json.loads(payload)
            if opts.as_json:
                print(json.dumps(reply, ensure_ascii=False, indent=2), file=out)
                return 0 if reply.get("status") == "ok" else 1
            print(file=out)
            return _summary(reply, err)


def _summary(reply: dict[str, Any], err: TextIO) -> int:
    data = reply.get("data") or {}
    if reply.get("status") != "ok":
        print(f"error [{reply.get('code')}]: {reply.get('error')}", file=err)
        return 1
    usage = data.get("usage") or {}
    t = data.get("timings") or {}
    parts = [f"{usage.get('completion_tokens', 0)} tokens", f"finish={data.get('finish_reason')}"]
    if t.get("ttft_ms") is not None:
        parts.append(f"TTFT {t['ttft_ms']:.0f} ms")
    if t.get("decode_tokens_per_s") is not None:
        parts.append(f"{t['decode_tokens_per_s']:.1f} tok/s")
    if t.get("prefill_tokens_per_s") is not None:
        parts.append(f"prefill {t['prefill_tokens_per_s']:.0f} tok/s")
    parts.append(f"model {data.get('model')}")
    print("— " + ", ".join(parts), file=err)
    return 0
