"""Helpers for the hardening tests (faults, fuzzing, security): brokers with special configs,
MQTT clients with sessions, credentials or TLS, certificates made with the openssl CLI."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from rkllmd.mqttconnect import set_nodelay
from tests.helpers import REPO, Broker, Probe, free_port, launch_broker


def run_as_root_line() -> str:
    """mosquitto started as root drops to the `mosquitto` user, which cannot read the test's files."""
    return "user root\n" if os.geteuid() == 0 else ""


def persistence_conf(workdir: Path) -> str:
    """Extra mosquitto.conf lines: keep sessions and queued messages across a broker restart."""
    store = workdir / "mosquitto-store"
    store.mkdir(exist_ok=True)
    return f"persistence true\npersistence_location {store}/\n{run_as_root_line()}"


def start_broker_conf(workdir: Path, body: str, port: int | None = None) -> Broker:
    """Start mosquitto with exactly ``body`` as its config (``{port}`` is replaced by a free port)."""
    port = port or free_port()
    return launch_broker(workdir, port, body.replace("{port}", str(port)) + "\n" + run_as_root_line())


class Refused(Exception):
    """The broker answered CONNECT with a failure reason code."""


class ClientProbe(Probe):
    """A Probe with the options the plain one lacks: a session, credentials, TLS, MQTT 3.1.1."""

    def __init__(
        self,
        broker: Broker,
        *,
        port: int | None = None,
        client_id: str | None = None,
        clean_start: bool = True,
        username: str | None = None,
        password: str | None = None,
        tls: dict[str, Any] | None = None,
        protocol: int = mqtt.MQTTv5,
    ) -> None:
        self.q: queue.Queue[Any] = queue.Queue()
        self._held = []
        self.v5 = protocol == mqtt.MQTTv5
        self.connected = threading.Event()
        self._connack: queue.Queue[Any] = queue.Queue()
        kw: dict[str, Any] = {}
        if not self.v5:
            kw["clean_session"] = clean_start
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or "probe-" + uuid.uuid4().hex[:8],
            protocol=protocol,
            **kw,
        )
        self._subacks: queue.Queue[int] = queue.Queue()
        self.suback_codes: dict[int, list[Any]] = {}
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda c, u, f, rc, p: self.connected.clear()
        self.client.on_subscribe = self._on_subscribe
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set(**tls)
        ckw: dict[str, Any] = {"keepalive": 30}
        if self.v5:
            ckw["clean_start"] = clean_start
            if not clean_start:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = 300
                ckw["properties"] = props
        self.client.connect(broker.host, port or broker.port, **ckw)
        self.client.loop_start()
        try:
            reason = self._connack.get(timeout=10)
        except queue.Empty:
            self.client.loop_stop()
            raise TimeoutError("no CONNACK within 10 s") from None
        if reason.is_failure:
            self.client.loop_stop()
            raise Refused(str(reason))

    def _on_connect(self, c: mqtt.Client, u: Any, flags: Any, reason: Any, props: Any) -> None:
        set_nodelay(c)
        if not reason.is_failure:
            self.connected.set()
        self._connack.put(reason)

    def _on_subscribe(self, c: mqtt.Client, u: Any, mid: int, codes: Any, props: Any) -> None:
        self.suback_codes[mid] = list(codes)
        self._subacks.put(mid)

    def subscribe_checked(self, topic: str) -> bool:
        """Subscribe and wait for the SUBACK; True if the broker granted it."""
        _, mid = self.client.subscribe(topic, qos=1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                got = self._subacks.get(timeout=0.1)
            except queue.Empty:
                continue
            if got == mid:
                return not any(rc.is_failure for rc in self.suback_codes[mid])
        raise TimeoutError(f"no SUBACK for {topic}")

    def publish_rc(self, topic: str, payload: bytes | str, qos: int = 1) -> int:
        """Publish and wait for the PUBACK; returns paho's rc (non-zero when the broker refused it)."""
        info = self.client.publish(topic, payload, qos=qos)
        try:
            info.wait_for_publish(5)
        except RuntimeError:
            return int(info.rc) or 1
        return int(info.rc)


def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        raise RuntimeError("openssl is not installed: run scripts/setup.sh, which installs it")
    return path


def make_certs(out: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate,
    plus a second CA that signed nothing here (to test a wrong trust anchor)."""
    out.mkdir(parents=True, exist_ok=True)
    ossl = openssl()

    def run(*args: str) -> None:
        subprocess.run([ossl, *args], check=True, capture_output=True, timeout=60, cwd=out)

    for ca in ("ca", "other-ca"):
        run(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN=rkllmd test {ca}",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.pem",
        )
    (out / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (out / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, cn in (("server", "127.0.0.1"), ("client", "rkllmd")):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={cn}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            "-out",
            f"{name}.pem",
        )
    return {p.name: p for p in out.iterdir()}  # "ca.pem", "server.key", ...


def mosquitto_passwd(path: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file made by the real mosquitto_passwd."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    path.write_text("")
    for user, password in users.items():
        subprocess.run([tool, "-b", str(path), user, password], check=True, capture_output=True, timeout=30)
    return path


def shipped_broker(workdir: Path, users: dict[str, str], acl_text: str | None = None) -> Broker:
    """mosquitto running config/mosquitto/mosquitto.conf and rkllmd.acl as shipped, with only the
    listener (a free loopback port) and the file paths changed; a password file for ``users``.
    ``acl_text``: another ACL instead of the shipped one."""
    pw = mosquitto_passwd(workdir / "passwd", users)
    acl = workdir / "rkllmd.acl"
    acl.write_text(
        acl_text if acl_text is not None else (REPO / "config" / "mosquitto" / "rkllmd.acl").read_text()
    )
    conf = (REPO / "config" / "mosquitto" / "mosquitto.conf").read_text()
    for old, new in (
        ("\nlistener 1883\n", "\nlistener {port} 127.0.0.1\n"),
        ("/etc/mosquitto/passwd\n", f"{pw}\n"),
        ("/etc/mosquitto/rkllmd.acl\n", f"{acl}\n"),
    ):
        assert old in conf, old
        conf = conf.replace(old, new)
    conf += "persistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n"
    return start_broker_conf(workdir, conf)


def wait_exit(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """The exit code, or kill the process and fail if it is still running after ``timeout``."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
        raise AssertionError(f"process still running after {timeout} s") from None


def shipped_broker_conf(port: int, passwd: Path, acl: Path) -> str:
    """config/mosquitto/mosquitto.conf as shipped, with only the listener (loopback, ``port``) and the
    password and ACL file paths changed."""
    conf = (REPO / "config" / "mosquitto" / "mosquitto.conf").read_text()
    for old, new in (
        ("\nlistener 1883\n", f"\nlistener {port} 127.0.0.1\n"),
        ("/etc/mosquitto/passwd\n", f"{passwd}\n"),
        ("/etc/mosquitto/rkllmd.acl\n", f"{acl}\n"),
    ):
        assert old in conf, old
        conf = conf.replace(old, new)
    return conf
