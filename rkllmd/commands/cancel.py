"""``cancel``: end a queued or running generation by its id; answered at once by the ingress thread.

Only a cancel whose reply goes where the request's does (its owner's reply folder) may cancel it;
another user's is answered not_found, which tells nothing (docs/PROTOCOL.md). In a fleet, a cancel
on the group's topic for a request not on this board is passed on to every board (rkllmd/fleet.py),
which answers it once.
"""

from __future__ import annotations

import structlog

from rkllmd.commands._base import CommandSpec, Desk
from rkllmd.errors import NotFound, RequestError
from rkllmd.exchange import Exchange, Final
from rkllmd.protocol import CancelRequest, Req, cancel_data, reply_folder
from rkllmd.settings import Settings

log = structlog.get_logger("rkllmd")


def admit(req: Req, ex: Exchange, settings: Settings) -> None:
    """The reply names the request it cancels (ingress thread)."""
    if req.id is None:
        raise RequestError("cancel needs the id of the request to cancel")
    assert ex.address is not None
    ex.address.request_id = req.id


def answer(ex: Exchange, desk: Desk) -> Final | None:
    """Cancel it here, or pass it on to the fleet (then None: the fleet answers); NotFound is
    answered like any refusal (ingress thread)."""
    assert ex.id is not None and ex.address is not None  # admit refuses a cancel without an id
    try:
        where = desk.loop.cancel(ex.id, owner=reply_folder(ex.address.topic))
    except NotFound:
        if desk.fleet is None or ex.topic != desk.topics.group_request(ex.command):
            raise
        desk.fleet.pass_on_cancel(ex)
        return None
    log.info("cancel", request_id=ex.id, was=where)
    return Final(ex, "ok", cancel_data(ex.id, where))


COMMAND = CommandSpec("cancel", CancelRequest, plain_field="id", queued=False, admit=admit, answer=answer)
