"""Library files for the detection tests: copies of a built double, altered, and crafted ELF files.

The copies keep the double's real string layout (the SDK line and the printf format in .rodata)
and change only what a distro package, a stripped copy or a vendor rebuild would: the bytes
around it. ``make_elf`` writes a minimal ELF file (header, program headers and optionally an
interpreter, the NDK's Android note and a dynamic section) for builds gcc cannot make here.
Importing does nothing.
"""

from __future__ import annotations

import platform
import shutil
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

SDK_PREFIX = b"RKLLM SDK (version: "
# e_machine of this host (what gcc builds the double for); x86_64 when the host is not listed.
_HOST_EM = {"x86_64": 62, "amd64": 62, "aarch64": 183, "arm64": 183, "riscv64": 243}
HOST_EM = _HOST_EM.get(platform.machine().lower(), 62)


def sdk_line(version: str) -> bytes:
    """The vendor's release line for ``version``, NUL-terminated as in .rodata."""
    return SDK_PREFIX + version.encode() + b" | target: Linux | build: 27637c95 2025-05-02 17:46:07)\0"


def stripped_copy(src: Path, dst: Path) -> Path:
    """``strip --strip-all`` of ``src``: no symbol table or debug info, .rodata strings kept."""
    subprocess.run(["strip", "--strip-all", "-o", str(dst), str(src)], check=True)
    return dst


def modified_copy(src: Path, dst: Path) -> Path:
    """``src`` with a few bytes of its .comment (the compiler banner) changed: another blob id."""
    data = bytearray(src.read_bytes())
    at = data.find(b"GCC: (")
    assert at >= 0, "no .comment banner in the double"
    data[at : at + 3] = b"gcc"
    dst.write_bytes(bytes(data))
    return dst


def with_extra_sdk_line(src: Path, dst: Path, version: str) -> Path:
    """``src`` with a second SDK line, for another release, appended after the ELF contents."""
    dst.write_bytes(src.read_bytes() + sdk_line(version))
    return dst


def without_sdk_line(src: Path, dst: Path) -> Path:
    """``src`` with its SDK line overwritten in place; the printf format and rknn line remain."""
    data = bytearray(src.read_bytes())
    at = data.find(SDK_PREFIX)
    assert at >= 0, "no SDK line in the double"
    end = data.index(b"\0", at)
    data[at:end] = b"x" * (end - at)
    dst.write_bytes(bytes(data))
    return dst


def patched_header(
    src: Path,
    dst: Path,
    *,
    machine: int | None = None,
    osabi: int | None = None,
    e_type: int | None = None,
) -> Path:
    """A copy of little-endian ``src`` with e_machine, EI_OSABI or e_type overwritten."""
    shutil.copyfile(src, dst)
    with dst.open("r+b") as f:
        if osabi is not None:
            f.seek(7)
            f.write(bytes([osabi]))
        if e_type is not None:
            f.seek(16)
            f.write(struct.pack("<H", e_type))
        if machine is not None:
            f.seek(18)
            f.write(struct.pack("<H", machine))
    return dst


def make_elf(
    *,
    bits: int = 64,
    machine: int = HOST_EM,
    little_endian: bool = True,
    osabi: int = 0,
    e_type: int = 3,
    interp: str | None = None,
    android_note: bool = False,
    needed: Sequence[str] = (),
    payload: bytes = b"",
) -> bytes:
    """A minimal ELF file: one PT_LOAD mapping the whole file at address 0, plus what is asked for."""
    o = "<" if little_endian else ">"
    ehsize, phentsize = (64, 56) if bits == 64 else (52, 32)
    parts: list[tuple[int, bytes, int]] = []  # (p_type, bytes, alignment)
    if interp is not None:
        parts.append((3, interp.encode() + b"\0", 1))
    if android_note:
        parts.append((4, struct.pack(o + "III", 8, 4, 1) + b"Android\0" + struct.pack(o + "I", 30), 4))
    strtab = b"\0" + b"".join(n.encode() + b"\0" for n in needed)
    nph = 1 + len(parts) + (1 if needed else 0)
    pos = ehsize + phentsize * nph
    body = b""
    segs: list[tuple[int, int, int, int]] = []  # (p_type, offset, size, align)

    def place(data: bytes, align: int) -> int:
        nonlocal pos, body
        pad = -pos % align
        body += b"\0" * pad + data
        pos += pad + len(data)
        return pos - len(data)

    for p_type, data, align in parts:
        segs.append((p_type, place(data, align), len(data), align))
    if needed:
        str_off = place(strtab, 1)
        dyn_fmt = o + ("qQ" if bits == 64 else "iI")
        offs = [1 + sum(len(n) + 1 for n in needed[:i]) for i in range(len(needed))]
        entries = [(1, off) for off in offs] + [(5, str_off), (10, len(strtab)), (0, 0)]
        dyn = b"".join(struct.pack(dyn_fmt, tag, val) for tag, val in entries)
        segs.append((2, place(dyn, 8), len(dyn), 8))
    place(payload, 1)
    total = pos
    ph_fmt = o + ("IIQQQQQQ" if bits == 64 else "IIIIIIII")

    def phdr(p_type: int, off: int, size: int, align: int) -> bytes:
        if bits == 64:
            return struct.pack(ph_fmt, p_type, 4, off, off, off, size, size, align)
        return struct.pack(ph_fmt, p_type, off, off, off, size, size, 4, align)

    phdrs = phdr(1, 0, total, 0x1000) + b"".join(phdr(*s) for s in segs)
    ident = b"\x7fELF" + bytes([2 if bits == 64 else 1, 1 if little_endian else 2, 1, osabi]) + b"\0" * 8
    eh_fmt = o + ("HHIQQQIHHHHHH" if bits == 64 else "HHIIIIIHHHHHH")
    shentsize = 64 if bits == 64 else 40
    header = ident + struct.pack(
        eh_fmt, e_type, machine, 1, 0, ehsize, 0, 0, ehsize, phentsize, nph, shentsize, 0, 0
    )
    return header + phdrs + body
