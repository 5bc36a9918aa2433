"""The commands: one module per ``<base>/request/<name>`` topic, each declaring its ``COMMAND``.

A command's module says everything about it (rkllmd.commands.CommandSpec): its request model and
plain-text field, whether it generates, whether it is queued or answered at once, what admission
reads from its request, the job the inference loop runs (or the answer the ingress gives), and the
reply data it builds (with rkllmd.protocol's builders). ``COMMANDS`` is found by scanning this
package (as Frigate finds its detectors): every module not starting with ``_`` is a command. Adding one
is adding its module (and its request model in rkllmd/protocol/requests.py); docs/ARCHITECTURE.md,
"Adding a command".

The ingress (rkllmd/ingress.py), the loop (rkllmd/loop.py) and the dispatcher (rkllmd/dispatch.py)
read only a command's flags and functions, never its name.
"""

from __future__ import annotations

import importlib
import pkgutil

from rkllmd.commands._base import Canceller, CommandSpec, Desk, Engine, Passer

__all__ = ["COMMANDS", "MODEL_TOPICS", "Canceller", "CommandSpec", "Desk", "Engine", "Passer", "spec_of"]


def _discover() -> dict[str, CommandSpec]:
    """Every command module's COMMAND, by command name (import time: imports only, no I/O)."""
    found: dict[str, CommandSpec] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        spec = getattr(module, "COMMAND", None)
        if not isinstance(spec, CommandSpec):
            raise TypeError(f"{module.__name__} declares no COMMAND (a rkllmd.commands.CommandSpec)")
        if spec.name in found:
            raise TypeError(f"command {spec.name!r} is declared twice ({module.__name__})")
        found[spec.name] = spec
    return found


COMMANDS: dict[str, CommandSpec] = _discover()


# The commands whose topic may name a model (``<base>/request/<name>/<model>``): in a fleet each
# board subscribes those topics for the models it serves, and the leader watches them for models
# no board serves (rkllmd/fleet.py, rkllmd/fleetwatch.py, rkllmd/takeover.py).
MODEL_TOPICS: tuple[str, ...] = tuple(name for name, spec in COMMANDS.items() if spec.model_topic)


def spec_of(name: str) -> CommandSpec | None:
    """The command named ``name``, or None (an exchange refused before its command was known)."""
    return COMMANDS.get(name)
