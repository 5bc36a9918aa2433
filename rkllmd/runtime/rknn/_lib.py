"""Find librknnrt.so, tell which release it is without calling into it, and load it.

The RKNN runtime does have a version query (``rknn_query(RKNN_QUERY_SDK_VERSION)``), but only on a
context, i.e. after ``rknn_init`` has read our structs; so, as for librkllmrt, the release is
decided from the file first, and the query is logged afterwards as a cross-check (encoder.py).
The file is judged by the same ELF checks as librkllmrt (an Android, 32-bit, big-endian,
non-Linux or foreign build is refused by name), then, in order of trust:

1. its git blob id, looked up in the table of every librknnrt.so committed to
   airockchip/rknn-toolkit2 at a release tag (all four platforms);
2. its ``librknnrt version: X (<commit>@<date>)`` string, the literal the vendor library holds
   (seen in the 1.6.0 build; the runtime logs it at init);
3. a pin (``pin=``): it wins over 1 and 2, with a warning when they disagree.

The structs and functions rkllmd uses are identical in every header from 1.6.0 to 2.3.2, so any
release in that range is accepted, one between two checked headers too; an older one or a newer
one is refused (a newer one can be pinned to a checked release, at the user's risk). Nothing here
runs at import.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

from rkllmd import logface
from rkllmd.errors import LibraryVersionError, RuntimeNotInstalled
from rkllmd.runtime._libident import Detection, LoadedLibrary, declare, dlopen, gather, is_newer, version_key
from rkllmd.runtime.rknn._abi import FUNCTION_SINCE, FUNCTIONS, REQUIRED

log = logface.get_logger(__name__)

LIB_NAME = "librknnrt.so"
LINUX_BUILD = "rknpu2/runtime/Linux/librknn_api/aarch64/librknnrt.so"
SEARCH_DIRS: tuple[Path, ...] = (
    Path("/usr/lib"),
    Path("/usr/local/lib"),
    Path("/usr/lib/aarch64-linux-gnu"),
    Path("/usr/lib64"),
)

# Releases whose rknn_api.h was compiled and compared with _abi.py (docs/VISION.md), oldest first.
CHECKED_RELEASES: tuple[str, ...] = ("1.6.0", "2.0.0b0", "2.1.0", "2.2.0", "2.3.0", "2.3.2")
OLDEST, NEWEST = CHECKED_RELEASES[0], CHECKED_RELEASES[-1]

# Git blob ids of librknnrt.so in airockchip/rknn-toolkit2 at its release tags (rknpu2/runtime/…)
# -> (release, platform). airockchip/rknn-llm's multimodal demo ships the 2.3.2 files unchanged.
BLOB_IDS: dict[str, tuple[str, str]] = {
    "39e5cab555ed7ce74be8a79ad63f27e941671967": ("1.6.0", "linux_aarch64"),
    "c55ef301a2cfbc22c3eefd57442e82ed1474c392": ("1.6.0", "linux_armhf"),
    "ab04870bfe2e2a6a7ea5c7ab3066dfb87d236e22": ("1.6.0", "android_arm64-v8a"),
    "225b81d6dc3901b4dfe7eb0b4f0ef291ab21a235": ("1.6.0", "android_armeabi-v7a"),
    "3329ebc6db5f683e8c44d90e8cf4ec06bc697087": ("2.0.0b0", "linux_aarch64"),
    "8e40b8a2208ebfde5b6a05d1d7f68d7d2f96e92b": ("2.0.0b0", "linux_armhf"),
    "2891aeac67c1f36a056fe0ac6a2f5aaf77d53a70": ("2.0.0b0", "android_arm64-v8a"),
    "0cbcb455635ed1da16b14760bd15836dbcb87a18": ("2.0.0b0", "android_armeabi-v7a"),
    "3d2b0b03372a446a77c56fba1988d6c47ac30618": ("2.1.0", "linux_aarch64"),
    "a34a041821b18654676ea9600013b0f41c8bcf5f": ("2.1.0", "linux_armhf"),
    "057a7de66d642a04cff632b38873b927cedfa9b2": ("2.1.0", "android_arm64-v8a"),
    "0e4041d40ac6df571656fd9280a2597ecdcabfc5": ("2.1.0", "android_armeabi-v7a"),
    "22362e8704bfb83245202ea68a2d293056ffb749": ("2.2.0", "linux_aarch64"),
    "d12a4f46a35b5bf197d4a53c31193028dcd8109d": ("2.2.0", "linux_armhf"),
    "dadb2a9184096c13d15a774bf55d961b2d7171a0": ("2.2.0", "android_arm64-v8a"),
    "364c7f823465e8fb2fe710d7854466a19b36cde3": ("2.2.0", "android_armeabi-v7a"),
    "ec8a545124751e08aaf6f67c1dc433afcd2e154b": ("2.3.0", "linux_aarch64"),
    "3b15274c6b4a76bbb54e81004553c8a762e37c69": ("2.3.0", "linux_armhf"),
    "165f28ecb95f7cbeaf198e23c745d501cbf70a22": ("2.3.0", "android_arm64-v8a"),
    "499146db9f90ba376822764772ab2adb93e5afe1": ("2.3.0", "android_armeabi-v7a"),
    "e53a2b6ec332f2863df5c70cd9f6ebec9dbef397": ("2.3.2", "linux_aarch64"),
    "7187eabef19aeabec6d04b923d2de2df14b790e6": ("2.3.2", "linux_armhf"),
    "843401f25fcdfb78163f752487d25ba036162f0b": ("2.3.2", "android_arm64-v8a"),
    "0289f31a2ed8b48d7756c80b84736cb72c60b94c": ("2.3.2", "android_armeabi-v7a"),
}

# "librknnrt version: 1.6.0 (9a7b5d24c@2023-12-13T17:32:13)": anchored on the library's own name,
# so the "rknn llm lib version: …" line inside librkllmrt.so (its bundled copy) never matches.
_VERSION_RE = re.compile(rb"librknnrt version: ([0-9][0-9A-Za-z.+_-]{0,31}) \(")

_BY = {"hash": "git blob id", "string": "its 'librknnrt version' string", "pin": "pin"}


def in_checked_range(version: str) -> bool:
    try:
        key = version_key(version)
    except ValueError:
        return False
    return version_key(OLDEST) <= key <= version_key(NEWEST)


def find_library(configured: Path | None = None, search_dirs: tuple[Path, ...] = SEARCH_DIRS) -> Path:
    """The configured path, else the linker's choice and the usual places."""
    if configured is not None:
        if configured.is_file():
            return configured
        raise RuntimeNotInstalled(f"the configured RKNN library {configured} does not exist")
    import ctypes.util  # here, not at import: it brings subprocess and tempfile along

    dirs = [Path(d) for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d] + list(search_dirs)
    found = ctypes.util.find_library("rknnrt")
    if found and os.path.isabs(found) and os.path.isfile(found):
        return Path(found)
    for d in dirs:
        for name in (found, LIB_NAME):
            if name and (d / name).is_file():
                return d / name
    raise RuntimeNotInstalled(
        f"{LIB_NAME} (the RKNN runtime, which runs a vision model's encoder) not found in "
        f"{', '.join(str(d) for d in dirs)}; install it from the vendor's {LINUX_BUILD}",
    )


def detect_version(
    path: Path, pin: str = "auto", extra_blob_ids: dict[str, tuple[str, str]] | None = None
) -> Detection:
    """Identify the release of ``path`` without loading it (hash, ELF header, string, then pin)."""
    seen = gather(path, {**BLOB_IDS, **(extra_blob_ids or {})}, _VERSION_RE, "librknnrt", LINUX_BUILD)
    blob, strings, found = seen.blob_id, seen.strings, seen.found
    if pin and pin != "auto":
        if pin not in CHECKED_RELEASES:
            raise LibraryVersionError(
                f"rknn runtime pin {pin!r} is not a release whose header rkllmd checked "
                f"({', '.join(CHECKED_RELEASES)})"
            )
        if found and found[0] != pin:
            log.warning(
                "rknn_version_pin_overrides", pin=pin, detected=found[0], by=found[1], library=str(path)
            )
        return Detection(path, pin, "pin", blob, seen.platform)
    if found is None:
        several = (
            f"it holds several version strings ({', '.join(strings)})"
            if strings
            else "its git blob id is not a known release build and it holds no "
            "'librknnrt version: X (…)' string"
        )
        raise LibraryVersionError(
            f"cannot tell which RKNN runtime {path} is: {several}. If you know the release, pin it to "
            f"one whose header rkllmd checked ({', '.join(CHECKED_RELEASES)})",
            library=str(path),
            blob_id=blob,
        )
    version, method = found
    if not in_checked_range(version):
        why = (
            f"newer than {NEWEST}, the newest release whose rknn_api.h rkllmd checked; pin {NEWEST} to try "
            "it at your own risk"
            if is_newer(version, NEWEST)
            else f"not between {OLDEST} and {NEWEST}, the releases whose rknn_api.h rkllmd checked; "
            f"install {NEWEST}"
        )
        raise LibraryVersionError(
            f"{path} is RKNN runtime {version} (by {_BY[method]}), which rkllmd does not bind: {why}",
            library=str(path),
            version=version,
        )
    if seen.elf is None:
        raise LibraryVersionError(f"{path} is not an ELF shared library", library=str(path))
    return Detection(path, version, method, blob, seen.platform)


class RknnLibrary(LoadedLibrary):
    """A loaded librknnrt.so with argtypes/restype declared for every function rkllmd calls."""

    @classmethod
    def open(
        cls, path: Path, pin: str = "auto", extra_blob_ids: dict[str, tuple[str, str]] | None = None
    ) -> RknnLibrary:
        """Detect, dlopen, check the required symbols and declare every exported function."""
        det = detect_version(path, pin, extra_blob_ids)
        cdll = dlopen(path)
        missing = [name for name in REQUIRED if not hasattr(cdll, name)]
        if missing:
            raise LibraryVersionError(
                f"{path} was identified as RKNN runtime {det.version} (by {_BY[det.method]}) but lacks "
                f"{', '.join(missing)}: it is not a librknnrt.so rkllmd can use",
                library=str(path),
            )
        exported = declare(cdll, FUNCTIONS)
        log.info("rknn_library_loaded", library=str(path), version=det.version, by=det.method)
        return cls(det, cdll, exported)

    def fn(self, name: str) -> Any:
        """The declared C function ``name``; LibraryVersionError when the loaded file lacks it."""
        if name not in self.exported:
            since = FUNCTION_SINCE.get(name, "?")
            raise LibraryVersionError(
                f"{name} requires runtime ≥ {since} built with it: the loaded RKNN {self.version} "
                f"library {self.path} does not export it",
                function=name,
                library=str(self.path),
            )
        return getattr(self.cdll, name)


_loaded: dict[tuple[Path, str], RknnLibrary] = {}
_loaded_lock = threading.Lock()


def load_library(path: Path | None = None, pin: str = "auto") -> RknnLibrary:
    """The library at ``path`` (or found), identified and loaded once per process; any thread."""
    lib_path = find_library(path).resolve()
    with _loaded_lock:
        lib = _loaded.get((lib_path, pin))
        if lib is None:
            lib = _loaded[(lib_path, pin)] = RknnLibrary.open(lib_path, pin)
        return lib
