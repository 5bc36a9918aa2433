"""NPU load: the kernel's rknpu load in the stats topic (``plugins.npu``), on Rockchip boards.

Reads ``/sys/kernel/debug/rknpu/load`` (root only on most systems, so the unit may need
``ReadOnlyPaths``/capabilities, or a udev/tmpfiles rule making it readable). A missing or
unreadable file simply leaves the figures out: never an error. With ``interval_s`` the stats
topic is also re-published that often while a request runs, so the load is seen live.

The file holds e.g. ``NPU load:  Core0: 37%, Core1:  0%, Core2:  0%,`` (RK3588) or
``NPU load:  25%`` (single core).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

from pydantic import Field

from rkllmd.plugins import Plugin, PluginConfig, PluginContext

_CORE = re.compile(r"Core(\d+):\s*(\d+)%")
_SINGLE = re.compile(r"load:\s*(\d+)%")


class Config(PluginConfig):
    path: Path = Field(Path("/sys/kernel/debug/rknpu/load"), description="the rknpu load file")
    interval_s: float = Field(5.0, ge=0, description="re-publish stats this often while busy; 0 = never")


def parse(text: str) -> dict[str, Any] | None:
    """``{"load_percent": mean, "cores": [...]}`` from the file's text, or None if unrecognised."""
    cores = [int(p) for _, p in sorted(_CORE.findall(text), key=lambda c: int(c[0]))]
    if not cores:
        m = _SINGLE.search(text)
        if not m:
            return None
        cores = [int(m.group(1))]
    return {"load_percent": round(sum(cores) / len(cores), 1), "cores": cores}


def read(path: Path) -> dict[str, Any] | None:
    try:
        return parse(path.read_text(errors="replace"))
    except OSError:
        return None


def setup(ctx: PluginContext, config: Config) -> None:
    ctx.add_stats(lambda: read(config.path))
    if config.interval_s > 0:
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(config.interval_s):
                if ctx.stats().get("busy"):
                    ctx.refresh_stats()

        t = threading.Thread(target=tick, name="plugin-npu", daemon=True)
        t.start()
        ctx.on_teardown(stop.set)


PLUGIN = Plugin(
    name="npu",
    version="1.0.0",
    description="NPU load from the rknpu debug file, when readable",
    config=Config,
    setup=setup,
)
