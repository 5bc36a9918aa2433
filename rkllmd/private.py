"""Files only rkllmd may read: what it writes (the request journal, transcripts) and the secrets it
reads (the MQTT password, the HTTP plugins' API keys). docs/OPERATIONS.md, "Files and secrets".

- Written files are created 0600 whatever the umask (``open_private``): a transcript holds every
  prompt and answer, the journal every request's reply address. No group needs to read them; an
  operator reads them as root. One that exists with group or other bits set (an older rkllmd made
  them 0644) is tightened to 0600, with a warning, or a warning alone when rkllmd cannot.
- A secret file that every user may read is refused (``read_secret``), as ssh refuses a private
  key others can read: the secret is disclosed already, and starting anyway would hide that. A
  group may read it: the documented install shares the password file with the ``rkllmd`` group
  (``install -m 0640 -g rkllmd``).

Any thread; no state.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO, Any

import structlog

log = structlog.get_logger("rkllmd")

PRIVATE_MODE = 0o600
_FLAGS = {"a": os.O_WRONLY | os.O_CREAT | os.O_APPEND, "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC}


def open_private(path: Path, mode: str = "a") -> IO[Any]:
    """Open ``path`` for appending (``"a"``, ``"ab"``) or writing (``"w"``, ``"wb"``), created
    0600 whatever the umask, and tightened to 0600 if it exists looser."""
    fd = os.open(path, _FLAGS[mode[0]] | getattr(os, "O_CLOEXEC", 0), PRIVATE_MODE)
    try:
        _tighten(fd, path)
        if "b" in mode:
            return os.fdopen(fd, mode)
        return os.fdopen(fd, mode, encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


def tighten(path: Path) -> None:
    """Make an existing private file 0600 (a rotated transcript, say); nothing if it is missing."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("cannot check a private file's permissions", path=str(path), error=exc.strerror)
        return
    try:
        _tighten(fd, path)
    finally:
        os.close(fd)


def _tighten(fd: int, path: Path) -> None:
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if not mode & 0o077:
        return
    try:
        os.fchmod(fd, PRIVATE_MODE)
    except OSError as exc:
        log.warning(
            "a private file is readable by others and rkllmd cannot change that",
            path=str(path),
            mode=f"{mode:04o}",
            error=exc.strerror,
        )
        return
    log.warning("private file was readable by others; made it 0600", path=str(path), was=f"{mode:04o}")


def check_secret(path: Path, what: str) -> None:
    """Raise ValueError if every user may read (or write) the secret file ``path``."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from exc
    if mode & 0o006:
        raise ValueError(
            f"{what} {path} is open to every user (mode {mode:04o}); a secret others can read is no "
            f"secret: chmod o-rwx {path} (as root: chown root:rkllmd and chmod 0640), then change the secret"
        )


def read_secret(path: Path, what: str) -> str:
    """The text of a secret file, refused if every user may read it (``check_secret``)."""
    check_secret(path, what)
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from exc
