"""What a worker's death by a signal tells the user."""

from __future__ import annotations

import signal

from rkllmd.runtime.registry import kinds


def crash_hint(kind: str, exitcode: int | None) -> str | None:
    return kinds()[kind].crash_hint(exitcode)


def test_sigill_of_llamacpp_says_rerun_setup() -> None:
    """A SIGILL in the llama.cpp worker names the cause (a build for another CPU) and the fix."""
    hint = crash_hint("llamacpp", -signal.SIGILL)
    assert hint and "illegal instruction" in hint and "does not fit this CPU" in hint
    assert "scripts/setup.sh" in hint


def test_sigill_of_rkllm_points_to_a_board_release() -> None:
    """A SIGILL in librkllmrt.so asks for a runtime release built for this board."""
    hint = crash_hint("rkllm", -signal.SIGILL)
    assert hint and "built for this board" in hint


def test_other_deaths_get_no_cpu_hint() -> None:
    """A segfault or a plain exit is not blamed on the CPU."""
    assert crash_hint("llamacpp", -signal.SIGSEGV) is None
    assert crash_hint("rkllm", 1) is None
    assert crash_hint("rkllm", None) is None
