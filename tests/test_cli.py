"""The command line: global options without a subcommand run the daemon, as documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rkllmd import cli


def test_config_is_accepted_before_and_after_the_subcommand() -> None:
    """`--config` parses on the top level and on a subcommand; the one after the subcommand wins."""
    parse = cli.build_parser().parse_args
    a = parse(["--config", "a.toml"])
    assert (a.command, a.config) == (None, Path("a.toml"))
    b = parse(["--config", "a.toml", "check-config"])
    assert (b.command, b.config) == ("check-config", Path("a.toml"))
    c = parse(["check-config", "--config", "b.toml"])
    assert (c.command, c.config) == ("check-config", Path("b.toml"))
    d = parse(["-c", "a.toml", "run", "-c", "b.toml"])
    assert (d.command, d.config) == ("run", Path("b.toml"))
    assert parse(["run"]).config is None and parse([]).config is None


def test_global_config_without_subcommand_runs_the_daemon_with_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rkllmd --config FILE` loads FILE and dispatches to run, like `rkllmd run --config FILE`."""
    for var in [k for k in os.environ if k.startswith("RKLLMD_")]:
        monkeypatch.delenv(var)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[mqtt]\nbase_topic = "from-the-file"\nport = 1\n')
    ran: list[object] = []
    monkeypatch.setattr(cli, "_run", lambda settings: ran.append(settings) or 42)
    assert cli.main(["--config", str(cfg)]) == 42
    assert cli.main(["run", "--config", str(cfg)]) == 42
    assert [s.mqtt.base_topic for s in ran] == ["from-the-file", "from-the-file"]  # type: ignore[attr-defined]


def test_global_config_reaches_the_process(tmp_path: Path) -> None:
    """As a process, `rkllmd --config FILE [check-config]` reads FILE instead of refusing the option."""
    missing = tmp_path / "no.toml"
    out = subprocess.run(
        [sys.executable, "-m", "rkllmd", "--config", str(missing)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "does not exist" in out.stderr, out.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[models.a]\nruntime = 'rkllm'\npath = '/nonexistent/a.rkllm'\n")
    out = subprocess.run(
        [sys.executable, "-m", "rkllmd", "--config", str(bad), "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out.stderr
    assert "models.a.path: /nonexistent/a.rkllm does not exist" in out.stderr
