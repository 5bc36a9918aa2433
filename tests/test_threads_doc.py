"""docs/ARCHITECTURE.md's table of threads names every thread rkllmd starts.

The table is where a contributor learns what may run where and what must never block; a thread
added without its row (or without a name, so the logs and py-spy show ``Thread-7``) goes unseen.
This reads every ``threading.Thread(...)`` and ``threading.Timer(...)`` in rkllmd, as written, and
the table's first column.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "ARCHITECTURE.md"

# Rows for threads rkllmd runs code on but does not start itself: Python's main thread (the
# daemon's and the worker's) and paho's loop_start thread (side links, `rkllmd ask`, benchmarks).
FOREIGN = {"MainThread", "paho-mqtt-client-<>"}


def _pattern(name: str) -> str:
    """A name with its varying parts (``<board>``, ``{name}``) as ``<>``."""
    return re.sub(r"<[^>]*>", "<>", name)


def documented() -> set[str]:
    text = DOC.read_text()
    section = text.split("\n## Threads\n", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith("| thread |"):
            continue
        first = line.split(" | ", 1)[0]
        m = re.match(r"\| `([^`]+)`", first)
        if m:
            names.add(_pattern(m.group(1)))
    return names


def _literal(node: ast.expr | None) -> str | None:
    """A thread name as the code writes it: a string, or an f-string with its fields as ``<>``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "<>" for v in node.values)
    return None


def _is(call: ast.AST, attr: str) -> bool:
    if not isinstance(call, ast.Call):
        return False
    f = call.func
    return (isinstance(f, ast.Attribute) and f.attr == attr and isinstance(f.value, ast.Name)) or (
        isinstance(f, ast.Name) and f.id == attr
    )


def _timer_name(fn: ast.FunctionDef | ast.AsyncFunctionDef, var: str) -> str | None:
    """The name a function gives the timer it holds in ``var`` (``var.name = ...``)."""
    for a in ast.walk(fn):
        if not (isinstance(a, ast.Assign) and isinstance(t := a.targets[0], ast.Attribute)):
            continue
        if t.attr == "name" and isinstance(t.value, ast.Name) and t.value.id == var:
            return _literal(a.value)
    return None


def started() -> tuple[dict[str, list[str]], list[str]]:
    """Every thread name rkllmd gives (name -> where), and where a thread gets none."""
    names: dict[str, list[str]] = {}
    unnamed: list[str] = []
    for path in sorted((ROOT / "rkllmd").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        rel = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if _is(node, "Thread"):
                assert isinstance(node, ast.Call)
                name = _literal({k.arg: k.value for k in node.keywords}.get("name"))
                (unnamed if name is None else names.setdefault(name, [])).append(f"{rel}:{node.lineno}")
        timers = [n for n in ast.walk(tree) if _is(n, "Timer")]
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for stmt in fn.body:  # a timer is made and named in the function that starts it
                for a in ast.walk(stmt):
                    held = isinstance(a, ast.Assign) and isinstance(a.targets[0], ast.Name)
                    if held and a.value in timers:  # (a nested function's timer: seen once, here)
                        timers.remove(a.value)
                        name = _timer_name(fn, a.targets[0].id)
                        (unnamed if name is None else names.setdefault(name, [])).append(f"{rel}:{a.lineno}")
        unnamed += [f"{rel}:{t.lineno}" for t in timers]  # not held in a variable: not named either
    return names, unnamed


def test_every_thread_rkllmd_starts_is_named_in_the_table() -> None:
    names, unnamed = started()
    assert not unnamed, f"threads started without a name (give one, and a row in {DOC.name}): {unnamed}"
    rows = documented()
    missing = {n: where for n, where in names.items() if _pattern(n) not in rows}
    assert not missing, f"threads missing from the table in {DOC.name}, section Threads: {missing}"


def test_every_row_of_the_table_is_a_thread_that_exists() -> None:
    names = {_pattern(n) for n in started()[0]}
    stale = documented() - names - FOREIGN
    assert not stale, f"rows of {DOC.name}'s thread table no code starts: {sorted(stale)}"


def test_the_reader_sees_threads_in_every_form_the_code_uses() -> None:
    """The parse finds what it must: the daemon's fixed names, an f-string name, a named timer."""
    names = {_pattern(n) for n in started()[0]}
    assert {"inference", "dispatcher", "bus-network", "<>-server", "takeover-<>", "recovery-grace"} <= names
