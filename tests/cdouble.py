"""gcc for the C test doubles (tests/fake_rkllm, tests/fake_rknn): a shared library built once per
set of sources and options, and a probe program printing a header's struct layouts, parsed.
Importing does nothing."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def compile_c(args: list[str], out: Path) -> None:
    # Compile to a private name and rename, so parallel test processes never see half a file.
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        res = subprocess.run(["gcc", *args, "-o", tmp], capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"gcc failed ({res.returncode}):\n{res.stderr}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build_shared(
    source: Path, header: Path, cflags: Sequence[str], defines: Sequence[str], out: Path
) -> Path:
    """``source`` compiled into ``<out>_<hash>.so``; the hash covers the sources and options, so a
    build with the same ones is reused."""
    h = hashlib.sha256()
    for part in (source.read_bytes(), header.read_bytes(), " ".join([*cflags, *defines]).encode()):
        h.update(part)
    so = out.parent / f"{out.name}_{h.hexdigest()[:12]}.so"
    if not so.exists():
        compile_c([*cflags, "-shared", f"-I{source.parent}", *defines, str(source)], so)
    return so


def struct_lines(structs: Mapping[str, Sequence[str]]) -> list[str]:
    """C statements printing each struct's size and alignment and each field's offset and size."""
    lines = []
    for struct, fields in structs.items():
        lines.append(f'printf("STRUCT {struct} %zu %zu\\n", sizeof({struct}), _Alignof({struct}));')
        for f in fields:
            size = f"sizeof((({struct}*)0)->{f})"
            lines.append(f'printf("FIELD {struct} {f} %zu %zu\\n", offsetof({struct}, {f}), {size});')
    return lines


def run_probe(header: Path, body: Sequence[str], exe_stem: Path, cflags: Sequence[str]) -> dict[str, Any]:
    """Compile and run ``main`` of ``body`` (statements printing STRUCT, FIELD, ENUM and SIZEOF
    lines) against ``header``, cached by its text, and parse what it prints:
    ``{struct: {"size", "align", "fields": {name: offset}, "field_sizes": {name: size}}}`` plus
    ``{"enums": {name: value}}`` and, when it prints any, ``{"sizeof": {type: size}}``."""
    head = ["#include <stdio.h>", "#include <stddef.h>", f'#include "{header.name}"', "int main(void) {"]
    src = "\n".join([*head, *body, "return 0;", "}"]) + "\n"
    digest = hashlib.sha256((src + header.read_text() + " ".join(cflags)).encode()).hexdigest()[:12]
    exe = exe_stem.parent / f"{exe_stem.name}_{digest}"
    if not exe.exists():
        c_file = exe.with_name(exe.name + ".c")
        c_file.parent.mkdir(parents=True, exist_ok=True)
        c_file.write_text(src)
        compile_c(["-std=c11", "-Wall", "-Werror", f"-I{header.parent}", *cflags, str(c_file)], exe)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = {"enums": {}}
    for line in out.splitlines():
        kind, *rest = line.split()
        if kind == "STRUCT":
            result[rest[0]] = {"size": int(rest[1]), "align": int(rest[2]), "fields": {}, "field_sizes": {}}
        elif kind == "FIELD":
            result[rest[0]]["fields"][rest[1]] = int(rest[2])
            result[rest[0]]["field_sizes"][rest[1]] = int(rest[3])
        elif kind == "ENUM":
            result["enums"][rest[0]] = int(rest[1])
        elif kind == "SIZEOF":
            result.setdefault("sizeof", {})[rest[0]] = int(rest[1])
    return result
