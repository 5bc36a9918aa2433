"""What Linux says about a process and the machine: peak RSS, CPU time, CPU model, memory."""

from __future__ import annotations

import os
import platform
import struct
from pathlib import Path
from typing import Any


def _status_kb(pid: int, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (the peak resident set) of ``pid`` in MiB, or None when unreadable."""
    kb = _status_kb(pid, "VmHWM")
    return None if kb is None else kb / 1024


def rss_mb(pid: int) -> float | None:
    """VmRSS (the resident set now) of ``pid`` in MiB, or None when unreadable."""
    kb = _status_kb(pid, "VmRSS")
    return None if kb is None else kb / 1024


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (rkllmd runs each runtime in a worker child process)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "stat").read_text()
                parents[int(entry.name)] = int(raw[raw.rindex(")") + 2 :].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, frontier = [pid], [pid]
    while frontier:
        kids = [p for p, pp in parents.items() if pp in frontier]
        tree += kids
        frontier = kids
    return tree


def tree_peak_rss_mb(pid: int) -> float | None:
    """The sum of VmHWM over ``pid`` and its descendants: an upper bound of their joint peak."""
    peaks = [peak_rss_mb(p) for p in process_tree(pid)]
    known = [x for x in peaks if x is not None]
    return sum(known) if known else None


def tree_rss_mb(pid: int) -> float | None:
    """The sum of VmRSS over ``pid`` and its descendants."""
    now = [rss_mb(p) for p in process_tree(pid)]
    known = [x for x in now if x is not None]
    return sum(known) if known else None


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds used so far by ``pid`` and its live descendants (exited ones are not counted)."""
    cpu = [cpu_seconds(p) for p in process_tree(pid)]
    known = [x for x in cpu if x is not None]
    return sum(known) if known else None


def pss_mb(pid: int) -> float | None:
    """Pss (the resident set with each shared page divided among its sharers) of ``pid`` in MiB."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return float(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def unique_mb(pids: list[int]) -> float | None:
    """MiB of the physical pages any of ``pids`` has resident, each page counted once: what the
    processes occupy together (a page two of them share, such as libpython's, once). Read from
    /proc/pid/pagemap, whose page frame numbers only root (CAP_SYS_ADMIN) sees; None otherwise."""
    page = os.sysconf("SC_PAGE_SIZE")
    frames: set[int] = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
                for line in maps:
                    lo, hi = (int(x, 16) for x in line.split(None, 1)[0].split("-"))
                    if lo >= 1 << 47:  # [vsyscall]: not readable through pagemap
                        continue
                    pagemap.seek(lo // page * 8)
                    entries = pagemap.read((hi - lo) // page * 8)
                    for (entry,) in struct.iter_unpack("<Q", entries):
                        if entry >> 63:  # present
                            frames.add(entry & ((1 << 55) - 1))
        except (OSError, ValueError):
            return None
    if frames and frames <= {0}:  # frame numbers hidden: not root
        return None
    return len(frames) * page / 2**20


def describe(pid: int) -> str:
    """A short name of ``pid``: its command line, the interpreter's path left out."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in args if a]
    if words and "python" in Path(words[0]).name:
        words = words[1:]
    return " ".join(words)[:80] or "?"


def thread_switches(pid: int) -> dict[int, int]:
    """Context switches (voluntary + not) of each thread of ``pid`` so far: a wake-up count."""
    out: dict[int, int] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            n = 0
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                    n += int(line.split()[1])
            out[int(task.name)] = n
        except (OSError, ValueError):
            continue
    return out


def switches(pids: list[int]) -> int:
    """Context switches so far of every live thread of ``pids``, together: their wake-ups."""
    return sum(sum(thread_switches(p).values()) for p in pids)


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``5`` to clear_refs, Linux >= 4.0), so a peak is per model.

    Without it the peak of one model would hide behind that of a bigger one measured before.
    """
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time ``pid`` has used, in seconds (fields 14 and 15 of /proc/pid/stat)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def machine() -> dict[str, Any]:
    """CPU model, cores, RAM, kernel and Python of this machine, for the report's header."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            # x86 says "model name"; many Arm kernels only say "Hardware" or "Model".
            key, _, val = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Model") and val.strip():
                cpu = val.strip()
                break
    except OSError:
        pass
    mem_kb = _meminfo_kb("MemTotal")
    uname = platform.uname()
    return {
        "host": uname.node,
        "cpu": cpu,
        "arch": uname.machine,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gb": round(mem_kb / 1024 / 1024, 1) if mem_kb else None,
        "kernel": uname.release,
        "os": _os_name(),
        "python": platform.python_version(),
        "board": _device_tree(),
    }


def _meminfo_kb(key: str) -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _device_tree() -> str | None:
    """The board's device-tree compatible list (e.g. ``rockchip,rk3588``); None on PCs."""
    try:
        raw = Path("/proc/device-tree/compatible").read_bytes()
    except OSError:
        return None
    return ", ".join(x.decode(errors="replace") for x in raw.split(b"\0") if x)


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()
