"""A real Home Assistant for the end-to-end tests: found, installed once, started and stopped.

Home Assistant is installed from PyPI into a venv of its own, outside the repository, in
``${XDG_CACHE_HOME:-~/.cache}/rkllmd/homeassistant-<version>/``, with the Python it needs (not the
test's). The first run takes about 2 minutes; later runs find the ``installed.json`` marker and start at
once. Requirements of the integrations the test loads are installed with it, read from their
manifests, and HA runs with ``--skip-pip``, so it never installs anything at run time.

Which HA: 2026.3 and later need Python >= 3.14.2, 2025.5 - 2026.2 need >= 3.13.2; 2025.4.4 is the
newest that installs on Python 3.13.0, the newest this project's machines have (pyenv), so it is the
one used. Where no Python 3.13 is found, :func:`find_python` says so and the test is skipped with
that reason.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from rkllmd.bench.broker import die_with_parent, stop_process

HA_VERSION = "2025.4.4"
PYTHON_RANGE = ((3, 13, 0), (3, 14, 0))  # HA 2025.4's Requires-Python, below what its wheels cover
INSTALL_TIMEOUT_S = 900.0  # the download and install, first run only
UV = "uv==0.13.9"
START_TIMEOUT_S = 90.0

# The integrations the test's configuration names, beyond those HA always loads (its bootstrap's
# CORE_INTEGRATIONS and DEFAULT_INTEGRATIONS); their dependencies are followed through manifests.
INTEGRATIONS = ["http", "api", "websocket_api", "onboarding", "config", "conversation", "ollama"]
INTEGRATIONS += ["template", "light", "input_boolean", "intent", "assist_pipeline"]

# Run with HA's venv Python: prints the pinned requirements of every integration HA will set up.
_REQUIREMENTS_SCRIPT = """
import json, pathlib, sys
import homeassistant.bootstrap as b
root = pathlib.Path(b.__file__).parent / "components"
todo = [*b.CORE_INTEGRATIONS, *b.DEFAULT_INTEGRATIONS, *sys.argv[1:]]
seen, reqs = set(), set()
while todo:
    d = todo.pop()
    if d in seen:
        continue
    seen.add(d)
    m = json.loads((root / d / "manifest.json").read_text())
    reqs.update(m.get("requirements", []))
    todo.extend(m.get("dependencies", []))
print(json.dumps(sorted(reqs)))
"""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rkllmd" / f"homeassistant-{HA_VERSION}"


def _version_of(python: str) -> tuple[tuple[int, int, int], str] | None:
    """The version of ``python`` and its own path (a shim or a link resolves to the same one), or
    None when it does not run or lacks what a venv of HA needs."""
    probe = "import sys, venv, ssl, sqlite3; print(*sys.version_info[:3], sys.executable)"
    try:
        out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    major, minor, micro, executable = out.stdout.split(maxsplit=3)
    return (int(major), int(minor), int(micro)), executable.strip()


def _candidates() -> list[str]:
    found = [os.environ.get("RKLLMD_HA_PYTHON", "")]
    found += [shutil.which(name) or "" for name in ("python3.13",)]
    for root in (Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")), Path("/root/.pyenv")):
        found += sorted((str(p) for p in root.glob("versions/3.13*/bin/python3")), reverse=True)
    found += ["/usr/bin/python3.13", "/usr/local/bin/python3.13", sys.executable]
    return list(dict.fromkeys(p for p in found if p))


def find_python() -> tuple[str | None, str]:
    """A Python that HA ``HA_VERSION`` installs on, or None and why none was usable."""
    seen = []
    for python in _candidates():
        found = _version_of(python)
        if found is None:
            continue
        version, executable = found
        seen.append(f"{python} ({'.'.join(map(str, version))})")
        if PYTHON_RANGE[0] <= version < PYTHON_RANGE[1]:
            return executable, ""
    low, high = ".".join(map(str, PYTHON_RANGE[0])), ".".join(map(str, PYTHON_RANGE[1]))
    why = f"Home Assistant {HA_VERSION} needs Python >= {low}, < {high} (with venv, ssl, sqlite3)"
    return None, f"{why}; found: {', '.join(seen) or 'none'} (set RKLLMD_HA_PYTHON to one)"


def _run_logged(cmd: list[str], log: Path, timeout: float) -> None:
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"installing Home Assistant failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")


def ensure_installed(python: str) -> Path:
    """The ``hass`` of the cached install, installing it first when the marker is missing.

    A lock file serialises concurrent test runs; a half-finished install (no marker), or one made
    by another Python, is removed and done again.
    """
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    venv, marker = root / "venv", root / "installed.json"
    hass = venv / "bin" / "hass"
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if hass.exists() and marker.exists() and json.loads(marker.read_text()).get("python") == python:
            return hass  # made by this Python (a venv breaks when its Python goes)
        shutil.rmtree(venv, ignore_errors=True)
        log = root / "install.log"
        log.write_text("")
        deadline = time.monotonic() + INSTALL_TIMEOUT_S
        _run_logged([python, "-m", "venv", str(venv)], log, 120)
        vpy = str(venv / "bin" / "python")
        # uv, from PyPI into HA's venv, installs HA's 110 packages in a quarter of pip's time (1.5
        # against 6-8 minutes, measured on two busy cores) and, like HA's own installs, without
        # byte-compiling thousands of integrations: HA compiles the few it imports on first start.
        # It never fetches a Python: the venv's is given.
        _run_logged([vpy, "-m", "pip", "install", "-q", "--disable-pip-version-check", UV], log, 300)
        uv = [
            str(venv / "bin" / "uv"),
            "pip",
            "install",
            "--python",
            vpy,
            "--native-tls",
            "--no-python-downloads",
        ]
        _run_logged([*uv, f"homeassistant=={HA_VERSION}"], log, deadline - time.monotonic())
        reqs = subprocess.run(
            [vpy, "-c", _REQUIREMENTS_SCRIPT, *INTEGRATIONS],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        constraints = venv.glob("lib/python*/site-packages/homeassistant/package_constraints.txt")
        pins = [f"--constraint={c}" for c in constraints]  # as HA installs them itself
        _run_logged([*uv, *pins, *json.loads(reqs.stdout)], log, deadline - time.monotonic())
        marker.write_text(json.dumps({"homeassistant": HA_VERSION, "python": python}) + "\n")
    return hass


class HassProc:
    """``hass`` running on a config dir, its log in the config dir's ``home-assistant.log``."""

    def __init__(self, hass: Path, config_dir: Path, port: int) -> None:
        self.config_dir, self.url = config_dir, f"http://127.0.0.1:{port}"
        self.log_path = config_dir / "hass-output.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [str(hass), "--config", str(config_dir), "--skip-pip", "--log-no-color"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(config_dir),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=die_with_parent(),
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> float:
        """Seconds until the HTTP API answers (onboarding's status needs no login)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hass exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/onboarding", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - start
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"hass did not answer within {timeout} s:\n{self.log_text()[-4000:]}")

    def stop(self, timeout: float = 30.0) -> int:
        """One SIGTERM (HA stops cleanly and exits 0; a second would kill it), then SIGKILL."""
        code = stop_process(self.proc, timeout)
        self._log.close()
        return code
