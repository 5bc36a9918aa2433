"""rkllmd as a real subprocess (``python -m rkllmd run``) with a generated TOML config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rkllmd.bench.broker import die_with_parent, stop_process


def to_toml(data: dict[str, Any]) -> str:
    """TOML for nested dicts of scalars and lists of scalars (all a Settings dump holds)."""
    lines: list[str] = []

    def key(k: str) -> str:
        return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))

    def table(prefix: str, d: dict[str, Any]) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict) and v is not None}
        if prefix:
            lines.append(f"\n[{prefix}]")
        lines.extend(f"{key(k)} = {value(v)}" for k, v in scalars.items())
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{prefix}.{key(k)}" if prefix else key(k), v)

    table("", data)
    return "\n".join(lines).lstrip("\n") + "\n"


class DaemonProcess:
    """rkllmd started from ``config``; its output goes to ``log_path``, kept for post-mortems."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        # RKLLMD_* variables would override the generated file, which already includes them.
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("RKLLMD_")}
        with open(log_path, "wb") as log:
            # Its own session: the terminal's Ctrl-C stops the benchmark, which then stops rkllmd.
            # Started in the config's folder: ``-m`` puts the working directory first on sys.path,
            # and a benchmark run from a checkout would otherwise test that checkout's rkllmd
            # whatever PYTHONPATH ``env`` names.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rkllmd", "run", "--config", str(config.resolve())],
                cwd=config.resolve().parent,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**base_env, "PYTHONUNBUFFERED": "1", **(env or {})},
                start_new_session=True,
                preexec_fn=die_with_parent(),  # a benchmark that dies takes its daemon along
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_logged(self, event: str, failure: str, timeout: float = 180.0) -> None:
        """Return once the log holds ``event`` (a JSON log event, quoted); raise RuntimeError
        starting with ``failure`` if rkllmd exits or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while f'"{event}"' not in self.log_tail(200_000):
            if not self.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{failure}:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self, timeout: float = 30.0) -> int:
        return stop_process(self.proc, timeout)
