"""A dependency-free progress bar on stderr: redrawn in place on a terminal, a line per step otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, out: TextIO | None = None, width: int = 28) -> None:
        self.total, self.done, self.width = max(total, 1), 0, width
        self.out = out if out is not None else sys.stderr
        self.tty = self.out.isatty()
        self.t0 = time.monotonic()

    def step(self, label: str, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        frac = self.done / self.total
        elapsed = time.monotonic() - self.t0
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        bar = "#" * int(frac * self.width)
        line = f"[{bar:<{self.width}}] {self.done}/{self.total} {elapsed:4.0f}s eta {eta:4.0f}s  {label}"
        if self.tty:
            self.out.write("\r\x1b[K" + line[:160])
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()
