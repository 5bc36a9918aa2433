"""Test helpers: a real mosquitto on a free loopback port, an MQTT probe client, a daemon process.

Every long-lived process started here gets ``die_with_parent()``: it is sent SIGTERM when the test
run ends without stopping it (pytest killed, a crash), instead of staying behind.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from rkllmd.bench.broker import (
    LOOPBACK,
    die_with_parent,
    free_port,
    mosquitto_binary,
    stay_root,
    stop_process,
    wait_port,
)
from rkllmd.bench.daemonproc import to_toml
from rkllmd.mqttconnect import set_nodelay

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Broker:
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    conf: Path

    def stop(self) -> None:
        stop_process(self.proc)


def launch_broker(workdir: Path, port: int, body: str) -> Broker:
    """Start mosquitto with ``body`` as its whole config; on failure the error carries its log."""
    conf = workdir / f"mosquitto-{port}.conf"
    conf.write_text(stay_root(body))  # root stays root, or the parent-death signal is lost
    log_path = workdir / f"mosquitto-{port}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(
        [mosquitto_binary(), "-c", str(conf)],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent(),
    )
    try:
        wait_port(LOOPBACK, port)
    except TimeoutError:
        proc.kill()
        raise RuntimeError(f"mosquitto did not start:\n{log_path.read_text()}") from None
    return Broker(LOOPBACK, port, proc, conf)


def start_broker(workdir: Path, port: int | None = None, extra_conf: str = "") -> Broker:
    """Start mosquitto on 127.0.0.1 only, anonymous, no persistence."""
    port = port or free_port()
    return launch_broker(
        workdir,
        port,
        f"listener {port} {LOOPBACK}\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
        f"log_dest stderr\nlog_type error\nlog_type warning\n{extra_conf}",
    )


@dataclass
class Msg:
    topic: str
    payload: bytes
    retain: bool
    correlation_data: bytes | None

    def json(self) -> Any:
        return json.loads(self.payload)


class Probe:
    """An MQTT v5 client that records what arrives on its subscriptions, for assertions."""

    def __init__(self, broker: Broker, protocol: int = mqtt.MQTTv5) -> None:
        self.q: queue.Queue[Msg] = queue.Queue()
        self._held: list[Msg] = []
        self.v5 = protocol == mqtt.MQTTv5
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id="probe-" + uuid.uuid4().hex[:8],
            protocol=protocol,
        )
        self._subacks: queue.Queue[int] = queue.Queue()
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: set_nodelay(c)
        self.client.on_subscribe = lambda c, u, mid, rc, p: self._subacks.put(mid)
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()

    def _on_message(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        props = getattr(m, "properties", None)
        corr = getattr(props, "CorrelationData", None) if props is not None else None
        self.q.put(Msg(m.topic, bytes(m.payload), bool(m.retain), corr))

    def subscribe(self, *topics: str) -> None:
        """Subscribe to each topic and wait for its SUBACK: from then on the broker sends it what
        is published there. A missing SUBACK is an error, not a subscription assumed."""
        for t in topics:
            _, mid = self.client.subscribe(t, qos=1)
            deadline = time.monotonic() + 30
            while True:
                try:
                    if self._subacks.get(timeout=0.1) == mid:
                        break
                except queue.Empty:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"no SUBACK for {t} within 30 s") from None

    def publish(
        self,
        topic: str,
        payload: bytes | str | dict[str, Any],
        *,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        qos: int = 1,
    ) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        props = None
        if response_topic is not None or correlation_data is not None:
            props = Properties(PacketTypes.PUBLISH)
            if response_topic is not None:
                props.ResponseTopic = response_topic
            if correlation_data is not None:
                props.CorrelationData = correlation_data
        self.client.publish(topic, payload, qos=qos, properties=props).wait_for_publish(5)

    def get(self, topic: str | None = None, timeout: float = 10.0) -> Msg:
        """The next message (on ``topic`` if given) or TimeoutError; others are kept for later."""
        for i, m in enumerate(self._held):
            if topic is None or mqtt.topic_matches_sub(topic, m.topic):
                return self._held.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no message on {topic or 'any topic'} within {timeout} s")
            try:
                m = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if topic is None or mqtt.topic_matches_sub(topic, m.topic):
                return m
            self._held.append(m)

    def collect_until(self, topic: str, pred: Any, timeout: float = 20.0) -> list[Msg]:
        """Messages on ``topic`` up to and including the first for which ``pred(msg)`` is true."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            m = self.get(topic, timeout=max(0.01, deadline - time.monotonic()))
            out.append(m)
            if pred(m):
                return out

    def drain(self) -> list[Msg]:
        out, self._held = self._held, []
        while True:
            try:
                out.append(self.q.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class DaemonProc:
    """rkllmd running as a real process with a config file, as systemd would run it."""

    def __init__(self, config: Path, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = workdir / f"rkllmd-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the process
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rkllmd", "run", "--config", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=str(workdir),
            preexec_fn=die_with_parent(),
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_text():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"rkllmd exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"{needle!r} not in rkllmd log after {timeout} s:\n{self.log_text()[-4000:]}")

    def events(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """The JSON log records whose event starts with ``event`` and whose ``fields`` are equal,
        in order (a log in another format has none)."""
        out = []
        for line in self.log_text().splitlines():
            if event not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if (
                isinstance(rec, dict)
                and str(rec.get("event", "")).startswith(event)
                and all(rec.get(k) == v for k, v in fields.items())
            ):
                out.append(rec)
        return out

    def wait_event(self, event: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        """The first log record as ``events`` finds it, once written; TimeoutError with the log's
        tail after ``timeout`` seconds, RuntimeError at once if rkllmd exited."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(event, **fields)
            if found:
                return found[0]
            if self.proc.poll() is not None:
                raise RuntimeError(f"rkllmd exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no {event!r} {fields} in rkllmd log after {timeout} s:\n{self.log_text()[-4000:]}"
                )
            time.sleep(0.05)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the default model is loaded and rkllmd is subscribed, in either order.

        "model loaded" alone is not enough: the startup load can finish before the broker
        acknowledged the subscription, and a request published in between was lost under load.
        """
        self.wait_log('"model loaded"', timeout)
        self.wait_log('"rkllmd ready"', timeout)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        code = stop_process(self.proc, timeout)
        self._log.close()
        return code


def write_config(path: Path, sections: dict[str, Any]) -> Path:
    """Write a TOML config from nested dicts (the same writer the benchmark uses)."""
    path.write_text(to_toml(sections))
    return path


@contextmanager
def probe(broker: Broker) -> Iterator[Probe]:
    p = Probe(broker)
    try:
        yield p
    finally:
        p.close()


def retained(probe: Probe, topic: str, timeout: float = 3.0) -> Any:
    """The retained JSON on ``topic`` as a client subscribing now reads it (a fresh subscription
    gets it at once), or None when there is none."""
    probe.drain()  # live updates left over from an earlier look would read as stale values
    probe.subscribe(topic)
    try:
        msg = probe.get(topic, timeout=timeout)
    except TimeoutError:
        return None
    finally:
        probe.client.unsubscribe(topic)
    return json.loads(msg.payload) if msg.payload else None


def wait_retained(probe: Probe, topic: str, pred: Any, timeout: float = 10.0) -> Any:
    """The retained JSON on ``topic`` once ``pred`` holds for it, or the last one read after
    ``timeout`` seconds (for the caller's assertion to show)."""
    deadline = time.monotonic() + timeout
    while True:
        value = retained(probe, topic, 0.5)
        if pred(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def open_smollm2(name: str = "smollm2", **table: Any) -> Any:
    """The embedded SmolLM2 on llama.cpp, opened, with ``table`` over 2 threads (a
    ``LlamaCppRuntime``: the caller closes it); the test is skipped where llama.cpp or the model
    is missing."""
    import pytest

    pytest.importorskip("llama_cpp")
    from rkllmd.runtime.llamacpp import embedded_model_path
    from rkllmd.runtime.llamacpp import runtime as llamacpp
    from rkllmd.runtime.llamacpp.runtime import LlamaCppRuntime
    from rkllmd.runtime.llamacpp.settings import LlamaCppModelSettings

    if embedded_model_path() is None:
        pytest.skip(f"embedded model missing: {llamacpp.INSTALL_EMBEDDED}")
    cfg = LlamaCppModelSettings.model_validate({"runtime": "llamacpp", "n_threads": 2, **table})
    rt = LlamaCppRuntime(name, cfg)
    rt.open()
    return rt


def post_json(port: int, path: str, body: bytes | dict[str, Any], timeout_s: float) -> tuple[int, Any]:
    """POST ``body`` (bytes as they are, else JSON) to 127.0.0.1:``port``; its status and JSON
    answer, or a failed test when none comes within ``timeout_s`` (a hang, not a slow answer)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("POST", path, raw, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    except TimeoutError:
        pytest.fail(f"POST {path} {raw[:120]!r}: no answer within {timeout_s} s")
    finally:
        conn.close()
