"""Admission shared by the commands that name a model (load, unload, clear_cache)."""

from __future__ import annotations

from rkllmd.exchange import Exchange, require_model
from rkllmd.protocol import ModelRequest, Req
from rkllmd.settings import Settings


def admit_model(req: Req, ex: Exchange, settings: Settings) -> None:
    """The request's model, which must be a configured one; None: the command's own default."""
    assert isinstance(req, ModelRequest)
    if req.model is not None:
        require_model(settings, req.model)
    ex.model = req.model
