"""Find librkllmrt.so, tell which release it is without calling into it, and load it.

The RKLLM runtime has no version API, and each ABI family silently mis-reads the structs of the
others, so the version must be known before any struct is touched. First the file itself is
judged, from the blob table's platform and the ELF header: an Android, 32-bit, big-endian,
non-Linux or foreign-architecture build is refused by name, pin or not. Then, in order of trust:

1. the git blob id of the file (``sha1(b"blob <len>\\0" + bytes)``), looked up in the table of
   every release build committed to airockchip/rknn-llm (all platforms);
2. the ``RKLLM SDK (version: X | …)`` line in the file's bytes, the only place the vendor library
   holds its release number (its ``rkllm-runtime version: %s`` is a printf format, and its
   ``rknn llm lib version`` is the bundled rknn runtime's). Several different X: ambiguous;
3. the ``runtime_version`` pin from the config: it wins over 1 and 2 (with a warning when they
   disagree), but a pin naming an unsupported release is an error.

A release the binding has no layout for (1.3.2, say) is refused unless pinned, at the user's risk.
After ``dlopen`` the exported symbols are checked against the family: a missing required function
is a refusal, a missing optional one is only undeclared. Nothing here runs at import.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rkllmd import logface
from rkllmd.errors import LibraryVersionError, RuntimeNotInstalled
from rkllmd.runtime._libident import (
    Detection,
    LoadedLibrary,
    Method,
    declare,
    dlopen,
    gather,
    is_newer,
    scan_strings,
    version_key,
)
from rkllmd.runtime.rkllm._abi_common import FUNCTION_SINCE, AbiSpec
from rkllmd.runtime.rkllm._elf import LINUX_BUILD

log = logface.get_logger(__name__)

LIB_NAME = "librkllmrt.so"
SEARCH_DIRS: tuple[Path, ...] = (
    Path("/usr/lib"),
    Path("/usr/local/lib"),
    Path("/usr/lib/aarch64-linux-gnu"),
    Path("/usr/lib64"),
    Path("/opt/rkllm/lib"),
)

# Every release known to exist, oldest first (1.2.1b1 is the beta before 1.2.1).
RELEASES: tuple[str, ...] = (
    "1.0.0", "1.0.1", "1.0.2", "1.1.0", "1.1.1", "1.1.2", "1.1.3", "1.1.4",
    "1.2.0", "1.2.1b1", "1.2.1", "1.2.2", "1.2.3", "1.3.0", "1.3.1",
)  # fmt: skip

# Supported release -> (ABI module, attribute holding its AbiSpec): the one place a version picks
# its layout. 1.3.1's is second-hand (AbiSpec.layout_source, docs/RKLLM.md).
SUPPORTED: dict[str, tuple[str, str]] = {
    "1.2.0": ("_abi_1_2_0", "SPEC_1_2_0"),
    "1.2.1b1": ("_abi_1_2_0", "SPEC_1_2_1B1"),
    "1.2.1": ("_abi_1_2", "SPEC"),
    "1.2.2": ("_abi_1_2", "SPEC"),
    "1.2.3": ("_abi_1_2", "SPEC"),
    "1.3.0": ("_abi_1_3", "SPEC"),
    "1.3.1": ("_abi_1_3", "SPEC_1_3_1"),
}

# Git blob ids of librkllmrt.so in airockchip/rknn-llm -> (release, platform). 1.0.0 and 1.0.2 are
# the untagged commits b81deb2 and 92fce84. Only files taken unchanged from that repo match.
BLOB_IDS: dict[str, tuple[str, str]] = {
    "53e00993ebbc7797df09673f806479e8642db946": ("1.0.0", "linux_aarch64"),
    "0b93495ab81d86d61dfbbb6a6481d7881cc5a557": ("1.0.0", "android_arm64-v8a"),
    "a026cbe60905af0ad6c07dfa2fcc339dd4b9fa10": ("1.0.1", "linux_aarch64"),
    "ba8f0763753069586541993e4ed66a68f9596ce4": ("1.0.1", "android_arm64-v8a"),
    "c913ab1569dfed48916c05fcd898f8d3f9dafe04": ("1.0.2", "linux_aarch64"),
    "2f7e7e97447cf9515d92e94f456ae7ec5795dda8": ("1.0.2", "android_arm64-v8a"),
    "66dfdc7c25cdca9ccf9930798118e17abf7592ff": ("1.1.0", "linux_aarch64"),
    "9b5ff7f87f5f49655428de4f3dbef613d5a6b6c5": ("1.1.0", "android_arm64-v8a"),
    "bfca051375287d0f5aa754a7b8681b4ede52e259": ("1.1.1", "linux_aarch64"),
    "9cb37c73de4f51650f61ad3427bdf11c558ae499": ("1.1.1", "android_arm64-v8a"),
    "e8f4afc38c7394beeff83003dbc772412f649a44": ("1.1.2", "linux_aarch64"),
    "87b6735ebb37a88616e559c81ce7700ae26d440b": ("1.1.2", "android_arm64-v8a"),
    "68e79327e82f675413956be615f48c62ccd0f16e": ("1.1.3", "linux_aarch64"),
    "ecc05306766660bd79a708200948f3d009efe4ba": ("1.1.3", "android_arm64-v8a"),
    "3bb8cb6172c4c06e1c622c8f8c579888378784f4": ("1.1.4", "linux_aarch64"),
    "3f173bdf016d346690d2ccad52480efc53234b3e": ("1.1.4", "android_arm64-v8a"),
    "d45ee9b8dcb9ef27d7dd875ce3be3d5e6dfb654d": ("1.2.0", "linux_aarch64"),
    "d61b58e295a1e88f3c690df316bfd83eec4bd16d": ("1.2.0", "android_arm64-v8a"),
    "db041c01bba5e0e8f624bb2ff50d48825dde1bfc": ("1.2.1b1", "linux_aarch64"),
    "08dc9db1a201c0a87f596c7667d5dc98ca16a7d9": ("1.2.1b1", "android_arm64-v8a"),
    "6b9439d59f2fe4bb8ef5ee2b09c102f1bf993da9": ("1.2.1", "linux_aarch64"),
    "7025f35825e04ad75d839d10392e3c02cc88e57a": ("1.2.1", "linux_armhf"),
    "4464ccb4f167d72dbd61fe1c92b44976ed45dda5": ("1.2.1", "android_arm64-v8a"),
    "232dc7a18d14dd0c47fd9f6f3b8581e07cdddc92": ("1.2.1", "android_armeabi-v7a"),
    "8ed9cca16f8d5ad8f7cdd7d393de6561182b3395": ("1.2.2", "linux_aarch64"),
    "d5953fdad6e60521f1dc696f6d638425c93ba08d": ("1.2.2", "linux_armhf"),
    "471639b60c2c7fdcb2c8dffd553acc8548d10c2e": ("1.2.2", "android_arm64-v8a"),
    "b7310ed2a1c1c054adf82c8883d9b339b5e7d1a0": ("1.2.2", "android_armeabi-v7a"),
    "0084abc34ab43359cfa9fd5d4c92ece34127dbd0": ("1.2.3", "linux_aarch64"),
    "fe1ca6849603a770c54f82d26b826a120c79a01a": ("1.2.3", "linux_armhf"),
    "348986e7a8170ddb2c3b43e99257d2e64d9699f6": ("1.2.3", "android_arm64-v8a"),
    "d53acaf083edd95a1bac3513cc5c5241c1cc272c": ("1.2.3", "android_armeabi-v7a"),
    "34167b32f99cb7ab19e21fb579fb750d96b878f1": ("1.3.0", "linux_aarch64"),
    "17c9063b46168c4e7d093d6fedb097874f92d076": ("1.3.0", "linux_armhf"),
    "5f0bd5f39bd05263a59786733687d29e66982aa6": ("1.3.0", "android_arm64-v8a"),
    "f96c82ba91731e14905d95bda44555b191dbe996": ("1.3.0", "android_armeabi-v7a"),
}

# The vendor's own release line, e.g. "RKLLM SDK (version: 1.2.1b1 | target: Linux | build: …)".
# Anchored on the whole prefix: never a bare "version:" (the same file holds "rknn llm lib version:
# 2.3.3b0", the bundled rknn runtime's). Any token is captured, so "1.3.0rc1" is named, not skipped.
_SDK_RE = re.compile(rb"RKLLM SDK \(version: ([0-9A-Za-z][0-9A-Za-z.+_-]{0,31}) \|")

# "string" = the RKLLM SDK line above.
_BY = {"hash": "git blob id", "string": "its RKLLM SDK line", "pin": "pin"}


def supported_versions() -> str:
    return ", ".join(SUPPORTED)


def newest_supported() -> str:
    return max(SUPPORTED, key=version_key)


def scan_sdk_versions(path: Path) -> tuple[str, ...]:
    """Every distinct X of ``RKLLM SDK (version: X | …)`` in the file, in order of appearance."""
    return scan_strings(path, _SDK_RE)


def find_library(*configured: Path | None, search_dirs: tuple[Path, ...] = SEARCH_DIRS) -> Path:
    """The first configured path (model, then [rkllm]); else the linker's and the usual places."""
    for cand in configured:
        if cand is None:
            continue
        if cand.is_file():
            return cand
        raise RuntimeNotInstalled(f"the configured RKLLM library {cand} does not exist", library=str(cand))
    tried: list[str] = []
    dirs = [Path(d) for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d] + list(search_dirs)
    import ctypes.util  # here, not at import: it brings subprocess, shutil and tempfile along

    found = ctypes.util.find_library("rkllmrt")
    if found:
        if os.path.isabs(found) and os.path.isfile(found):
            return Path(found)
        for d in dirs:
            if (d / found).is_file():
                return d / found
        tried.append(f"find_library -> {found}")
    for d in dirs:
        p = d / LIB_NAME
        tried.append(str(p))
        if p.is_file():
            return p
    raise RuntimeNotInstalled(
        f"{LIB_NAME} not found (tried {', '.join(tried) or 'nothing'}); install the RKLLM runtime or set "
        'library = "/path/to/librkllmrt.so" under [rkllm] or in the model\'s section',
    )


def detect_version(
    path: Path, pin: str = "auto", extra_blob_ids: Mapping[str, tuple[str, str]] | None = None
) -> Detection:
    """Identify the release of ``path`` without loading it (ELF header, hash, SDK line, then pin).

    ``extra_blob_ids`` adds ``{blob_id: (release, platform)}`` entries to the built-in table
    (tests use it; a site with a repackaged runtime could too). Raises LibraryVersionError for
    Android, 32-bit and foreign builds, unsupported or unknown releases, and libraries it cannot
    place.
    """
    seen = gather(path, {**BLOB_IDS, **(extra_blob_ids or {})}, _SDK_RE, "RKLLM", LINUX_BUILD)
    blob, sdk, found, platform_name = seen.blob_id, seen.strings, seen.found, seen.platform
    if pin and pin != "auto":
        if pin not in SUPPORTED:
            known = "a known but unsupported" if pin in RELEASES else "an unknown"
            raise LibraryVersionError(
                f"runtime_version = {pin!r} pins {known} RKLLM release; supported: {supported_versions()}"
            )
        if found and found[0] != pin:
            event = "rkllm_version_pin_disagrees" if found[0] in SUPPORTED else "rkllm_version_pin_overrides"
            log.warning(
                event,
                pin=pin,
                detected=found[0],
                by=found[1],
                library=str(path),
                risk="the struct layouts of the pinned release are used as they are: a mismatch crashes",
            )
        elif len(sdk) > 1:
            log.warning(
                "rkllm_version_pin_overrides", pin=pin, detected=list(sdk), by="string", library=str(path)
            )
        return Detection(path, pin, "pin", blob, platform_name)
    if len(sdk) > 1:
        raise LibraryVersionError(
            f"cannot tell which RKLLM runtime {path} is: it holds RKLLM SDK lines of several releases "
            f"({', '.join(sdk)}). {_pin_advice()}",
            library=str(path),
            blob_id=blob,
            versions=list(sdk),
        )
    if found is None:
        raise LibraryVersionError(
            f"cannot tell which RKLLM runtime {path} is: its git blob id {blob} is not a known release build "
            f"and it holds no 'RKLLM SDK (version: X | …)' line. {_pin_advice()}",
            library=str(path),
            blob_id=blob,
        )
    version, method = found
    if version not in SUPPORTED:
        raise _unsupported(path, version, method)
    if seen.elf is None:
        raise LibraryVersionError(f"{path} is not an ELF shared library", library=str(path))
    return Detection(path, version, method, blob, platform_name)


def _pin_advice(lead: str = "If you know the release, pin it") -> str:
    return (
        f"{lead} in the model's config, at your own risk (a wrong layout typically lets rkllm_init "
        f'succeed and then crashes in rkllm_run): runtime_version = "{newest_supported()}" '
        f"(supported: {supported_versions()})"
    )


def _unsupported(path: Path, version: str, method: Method) -> LibraryVersionError:
    """The refusal for a library placed as a release rkllmd has no layout for."""
    newest = newest_supported()
    newer = is_newer(version, newest)
    head = f"{path} is RKLLM runtime {version} (by {_BY[method]}), which rkllmd does not support"
    if newer:
        why = (
            f"it is newer than {newest}, the newest release whose struct layouts this rkllmd knows, "
            "and rkllmd does not guess a layout"
        )
        tail = _pin_advice("To try it anyway, pin the supported release you believe it matches")
    elif version in RELEASES:
        why = "its struct layouts differ from every supported release"
        tail = f"Install a supported runtime (supported: {supported_versions()})"
    else:
        why = "it is not a release rkllmd knows, and rkllmd does not guess a layout"
        tail = _pin_advice("To try it anyway, pin the supported release you believe it matches")
    return LibraryVersionError(f"{head}: {why}. {tail}", library=str(path), version=version)


def spec_for(version: str) -> AbiSpec:
    """The ctypes layout of a supported release (imports its ABI module on first use)."""
    mod_name, attr = SUPPORTED[version]
    mod = importlib.import_module(f"rkllmd.runtime.rkllm.{mod_name}")
    spec: AbiSpec = getattr(mod, attr)
    return spec


# Symbols whose presence or absence tells the families apart (checked after dlopen, no call).
_MARKERS_1_2_1 = ("rkllm_set_function_tools", "rkllm_get_kv_cache_size", "rkllm_set_cross_attn_params")


def _symbols_guess(cdll: ctypes.CDLL) -> str:
    # Oldest first: the first missing symbol names the newest release family that lacks it.
    for symbol, guess in (
        ("rkllm_abort", "1.0.0"),
        ("rkllm_load_lora", "1.0.x"),
        ("rkllm_set_chat_template", "1.1.x"),
        ("rkllm_set_function_tools", "1.2.0 or 1.2.1b1"),
    ):
        if not hasattr(cdll, symbol):
            return guess
    return "1.2.1 … 1.3.1"


class RkllmLibrary(LoadedLibrary):
    """A loaded librkllmrt.so with argtypes/restype declared for its release."""

    def __init__(
        self, detection: Detection, cdll: ctypes.CDLL, spec: AbiSpec, exported: frozenset[str] | None = None
    ) -> None:
        # The functions of spec that the file exports (all required ones, maybe not every optional).
        super().__init__(detection, cdll, frozenset(spec.functions) if exported is None else exported)
        self.spec = spec

    @classmethod
    def open(
        cls, path: Path, pin: str = "auto", extra_blob_ids: Mapping[str, tuple[str, str]] | None = None
    ) -> RkllmLibrary:
        """Detect, dlopen, check the symbols and declare every exported function of the release."""
        det = detect_version(path, pin, extra_blob_ids)
        spec = spec_for(det.version)
        cdll = dlopen(path)
        missing = [name for name in spec.required if not hasattr(cdll, name)]
        unexpected = [] if spec.family != "D" else [n for n in _MARKERS_1_2_1 if hasattr(cdll, n)]
        if missing or unexpected:
            what = f"lacks {', '.join(missing)}" if missing else f"exports {', '.join(unexpected)}"
            raise LibraryVersionError(
                f"{path} was identified as RKLLM {det.version} (by {_BY[det.method]}) but {what}; its "
                f"symbols look like {_symbols_guess(cdll)}. Refusing to guess the struct layouts; supported: "
                f"{supported_versions()}",
                library=str(path),
            )
        exported = declare(cdll, spec.functions)
        absent = sorted(set(spec.functions) - exported)
        if absent:
            log.warning("rkllm_optional_functions_missing", library=str(path), functions=absent)
        log.info(
            "rkllm_library_loaded",
            library=str(path),
            version=det.version,
            by=det.method,
            abi_family=spec.family,
            layout_source=spec.layout_source,
        )
        return cls(det, cdll, spec, exported)

    def fn(self, name: str) -> Any:
        """The declared C function ``name``; LibraryVersionError when this release or build lacks it."""
        if name not in self.spec.functions:
            since = FUNCTION_SINCE.get(name, "?")
            raise LibraryVersionError(
                f"{name} requires runtime ≥ {since}, loaded {self.version}", function=name
            )
        if name not in self.exported:
            added = FUNCTION_SINCE.get(name)
            need = f"requires runtime ≥ {added} built with it" if added else "is optional"
            raise LibraryVersionError(
                f"{name} {need}: the loaded {self.version} library {self.path} does not export it",
                function=name,
                library=str(self.path),
            )
        return getattr(self.cdll, name)
