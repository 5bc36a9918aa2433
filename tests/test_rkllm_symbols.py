"""The exported-symbol check: refuse only for a missing required function; optional ones raise on use."""

from __future__ import annotations

import pytest
import structlog

from rkllmd.errors import LibraryVersionError
from rkllmd.runtime.rkllm import _abi_1_2, _abi_1_2_0, _abi_1_3
from rkllmd.runtime.rkllm._handle import RkllmHandle
from rkllmd.runtime.rkllm._lib import RkllmLibrary
from tests.fake_rkllm.build import build_fake
from tests.rkllm_conftest_fixtures import BUILD_DIR

CORE = {
    "rkllm_init",
    "rkllm_destroy",
    "rkllm_run",
    "rkllm_abort",
    "rkllm_clear_kv_cache",
    "rkllm_set_chat_template",
}


def test_required_functions_per_family() -> None:
    """Serving needs the core functions; families E and F also need their 1.2.1 markers."""
    assert set(_abi_1_2_0.SPEC_1_2_0.required) == CORE
    markers = {"rkllm_get_kv_cache_size", "rkllm_set_function_tools"}
    assert set(_abi_1_2.SPEC.required) == set(_abi_1_3.SPEC.required) == CORE | markers
    assert "rkllm_set_cross_attn_params" not in _abi_1_3.SPEC.required


@pytest.mark.parametrize("abi", ["12", "13"])
def test_library_without_an_optional_function_loads(abi: str) -> None:
    """A build without rkllm_set_cross_attn_params loads; the function is undeclared and logged."""
    lib_path = build_fake(abi, BUILD_DIR, omit=["rkllm_set_cross_attn_params"])
    with structlog.testing.capture_logs() as logs:
        lib = RkllmLibrary.open(lib_path)
    assert not lib.has("rkllm_set_cross_attn_params") and lib.has("rkllm_set_function_tools")
    missing = [e for e in logs if e["event"] == "rkllm_optional_functions_missing"]
    assert missing and missing[0]["functions"] == ["rkllm_set_cross_attn_params"]


def test_optional_function_raises_the_typed_error_when_used() -> None:
    """Calling the absent optional function raises LibraryVersionError naming it and the library."""
    lib = RkllmLibrary.open(build_fake("13", BUILD_DIR, omit=["rkllm_set_cross_attn_params"]))
    handle = RkllmHandle(lib, lambda state, result: None)
    with pytest.raises(LibraryVersionError) as ei:
        handle.set_cross_attn_params([0.0], [0.0], [0.0], [0], 1)
    msg = str(ei.value)
    assert msg.startswith("rkllm_set_cross_attn_params requires runtime ≥ 1.2.1")
    assert "loaded 1.3.0 library" in msg and str(lib.path) in msg and "does not export it" in msg


def test_optional_function_without_a_since_version() -> None:
    """An absent optional function older than 1.2.0 (rkllm_load_lora) says it is not exported."""
    lib = RkllmLibrary.open(build_fake("120", BUILD_DIR, omit=["rkllm_load_lora"]))
    with pytest.raises(LibraryVersionError, match=r"rkllm_load_lora is optional: .* does not export it"):
        lib.fn("rkllm_load_lora")
    assert lib.fn("rkllm_run") is not None


def test_missing_required_function_is_refused() -> None:
    """A 1.2.3 build without rkllm_set_function_tools is refused: its family needs it."""
    lib_path = build_fake("12", BUILD_DIR, omit=["rkllm_set_function_tools"])
    with pytest.raises(
        LibraryVersionError, match=r"lacks rkllm_set_function_tools; its symbols look like 1\.2\.0"
    ):
        RkllmLibrary.open(lib_path)
