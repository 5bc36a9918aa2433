"""The steps that tell which release a vendor library file is, before it is loaded: shared by
librkllmrt.so (``rkllm/_lib.py``) and librknnrt.so (``rknn/_lib.py``).

Each binding keeps its own table of git blob ids, its own version-string pattern, its own releases
and its own words for a release it does not bind; the steps are the same: the file's git blob id
looked up in the table, a build the table places on Android or 32-bit ARM refused by name, the
ELF header judged (``rkllm/_elf.py``: Android, 32-bit, big-endian, non-Linux or foreign builds),
and, when the hash did not match, the version strings in the file's bytes read. After ``dlopen``,
every function the file exports gets its declared argtypes and restype.

Pure file reading and ctypes declarations; any thread. Nothing here runs at import.
"""

from __future__ import annotations

import ctypes
import importlib
import mmap
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rkllmd.errors import LibraryVersionError, RuntimeNotInstalled
from rkllmd.runtime.rkllm._elf import ElfInfo, check_loadable, read_elf

#: how a release was decided: the blob table, the file's version string, or the config's pin
Method = Literal["hash", "string", "pin"]
#: {git blob id: (release, platform)}, the vendor's builds
BlobTable = Mapping[str, tuple[str, str]]
_32BIT_PLATFORMS = frozenset({"linux_armhf", "android_armeabi-v7a"})


@dataclass(frozen=True)
class Detection:
    """Which release a library file is, and how that was decided."""

    path: Path
    version: str
    method: Method
    blob_id: str
    platform: str | None = None  # from the blob table, when the hash matched


@dataclass(frozen=True)
class Evidence:
    """What the file says about its release before any pin is weighed."""

    blob_id: str
    elf: ElfInfo | None
    by_hash: tuple[str, str] | None  # (release, platform) from the blob table
    strings: tuple[str, ...]  # distinct version strings, read only when the hash did not match

    @property
    def found(self) -> tuple[str, Method] | None:
        """The release the file names: by hash, else by its one version string; None otherwise."""
        if self.by_hash:
            return self.by_hash[0], "hash"
        return (self.strings[0], "string") if len(self.strings) == 1 else None

    @property
    def platform(self) -> str | None:
        return self.by_hash[1] if self.by_hash else None


def gather(
    path: Path, table: BlobTable, pattern: re.Pattern[bytes], product: str, linux_build: str
) -> Evidence:
    """Hash ``path`` and look it up in ``table``, refuse a build for another platform (by the
    table, then by its ELF header, naming ``product`` and the vendor's ``linux_build`` to use
    instead), and read ``pattern``'s versions when the hash did not match."""
    blob = git_blob_id(path)
    by_hash = table.get(blob)
    if by_hash:
        _check_platform(path, product, *by_hash, linux_build)
    elf = read_elf(path)
    if elf is not None:
        check_loadable(path, elf, linux_build)
    return Evidence(blob, elf, by_hash, () if by_hash else scan_strings(path, pattern))


def _check_platform(path: Path, product: str, release: str, platform_name: str, linux_build: str) -> None:
    """Refuse a build the blob table places on a platform rkllmd does not run on."""
    if platform_name.startswith("android"):
        bits = " (32-bit)" if platform_name in _32BIT_PLATFORMS else ""
        raise LibraryVersionError(
            f"{path} is the {platform_name} build of {product} {release}{bits} (by git blob id): an Android "
            f"build. rkllmd runs on Linux: use the Linux build of the same release ({linux_build})",
            library=str(path),
        )
    if platform_name in _32BIT_PLATFORMS:
        raise LibraryVersionError(
            f"{path} is the {platform_name} build of {product} {release} (32-bit ARM, by git blob id); "
            f"rkllmd binds the 64-bit (LP64) layouts only: use the aarch64 build ({linux_build})",
            library=str(path),
        )


def _sha1() -> Any:
    """A SHA-1: CPython's own, as hashlib's maps OpenSSL's libcrypto (3.5 MB) into the worker."""
    try:
        mod: Any = importlib.import_module("_sha1")
    except ImportError:  # pragma: no cover - an interpreter without it
        import hashlib as mod
    return mod.sha1(usedforsecurity=False)


def git_blob_id(path: Path) -> str:
    """The id ``git hash-object`` would give the file: sha1 of ``b"blob <len>\\0"`` + contents."""
    h = _sha1()
    h.update(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return str(h.hexdigest())


def scan_strings(path: Path, pattern: re.Pattern[bytes]) -> tuple[str, ...]:
    """Every distinct first group of ``pattern`` in the file's bytes, in order of appearance."""
    with path.open("rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return ()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return tuple(dict.fromkeys(m.group(1).decode("ascii") for m in pattern.finditer(mm)))


def version_key(version: str) -> tuple[int, int, int, int, int]:
    """Orders releases; a beta (1.2.1b1, 2.0.0b0, 2.0.0-beta0) sorts before its release."""
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)(?:-?b(?:eta)?(\d+))?", version)
    if not m:
        raise ValueError(f"not a release number: {version!r}")
    beta = m.group(4)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)), 0 if beta else 1, int(beta or 0))


def is_newer(version: str, than: str) -> bool:
    """Whether ``version`` is a release number after ``than`` (False for one that is none)."""
    try:
        return version_key(version) > version_key(than)
    except ValueError:
        return False


def dlopen(path: Path) -> ctypes.CDLL:
    try:
        return ctypes.CDLL(str(path))
    except OSError as exc:
        raise RuntimeNotInstalled(f"cannot load {path}: {exc}", library=str(path)) from exc


def declare(cdll: ctypes.CDLL, functions: Mapping[str, tuple[Any, list[Any]]]) -> frozenset[str]:
    """Declare restype and argtypes of every function of ``functions`` that ``cdll`` exports;
    the names it exports."""
    exported = frozenset(name for name in functions if hasattr(cdll, name))
    for name in exported:
        fn = getattr(cdll, name)
        fn.restype, fn.argtypes = functions[name]
    return exported


class LoadedLibrary:
    """A dlopened vendor library: the release it was identified as, and the functions of its
    binding that the file exports, declared."""

    def __init__(self, detection: Detection, cdll: ctypes.CDLL, exported: frozenset[str]) -> None:
        self.detection = detection
        self.cdll = cdll
        self.exported = exported

    @property
    def version(self) -> str:
        return self.detection.version

    @property
    def path(self) -> Path:
        return self.detection.path

    def has(self, name: str) -> bool:
        """Whether ``name`` is part of the binding and exported by the loaded file."""
        return name in self.exported
