"""systemd integration: rkllmd speaks sd_notify to a real unix datagram socket the test binds
(READY, STATUS, WATCHDOG pings that stop while the inference loop is wedged, STOPPING), and the
unit file asks for it."""

from __future__ import annotations

import os
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rkllmd.sdnotify import Notifier
from tests.e2e.conftest import final_of, rkllm_config
from tests.helpers import REPO, Broker, DaemonProc, Probe


class NotifySocket:
    """The receiving end systemd would hold: an AF_UNIX datagram socket."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)

    def next(self, timeout: float = 30.0) -> dict[str, str]:
        """The next datagram as {KEY: value} (TimeoutError after ``timeout``)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            raise TimeoutError(f"no sd_notify datagram within {timeout} s") from None
        return dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)

    def until(self, key: str, value: str | None = None, limit: int = 500) -> list[dict[str, str]]:
        """Datagrams up to and including the first with ``key`` (and ``value`` if given)."""
        seen = []
        for _ in range(limit):
            msg = self.next()
            seen.append(msg)
            if key in msg and (value is None or msg[key].startswith(value)):
                return seen
        raise AssertionError(f"no {key}={value} in {limit} datagrams: {seen[-5:]}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    s = NotifySocket(str(tmp_path / "notify.sock"))
    yield s
    s.close()


def start(
    tmp_path: Path, broker: Broker, lib: Path, base: str, sock: NotifySocket, **kw: object
) -> DaemonProc:
    cfg = rkllm_config(tmp_path, broker, lib, base, **kw)  # type: ignore[arg-type]
    return DaemonProc(cfg, tmp_path, env={"NOTIFY_SOCKET": sock.path, "WATCHDOG_USEC": "200000"})


def test_ready_status_watchdog_and_stopping(
    broker: Broker, fake_libs: dict[str, Path], tmp_path: Path, notify_socket: NotifySocket
) -> None:
    """READY=1 (with STATUS and MAINPID) comes once rkllmd is subscribed, so a request sent right then
    is answered; WATCHDOG=1 pings follow; SIGTERM sends STOPPING=1 and the exit is clean."""
    d = start(tmp_path, broker, fake_libs["1.3"], "sdn", notify_socket)
    p = Probe(broker)
    try:
        ready = notify_socket.until("READY")[-1]
        assert ready["READY"] == "1" and ready["MAINPID"] == str(d.proc.pid)
        assert "sdn/request/#" in ready["STATUS"]
        p.subscribe("sdn/response/generate")
        p.publish("sdn/request/generate", {"id": "r1", "prompt": "right after ready"})
        assert final_of(p, "sdn/response/generate")["status"] == "ok"
        notify_socket.until("WATCHDOG", "1")
        notify_socket.until("WATCHDOG", "1")
        d.signal(signal.SIGTERM)
        stopping = notify_socket.until("STOPPING")[-1]
        assert stopping["STOPPING"] == "1"
        assert d.proc.wait(timeout=30) == 0
    finally:
        p.close()
        d.stop()


def test_watchdog_pings_stop_while_the_inference_loop_is_wedged(
    broker: Broker, fake_libs: dict[str, Path], tmp_path: Path, notify_socket: NotifySocket
) -> None:
    """A runtime call that ignores abort far past every limit (the double sleeping 8 s before its first
    token, in-thread) wedges the loop: rkllmd says so in STATUS and sends no WATCHDOG=1 until the call
    returns, then pings again; the request gets its timeout reply."""
    d = _start_wedgeable(tmp_path, broker, fake_libs["1.3"], notify_socket)
    p = Probe(broker)
    try:
        notify_socket.until("READY")
        notify_socket.until("WATCHDOG", "1")
        p.subscribe("sdw/response/generate")
        p.publish("sdw/request/generate", {"id": "stuck", "prompt": "[[delay_ms=8000]] [[len=1]] x"})
        during = notify_socket.until("STATUS", "not alive")
        assert "stuck" in during[-1]["STATUS"]
        after = notify_socket.until("STATUS", "serving (recovered)")
        assert [m for m in after if m.get("WATCHDOG") == "1"] == [after[-1]]  # only the recovery ping
        r = final_of(p, "sdw/response/generate", timeout=30)
        assert r["id"] == "stuck" and r["code"] == "timeout"
        notify_socket.until("WATCHDOG", "1")
    finally:
        p.close()
        assert d.stop() == 0


def _start_wedgeable(tmp_path: Path, broker: Broker, lib: Path, sock: NotifySocket) -> DaemonProc:
    """rkllmd with the runtime on its inference thread (no worker process to kill the stuck call)."""
    cfg = rkllm_config(
        tmp_path,
        broker,
        lib,
        "sdw",
        limits={
            "first_token_timeout_s": 0.3,
            "total_timeout_s": 0.3,
            "abort_grace_s": 0.2,
            "shutdown_grace_s": 0,
        },
    )
    cfg.write_text('isolation = "thread"\n' + cfg.read_text())
    return DaemonProc(cfg, tmp_path, env={"NOTIFY_SOCKET": sock.path, "WATCHDOG_USEC": "200000"})


def test_notifier_is_a_no_op_without_notify_socket_and_speaks_abstract_sockets() -> None:
    """Without $NOTIFY_SOCKET nothing is sent and no watchdog runs; an '@name' socket is the abstract
    namespace, as systemd passes it; a WATCHDOG_PID naming another process disables the pings."""
    off = Notifier({})
    assert not off.enabled and off.notify("READY=1") is False and off.watchdog_interval_s is None
    name = f"rkllmd-test-{uuid.uuid4().hex[:8]}"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind("\0" + name)
    rx.settimeout(10)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "3000000"})
        assert n.watchdog_interval_s == 1.5
        n.ready("up\nand running")
        got = rx.recv(4096).decode().splitlines()
        assert got[:2] == ["READY=1", "STATUS=up and running"] and got[2] == f"MAINPID={os.getpid()}"
        n.close()
    finally:
        rx.close()
    other = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval_s is None or os.getpid() == 1


def test_unit_is_type_notify_with_watchdog_and_only_npu_devices() -> None:
    """The unit asks for readiness and watchdog from the main process, allows the NPU device nodes
    and keeps PrivateDevices off (which would hide them)."""
    lines = {ln.strip() for ln in (REPO / "systemd" / "rkllmd.service").read_text().splitlines()}
    for want in (
        "Type=notify",
        "NotifyAccess=main",
        "DeviceAllow=char-drm rw",
        "DeviceAllow=/dev/rknpu rw",
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "PrivateTmp=true",
        "Restart=on-failure",
    ):
        assert want in lines, want
    assert any(ln.startswith("WatchdogSec=") for ln in lines)
    assert "PrivateDevices=true" not in lines and "PrivateDevices=yes" not in lines
