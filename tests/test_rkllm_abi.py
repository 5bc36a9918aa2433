"""The ctypes layouts equal the C layouts byte for byte (our header via gcc, and the fact sheet JSON)."""

from __future__ import annotations

import ctypes
from ctypes import Structure, Union
from typing import Any

import pytest

from rkllmd.runtime.rkllm import _abi_1_2, _abi_1_2_0, _abi_1_3
from rkllmd.runtime.rkllm import _abi_common as common
from rkllmd.runtime.rkllm._abi_common import AbiSpec
from tests.fake_rkllm.build import probe_layout
from tests.rkllm_conftest_fixtures import BUILD_DIR, layout_json

_COMMON = {
    "RKLLMLoraAdapter": common.RKLLMLoraAdapter,
    "RKLLMEmbedInput": common.RKLLMEmbedInput,
    "RKLLMTokenInput": common.RKLLMTokenInput,
    "RKLLMLoraParam": common.RKLLMLoraParam,
    "RKLLMPromptCacheParam": common.RKLLMPromptCacheParam,
    "RKLLMResultLastHiddenLayer": common.RKLLMResultLastHiddenLayer,
    "RKLLMResultLogits": common.RKLLMResultLogits,
}
_E_F_COMMON = {
    "RKLLMExtendParam": common.RKLLMExtendParam,
    "RKLLMCrossAttnParam": common.RKLLMCrossAttnParam,
    "RKLLMPerfStat": common.RKLLMPerfStat,
    "RKLLMResult": common.RKLLMResult,
}

# C struct name -> our ctypes class, per ABI selector of the double.
CTYPES: dict[str, dict[str, type[Structure]]] = {
    "120": {
        **_COMMON,
        "RKLLMExtendParam": _abi_1_2_0.RKLLMExtendParam,
        "RKLLMParam": _abi_1_2_0.RKLLMParam,
        "RKLLMMultiModelInput": _abi_1_2_0.RKLLMMultiModelInput120,
        "RKLLMInput": _abi_1_2_0.RKLLMInput120,
        "RKLLMInferParam": _abi_1_2_0.RKLLMInferParam,
        "RKLLMResult": _abi_1_2_0.RKLLMResult,
    },
    "12": {
        **_COMMON,
        **_E_F_COMMON,
        "RKLLMParam": _abi_1_2.RKLLMParam,
        "RKLLMMultiModalInput": _abi_1_2.RKLLMMultiModalInput,
        "RKLLMInput": _abi_1_2.RKLLMInput,
        "RKLLMInferParam": _abi_1_2.RKLLMInferParam,
    },
    "13": {
        **_COMMON,
        **_E_F_COMMON,
        "RKLLMParam": _abi_1_3.RKLLMParam,
        "RKLLMImageInput": _abi_1_3.RKLLMImageInput,
        "RKLLMVideoInput": _abi_1_3.RKLLMVideoInput,
        "RKLLMMultiModalInput": _abi_1_3.RKLLMMultiModalInput,
        "RKLLMInput": _abi_1_3.RKLLMInput,
        "RKLLMSamplingParam": _abi_1_3.RKLLMSamplingParam,
        "RKLLMInferParam": _abi_1_3.RKLLMInferParam,
        "RKLLMCallback": _abi_1_3.RKLLMCallback,
    },
}
# 1.3.1: 1.3.0 with the audio part (no vendor header or JSON entry: checked against the double only).
CTYPES["131"] = {
    **CTYPES["13"],
    "RKLLMAudioInput": _abi_1_3.RKLLMAudioInput,
    "RKLLMMultiModalInput": _abi_1_3.RKLLMMultiModalInput131,
    "RKLLMInput": _abi_1_3.RKLLMInput131,
}

# (release in the JSON, ctypes classes keyed by the JSON's struct names)
_E = {k: v for k, v in CTYPES["12"].items() if k != "RKLLMMultiModalInput"}
JSON_CASES: list[tuple[str, dict[str, type[Structure]]]] = [
    ("1.2.0", CTYPES["120"]),
    (
        "1.2.1b1",
        {
            **CTYPES["120"],
            "RKLLMMultiModelInput": _abi_1_2_0.RKLLMMultiModelInput121b1,
            "RKLLMInput": _abi_1_2_0.RKLLMInput121b1,
        },
    ),
    ("1.2.1", {**_E, "RKLLMMultiModelInput": _abi_1_2.RKLLMMultiModalInput}),
    ("1.2.2", {**_E, "RKLLMMultiModelInput": _abi_1_2.RKLLMMultiModalInput}),
    ("1.2.3", CTYPES["12"]),
    (
        "1.3.0",
        {
            **{k: v for k, v in CTYPES["13"].items() if k not in ("RKLLMImageInput", "RKLLMVideoInput")},
            "RKLLMMultiModalInput.image": _abi_1_3.RKLLMImageInput,
            "RKLLMMultiModalInput.video": _abi_1_3.RKLLMVideoInput,
        },
    ),
]
SPECS: dict[str, AbiSpec] = {
    "1.2.0": _abi_1_2_0.SPEC_1_2_0,
    "1.2.1b1": _abi_1_2_0.SPEC_1_2_1B1,
    "1.2.1": _abi_1_2.SPEC,
    "1.2.2": _abi_1_2.SPEC,
    "1.2.3": _abi_1_2.SPEC,
    "1.3.0": _abi_1_3.SPEC,
}


def ctypes_layout(cls: type[Structure]) -> dict[str, Any]:
    """size, alignment and {field: (offset, size)} of a ctypes struct, anonymous union members inlined."""
    fields: dict[str, tuple[int, int]] = {}
    anonymous = set(getattr(cls, "_anonymous_", ()))
    for name, ctype, *_ in cls._fields_:
        desc = getattr(cls, name)
        if name in anonymous:
            assert issubclass(ctype, Union)
            for sub, _t, *_r in ctype._fields_:
                sd = getattr(ctype, sub)
                fields[sub] = (desc.offset + sd.offset, sd.size)
        else:
            fields[name] = (desc.offset, desc.size)
    return {"size": ctypes.sizeof(cls), "align": ctypes.alignment(cls), "fields": fields}


def _dotted(cls: type[Structure], path: str) -> tuple[int, int]:
    """(absolute offset, size) of a nested field such as ``image.image_embed``."""
    offset, size = 0, 0
    current: Any = cls
    for part in path.split("."):
        desc = getattr(current, part)
        offset += desc.offset
        size = desc.size
        current = dict((f[0], f[1]) for f in current._fields_)[part]
    return offset, size


@pytest.fixture(scope="module", params=["120", "12", "13", "131"])
def probed(request: pytest.FixtureRequest) -> tuple[str, dict[str, dict[str, Any]]]:
    return request.param, probe_layout(request.param, BUILD_DIR)


def test_every_c_struct_has_a_ctypes_twin(probed: tuple[str, dict[str, dict[str, Any]]]) -> None:
    """Each struct the C probe reports has a ctypes class, and no ctypes class lacks a C struct."""
    abi, layout = probed
    assert set(layout) - {"enums"} == set(CTYPES[abi])


def test_sizes_and_offsets_match_c(probed: tuple[str, dict[str, dict[str, Any]]]) -> None:
    """sizeof, alignment and every field's offset and size agree between gcc and ctypes."""
    abi, layout = probed
    for name, cls in CTYPES[abi].items():
        c_side = layout[name]
        py = ctypes_layout(cls)
        assert py["size"] == c_side["size"], name
        assert py["align"] == c_side["align"], name
        assert set(py["fields"]) == set(c_side["fields"]), name
        for field, (off, size) in py["fields"].items():
            assert (off, size) == (c_side["fields"][field], c_side["field_sizes"][field]), f"{name}.{field}"


def test_enum_values_match_c(probed: tuple[str, dict[str, dict[str, Any]]]) -> None:
    """The state, input-type and infer-mode constants equal the C enum values."""
    _abi, layout = probed
    for name, value in layout["enums"].items():
        assert getattr(common, name) == value, name


@pytest.mark.parametrize(("version", "classes"), JSON_CASES, ids=[v for v, _ in JSON_CASES])
def test_layouts_match_fact_sheet_json(version: str, classes: dict[str, type[Structure]]) -> None:
    """Every ctypes struct equals the fact sheet's machine-readable layout of that release."""
    data = layout_json()
    if data is None:
        pytest.skip("rkllm-layout.json not found beside the repo")
    rel = data[version]
    json_structs = {k for k in rel if k[0].isupper()}
    assert json_structs == set(classes)
    for name, cls in classes.items():
        want = rel[name]
        py = ctypes_layout(cls)
        assert py["size"] == want["size"], name
        assert py["align"] == want.get("align", py["align"]), name  # nested entries carry no align
        sizes = want.get("field_sizes", {})
        for field, off in want["fields"].items():
            got_off, got_size = _dotted(cls, field) if "." in field else py["fields"][field]
            assert got_off == off, f"{version} {name}.{field}"
            assert got_size == sizes.get(field, got_size), f"{version} {name}.{field} size"
        assert set(py["fields"]) == {f for f in want["fields"] if "." not in f}, name


@pytest.mark.parametrize("version", list(SPECS))
def test_function_tables_match_fact_sheet_json(version: str) -> None:
    """Each release's spec declares exactly the JSON's functions, with the same number of arguments."""
    data = layout_json()
    if data is None:
        pytest.skip("rkllm-layout.json not found beside the repo")
    funcs = data[version]["functions"]
    spec = SPECS[version]
    assert set(spec.functions) == set(funcs)
    for name, (restype, argtypes) in spec.functions.items():
        assert len(argtypes) == len(funcs[name]["argtypes"]), name
        if name == "rkllm_createDefaultParam":
            assert restype is spec.Param
        else:
            assert restype is ctypes.c_int, name


@pytest.mark.parametrize("version", list(SPECS))
def test_enums_match_fact_sheet_json(version: str) -> None:
    """The enum constants equal the JSON's values for every supported release."""
    data = layout_json()
    if data is None:
        pytest.skip("rkllm-layout.json not found beside the repo")
    for enum in data[version]["enums"].values():
        for name, value in enum["values"].items():
            assert getattr(common, name) == value, name


def test_callback_types_per_family() -> None:
    """1.2.0/1.2.1b1 callbacks return void, 1.2.1+ return int; 1.3 init takes an RKLLMCallback pointer."""
    assert _abi_1_2_0.ResultCallback._restype_ is None
    assert _abi_1_2.ResultCallback._restype_ is ctypes.c_int
    assert _abi_1_3.ResultCallback._restype_ is ctypes.c_int
    init13 = _abi_1_3.SPEC.functions["rkllm_init"][1]
    assert init13[2] is ctypes.POINTER(_abi_1_3.RKLLMCallback)
    assert _abi_1_2.SPEC.functions["rkllm_init"][1][2] is _abi_1_2.ResultCallback
    assert len(_abi_1_2_0.SPEC_1_2_0.functions["rkllm_clear_kv_cache"][1]) == 2
    assert len(_abi_1_2.SPEC.functions["rkllm_clear_kv_cache"][1]) == 4


def test_1_3_1_init_and_run_take_its_own_structs() -> None:
    """1.3.1 declares rkllm_run/run_async with its 208-byte RKLLMInput, everything else as 1.3.0."""
    f130, f131 = _abi_1_3.SPEC.functions, _abi_1_3.SPEC_1_3_1.functions
    assert set(f130) == set(f131)
    for name in f130:
        if name in ("rkllm_run", "rkllm_run_async"):
            assert f131[name][1][1] is ctypes.POINTER(_abi_1_3.RKLLMInput131), name
        else:
            assert f131[name] == f130[name], name
