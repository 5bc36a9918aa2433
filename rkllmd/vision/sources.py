"""Where an image's bytes come from in a request: base64 text, a ``data:`` URI, or a file in an
allowed folder. Each source is bounded before it is decoded or read, and each refusal is a
``BadImage`` or ``ImageTooLarge`` that tells the sender what to send instead.

The interfaces pick the source their wire format has (Ollama: base64; OpenAI: ``data:`` URIs in
``image_url``; MQTT: base64, or a file path only under a configured folder, for an automation
that has the snapshot on disk). A path is never guessed from text: base64 itself may begin with
``/`` (every JPEG's does, ``/9j/``). The format is checked by its magic bytes at admission
(``limits.sniff_format``) and again, with the pixels, by ``images.decode``. Pure and
without Pillow (the MQTT protocol imports it in the daemon); the caller's thread.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from pathlib import Path

from rkllmd.errors import BadImage, ImageTooLarge
from rkllmd.vision.limits import DEFAULT_LIMITS, FORMATS, ImageLimits

_WS = re.compile(rb"\s+")
_DATA_URI = re.compile(r"data:([^,;]*)((?:;[^,;]*)*),", re.ASCII)


def _too_large(size: int, limits: ImageLimits, what: str) -> ImageTooLarge:
    return ImageTooLarge(
        f"the image is {size} bytes{what}, over the {limits.max_bytes}-byte limit; send a smaller or "
        "more compressed image",
        size=size,
        limit=limits.max_bytes,
    )


def from_base64(text: str | bytes, limits: ImageLimits = DEFAULT_LIMITS) -> bytes:
    """The bytes of standard base64 (line breaks allowed); bounded before decoding."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    raw = _WS.sub(b"", raw)
    if not raw:
        raise BadImage("the image is empty: send its bytes as base64")
    decoded_size = len(raw) // 4 * 3
    if decoded_size > limits.max_bytes + 2:
        raise _too_large(decoded_size, limits, " once decoded")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        if raw.startswith((b"http://", b"https://")):  # a camera's or a web page's URL
            raise BadImage("rkllmd fetches no image URLs; send the image's bytes base64-encoded") from exc
        hint = " (a data: URI goes in image_url, not here)" if raw.startswith(b"data:") else ""
        raise BadImage(f"the image is not valid base64 ({exc}){hint}; send its bytes base64-encoded") from exc
    if len(data) > limits.max_bytes:
        raise _too_large(len(data), limits, "")
    return data


def from_data_uri(uri: str, limits: ImageLimits = DEFAULT_LIMITS) -> bytes:
    """The bytes of ``data:image/<jpeg|png|webp>;base64,<data>``."""
    m = _DATA_URI.match(uri)
    if m is None:
        raise BadImage(
            "the image is not a data: URI; send data:image/jpeg;base64,<data> (rkllmd fetches no URLs)"
            if not uri.startswith(("http://", "https://"))
            else "rkllmd fetches no image URLs; send the image itself as data:image/jpeg;base64,<data>"
        )
    mime, params = m.group(1).strip().lower(), m.group(2).lower()
    if "base64" not in params.split(";"):
        raise BadImage("the data: URI is not base64; send data:image/jpeg;base64,<data>")
    if mime not in FORMATS.values():
        raise BadImage(f"the data: URI says {mime or 'no type'}; send image/jpeg, image/png or image/webp")
    return from_base64(uri[m.end() :], limits)


def from_file(path: str | Path, folder: Path | None, limits: ImageLimits = DEFAULT_LIMITS) -> bytes:
    """The bytes of a regular file inside ``folder`` (links resolved first), bounded before reading."""
    if folder is None:
        raise BadImage(
            "image file paths are not allowed here: no image folder is configured; send the image as base64"
        )
    if "\0" in str(path):  # no file name holds one; the OS calls would raise ValueError, not OSError
        raise BadImage(f"the image file {str(path)!r} is not a valid path: it holds a NUL character")
    given = Path(path)
    if not given.is_absolute():
        given = folder / given
    root = folder.resolve()
    try:
        real = given.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise BadImage(f"the image file {str(path)!r} does not exist in the image folder") from exc
    if not real.is_relative_to(root):
        raise BadImage(f"the image file {str(path)!r} is outside the image folder {root}")
    try:
        fd = _open_below(root, real.relative_to(root).parts)
    except OSError as exc:
        raise BadImage(f"the image file {str(path)!r} cannot be read ({exc.strerror})") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # a folder, or a FIFO that would block the read
            raise BadImage(f"the image file {str(path)!r} is not a regular file")
        if st.st_size > limits.max_bytes:
            raise _too_large(st.st_size, limits, "")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limits.max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > limits.max_bytes:  # it grew while being read
        raise _too_large(len(data), limits, "")
    return data


def _open_below(root: Path, parts: tuple[str, ...]) -> int:
    """Open ``root/parts...`` one level at a time, following no link on the way: whoever may write
    in the folder could otherwise swap a folder on the checked path for a link out of it between
    the check (``resolve``) and the open, and have an outside file read (ELOOP then, an OSError).
    Non-blocking, so a FIFO swapped in opens at once and is refused by the caller."""
    nofollow = os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_RDONLY | nofollow | (os.O_NONBLOCK if last else os.O_DIRECTORY)
            nxt = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd
