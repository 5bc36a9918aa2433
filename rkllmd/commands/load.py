"""``load``: load a model now (the default model when none is named), unloading the one loaded."""

from __future__ import annotations

from rkllmd.commands._base import CommandSpec, Engine
from rkllmd.commands._model import admit_model
from rkllmd.exchange import Exchange, Final
from rkllmd.protocol import ModelRequest, Req, loaded_data
from rkllmd.settings import Settings


def admit(req: Req, ex: Exchange, settings: Settings) -> None:
    admit_model(req, ex, settings)
    ex.model = ex.model or settings.default


def run(job: Exchange, loop: Engine) -> Final:
    loop.load(job.model or loop.default_model)
    return Final(job, "ok", loaded_data(loop.loaded_model, True))


COMMAND = CommandSpec("load", ModelRequest, plain_field="model", changes_model=True, admit=admit, run=run)
