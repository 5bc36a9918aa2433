"""Ingress: each incoming message becomes an admitted Exchange, served by its command, or a refusal.

Threads: ``Ingress`` runs the *ingress* thread, fed by ``put`` (paho's network thread and the
plugins' ``inject`` only enqueue). Plugin topic handlers and preprocessors run here too.
``admit`` is a pure function of one message and a ``Gate``: it reads the topic, the payload and
the reply address, runs the preprocessors, validates and resolves the model, and neither queues
nor publishes. ``Ingress`` then serves what was admitted as its command says (rkllmd/commands/:
queued, or answered here) and hands every answer it makes, refusals included, to the dispatcher,
which publishes and routes it. What is published from this thread is never a request's reply:
the fleet's own messages, and what plugins' topic handlers publish themselves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from rkllmd import protocol
from rkllmd.commands import COMMANDS, CommandSpec
from rkllmd.dispatch import Dispatcher
from rkllmd.errors import Interrupted, RequestError, RkllmdError, ShuttingDown, UnknownCommand
from rkllmd.exchange import Exchange, Final
from rkllmd.fleet import Fleet
from rkllmd.journal import Journal, Unanswered
from rkllmd.loop import InferenceLoop
from rkllmd.plugins.host import PluginHost
from rkllmd.protocol import Address, Incoming, LocalMessage, Receipt, Topics
from rkllmd.settings import Settings

log = structlog.get_logger("rkllmd")


@dataclass(frozen=True)
class Gate:
    """What admission reads: the configuration, the topics, the preprocessor chain, and whether
    rkllmd is stopping (a stopping daemon refuses what it would otherwise accept)."""

    settings: Settings
    topics: Topics
    preprocess: Callable[[Exchange], Exchange]
    stopping: Callable[[], bool] = lambda: False
    # topics plugins publish on their own (Home Assistant's discovery prefix): never a reply topic
    reserved: Callable[[str], bool] = lambda topic: False

    def reply_refusal(self, topic: str, what: str) -> str | None:
        """Why no reply may go to ``topic``: rkllmd's own namespace or a plugin's (or None)."""
        return protocol.reply_to_refusal(topic, what, self.topics, self.reserved)


def admit(msg: Incoming, gate: Gate) -> Exchange | Final:
    """The exchange a request message asks for, ready to serve, or its refusal (ingress thread).

    The refusal goes to the address the request asked for wherever its bytes allow reading it
    (docs/PROTOCOL.md, "Where refusals go").
    """
    ex = Exchange(command="", topic=msg.topic)
    try:
        return admit_or_raise(msg, gate, ex)
    except Exception as exc:  # the daemon never dies on input
        return refusal(ex, exc)


def admit_or_raise(msg: Incoming, gate: Gate, ex: Exchange | None = None) -> Exchange:
    """``admit``, raising the error a refusal would carry (also the test kit's admission);
    ``ex`` is filled in as far as the message allows, its reply address first."""
    ex = ex if ex is not None else Exchange(command="", topic=msg.topic)
    bad_response_topic = _check_response_topic(msg.response_topic, gate)
    if bad_response_topic is not None:
        msg = dataclasses.replace(msg, response_topic=None)
    ex.address = address = Address(
        topic=msg.response_topic or gate.topics.response("error"),
        correlation_data=msg.correlation_data,
        local=isinstance(msg, LocalMessage),
        key=msg.key if isinstance(msg, LocalMessage) else None,
        receipt=msg.receipt,
    )
    if bad_response_topic is not None:
        with contextlib.suppress(UnknownCommand):
            command, topic_model = gate.topics.parse_request_topic(msg.topic, COMMANDS)
            address.topic = gate.topics.response(command.name)
            ex.command, ex.topic_model = command.name, topic_model
        # the id and transaction are still echoed; a reply_to does not replace the bad topic
        take_address(_address_of_refused(msg, gate), address, True, gate)
        raise RequestError(bad_response_topic)
    return _admit(msg, ex, address, gate)


def _admit(msg: Incoming, ex: Exchange, address: Address, gate: Gate) -> Exchange:
    topics, settings = gate.topics, gate.settings
    v5 = msg.response_topic is not None
    try:
        command, topic_model = topics.parse_request_topic(msg.topic, COMMANDS)
    except UnknownCommand:
        if not v5:
            address.topic = topics.response("error")
        take_address(_address_of_refused(msg, gate), address, v5, gate)
        raise
    if not v5:
        address.topic = topics.response(command.name)
    # Known before the payload is read, so routers see the command of a refused payload too.
    ex.command, ex.topic_model = command.name, topic_model
    try:
        obj = protocol.decode_payload(msg.payload, command, settings.limits.max_payload_bytes)
    except RkllmdError:
        take_address(_address_of_refused(msg, gate), address, v5, gate)
        raise
    # Read from the payload as it arrived (a preprocessor that refuses it is answered there),
    # then from what the chain returns, where a preprocessor may have set reply_to or an id.
    take_address(obj, address, v5, gate)
    ex.payload, ex.original, ex.id = obj, dict(obj), address.request_id
    out = gate.preprocess(ex)
    if out is not ex:  # a preprocessor returned a record of its own: it replaces ours, same address
        ex, ex.address = out, address
    take_address(ex.payload, address, v5, gate)
    req = protocol.validate(command, ex.payload)
    if req.reply_to is not None:
        refused = gate.reply_refusal(req.reply_to, "reply_to")
        if refused is not None:  # answered where no reply_to was given: rkllmd's reply space
            raise RequestError(refused)
    ex.id = req.id
    if gate.stopping():
        raise ShuttingDown("rkllmd is shutting down; request not accepted")
    command.admit(req, ex, settings)
    if command.queued:  # a job has an id in the queue, its stats and its reply, given or made
        ex.id = address.request_id = req.id or protocol.new_request_id()
    return ex


def refusal(ex: Exchange, exc: Exception) -> Final:
    """The error reply of an exchange that was refused or failed before it was queued."""
    rid = ex.address.request_id if ex.address is not None else None
    if isinstance(exc, RkllmdError):
        log.info("request refused", topic=ex.topic, code=exc.code, error=exc.message, request_id=rid)
        err = exc
    else:
        log.error("request handling failed", topic=ex.topic, exc_info=exc)
        err = RkllmdError(f"internal error: {exc}")
    ex.id = ex.id or rid
    return Final.failed(ex, err)


def take_address(obj: dict[str, Any], address: Address, has_v5_topic: bool, gate: Gate | None = None) -> None:
    """Best effort: take reply_to, id and transaction from a request even before it validates,
    so that a request with a wrong field still gets its error where the sender listens. Each is
    taken only if it is valid on its own (a transaction only if a reply can carry it back; a
    reply_to only outside the topics rkllmd publishes on its own, ``gate``)."""
    if "transaction" in obj and protocol.echoable(obj["transaction"]):
        address.transaction = obj["transaction"]
        address.has_transaction = True
    rid = obj.get("id")
    if isinstance(rid, str) and protocol.ID_RE.match(rid):
        address.request_id = rid
    rt = obj.get("reply_to")
    if not has_v5_topic and isinstance(rt, str):
        try:
            protocol.check_publish_topic(rt, "reply_to")
        except ValueError:
            return
        if gate is not None and gate.reply_refusal(rt, "reply_to") is not None:
            return
        address.topic = rt


def _address_of_refused(msg: Incoming, gate: Gate) -> dict[str, Any]:
    """What a payload refused before validation says about where its reply goes (bounded)."""
    return protocol.read_address(msg.payload, gate.settings.limits.max_payload_bytes)


def _check_response_topic(topic: str | None, gate: Gate) -> str | None:
    """Why a v5 Response Topic must not be used (brokers pass on wildcards and $-topics; rkllmd's
    own topics are not a reply's to take), or None."""
    if topic is None:
        return None
    try:
        protocol.check_publish_topic(topic, "the Response Topic")
    except ValueError as exc:
        return str(exc)
    return gate.reply_refusal(topic, "the Response Topic")


class Ingress:
    """The ingress thread: admit each message, serve it by its command, hand answers on.

    A message that gets no final reply of its own (a plugin's topic, a fleet message, a duplicate
    of a request answered lately) is acknowledged to the broker here; every other one when its
    reply is delivered (dispatcher), a duplicate of a request still open with the original.
    """

    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        plugins: PluginHost,
        loop: InferenceLoop,
        out: Dispatcher,
        *,
        ack: Callable[[Receipt], None] = lambda receipt: None,
        journal: Journal | None = None,
        fleet: Fleet | None = None,
    ) -> None:
        self.settings, self.plugins, self.loop, self.out = settings, plugins, loop, out
        self._ack, self.fleet = ack, fleet
        self.journal = journal if journal is not None else Journal(None)
        # Requests the previous run took and did not answer, by id, until recovery ends: one that
        # the broker sends again is served, and its old journal entry forgotten.
        self._recovering: dict[str, Unanswered] = {}
        self._recovery_lock = threading.Lock()
        self.stopping = False  # set by the main thread at shutdown
        self.gate = Gate(settings, topics, plugins.preprocess, lambda: self.stopping, plugins.reserved)
        self._inbox: queue.Queue[Incoming | None] = queue.Queue()
        self._thread = threading.Thread(target=self._main, name="ingress", daemon=True)

    # --- any thread ------------------------------------------------------------------------

    def put(self, msg: Incoming) -> None:
        """Hand a message to the ingress thread (paho's network thread, plugins' inject)."""
        self._inbox.put(msg)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def topics(self) -> Topics:
        return self.gate.topics

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Main thread: answer what is still in the inbox, then end the thread."""
        self._inbox.put(None)
        self._thread.join(timeout=5)

    # --- ingress thread --------------------------------------------------------------------

    def _main(self) -> None:
        while True:
            msg = self._inbox.get()
            if msg is None:
                # Anything that arrived after the stop still gets an answer.
                while True:
                    try:
                        late = self._inbox.get_nowait()
                    except queue.Empty:
                        return
                    if late is not None:
                        self._handle_guarded(late)
            self._handle_guarded(msg)

    def _handle_guarded(self, msg: Incoming) -> None:
        """Nothing a message does may end the ingress thread: every later request depends on it.
        A plugin's own request still gets a final reply, so that its waiting client is answered."""
        try:
            self.handle(msg)
        except Exception as exc:
            log.exception("ingress failed on a message", topic=msg.topic)
            if isinstance(msg, LocalMessage) and msg.key is not None:
                address = Address(topic="", local=True, key=msg.key)
                self.out.put(refusal(Exchange(command="", topic=msg.topic, address=address), exc))

    def handle(self, msg: Incoming) -> None:
        for part in (self.fleet, self.plugins):  # their messages get no reply: acknowledged here
            if part is not None and part.handles(msg.topic):
                try:
                    part.deliver(msg)
                finally:
                    self._acknowledge(msg)
                return
        admitted = admit(msg, self.gate)
        if isinstance(admitted, Final):
            self.out.put(admitted)
            return
        if msg.dup and self._duplicate(admitted, msg):
            return
        command = COMMANDS[admitted.command]
        try:
            if command.queued:
                self._queue(admitted, command)
            else:
                assert command.answer is not None
                answer = command.answer(admitted, self)
                if answer is not None:
                    self.out.put(answer)
        except Exception as exc:
            self.out.put(refusal(admitted, exc))

    def _acknowledge(self, msg: Incoming) -> None:
        if msg.receipt is not None:
            self._ack(msg.receipt)

    def _duplicate(self, ex: Exchange, msg: Incoming) -> bool:
        """A message the broker sent again (DUP) whose request was answered lately or is here now:
        it must not run twice (docs/FLEET.md, "The exact semantics"). Every queued command is
        journaled by its id (a generation, an embedding, a load...); one answered at once is not."""
        command = COMMANDS.get(ex.command)
        if command is None or not command.queued or ex.id is None:
            return False
        seen = self.journal.seen_again(ex.id, msg.receipt)
        if seen == "answered":
            log.info("duplicate request ignored: answered already", request_id=ex.id)
            self._acknowledge(msg)
            return True
        if seen == "open":
            # Sent again after a reconnect with the session kept, so with the same packet id: the
            # original, queued, running or with its reply on the way (the MQTT library sends a written
            # reply again on the new connection), acknowledges it once its reply is delivered.
            log.info("duplicate request ignored: queued, running or its reply on the way", request_id=ex.id)
            return True
        return False

    def _queue(self, ex: Exchange, command: CommandSpec) -> None:
        if ex.id is not None:
            with self._recovery_lock:
                old = self._recovering.pop(ex.id, None)
            if old is not None:
                log.info("request sent again by the broker after a restart; serving it", request_id=ex.id)
                self.journal.forget(old.key)
                ex.attempt = old.attempt + 1
        if ex.address is not None and ex.address.receipt is not None and ex.address.receipt.dup:
            # The broker sent it before: a run before this one may have streamed part of it.
            ex.attempt = max(ex.attempt, 2)
        self.journal.took(ex)
        # Held behind a full queue rather than refused busy (up to limits.backlog_max): in a fleet,
        # what the broker gives this board; anywhere, what the broker held for rkllmd while it was
        # away or sends again after a restart (docs/FLEET.md, "A backlog waits its turn").
        fleet_mqtt = self.fleet is not None and not ex.local and command.generates
        receipt = ex.address.receipt if ex.address is not None else None
        again = receipt is not None and (receipt.dup or receipt.backlog)
        self.loop.submit(ex, may_hold=fleet_mqtt or again)
        if command.generates:
            log.info("request queued", request_id=ex.id, model=ex.model, queue_depth=self.loop.queue_depth())

    # --- main thread, then a timer thread --------------------------------------------------

    def recover(self, left: list[Unanswered]) -> None:
        """Before the connect: what the previous run took and never answered (rkllmd/journal.py).

        With the session kept, the broker sends those requests again the moment rkllmd connects;
        each one that comes is served as new (and its old entry forgotten)."""
        with self._recovery_lock:
            self._recovering = {u.request_id: u for u in left}

    def recovering(self) -> bool:
        """Whether requests of the previous run still wait to be recovered (main thread)."""
        with self._recovery_lock:
            return bool(self._recovering)

    def handed_over(self, ids: list[str]) -> None:
        """Requests of the previous run that a fleet's leader took over from this board's session
        while it was away (rkllmd/fleetwatch.py): answered there, so not here (main thread)."""
        for rid in ids:
            with self._recovery_lock:
                old = self._recovering.pop(rid, None)
            if old is not None:
                log.info("request taken over by the fleet's leader while this board was away", request_id=rid)
                self.journal.forget(old.key)

    def answer_unrecovered(self, grace_s: float) -> None:
        """After the connect: wait ``grace_s`` for the broker's redeliveries, then tell every
        request still unrecovered that it was interrupted (at once when the session is gone)."""
        with self._recovery_lock:
            count = len(self._recovering)
        if not count:
            return
        log.warning("requests of the previous run were not answered yet", count=count, wait_s=grace_s)
        if grace_s <= 0:
            self._interrupted()
            return
        timer = threading.Timer(grace_s, self._interrupted)
        timer.daemon = True
        timer.name = "recovery-grace"
        timer.start()

    def _interrupted(self) -> None:
        with self._recovery_lock:
            left, self._recovering = list(self._recovering.values()), {}
        for u in left:
            ex = Exchange(command=u.command, topic=u.topic, id=u.request_id, address=u.address)
            ex.run.journal_key = u.key
            log.warning("answering a request the previous run never answered", request_id=u.request_id)
            self.out.put(
                Final.failed(
                    ex,
                    Interrupted(
                        "rkllmd was stopped (killed or crashed) while this request waited or ran, and "
                        "the broker did not send it again; send it again"
                    ),
                )
            )
