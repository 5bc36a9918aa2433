"""A runtime whose interface has methods the real ``Runtime`` does not: the worker tests build it
in a real worker process (``open_runtime`` is pickled by reference, so it lives in a module the
worker can import), to show that a method added to the interface reaches the worker as it is.

Nothing here imports pydantic: the worker process imports this module.
"""

from __future__ import annotations

import abc
import os
from typing import Any

from rkllmd.errors import RequestError
from rkllmd.generation import GenerateInput
from rkllmd.runtime.base import GenerateResult, Perf, Runtime, TokenSink, served


class EchoInterface(Runtime):
    """``Runtime`` with two more served methods, as an issue adding one (embeddings, images) would."""

    @served
    @abc.abstractmethod
    def echo(self, text: str, *, loud: bool = False) -> tuple[str, int]:
        """``text`` back (upper case when ``loud``), and the id of the process that ran it."""

    @served
    @abc.abstractmethod
    def spell(self, text: str, sink: TokenSink) -> int:
        """Each character of ``text`` to ``sink`` in turn; how many there were."""


class EchoRuntime(EchoInterface):
    kind = "echo"

    def __init__(self, name: str, cfg: Any) -> None:
        self.name, self.cfg = name, cfg

    def open(self) -> None:
        pass

    def generate(self, inp: GenerateInput, sink: TokenSink) -> GenerateResult:
        words = inp.messages[-1].content.split()
        for word in words:
            sink(word + " ", None)
        return GenerateResult("stop", Perf(completion_tokens=len(words)))

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass

    def echo(self, text: str, *, loud: bool = False) -> tuple[str, int]:
        if not text:
            raise RequestError("nothing to echo", field="text")
        return (text.upper() if loud else text), os.getpid()

    def spell(self, text: str, sink: TokenSink) -> int:
        for ch in text:
            sink(ch, None)
        return len(text)

    def secret(self) -> str:
        """A method of the runtime the interface does not serve: the worker must refuse it."""
        return "leaked"


def open_runtime(name: str, cfg: Any, settings: Any) -> EchoRuntime:
    return EchoRuntime(name, cfg)
