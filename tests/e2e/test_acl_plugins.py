"""The shipped broker configuration with every shipped plugin: mosquitto runs
config/mosquitto/mosquitto.conf and rkllmd.acl as shipped (only the listener, on a free loopback
port, and the file paths changed), rkllmd runs as the `rkllmd` user with all eight plugins enabled,
and the users are driven with the mosquitto command-line clients (mosquitto_pub, mosquitto_sub,
mosquitto_rr 2.0) as a household would use them: Home Assistant's discovery and answer, replies,
a cancel by the request's owner and by another user, admin commands, reply topics in rkllmd's
own namespace, and the files rkllmd writes."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import rkllm_config
from tests.e2e.hardening_helpers import ClientProbe, shipped_broker, wait_exit
from tests.helpers import REPO, Broker, DaemonProc, free_port, write_config

USERS = {
    "rkllmd": "rk-pw",
    "alice": "alice-pw",
    "bob": "bob-pw",
    "homeassistant": "ha-pw",
    "admin": "admin-pw",
}
SLOW = "[[delay_ms=100]] [[len=60]] tell me a long story"  # about 6 s of tokens: time to cancel it


@dataclass
class Shipped:
    broker: Broker
    daemon: DaemonProc
    workdir: Path
    http_port: int
    ollama_port: int

    def cli(self, tool: str, user: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """One of the mosquitto clients as ``user``; bounded by ``timeout``."""
        path = shutil.which(tool) or f"/usr/bin/{tool}"
        auth = ["-h", "127.0.0.1", "-p", str(self.broker.port), "-u", user, "-P", USERS[user]]
        return subprocess.run([path, *auth, *args], capture_output=True, text=True, timeout=timeout)

    def bg(self, tool: str, user: str, *args: str) -> subprocess.Popen[str]:
        path = shutil.which(tool) or f"/usr/bin/{tool}"
        auth = ["-h", "127.0.0.1", "-p", str(self.broker.port), "-u", user, "-P", USERS[user]]
        return subprocess.Popen(
            [path, *auth, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def probe(self, user: str) -> ClientProbe:
        return ClientProbe(self.broker, username=user, password=USERS[user])


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory, fake_libs: dict[str, Path]) -> Iterator[Shipped]:
    work = tmp_path_factory.mktemp("shipped")
    broker = shipped_broker(work, USERS)
    pw = work / "rkllmd.pw"
    pw.write_text(USERS["rkllmd"])
    pw.chmod(0o600)
    http_port, ollama_port = free_port(), free_port()
    cfg = rkllm_config(
        work,
        broker,
        fake_libs["1.3"],
        "rkllmd",
        mqtt={"username": "rkllmd", "password_file": str(pw), "connect_retries": 1},
    )
    sections: dict[str, Any] = tomllib.loads(cfg.read_text())
    sections["state_dir"] = str(work / "state")
    sections["plugins"] = {
        "enabled": [
            "templates",
            "sessions",
            "republish",
            "transcript",
            "npu",
            "homeassistant",
            "http",
            "ollama",
        ],
        "templates": {"templates": {"kitchen": {"prompt": "What about the {area}?"}}},
        "transcript": {"path": str(work / "transcripts" / "transcript.jsonl")},
        "npu": {"path": str(work / "no-npu-here")},
        "homeassistant": {"birth_delay_s": 0.1},
        "http": {"port": http_port},
        "ollama": {"port": ollama_port},
    }
    write_config(cfg, sections)
    with cfg.open("a") as fh:  # an array of tables, which the test writer does not write
        fh.write('\n[[plugins.republish.routes]]\ntopic = "rkllmd/plugins/republish/answers"\n')
        fh.write('payload = "{id}: {text}"\n')
    old = os.umask(0)  # the loosest umask: rkllmd's private files must not depend on it
    try:
        d = DaemonProc(cfg, work)
    finally:
        os.umask(old)
    try:
        d.wait_ready(60)
        yield Shipped(broker, d, work, http_port, ollama_port)
    finally:
        d.stop()
        broker.stop()


def rr(s: Shipped, user: str, topic: str, reply: str, message: str, wait_s: int = 30) -> dict[str, Any]:
    """mosquitto_rr: the request and its one reply, parsed."""
    out = s.cli(
        "mosquitto_rr", user, "-t", topic, "-e", reply, "-m", message, "-W", str(wait_s), timeout=wait_s + 10
    )
    assert out.returncode == 0 and out.stdout.strip(), (out.returncode, out.stdout, out.stderr)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_discovery_answers_and_every_plugin_under_the_shipped_acl(shipped: Shipped) -> None:
    """Home Assistant's user gets rkllmd's discovery (retained, and again after its birth message)
    and the answer sensor; every plugin runs; the republished answer and the HTTP APIs work."""
    ha = shipped.probe("homeassistant")
    admin = shipped.probe("admin")
    try:
        ha.subscribe("homeassistant/device/+/config", "rkllmd/plugins/homeassistant/answer")
        disc = ha.get("homeassistant/device/rkllmd/config", timeout=10)
        body = disc.json()
        assert disc.retain and body["avty"][0]["topic"] == "rkllmd/state" and "prompt" in body["cmps"]
        ha.publish("homeassistant/status", "online")  # HA's birth: discovery is sent again
        again = ha.get("homeassistant/device/rkllmd/config", timeout=10)
        assert not again.retain and again.json()["cmps"] == body["cmps"]
        admin.subscribe("rkllmd/plugins/+/status", "rkllmd/plugins/republish/answers")
        states = {}
        for _ in range(8):
            m = admin.get("rkllmd/plugins/+/status", timeout=10)
            states[m.topic.split("/")[2]] = m.json()["state"]
        assert states == dict.fromkeys(
            ["templates", "sessions", "republish", "transcript", "npu", "homeassistant", "http", "ollama"],
            "running",
        )
        r = rr(
            shipped,
            "alice",
            "rkllmd/plugins/templates/kitchen",
            "reply/alice/t",
            '{"area": "oven", "id": "tk1"}',
        )
        assert r["status"] == "ok" and r["id"] == "tk1" and r["data"]["text"]
        answer = ha.get("rkllmd/plugins/homeassistant/answer", timeout=10).json()
        assert answer["id"] == "tk1" and answer["text"] == r["data"]["text"]
        assert admin.get("rkllmd/plugins/republish/answers", timeout=10).payload.decode().startswith("tk1: ")
    finally:
        ha.close()
        admin.close()
    for port, path in ((shipped.http_port, "/health"), (shipped.ollama_port, "/api/tags")):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            assert resp.status == 200


def test_only_the_owner_cancels_and_stats_name_no_request(shipped: Shipped) -> None:
    """bob, who reads the stats while alice's request runs, learns no id from them; his cancel of
    her id, plain (mosquitto_pub) or with his own reply topic (mosquitto_rr), is not_found and her
    answer completes. alice cancels her own with mosquitto_rr, and a requester who sent a plain
    request cancels it with `mosquitto_pub -t rkllmd/request/cancel -m <id>`."""
    bob = shipped.probe("bob")
    admin = shipped.probe("admin")
    try:
        bob.subscribe("rkllmd/stats")
        admin.subscribe("rkllmd/response/#")
        story = shipped.bg(
            "mosquitto_rr", "alice", "-t", "rkllmd/request/generate", "-e", "reply/alice/story",
            "-m", json.dumps({"id": "story", "prompt": SLOW}), "-W", "60",
        )  # fmt: skip
        stats = bob.collect_until("rkllmd/stats", lambda m: m.json()["busy"], timeout=15)
        assert all("story" not in m.payload.decode() for m in stats), [m.payload for m in stats]
        assert (
            shipped.cli(
                "mosquitto_pub", "bob", "-q", "1", "-t", "rkllmd/request/cancel", "-m", "story"
            ).returncode
            == 0
        )
        assert admin.get("rkllmd/response/cancel", timeout=10).json()["code"] == "not_found"
        refused = rr(shipped, "bob", "rkllmd/request/cancel", "reply/bob/c", "story")
        assert refused["code"] == "not_found" and "story" in refused["error"]
        out, _ = story.communicate(timeout=60)
        done = json.loads(out.strip().splitlines()[-1])
        assert done["status"] == "ok" and done["data"]["finish_reason"] == "stop", done  # not cancelled
        later = [m.json() for m in bob.drain() if m.topic == "rkllmd/stats"]
        assert all("story" not in json.dumps(s) and "running" not in s for s in later), later

        mine = shipped.bg(
            "mosquitto_rr", "alice", "-t", "rkllmd/request/generate", "-e", "reply/alice/mine",
            "-m", json.dumps({"id": "mine", "prompt": SLOW}), "-W", "60",
        )  # fmt: skip
        bob.collect_until("rkllmd/stats", lambda m: m.json()["busy"], timeout=15)
        ok = rr(shipped, "alice", "rkllmd/request/cancel", "reply/alice/c", "mine")
        assert ok["status"] == "ok" and ok["data"] == {"cancelled": "mine", "was": "running"}
        out, _ = mine.communicate(timeout=30)
        assert json.loads(out.strip().splitlines()[-1])["data"]["finish_reason"] == "cancelled"

        plain = {"id": "plain1", "prompt": SLOW}
        shipped.cli(
            "mosquitto_pub", "alice", "-q", "1", "-t", "rkllmd/request/generate", "-m", json.dumps(plain)
        )
        bob.collect_until("rkllmd/stats", lambda m: m.json()["busy"], timeout=15)
        shipped.cli("mosquitto_pub", "alice", "-q", "1", "-t", "rkllmd/request/cancel", "-m", "plain1")
        got = {
            m.topic: m.json()
            for m in admin.collect_until("rkllmd/response/#", lambda m: "generate" in m.topic)
        }
        assert got["rkllmd/response/cancel"]["data"]["cancelled"] == "plain1"
        assert got["rkllmd/response/generate"]["data"]["finish_reason"] == "cancelled"
    finally:
        bob.close()
        admin.close()


def test_load_unload_and_clear_cache_only_for_admin_and_home_assistant(shipped: Shipped) -> None:
    """Under the shipped ACL a user's unload and clear_cache never reach rkllmd (the model stays
    loaded); Home Assistant's model select and unload button and an admin's commands do."""
    watcher = shipped.probe("alice")
    try:
        watcher.subscribe("rkllmd/stats")
        for command in ("unload", "clear_cache", "load"):
            shipped.cli("mosquitto_pub", "bob", "-q", "1", "-t", f"rkllmd/request/{command}", "-m", "other")
        models = rr(shipped, "bob", "rkllmd/request/models", "reply/bob/m", "")
        assert models["data"]["loaded"] == "fake"
        shipped.cli("mosquitto_pub", "homeassistant", "-q", "1", "-t", "rkllmd/request/unload", "-m", "{}")
        watcher.collect_until("rkllmd/stats", lambda m: m.json()["loaded_model"] is None, timeout=15)
        shipped.cli("mosquitto_pub", "homeassistant", "-q", "1", "-t", "rkllmd/request/load", "-m", "fake")
        watcher.collect_until("rkllmd/stats", lambda m: m.json()["loaded_model"] == "fake", timeout=30)
        r = rr(shipped, "admin", "rkllmd/request/clear_cache", "reply/admin/cc", "")
        assert r["status"] == "ok" and r["data"]["cleared"] is True
    finally:
        watcher.close()


@pytest.mark.parametrize(
    "how",
    [
        "reply_to rkllmd/state",
        "Response Topic rkllmd/state",
        "reply_to rkllmd/stream/x",
        "reply_to homeassistant",
    ],
)
def test_a_reply_never_lands_on_rkllmd_own_topics(shipped: Shipped, how: str) -> None:
    """`{"prompt":"x","reply_to":"rkllmd/state"}` is refused bad_request on rkllmd/response/generate
    and nothing is published on rkllmd/state (Home Assistant keeps every entity available); so is a
    v5 Response Topic there, another request's stream, or Home Assistant's discovery prefix."""
    kind, target = how.rsplit(" ", 1)
    if target == "homeassistant":
        target = "homeassistant/device/rkllmd/config"
    watcher, admin = shipped.probe("homeassistant"), shipped.probe("admin")
    try:
        watcher.subscribe(target if target.startswith("homeassistant/") else "rkllmd/state")
        admin.subscribe(target, "rkllmd/response/generate")
        assert watcher.get(timeout=10).retain  # the retained copy, before the request
        if kind == "reply_to":
            msg = json.dumps({"prompt": "x", "reply_to": target, "id": "refl"})
            shipped.cli("mosquitto_pub", "bob", "-q", "1", "-t", "rkllmd/request/generate", "-m", msg)
        else:
            shipped.bg(
                "mosquitto_rr", "bob", "-t", "rkllmd/request/generate", "-e", target, "-m", "x", "-W", "3"
            )
        refusal = admin.get("rkllmd/response/generate", timeout=15).json()
        assert refusal["status"] == "error" and refusal["code"] == "bad_request", refusal
        assert target in refusal["error"] and "rkllmd publishes on its own" in refusal["error"]
        time.sleep(0.5)  # anything published on the target would have come with or before the refusal
        assert [m.topic for m in watcher.drain()] == [], "a reply reached rkllmd's own topic"
        assert [m.topic for m in admin.drain() if m.topic == target and not m.retain] == []
    finally:
        watcher.close()
        admin.close()


def test_private_files_are_0600_and_a_readable_password_is_refused(shipped: Shipped) -> None:
    """Started under umask 000, rkllmd wrote its journal and the transcript 0600 in 0700 folders;
    a password file every user may read ends startup with one line naming it (check-config too)."""
    rr(shipped, "alice", "rkllmd/request/generate", "reply/alice/f", "hello files")
    transcript = shipped.workdir / "transcripts" / "transcript.jsonl"
    journals = list((shipped.workdir / "state").glob("journal-*.jsonl"))
    assert journals and transcript.exists()
    for f in (*journals, transcript):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        assert stat.S_IMODE(f.parent.stat().st_mode) == 0o700, f.parent
    loose = shipped.workdir / "loose.pw"
    loose.write_text(USERS["rkllmd"])
    loose.chmod(0o644)
    cfg = shipped.workdir / "loose.toml"
    sections = tomllib.loads(shipped.daemon.config.read_text())
    sections["mqtt"] |= {"password_file": str(loose), "client_id": "loose"}
    sections.pop("plugins")
    write_config(cfg, sections)
    check = subprocess.run(
        [sys.executable, "-m", "rkllmd", "check-config", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode != 0 and str(loose) in check.stderr and "0644" in check.stderr
    d = DaemonProc(cfg, shipped.workdir)
    assert wait_exit(d.proc, 60) == 2  # a configuration error, as check-config says
    d.stop()
    log = d.log_text()
    assert str(loose) in log and "chmod o-rwx" in log and "Traceback" not in log
    assert USERS["rkllmd"] not in log and USERS["rkllmd"] not in check.stderr


def test_a_publish_the_broker_refuses_is_logged(tmp_path: Path, fake_libs: dict[str, Path]) -> None:
    """With an ACL that does not let rkllmd publish Home Assistant's discovery (the shipped one
    before it did), the refusal is no longer silent: rkllmd logs a warning with the broker's reason."""
    shipped_acl = (REPO / "config" / "mosquitto" / "rkllmd.acl").read_text()
    line = "topic readwrite homeassistant/#\n"
    assert line in shipped_acl
    broker = shipped_broker(tmp_path, USERS, acl_text=shipped_acl.replace(line, "", 1))
    pw = tmp_path / "rkllmd.pw"
    pw.write_text(USERS["rkllmd"])
    pw.chmod(0o600)
    cfg = rkllm_config(
        tmp_path,
        broker,
        fake_libs["1.3"],
        "rkllmd",
        mqtt={"username": "rkllmd", "password_file": str(pw), "connect_retries": 1},
    )
    write_config(cfg, {**tomllib.loads(cfg.read_text()), "plugins": {"enabled": ["homeassistant"]}})
    d = DaemonProc(cfg, tmp_path)
    try:
        d.wait_log('"rkllmd ready"', timeout=60)
        d.wait_log("the broker refused a message rkllmd published", timeout=10)
        assert "Not authorized" in d.log_text()
    finally:
        d.stop()
        broker.stop()
