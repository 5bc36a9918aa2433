"""Transcript: every request and its final reply (or error) as one JSON line in a file.

Prompts and answers are kept whole, for later review of answer quality. The file is rotated by
size like logrotate: ``transcript.jsonl`` → ``.1`` → ``.2`` ... up to ``backups`` old files.
A line: ``{"ts", "id", "command", "topic", "model", "request", "original", "status",
"finish_reason", "text", "code", "error", "usage", "timings"}``; ``request`` is the request as
validated (after preprocessors), ``original`` as it arrived. The files are 0600 whatever the
umask (rkllmd/private.py): they hold every prompt and answer.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from rkllmd.plugins import Final, Plugin, PluginConfig, PluginContext, Token, open_private, tighten


class Config(PluginConfig):
    path: Path = Field(Path("/var/lib/rkllmd/transcript.jsonl"), description="the JSON-lines file")
    max_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="rotate when the file would grow past this")
    backups: int = Field(5, ge=0, description="rotated files kept (0: truncate instead)")
    commands: list[str] = Field(default_factory=lambda: ["generate"], description="which requests to record")


class Writer:
    """Appends lines and rotates by size (dispatcher thread; a lock for safety)."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self._lock = threading.Lock()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open_private(path, "a"):
            pass  # fails now (fatal at setup) when the file cannot be written; 0600 (rkllmd/private.py)
        for i in range(1, backups + 1):  # rotated ones an older rkllmd left readable by others
            tighten(path.with_name(f"{path.name}.{i}"))

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode()
        with self._lock:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(line) > self.max_bytes:
                self._rotate()
            with open_private(self.path, "ab") as fh:
                fh.write(line)

    def _rotate(self) -> None:
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
            return
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))


def record_of(event: Final) -> dict[str, Any]:
    req, data = event.request, event.data
    return {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(req.received_at)),
        "id": req.id,
        "command": req.command,
        "topic": req.topic,
        "model": data.get("model") or req.model,
        "request": req.payload,
        "original": req.original,
        "status": event.status,
        "finish_reason": data.get("finish_reason"),
        "text": data.get("text"),
        "code": event.code,
        "error": event.error,
        "usage": data.get("usage"),
        "timings": data.get("timings"),
    }


def setup(ctx: PluginContext, config: Config) -> None:
    writer = Writer(config.path, config.max_bytes, config.backups)
    wanted = set(config.commands)

    def route(event: Token | Final) -> None:
        # Errors answered before the command was known (bad topic) have command "".
        if isinstance(event, Final) and (event.request.command in wanted or not event.request.command):
            writer.write(record_of(event))

    ctx.add_router(route, tokens=False)  # final replies only


PLUGIN = Plugin(
    name="transcript",
    version="1.0.0",
    description="every request and its reply as JSON lines, rotated by size",
    config=Config,
    setup=setup,
)
