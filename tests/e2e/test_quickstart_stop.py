"""scripts/quickstart.sh stops rkllmd and its broker however it is stopped, on the C runtime double."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, die_with_parent, free_port, write_config

pytestmark = pytest.mark.slow
VENV = Path(sys.prefix)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, read from /proc."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(d.name)] = int(fields[1])
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        out += kids
        todo += kids
    return out


def alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def mqtt(tool: str, port: int, *args: str) -> str:
    cmd = [tool, "-h", "127.0.0.1", "-p", str(port), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout


def wait_for(port: int, topic: str, needle: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while needle not in mqtt("mosquitto_sub", port, "-t", topic, "-C", "1", "-W", "1"):
        assert time.monotonic() < deadline, f"{needle!r} never on {topic}"
        time.sleep(0.1)


@pytest.mark.skipif(not (VENV / "bin" / "rkllmd").exists(), reason="needs a virtualenv with rkllmd")
@pytest.mark.parametrize("how", ["timeout", "term-twice", "ctrl-c"])
def test_sigterm_stops_daemon_and_broker_before_the_script_ends(
    tmp_path: Path, fake_libs: dict[str, Path], how: str
) -> None:
    """SIGTERM mid-answer, as `timeout` sends it (the script, then its group) or twice to the
    script alone, or Ctrl-C in the terminal (SIGINT to the whole foreground group): when the
    script has ended, the rkllmd and the mosquitto it started are gone, and rkllmd stopped first,
    so a subscriber saw its `stopped` state, not the broker's Will `offline`."""
    port = free_port()
    model = tmp_path / "fake.rkllm"
    model.write_bytes(b"RKLLM fake model for tests\n")
    cfg = write_config(
        tmp_path / "qs.toml",
        {
            "log": {"format": "json"},
            "limits": {"shutdown_grace_s": 3.0},  # the daemon takes a while to stop
            "models": {
                "fake": {
                    "runtime": "rkllm",
                    "path": str(model),
                    "library": str(fake_libs["1.3"]),
                    "runtime_version": "1.3.0",
                }
            },
        },
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RKLLMD_")}
    env |= {
        "RKLLMD_SKIP_SETUP": "1",
        "RKLLMD_VENV": str(VENV),
        "RKLLMD_CONFIG": str(cfg),
        "RKLLMD_MQTT__PORT": str(port),
        "RKLLMD_MQTT__CLIENT_ID": f"qs{port}",
    }
    with open(tmp_path / "quickstart.log", "wb") as log:
        script = subprocess.Popen(
            ["bash", str(REPO / "scripts" / "quickstart.sh")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own group, as under `timeout`
            preexec_fn=die_with_parent(),
        )
    procs: list[int] = []
    try:
        wait_for(port, "rkllmd/info", '"loaded_model": "fake"')
        mqtt(
            "mosquitto_pub",
            port,
            "-t",
            "rkllmd/request/generate",
            "-m",
            '{"id": "long", "prompt": "[[delay_ms=100]] [[len=300]] a b"}',
        )
        time.sleep(1.0)  # the loop is idle: it runs at once, for 30 s
        procs = descendants(script.pid)
        assert len(procs) >= 2, procs  # mosquitto, rkllmd (and its runtime worker)
        watcher = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", "rkllmd/state"],
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=die_with_parent(),
        )
        # Subscribed once the retained online arrives (a fixed wait could end before, and the
        # watcher might then only connect after the broker had gone)
        assert watcher.stdout is not None and "online" in watcher.stdout.readline()
        if how == "ctrl-c":
            os.killpg(script.pid, signal.SIGINT)  # what the terminal sends on Ctrl-C
        else:
            script.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with contextlib.suppress(ProcessLookupError):
                if how == "timeout":
                    os.killpg(script.pid, signal.SIGTERM)
                else:
                    script.send_signal(signal.SIGTERM)
        script.wait(timeout=60)
        time.sleep(0.5)  # time for whoever inherited an exited child to reap it
        left = [p for p in procs if alive(p)]
        assert not left, f"left after the script ended: {left}\n{(tmp_path / 'quickstart.log').read_text()}"
        watcher.terminate()  # it would wait for the broker to come back
        seen, _ = watcher.communicate(timeout=10)
        assert '"stopped"' in seen, f"rkllmd did not stop before its broker: {seen!r}"
    finally:
        # Nothing outlives the test: the script's group holds it and rkllmd, the broker has a
        # session of its own.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(script.pid, signal.SIGKILL)
        for pid in procs:
            with contextlib.suppress(OSError):
                if alive(pid) and b"mosquitto" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        script.wait(timeout=10)
