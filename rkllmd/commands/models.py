"""``models``: the configured models, the loaded one and the default; answered at once by ingress."""

from __future__ import annotations

from rkllmd.commands._base import CommandSpec, Desk
from rkllmd.exchange import Exchange, Final
from rkllmd.protocol import NoArgsRequest, model_facts, models_data


def answer(ex: Exchange, desk: Desk) -> Final:
    settings, loaded = desk.settings, desk.loop.loaded_model
    facts = model_facts(settings.models, loaded, settings.default)
    return Final(ex, "ok", models_data(facts, loaded, settings.default))


COMMAND = CommandSpec("models", NoArgsRequest, queued=False, answer=answer)
