"""``unload``: unload the loaded model (or the one named, if it is the loaded one), freeing its memory."""

from __future__ import annotations

from rkllmd.commands._base import CommandSpec, Engine
from rkllmd.commands._model import admit_model
from rkllmd.exchange import Exchange, Final
from rkllmd.protocol import ModelRequest, loaded_data


def run(job: Exchange, loop: Engine) -> Final:
    name = job.model or loop.loaded_model
    if name is not None:
        loop.registry.require_model(name)
    if name is not None and name == loop.loaded_model:
        loop.unload()
    return Final(job, "ok", loaded_data(name, False))


COMMAND = CommandSpec(
    "unload", ModelRequest, plain_field="model", changes_model=True, admit=admit_model, run=run
)
