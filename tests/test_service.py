"""The systemd unit is valid as systemd itself reads it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` finds no problem in systemd/rkllmd.service (paths pointed at this venv)."""
    unit = (REPO / "systemd" / "rkllmd.service").read_text()
    venv_bin = Path(sys.executable).parent
    assert "/opt/rkllmd/.venv/bin/rkllmd" in unit
    unit = unit.replace("/opt/rkllmd/.venv/bin", str(venv_bin))
    (tmp_path / "rkllmd.service").write_text(unit)
    out = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "rkllmd.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [ln for ln in (out.stdout + out.stderr).splitlines() if "rkllmd.service" in ln]
    assert problems == [], problems
    assert "Restart=on-failure" in unit and "StartLimitBurst=" in unit and "NoNewPrivileges=true" in unit
