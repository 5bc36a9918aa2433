"""``clear_cache``: drop the loaded model's prompt cache (its system prompt's part is kept)."""

from __future__ import annotations

from rkllmd.commands._base import CommandSpec, Engine
from rkllmd.commands._model import admit_model
from rkllmd.exchange import Exchange, Final
from rkllmd.protocol import ModelRequest, cleared_data


def run(job: Exchange, loop: Engine) -> Final:
    rt = loop.runtime
    if rt is not None and (job.model is None or job.model == loop.loaded_model):
        rt.clear_cache(keep_system_prompt=True)
    return Final(job, "ok", cleared_data(loop.loaded_model))


COMMAND = CommandSpec("clear_cache", ModelRequest, plain_field="model", admit=admit_model, run=run)
