"""A real Node-RED for the end-to-end tests: found, installed once, started and stopped.

Node-RED is installed from the npm registry with the machine's own ``npm``, outside the
repository, in ``${XDG_CACHE_HOME:-~/.cache}/rkllmd/node-red-<version>/``. The first run takes
about 10 seconds (279 packages); later runs find the directory and start at once. The install goes
into a temporary directory renamed into place when complete, so an interrupted one leaves nothing
that looks installed.

Which Node-RED: 4.1.15, the newest 4.x; its ``engines`` ask for Node >= 18.5, and the project's
machines have Node 20. Where ``node`` or ``npm`` is missing, too old, or the install fails (no
registry), :func:`find_node` or :func:`ensure_installed` says why and the test is skipped with it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from rkllmd.bench.broker import die_with_parent, stop_process

NODE_RED_VERSION = "4.1.15"
NODE_MIN = (18, 5)  # node-red 4.1.15's engines: node >= 18.5
INSTALL_TIMEOUT_S = 300.0  # the download and install, first run only
START_TIMEOUT_S = 60.0


class NodeRedUnavailable(Exception):
    """Node-RED cannot be installed or run here; the message says why (the test skips with it)."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rkllmd" / f"node-red-{NODE_RED_VERSION}"


def find_node() -> tuple[str, str]:
    """``node`` and ``npm`` of a Node.js that Node-RED ``NODE_RED_VERSION`` runs on."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise NodeRedUnavailable(
            f"Node-RED {NODE_RED_VERSION} needs node and npm on PATH (node={node}, npm={npm})"
        )
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=20, check=True)
        version = tuple(int(p) for p in out.stdout.strip().lstrip("v").split(".")[:2])
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        raise NodeRedUnavailable(f"{node} --version failed: {e}") from e
    if version < NODE_MIN:
        raise NodeRedUnavailable(
            f"Node-RED {NODE_RED_VERSION} needs node >= 18.5; {node} is {out.stdout.strip()}"
        )
    return node, npm


def ensure_installed(npm: str) -> Path:
    """Node-RED's ``red.js`` in the cache, installing it first when the directory is missing.

    A lock file serialises concurrent test runs; the install is made in a temporary directory next
    to the cache's and renamed into place only when ``npm install`` succeeded.
    """
    root = cache_dir()
    red = root / "node_modules" / "node-red" / "red.js"
    root.parent.mkdir(parents=True, exist_ok=True)
    with (root.parent / f".node-red-{NODE_RED_VERSION}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if red.exists():
            return red
        tmp = Path(tempfile.mkdtemp(prefix=f".node-red-{NODE_RED_VERSION}-", dir=root.parent))
        try:
            cmd = [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(tmp),
                f"node-red@{NODE_RED_VERSION}",
            ]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
            except subprocess.TimeoutExpired as e:
                raise NodeRedUnavailable(f"{' '.join(cmd)} took over {INSTALL_TIMEOUT_S:.0f} s") from e
            if proc.returncode != 0 or not (tmp / "node_modules" / "node-red" / "red.js").exists():
                tail = (proc.stdout + proc.stderr)[-2000:]
                raise NodeRedUnavailable(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
            shutil.rmtree(root, ignore_errors=True)  # a leftover without red.js
            tmp.rename(root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return red


SETTINGS_JS = """module.exports = {
    uiHost: "127.0.0.1",
    uiPort: %(port)d,
    userDir: %(user_dir)s,
    flowFile: "flows.json",
    credentialSecret: false,
    diagnostics: { enabled: false },
    telemetry: { enabled: false },
    editorTheme: { projects: { enabled: false } },
    logging: { console: { level: "info", metrics: false, audit: false } },
};
"""


class NodeRedProc:
    """Node-RED running headless on ``user_dir`` with ``flows``, editor and admin API on loopback."""

    def __init__(self, node: str, red: Path, user_dir: Path, port: int, flows: list[dict[str, Any]]) -> None:
        user_dir.mkdir(parents=True, exist_ok=True)
        (user_dir / "flows.json").write_text(json.dumps(flows, indent=2))
        settings = user_dir / "settings.js"
        settings.write_text(SETTINGS_JS % {"port": port, "user_dir": json.dumps(str(user_dir))})
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = user_dir / "node-red.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [node, str(red), "--userDir", str(user_dir), "--settings", str(settings)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(user_dir),
            env={**os.environ, "NODE_RED_HOME": str(user_dir)},
            preexec_fn=die_with_parent(),
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _request(self, method: str, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        req = urllib.request.Request(
            f"{self.url}{path}", method=method, data=b"" if method == "POST" else None
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> float:
        """Seconds until the admin API lists the deployed flows and the log says they started."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node-red exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            try:
                status, _ = self._request("GET", "/flows", timeout=2)
                if status == 200 and "Started flows" in self.log_text():
                    return time.monotonic() - start
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"node-red did not answer within {timeout} s:\n{self.log_text()[-4000:]}")

    def get_json(self, path: str) -> Any:
        status, body = self._request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body!r}")
        return json.loads(body)

    def inject(self, node_id: str) -> None:
        """Press an inject node's button, as the editor does (``POST /inject/<id>``)."""
        status, body = self._request("POST", f"/inject/{node_id}")
        if status != 200:
            raise RuntimeError(f"POST /inject/{node_id}: {status} {body!r}")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (Node-RED stops its flows and exits), then SIGKILL after ``timeout``."""
        code = stop_process(self.proc, timeout)
        self._log.close()
        return code
