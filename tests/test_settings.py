"""Configuration: the example file, unknown keys, environment overrides, check-config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from rkllmd.errors import ConfigError
from rkllmd.runtime.kinds import discover
from rkllmd.settings import Settings, load_settings
from tests.helpers import REPO


def test_example_config_is_valid_and_complete() -> None:
    """config/rkllmd.example.toml validates and sets every top-level section the code knows."""
    s = load_settings(REPO / "config" / "rkllmd.example.toml")
    assert s.default == "qwen"
    assert set(s.models) == {"qwen", "smollm2"}
    text = (REPO / "config" / "rkllmd.example.toml").read_text()
    sections = [("mqtt", s.mqtt), ("limits", s.limits), ("log", s.log), ("stream", s.stream)]
    sections += [(name, getattr(s, name)) for name, kind in discover().items() if kind.table is not None]
    for section, model in sections:
        for key in type(model).model_fields:
            documented = f"{key} =" in text or f"[{section}.{key}]" in text
            assert documented, f"{section}.{key} undocumented"


def test_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    """A typo in a key is reported with its dotted path instead of being ignored."""
    p = tmp_path / "c.toml"
    p.write_text("[mqtt]\nhots = 'x'\n[limits]\nqueue_size = 0\n")
    with pytest.raises(ConfigError) as ei:
        load_settings(p)
    assert "mqtt.hots: unknown key" in ei.value.message
    assert "limits.queue_size" in ei.value.message


def test_background_overtakes_is_bounded_and_zero_means_arrival_order(tmp_path: Path) -> None:
    """limits.background_overtakes: 0 is allowed (strict arrival order), a negative count is named."""
    p = tmp_path / "c.toml"
    p.write_text("[limits]\nbackground_overtakes = 0\n")
    assert load_settings(p).limits.background_overtakes == 0
    assert load_settings(None, env={}).limits.background_overtakes == 4
    p.write_text("[limits]\nbackground_overtakes = -1\n")
    with pytest.raises(ConfigError) as ei:
        load_settings(p)
    assert "limits.background_overtakes" in ei.value.message


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RKLLMD_SECTION__KEY beats the TOML file."""
    p = tmp_path / "c.toml"
    p.write_text("[mqtt]\nport = 1000\nhost = 'a'\n")
    monkeypatch.setenv("RKLLMD_MQTT__PORT", "2000")
    s = load_settings(p)
    assert s.mqtt.port == 2000 and s.mqtt.host == "a"


def test_a_runtime_s_own_table_is_read_as_users_write_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[rkllm], the table RKLLM's kind declares, is a section as before: read from the file and
    from RKLLMD_RKLLM__*, defaulted when absent, and a typo in it is named."""
    assert load_settings(None, env={}).rkllm.prompt_cache_keep == 4
    p = tmp_path / "c.toml"
    p.write_text("[rkllm]\nlibrary = '/opt/librkllmrt.so'\nprompt_cache_keep = 2\n")
    monkeypatch.setenv("RKLLMD_RKLLM__LOG_LEVEL", "1")
    s = load_settings(p)
    assert (s.rkllm.library, s.rkllm.prompt_cache_keep, s.rkllm.log_level) == (
        Path("/opt/librkllmrt.so"),
        2,
        1,
    )
    p.write_text("[rkllm]\nlibary = '/opt/librkllmrt.so'\nprompt_cache_dir = 'relative'\n")
    with pytest.raises(ConfigError) as ei:
        load_settings(p)
    assert "rkllm.libary: unknown key" in ei.value.message and "rkllm.prompt_cache_dir" in ei.value.message


def test_no_config_serves_embedded_model() -> None:
    """With no file at all the embedded SmolLM2 model through llama.cpp is the default."""
    s = load_settings(None, env={})
    assert s.default == "smollm2" and s.models["smollm2"].runtime == "llamacpp"


def test_password_file_is_read_and_never_shown(tmp_path: Path) -> None:
    """The broker password comes from its file and does not appear in the settings' repr."""
    pw = tmp_path / "pw"
    pw.write_text("s3cret-value\n")
    pw.chmod(0o640)  # as docs/OPERATIONS.md installs it: root and the rkllmd group
    p = tmp_path / "c.toml"
    p.write_text(f"[mqtt]\nusername = 'u'\npassword_file = '{pw}'\n")
    s = load_settings(p)
    assert s.mqtt.resolved_password() == "s3cret-value"
    assert "s3cret" not in repr(s)


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602])
def test_a_password_file_every_user_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    """As ssh refuses a private key others can read: check-config and startup name the file, its
    mode and the fix, and never print the secret."""
    pw = tmp_path / "pw"
    pw.write_text("s3cret-value\n")
    pw.chmod(mode)
    p = tmp_path / "c.toml"
    p.write_text(f"[mqtt]\nusername = 'u'\npassword_file = '{pw}'\n")
    with pytest.raises(ConfigError) as err:
        load_settings(p)
    msg = str(err.value)
    assert str(pw) in msg and f"{mode:04o}" in msg and "chmod o-rwx" in msg
    assert "s3cret" not in msg


def test_check_config_lists_every_problem(tmp_path: Path) -> None:
    """`rkllmd check-config` names each missing model file and exits non-zero."""
    p = tmp_path / "c.toml"
    p.write_text(
        "[models.a]\nruntime = 'rkllm'\npath = '/nonexistent/a.rkllm'\n"
        "[models.b]\nruntime = 'llamacpp'\npath = '/nonexistent/b.gguf'\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "rkllmd", "check-config", "--config", str(p)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "models.a.path: /nonexistent/a.rkllm does not exist" in out.stderr
    assert "models.b.path: /nonexistent/b.gguf does not exist" in out.stderr


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    """An explicitly named config file that does not exist stops startup with a clear message."""
    out = subprocess.run(
        [sys.executable, "-m", "rkllmd", "run", "--config", str(tmp_path / "no.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "does not exist" in out.stderr


def test_check_config_names_the_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """A llama.cpp model without llama-cpp-python installed is reported with the extra to install."""
    import importlib.util

    from rkllmd.runtime.llamacpp.settings import LlamaCppModelSettings
    from rkllmd.runtime.registry import load_problems

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llama_cpp" else real(n, *a))
    problems = load_problems("m", LlamaCppModelSettings(runtime="llamacpp"))
    assert any("pip install 'rkllmd[llamacpp]'" in p for p in problems)


def test_sentence_stream_lengths_are_configurable_and_checked() -> None:
    """[stream] sets the sentence stream's cut and join lengths; a join length above the cut is refused."""
    s = Settings(stream={"sentence_max_chars": 80, "sentence_min_chars": 5})
    assert (s.stream.sentence_max_chars, s.stream.sentence_min_chars) == (80, 5)
    with pytest.raises(ValidationError, match="sentence_min_chars must be below"):
        Settings(stream={"sentence_max_chars": 40, "sentence_min_chars": 40})
