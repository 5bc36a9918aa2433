"""The worker process imports only what its runtime needs: no pydantic, no configuration, no MQTT.

The model's settings cross the pipe as Tables (rkllmd.runtime.base.Table) with the same
attribute names as the pydantic models, which the runtimes read exactly as they read the models.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rkllmd.runtime.base import Table
from rkllmd.runtime.pipe import K_CMD, write_frame
from rkllmd.runtime.registry import kind_of
from rkllmd.runtime.worker import WorkerRuntime, table
from rkllmd.settings import Settings
from tests.helpers import REPO
from tests.rkllm_conftest_fixtures import ask, expected_text, fake_library

# Nothing of these may be in the worker: pydantic (the settings models), the configuration loader,
# MQTT, structlog (the runtime modules log through rkllmd.logface), what pydantic brings along, and
# OpenSSL (hashlib, secrets), subprocess and tempfile (ctypes.util), which a model without a
# prompt cache and with its library's path configured does without.
FORBIDDEN = (
    "_hashlib",
    "ssl",
    "subprocess",
    "tempfile",
    "pydantic",
    "pydantic_core",
    "pydantic_settings",
    "rkllmd.settings",
    "rkllmd.config_base",
    "rkllmd.runtime.registry",
    "rkllmd.runtime.kinds",
    "rkllmd.runtime.worker",
    "rkllmd.runtime.rkllm.kind",
    "rkllmd.runtime.llamacpp.kind",
    "rkllmd.runtime.rkllm.settings",
    "rkllmd.runtime.llamacpp.settings",
    "paho",
    "structlog",
    "asyncio",
    "email",
    "decimal",
    "tokenizers",
)

# The worker's own start, up to building the runtime from the opening command (read from stdin).
CHILD = """
import pickle, sys
from rkllmd.runtime._child import send_logs
send_logs(None, "info")
open_runtime, name, cfg, settings, level = pickle.loads(sys.stdin.buffer.read())
rt = open_runtime(name, cfg, settings)
forbidden = {forbidden!r}
print(repr(sorted(m for m in sys.modules if m in forbidden or m.split(".")[0] in forbidden)))
print(type(rt).__name__, type(rt.cfg).__name__)
"""


def settings(tmp_path: Path, **model: Any) -> Settings:
    models = {
        "r": {"runtime": "rkllm", "path": str(tmp_path / "m.rkllm"), **model},
        "l": {"runtime": "llamacpp"},
    }
    return Settings.model_validate({"models": models, "rkllm": {"prompt_cache_dir": str(tmp_path / "pc")}})


@pytest.mark.parametrize("name", ["r", "l"])
def test_building_the_runtime_in_the_worker_imports_no_pydantic(tmp_path: Path, name: str) -> None:
    s = settings(tmp_path)
    cfg = s.models[name]
    opening = WorkerRuntime(kind_of(cfg), name, cfg, s).opening()
    code = CHILD.format(forbidden=FORBIDDEN)
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=pickle.dumps(opening),
        capture_output=True,
        cwd=REPO,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr.decode()
    loaded, built = out.stdout.decode().splitlines()
    assert loaded == "[]"
    assert built == {"r": "RkllmRuntime Table", "l": "LlamaCppRuntime Table"}[name]


def test_a_table_reads_like_its_model(tmp_path: Path) -> None:
    """Every field of the model, nested tables as Tables, and nothing can be changed."""
    tpl = {"system": "<<SYS>>{system}<</SYS>>", "prefix": "[INST]", "postfix": "[/INST]"}
    s = settings(tmp_path, chat_template=tpl, enabled_cpus=[0, 2], system_prompt="be kind")
    cfg = s.models["r"]
    t = table(cfg)
    for key in type(cfg).model_fields:
        if key != "chat_template":
            assert getattr(t, key) == getattr(cfg, key), key
    assert isinstance(t.chat_template, Table)
    assert (t.chat_template.system, t.chat_template.prefix, t.chat_template.postfix) == tuple(tpl.values())
    assert pickle.loads(pickle.dumps(t)) == t
    with pytest.raises(AttributeError):
        t.path = tmp_path  # type: ignore[misc]
    with pytest.raises(AttributeError):
        _ = t.no_such_key
    assert WorkerRuntime(kind_of(cfg), "r", cfg, s).opening()[3].rkllm.prompt_cache_dir == tmp_path / "pc"


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
def test_the_worker_on_the_double_serves_without_pydantic(tmp_path: Path) -> None:
    """A real worker on the RKLLM double: the settings tables drive it, and pydantic is never loaded."""
    model = tmp_path / "m.rkllm"
    model.write_bytes(b"not really a model")
    tpl = {"system": "<<SYS>>{system}<</SYS>>", "prefix": "[INST]", "postfix": "[/INST]"}
    s = settings(
        tmp_path,
        library=str(fake_library("13")),
        chat_template=tpl,
        system_prompt="be kind",
        enabled_cpus=[0],
    )
    cfg = s.models["r"]
    rt = WorkerRuntime(kind_of(cfg), "r", cfg, s, load_timeout_s=60)
    rt.open()
    try:
        assert rt.alive and rt.context_length == cfg.max_context_len
        pid = rt.describe()["pid"]
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "pydantic" not in maps
        got: list[str] = []
        result = rt.generate(ask("hello there", system="be brief"), lambda text, _tok: got.append(text))
        assert "".join(got) == expected_text("hello there")
        assert result.finish_reason == "stop"
        assert "pydantic" not in Path(f"/proc/{pid}/maps").read_text()
    finally:
        rt.close()


def test_a_worker_whose_parent_is_gone_exits_quietly(tmp_path: Path) -> None:
    """The parent stopped reading before the model was loaded (a daemon that could not reach its
    broker): the worker's first write finds the pipe broken, and it exits 0 without a traceback."""
    model = tmp_path / "m.rkllm"
    model.write_bytes(b"not really a model")
    s = settings(tmp_path, library=str(fake_library("13")), enabled_cpus=[0])
    cfg = s.models["r"]
    opening = WorkerRuntime(kind_of(cfg), "r", cfg, s).opening()
    cmd_r, cmd_w = os.pipe()
    ev_r, ev_w = os.pipe()
    ctl_r, ctl_w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rkllmd.runtime._child", str(cmd_r), str(ev_w), str(ctl_r)],
        pass_fds=(cmd_r, ev_w, ctl_r),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    for fd in (cmd_r, ev_w, ctl_r, ev_r):
        os.close(fd)
    try:
        write_frame(cmd_w, K_CMD, pickle.dumps(opening, protocol=pickle.HIGHEST_PROTOCOL))
        _, err = proc.communicate(timeout=60)
    finally:
        os.close(cmd_w)
        os.close(ctl_w)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err, err.decode()
