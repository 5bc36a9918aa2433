"""The worker pipe carries one generic call: every method the ``Runtime`` interface marks served,
and only those, whatever its name, with no frame or worker code of its own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from rkllmd.config_base import ModelCommon
from rkllmd.errors import RequestError, RuntimeFailure
from rkllmd.runtime.base import Runtime, RuntimeKind, served_methods
from rkllmd.runtime.worker import WorkerRuntime, forwards_served
from rkllmd.settings import Settings
from tests.rkllm_conftest_fixtures import ask
from tests.worker_echo import EchoInterface, open_runtime


@forwards_served
class EchoWorker(WorkerRuntime, EchoInterface):
    """The proxy of the extended interface: the daemon's proxy class, and not one line more."""


ECHO = RuntimeKind(
    name="echo",
    settings=ModelCommon,
    open_runtime=open_runtime,
    load_problems=lambda name, cfg: [],
    token_counter=lambda cfg: None,
)


@pytest.fixture
def rt() -> Iterator[EchoWorker]:
    settings = Settings.model_validate({"models": {"l": {"runtime": "llamacpp"}}})
    cfg = ModelCommon.model_validate({"runtime": "echo"})
    worker = EchoWorker(ECHO, "e", cfg, settings, load_timeout_s=60)
    worker.open()
    try:
        yield worker
    finally:
        worker.close()


def test_a_method_added_to_the_interface_runs_in_the_worker(rt: EchoWorker) -> None:
    """``echo`` is declared served in the interface only: the proxy forwards it, keyword arguments
    too, the worker runs it, its return value comes back and its errors keep their class."""
    assert rt.echo("hello") == ("hello", rt.describe()["pid"])
    text, pid = rt.echo("hello", loud=True)
    assert text == "HELLO" and pid != os.getpid()
    with pytest.raises(RequestError, match="nothing to echo"):
        rt.echo("")
    assert rt.echo("still serving")[0] == "still serving"


def test_a_new_method_with_a_token_sink_streams_like_generate(rt: EchoWorker) -> None:
    """A callable argument is the token sink: the worker's tokens reach it, in order, before the
    return value; generate itself still streams through the same call."""
    got: list[str] = []
    assert rt.spell("abcdef", lambda text, _tok: got.append(text)) == 6
    assert "".join(got) == "abcdef"
    streamed: list[str] = []
    result = rt.generate(ask("one two three"), lambda text, _tok: streamed.append(text))
    assert "".join(streamed) == "one two three " and result.finish_reason == "stop"
    assert result.perf.completion_tokens == 3


@pytest.mark.parametrize("method", ["secret", "open", "close", "abort", "__init__", "no_such_method"])
def test_a_name_the_interface_does_not_serve_is_refused(rt: EchoWorker, method: str) -> None:
    """A runtime method the interface does not mark served, the worker's own lifecycle calls and
    unknown names are refused with a RuntimeFailure naming them and a log line; the worker goes on."""
    refused = pytest.raises(RuntimeFailure, match=f"{method!r} is none of them")
    with structlog.testing.capture_logs() as logs, refused:
        rt._call(method)
    assert any(r["event"].startswith("call refused") and r.get("method") == method for r in logs), logs
    assert rt.alive and rt.echo("after")[0] == "after"


def test_the_served_methods_are_the_interface_s_and_every_one_is_forwarded() -> None:
    """What the worker serves is declared in the interface; the proxy has a forwarder for each
    served method it does not implement itself, and none for the rest of the interface."""
    served = served_methods(Runtime)
    assert {"generate", "clear_cache", "count_tokens", "prompt_tokens"} <= served
    assert not served & {"open", "close", "abort", "describe", "context_length"}
    assert served_methods(EchoInterface) == served | {"echo", "spell"}
    for method in served_methods(EchoInterface) - {"generate"}:
        forward: Any = getattr(EchoWorker, method)
        assert forward is not getattr(EchoInterface, method), method
        assert forward.__doc__ == getattr(EchoInterface, method).__doc__, method
    assert "secret" not in vars(EchoWorker)
