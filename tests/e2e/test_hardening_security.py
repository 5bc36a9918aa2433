"""Security against real mosquitto: TLS (CA, client certificates) and passwords with certificates
made by the openssl CLI and a password file made by mosquitto_passwd; wrong credentials; secrets
kept out of logs; requests that try to name files; the example ACL in config/mosquitto/."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.e2e.conftest import Start, final_of, rkllm_config
from tests.e2e.hardening_helpers import (
    ClientProbe,
    Refused,
    make_certs,
    mosquitto_passwd,
    shipped_broker,
    start_broker_conf,
    wait_exit,
)
from tests.helpers import Broker, DaemonProc, Probe, free_port

SECRET = "s3cr3t-" + uuid.uuid4().hex  # unique, so finding it anywhere in a log is never a fluke
USERS = {"rkllmd": SECRET, "alice": "alice-pw", "bob": "bob-pw"}


@dataclass
class TlsBroker:
    broker: Broker
    tls_port: int  # server certificate; client certificate optional
    mtls_port: int  # client certificate required
    certs: dict[str, Path]
    workdir: Path


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    """mosquitto with two TLS listeners (client certificate optional / required) and passwords."""
    work = tmp_path_factory.mktemp("tls")
    certs = make_certs(work / "certs")
    pw = mosquitto_passwd(work / "passwd", USERS)
    tls_port, mtls_port = free_port(), free_port()
    tls = f"cafile {certs['ca.pem']}\ncertfile {certs['server.pem']}\nkeyfile {certs['server.key']}\n"
    conf = (
        "per_listener_settings false\nallow_anonymous false\n"
        f"password_file {pw}\npersistence false\nset_tcp_nodelay true\n"
        "log_dest stderr\nlog_type error\nlog_type warning\n"
        f"listener {tls_port} 127.0.0.1\n{tls}require_certificate false\n"
        f"listener {mtls_port} 127.0.0.1\n{tls}require_certificate true\n"
    )
    b = start_broker_conf(work, conf, port=tls_port)
    yield TlsBroker(b, tls_port, mtls_port, certs, work)
    b.stop()


def tls_probe(tb: TlsBroker, user: str = "alice", client_cert: bool = False) -> ClientProbe:
    tls: dict[str, Any] = {"ca_certs": str(tb.certs["ca.pem"])}
    if client_cert:
        tls |= {"certfile": str(tb.certs["client.pem"]), "keyfile": str(tb.certs["client.key"])}
    port = tb.mtls_port if client_cert else tb.tls_port
    return ClientProbe(tb.broker, port=port, username=user, password=USERS[user], tls=tls)


def daemon_config(tb: TlsBroker, fake_lib: Path, base: str, **mqtt_kw: Any) -> Path:
    mqtt_cfg: dict[str, Any] = {
        "port": tb.tls_port,
        "username": "rkllmd",
        "password_file": str(tb.workdir / "rkllmd-password"),
        "connect_retries": 1,
        "tls": {"enabled": True, "ca_file": str(tb.certs["ca.pem"])},
    }
    (tb.workdir / "rkllmd-password").write_text(SECRET + "\n")
    (tb.workdir / "rkllmd-password").chmod(0o600)  # rkllmd refuses a password every user may read
    for k, v in mqtt_kw.items():
        if k == "tls":
            mqtt_cfg["tls"] = {**mqtt_cfg["tls"], **v}
        elif v is None:
            mqtt_cfg.pop(k)
        else:
            mqtt_cfg[k] = v
    return rkllm_config(tb.workdir, tb.broker, fake_lib, base, mqtt=mqtt_cfg)


def ask(p: Probe, base: str, reply: str, prompt: str = "hello there") -> dict[str, Any]:
    p.subscribe(reply)
    p.publish(f"{base}/request/generate", {"prompt": prompt}, response_topic=reply)
    return json.loads(p.get(reply, timeout=20).payload)


def test_tls_and_password_serve_requests_and_secrets_stay_out_of_logs(
    tls_broker: TlsBroker, fake_libs: dict[str, Path]
) -> None:
    """rkllmd connects over TLS with a password from a file and answers a TLS client; its whole debug
    log and check-config's output never contain the password."""
    cfg = daemon_config(tls_broker, fake_libs["1.3"], "tlsok")
    d = DaemonProc(cfg, tls_broker.workdir)
    p = tls_probe(tls_broker)
    try:
        d.wait_ready()
        r = ask(p, "tlsok", "reply/alice/1")
        assert r["status"] == "ok" and r["data"]["text"]
    finally:
        p.close()
        assert d.stop() == 0
    log = d.log_text()
    assert '"level": "debug"' in log  # the log really is at debug level
    assert SECRET not in log
    out = subprocess.run(
        [sys.executable, "-m", "rkllmd", "check-config", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert SECRET not in out.stdout + out.stderr


def test_client_certificate_when_the_broker_requires_one(
    tls_broker: TlsBroker, fake_libs: dict[str, Path]
) -> None:
    """With mqtt.tls.cert_file/key_file rkllmd passes a listener that requires client certificates;
    without them startup ends with one clear line and a non-zero exit."""
    certs = tls_broker.certs
    good = daemon_config(
        tls_broker,
        fake_libs["1.3"],
        "mtlsok",
        port=tls_broker.mtls_port,
        tls={"cert_file": str(certs["client.pem"]), "key_file": str(certs["client.key"])},
    )
    d = DaemonProc(good, tls_broker.workdir)
    p = tls_probe(tls_broker, client_cert=True)
    try:
        d.wait_ready()
        assert ask(p, "mtlsok", "reply/alice/2")["status"] == "ok"
    finally:
        p.close()
        assert d.stop() == 0
    bad = daemon_config(tls_broker, fake_libs["1.3"], "mtlsno", port=tls_broker.mtls_port)
    d = DaemonProc(bad, tls_broker.workdir)
    assert wait_exit(d.proc) == 1
    d.stop()
    assert_one_line_failure(d.log_text(), "cannot reach the MQTT broker")


def assert_one_line_failure(log: str, needle: str) -> None:
    """The process ended with one ``rkllmd: ...`` line naming the problem, and no traceback."""
    last = log.strip().splitlines()[-1]
    assert last.startswith("rkllmd: ") and needle in last, log[-2000:]
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_wrong_password_ends_startup_with_one_clear_line(
    tls_broker: TlsBroker, fake_libs: dict[str, Path], protocol: str
) -> None:
    """A refused CONNECT (bad user name or password) ends startup at once: exit 1, one line saying the
    broker refused rkllmd, no retry loop, no traceback, and the wrong password is not printed."""
    wrong = "wrong-" + SECRET
    cfg = daemon_config(
        tls_broker, fake_libs["1.3"], "badpw", protocol=protocol, connect_retries=10, password_file=None
    )
    d = DaemonProc(cfg, tls_broker.workdir, env={"RKLLMD_MQTT__PASSWORD": wrong})
    assert wait_exit(d.proc) == 1
    d.stop()
    log = d.log_text()
    assert_one_line_failure(log, "refused rkllmd")
    assert "retrying" not in log and wrong not in log


def test_untrusted_broker_certificate_ends_startup(tls_broker: TlsBroker, fake_libs: dict[str, Path]) -> None:
    """A broker certificate not signed by mqtt.tls.ca_file is refused with a clear line, exit 1."""
    other_ca = str(tls_broker.certs["other-ca.pem"])
    cfg = daemon_config(tls_broker, fake_libs["1.3"], "badca", tls={"ca_file": other_ca})
    d = DaemonProc(cfg, tls_broker.workdir)
    assert wait_exit(d.proc) == 1
    d.stop()
    assert_one_line_failure(d.log_text(), "certificate did not verify")


def test_requests_cannot_name_files_libraries_or_plugins(
    start_daemon: Start, mqtt_probe: Probe, tmp_path: Path
) -> None:
    """A model given as a path (even the configured model's own file) is unknown_model, on generate
    and load; fields naming a library, path, runtime or plugin are refused; nothing new is loaded."""
    _d, base = start_daemon()
    model_file = str(tmp_path / "fake-model.rkllm")  # exists: the file the "fake" model is made from
    mqtt_probe.subscribe(f"{base}/response/#")
    for model in (model_file, "../fake", "./fake", "fake/../fake", "~/fake", "file:///etc/passwd"):
        mqtt_probe.publish(f"{base}/request/generate", {"prompt": "hi", "model": model})
        assert final_of(mqtt_probe, f"{base}/response/generate")["code"] == "unknown_model", model
        mqtt_probe.publish(f"{base}/request/load", {"model": model})
        assert final_of(mqtt_probe, f"{base}/response/load")["code"] == "unknown_model", model
    for field in ("library", "path", "runtime", "plugin", "plugins", "tokenizer", "runtime_version"):
        mqtt_probe.publish(f"{base}/request/generate", {"prompt": "hi", field: model_file})
        r = final_of(mqtt_probe, f"{base}/response/generate")
        assert r["code"] == "bad_request" and "unknown field" in r["error"], (field, r)
    mqtt_probe.publish(f"{base}/request/models", "")
    r = final_of(mqtt_probe, f"{base}/response/models")
    assert r["data"]["loaded"] == "fake" and {m["name"] for m in r["data"]["models"]} == {"fake", "other"}


# --- the example ACL ------------------------------------------------------------------------------


@dataclass
class AclBroker:
    broker: Broker
    workdir: Path


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclBroker]:
    """mosquitto running config/mosquitto/mosquitto.conf and rkllmd.acl as shipped, with only the
    port (loopback) and the file paths changed."""
    work = tmp_path_factory.mktemp("acl")
    b = shipped_broker(work, USERS)
    yield AclBroker(b, work)
    b.stop()


def acl_daemon(ab: AclBroker, fake_lib: Path, user: str = "rkllmd") -> DaemonProc:
    (ab.workdir / f"{user}.pw").write_text(USERS[user])
    (ab.workdir / f"{user}.pw").chmod(0o600)
    cfg = rkllm_config(
        ab.workdir,
        ab.broker,
        fake_lib,
        "rkllmd",
        mqtt={"username": user, "password_file": str(ab.workdir / f"{user}.pw"), "connect_retries": 1},
    )
    return DaemonProc(cfg, ab.workdir)


def user_probe(ab: AclBroker, user: str) -> ClientProbe:
    return ClientProbe(ab.broker, username=user, password=USERS[user])


@pytest.fixture(scope="module")
def acl_rkllmd(acl_broker: AclBroker, fake_libs: dict[str, Path]) -> Iterator[DaemonProc]:
    """rkllmd as the `rkllmd` user, base topic `rkllmd`, behind the example ACL."""
    d = acl_daemon(acl_broker, fake_libs["1.3"])
    d.wait_ready()
    yield d
    assert d.stop() == 0


def test_acl_users_read_only_their_own_replies(acl_broker: AclBroker, acl_rkllmd: DaemonProc) -> None:
    """Under the example ACL alice and bob each get their own replies (Response Topic or reply_to),
    and bob, subscribed to alice's replies, all replies, the prompts and the streams, sees none of
    them (his own later reply proves everything before it was delivered or withheld)."""
    alice, bob = user_probe(acl_broker, "alice"), user_probe(acl_broker, "bob")
    try:
        for t in ("reply/alice/#", "reply/#", "rkllmd/request/#", "rkllmd/stream/#", "rkllmd/response/#"):
            bob.subscribe_checked(t)  # mosquitto 2.0 grants these and filters on delivery
        r = ask(alice, "rkllmd", "reply/alice/q1", "alice secret question")
        assert r["status"] == "ok"
        alice.subscribe("reply/alice/tx")
        alice.publish("rkllmd/request/generate", {"prompt": "via reply_to", "reply_to": "reply/alice/tx"})
        assert alice.get("reply/alice/tx", timeout=20).json()["status"] == "ok"
        mine = ask(bob, "rkllmd", "reply/bob/q1", "bob question")
        assert mine["status"] == "ok"
        seen = [m.topic for m in bob.drain()]
        assert all(t.startswith("reply/bob/") for t in seen), seen
    finally:
        alice.close()
        bob.close()


def test_acl_users_may_send_embed_and_rerank(acl_broker: AclBroker, acl_rkllmd: DaemonProc) -> None:
    """embed and rerank are open to every user, like generate: the request reaches rkllmd, which
    answers it (here refused wrong_model_kind: the ACL daemon serves chat models only)."""
    alice = user_probe(acl_broker, "alice")
    try:
        alice.subscribe("reply/alice/v")
        alice.publish("rkllmd/request/embed", {"input": "x", "reply_to": "reply/alice/v"})
        assert alice.get("reply/alice/v", timeout=20).json()["code"] == "wrong_model_kind"
        alice.publish(
            "rkllmd/request/rerank", {"query": "q", "documents": ["d"], "reply_to": "reply/alice/v"}
        )
        assert alice.get("reply/alice/v", timeout=20).json()["code"] == "wrong_model_kind"
    finally:
        alice.close()


def test_acl_users_cannot_speak_for_rkllmd_and_anonymous_is_refused(
    acl_broker: AclBroker, acl_rkllmd: DaemonProc
) -> None:
    """Users cannot overwrite rkllmd's retained state and info nor publish default replies; they can
    read state, info and stats; a client without credentials or with a wrong password is refused."""
    bob = user_probe(acl_broker, "bob")
    try:
        bob.client.publish("rkllmd/state", b'{"state":"offline"}', qos=1, retain=True).wait_for_publish(5)
        bob.client.publish("rkllmd/info", b"{}", qos=1, retain=True).wait_for_publish(5)
        bob.client.publish("rkllmd/response/generate", b'{"status":"ok"}', qos=1).wait_for_publish(5)
    finally:
        bob.close()
    alice = user_probe(acl_broker, "alice")  # a fresh reader gets the retained copies
    try:
        alice.subscribe("rkllmd/state", "rkllmd/info", "rkllmd/stats")
        got = {}
        for _ in range(3):
            m = alice.get("rkllmd/#", timeout=10)
            got[m.topic] = m.json()
        assert got["rkllmd/state"] == {"state": "online"}
        assert got["rkllmd/info"]["base_topic"] == "rkllmd" and "version" in got["rkllmd/info"]
        assert "queue_depth" in got["rkllmd/stats"]
    finally:
        alice.close()
    with pytest.raises(Refused):
        ClientProbe(acl_broker.broker)
    with pytest.raises(Refused):
        ClientProbe(acl_broker.broker, username="alice", password="not-her-password", protocol=mqtt.MQTTv311)


FLEET_RECORDS = [
    "rkllmd/fleet/cancel",  # a cancel passed on between boards, which carries the owner's folder
    "rkllmd/fleet/cancel/report",
    "rkllmd/fleet/state",
    "rkllmd/fleet/stats",
    "rkllmd/node/b1/open",  # what the takeover answers for a dead board
    "rkllmd/node/b1/handed",  # what a returning board does not answer again
    "rkllmd/node/b1/serves",
    "rkllmd/node/b1/state",
    "rkllmd/node/b1/plugins/homeassistant/cancel",  # stops whatever runs, whoever sent it
]


@pytest.mark.parametrize("topic", FLEET_RECORDS)
def test_acl_users_cannot_publish_fleet_and_takeover_records(acl_broker: AclBroker, topic: str) -> None:
    """The records boards trust from each other (passed-on cancels, open requests, takeovers) and
    the cancel button's topic reach no one when an ordinary user publishes them, retained or not:
    a later message of his on a topic he may write arrives alone, and nothing is retained."""
    fake = json.dumps({"key": "k", "origin": "b9", "id": "story", "owner": None, "ids": ["story"]})
    watcher = ClientProbe(acl_broker.broker, username="rkllmd", password=SECRET)
    bob = user_probe(acl_broker, "bob")
    try:
        watcher.subscribe_checked("rkllmd/#")
        bob.client.publish(topic, fake, qos=1, retain=True).wait_for_publish(5)
        bob.client.publish(topic, fake, qos=1).wait_for_publish(5)
        bob.client.publish("rkllmd/node/b1/request/models", b"", qos=1).wait_for_publish(5)
        first = watcher.get("rkllmd/node/b1/#", timeout=10)
        assert first.topic == "rkllmd/node/b1/request/models", first.topic
        assert [m.topic for m in watcher.drain() if m.topic == topic] == []
    finally:
        bob.close()
        watcher.close()
    fresh = ClientProbe(acl_broker.broker, username="rkllmd", password=SECRET)
    try:
        fresh.subscribe_checked(topic)
        with pytest.raises(TimeoutError):
            fresh.get(topic, timeout=0.5)
    finally:
        fresh.close()
