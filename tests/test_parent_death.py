"""Processes the tests and benchmarks start end with the process that started them."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, die_with_parent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")

# Starts a broker and a daemon the way the tests do, and a broker and a daemon the way
# `rkllmd bench` does, prints their pids and sleeps: it is killed before it can stop them.
RUNNER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from rkllmd.bench.broker import LocalBroker
    from rkllmd.bench.daemonproc import DaemonProcess
    from tests.helpers import DaemonProc, start_broker, write_config

    work = Path(sys.argv[1])
    (work / "bench").mkdir()
    b = start_broker(work)
    lb = LocalBroker(work / "bench")
    cfgs = [
        write_config(work / f"d{i}.toml", {
            "preload": False,
            "mqtt": {"host": host, "port": port, "client_id": f"pd{i}{port}", "base_topic": f"pd{i}"},
        })
        for i, (host, port) in enumerate([(b.host, b.port), (lb.host, lb.port)])
    ]
    d = DaemonProc(cfgs[0], work)
    bd = DaemonProcess(cfgs[1], work / "bench" / "rkllmd.log")
    d.wait_log("rkllmd ready", timeout=60)
    print(b.proc.pid, lb.proc.pid, d.proc.pid, bd.pid, flush=True)
    time.sleep(300)
    """
)


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_brokers_and_daemons_die_when_their_starter_is_killed(tmp_path: Path) -> None:
    """kill -9 of a process that started mosquitto and rkllmd with the shared helpers ends them too."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RKLLMD_")}
    runner = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(tmp_path)],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        preexec_fn=die_with_parent(),
    )
    assert runner.stdout is not None
    pids: list[int] = []
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(runner.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=90), "the runner printed no pids in 90 s"
        pids = [int(p) for p in runner.stdout.readline().split()]
        assert len(pids) == 4 and all(alive(p) for p in pids), pids
        runner.kill()
        runner.wait(timeout=10)
        deadline = time.monotonic() + 20  # a daemon stops gracefully on SIGTERM, its broker gone
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in pids if alive(p)], "left running after their starter died"
    finally:
        runner.kill()
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)
