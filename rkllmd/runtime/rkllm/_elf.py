"""The ELF header of a library file, read before dlopen, and the builds rkllmd must refuse by name.

Pure file reading: nothing is loaded or executed. An Android, 32-bit, big-endian, non-Linux or
foreign-architecture build would otherwise fail dlopen with a bare "cannot load" (or worse, load
with the wrong struct layouts), so it is named here instead.
"""

from __future__ import annotations

import mmap
import os
import platform
import struct
from dataclasses import dataclass
from pathlib import Path

from rkllmd.errors import LibraryVersionError

LINUX_BUILD = "rkllm-runtime/Linux/librkllm_api/aarch64/librkllmrt.so"

ET_DYN = 3
EM_386, EM_ARM, EM_X86_64, EM_AARCH64 = 3, 40, 62, 183
_EM_NAMES: dict[int, str] = {
    EM_386: "x86", 8: "MIPS", 20: "PowerPC", 21: "PowerPC64", 22: "s390", EM_ARM: "ARM",
    EM_X86_64: "x86_64", EM_AARCH64: "aarch64", 243: "RISC-V", 258: "LoongArch",
}  # fmt: skip
# platform.machine() spellings -> e_machine. A host not listed is not compared.
_HOST_EM: dict[str, int] = {
    "x86_64": EM_X86_64, "amd64": EM_X86_64, "i386": EM_386, "i486": EM_386, "i586": EM_386,
    "i686": EM_386, "aarch64": EM_AARCH64, "arm64": EM_AARCH64, "armv6l": EM_ARM, "armv7l": EM_ARM,
    "armv8l": EM_ARM, "arm": EM_ARM, "riscv64": 243, "ppc64": 21, "ppc64le": 21, "s390x": 22,
    "loongarch64": 258,
}  # fmt: skip
_ET_NAMES = {0: "none", 1: "a relocatable object", 2: "an executable", 4: "a core dump"}
# EI_OSABI: 0 (System V) and 3 (GNU) are what Linux builds carry; Android builds carry 0 too.
_OSABI_LINUX = frozenset({0, 3})
_OSABI_NAMES = {1: "HP-UX", 2: "NetBSD", 6: "Solaris", 7: "AIX", 9: "FreeBSD", 12: "OpenBSD"}
_ANDROID_NEEDED = frozenset({"liblog.so", "libandroid.so"})
PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE = 1, 2, 3, 4
DT_NULL, DT_NEEDED, DT_STRTAB = 0, 1, 5

_Buf = bytes | mmap.mmap


@dataclass(frozen=True)
class ElfInfo:
    """What an ELF file's headers say about where it can be loaded."""

    bits: int  # EI_CLASS: 32 or 64
    little_endian: bool  # EI_DATA
    osabi: int  # EI_OSABI
    e_type: int  # ET_DYN (3) for a shared library
    machine: int  # e_machine
    # An NDK "Android" ident note (bionic's crtbrand), /system/bin/linker* as PT_INTERP, or a
    # DT_NEEDED on liblog.so / libandroid.so.
    android: bool = False
    needed: tuple[str, ...] = ()

    @property
    def machine_name(self) -> str:
        return _EM_NAMES.get(self.machine, f"ELF machine {self.machine}")


def host_machine() -> str:
    """This machine's architecture as platform.machine() spells it."""
    return platform.machine()


def read_elf(path: Path) -> ElfInfo | None:
    """The ELF identity of ``path``; None when it is not ELF or its file header is cut or invalid."""
    with path.open("rb") as f:
        if os.fstat(f.fileno()).st_size < 52:  # the smallest (32-bit) ELF header
            return None
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return parse_elf(mm)


def parse_elf(buf: _Buf) -> ElfInfo | None:
    """ElfInfo from the bytes of an ELF file (see read_elf)."""
    if len(buf) < 52 or buf[:4] != b"\x7fELF":
        return None
    bits = {1: 32, 2: 64}.get(buf[4])
    order = {1: "<", 2: ">"}.get(buf[5])
    if bits is None or order is None:
        return None
    # e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags, e_ehsize, e_phentsize,
    # e_phnum, e_shentsize, e_shnum, e_shstrndx (after the 16-byte e_ident)
    fmt = order + ("HHIQQQIHHHHHH" if bits == 64 else "HHIIIIIHHHHHH")
    if len(buf) < 16 + struct.calcsize(fmt):
        return None
    e_type, machine, _v, _e, phoff, _s, _f, _eh, phentsize, phnum, *_ = struct.unpack_from(fmt, buf, 16)
    try:
        needed, android = _program_info(buf, order, bits, phoff, phentsize, phnum)
    except (struct.error, ValueError, IndexError):  # broken program headers: judge by the header
        needed, android = (), False
    return ElfInfo(bits, order == "<", buf[7], e_type, machine, android, needed)


def _program_info(
    buf: _Buf, order: str, bits: int, phoff: int, phentsize: int, phnum: int
) -> tuple[tuple[str, ...], bool]:
    # Elf64_Phdr: type, flags, offset, vaddr, paddr, filesz, memsz, align;
    # Elf32_Phdr: type, offset, vaddr, paddr, filesz, memsz, flags, align.
    fmt = order + ("IIQQQQQQ" if bits == 64 else "IIIIIIII")
    if phentsize < struct.calcsize(fmt):
        return (), False
    loads: list[tuple[int, int, int]] = []
    dynamic: tuple[int, int] | None = None
    android = False
    for i in range(min(phnum, 512)):
        ph = struct.unpack_from(fmt, buf, phoff + i * phentsize)
        if bits == 64:
            p_type, _fl, off, vaddr, _pa, filesz, _mem, align = ph
        else:
            p_type, off, vaddr, _pa, filesz, _mem, _fl, align = ph
        if p_type == PT_LOAD:
            loads.append((off, vaddr, filesz))
        elif p_type == PT_DYNAMIC:
            dynamic = (off, filesz)
        elif p_type == PT_INTERP:
            android |= bytes(buf[off : off + min(filesz, 256)]).startswith(b"/system/bin/linker")
        elif p_type == PT_NOTE:
            android |= _has_android_note(buf, order, off, filesz, 8 if align == 8 else 4)
    needed = _needed(buf, order, bits, dynamic, loads) if dynamic else ()
    return needed, android or bool(_ANDROID_NEEDED.intersection(needed))


def _has_android_note(buf: _Buf, order: str, off: int, size: int, align: int) -> bool:
    def pad(n: int) -> int:
        return (n + align - 1) // align * align

    pos, end = off, off + size
    while pos + 12 <= end:
        namesz, descsz, n_type = struct.unpack_from(order + "III", buf, pos)
        if n_type == 1 and bytes(buf[pos + 12 : pos + 12 + namesz]).rstrip(b"\0") == b"Android":
            return True
        pos += 12 + pad(namesz) + pad(descsz)
    return False


def _needed(
    buf: _Buf, order: str, bits: int, dynamic: tuple[int, int], loads: list[tuple[int, int, int]]
) -> tuple[str, ...]:
    off, size = dynamic
    fmt = order + ("qQ" if bits == 64 else "iI")  # Elf_Dyn: d_tag, d_val
    step = struct.calcsize(fmt)
    names: list[int] = []
    strtab: int | None = None
    for pos in range(off, off + min(size, 1 << 16) - step + 1, step):
        tag, val = struct.unpack_from(fmt, buf, pos)
        if tag == DT_NULL:
            break
        if tag == DT_NEEDED:
            names.append(val)
        elif tag == DT_STRTAB:
            strtab = val
    if strtab is None:
        return ()
    # DT_STRTAB is an address: map it to a file offset through the PT_LOAD segment holding it.
    base = next((o + strtab - v for o, v, n in loads if v <= strtab < v + n), None)
    if base is None:
        return ()
    out = []
    for name in names:
        end = buf.find(b"\0", base + name, base + name + 256)
        if end >= 0:
            out.append(bytes(buf[base + name : end]).decode("ascii", "replace"))
    return tuple(out)


def _arch_words(elf: ElfInfo) -> str:
    if elf.machine == EM_ARM:
        return "32-bit ARM (armeabi-v7a)" if elf.android else "32-bit ARM (armhf)"
    if elf.machine == EM_AARCH64 and elf.bits == 64:
        return "aarch64 (arm64-v8a)" if elf.android else "aarch64"
    return f"32-bit {elf.machine_name}" if elf.bits == 32 else elf.machine_name


def check_loadable(path: Path, elf: ElfInfo, linux_build: str = LINUX_BUILD) -> None:
    """Refuse, naming what it is, a build this process cannot or must not dlopen.

    ``linux_build`` is the vendor's path of the build to use instead (the RKNN binding names its own).
    """
    if elf.android:
        raise LibraryVersionError(
            f"{path} is an Android build ({_arch_words(elf)}): it needs Android's bionic libc and "
            f"linker. rkllmd runs on Linux: use the Linux build of the same release ({linux_build})",
            library=str(path),
        )
    if elf.bits == 32:
        raise LibraryVersionError(
            f"{path} is a {_arch_words(elf)} build; rkllmd binds the 64-bit (LP64) layouts only: "
            f"use the aarch64 build ({linux_build})",
            library=str(path),
        )
    if not elf.little_endian:
        raise LibraryVersionError(f"{path} is a big-endian {elf.machine_name} build", library=str(path))
    if elf.osabi not in _OSABI_LINUX:
        osname = _OSABI_NAMES.get(elf.osabi, f"ELF OS ABI {elf.osabi}")
        raise LibraryVersionError(f"{path} is built for {osname}, not Linux", library=str(path))
    host = host_machine()
    want = _HOST_EM.get(host.lower())
    if want is not None and elf.machine != want:
        raise LibraryVersionError(
            f"{path} is built for {elf.machine_name}, this machine is {host}: it cannot be loaded here",
            library=str(path),
        )
    if elf.e_type != ET_DYN:
        kind = _ET_NAMES.get(elf.e_type, f"ELF type {elf.e_type}")
        raise LibraryVersionError(f"{path} is {kind}, not a shared library", library=str(path))
