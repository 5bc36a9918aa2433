"""Where image bytes come from: base64, data: URIs, files in the allowed folder; each bounded and
each refusal telling the sender what to send."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from rkllmd.errors import BadImage, ImageTooLarge
from rkllmd.vision import images, sources
from rkllmd.vision.limits import ImageLimits


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "JPEG")
    return buf.getvalue()


def test_base64_round_trip_with_line_breaks() -> None:
    data = jpeg()
    text = base64.encodebytes(data).decode()  # 76-column lines, as some clients send
    assert "\n" in text and sources.from_base64(text) == data
    assert base64.b64encode(data).startswith(b"/9j/")  # why a leading "/" never means a path


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty"),
        ("not base64!", "not valid base64"),
        ("data:image/png;base64,AAAA", "data: URI goes in"),
        # MQTT's and Ollama's images: a URL is told it is not fetched, not only that it is bad base64
        ("https://cam.lan/snapshot.jpg", "fetches no image URLs"),
    ],
)
def test_bad_base64(text: str, words: str) -> None:
    with pytest.raises(BadImage, match=words):
        sources.from_base64(text)


def test_base64_is_bounded_before_decoding() -> None:
    with pytest.raises(ImageTooLarge, match="once decoded, over the 300-byte limit"):
        sources.from_base64("A" * 4000, ImageLimits(max_bytes=300))


def test_data_uri() -> None:
    data = jpeg()
    uri = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    assert sources.from_data_uri(uri) == data
    assert sources.from_data_uri(uri.replace("image/jpeg", "image/JPEG;charset=x")) == data


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("https://example.com/a.jpg", "fetches no image URLs"),
        ("/9j/4AAQ", "not a data: URI"),
        ("data:image/gif;base64,R0lG", "says image/gif; send image/jpeg, image/png or image/webp"),
        ("data:image/png,%89PNG", "not base64"),
        ("data:;base64,AAAA", "says no type"),
    ],
)
def test_bad_data_uris(uri: str, words: str) -> None:
    with pytest.raises(BadImage, match=words):
        sources.from_data_uri(uri)


def test_files_only_inside_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "snapshots"
    folder.mkdir()
    (folder / "door.jpg").write_bytes(jpeg())
    (tmp_path / "secret.jpg").write_bytes(b"outside")
    (folder / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    (folder / "sub").mkdir()
    assert sources.from_file(folder / "door.jpg", folder) == jpeg()
    assert sources.from_file("door.jpg", folder) == jpeg()  # relative to the folder
    with pytest.raises(BadImage, match="outside the image folder"):
        sources.from_file(folder / ".." / "secret.jpg", folder)
    with pytest.raises(BadImage, match="outside the image folder"):
        sources.from_file(folder / "link.jpg", folder)  # a link out of the folder
    with pytest.raises(BadImage, match="does not exist"):
        sources.from_file(folder / "missing.jpg", folder)
    with pytest.raises(BadImage, match="not a regular file"):
        sources.from_file(folder / "sub", folder)
    with pytest.raises(BadImage, match="no image folder is configured"):
        sources.from_file(folder / "door.jpg", None)
    with pytest.raises(ImageTooLarge, match="over the 10-byte limit"):
        sources.from_file(folder / "door.jpg", folder, ImageLimits(max_bytes=10))


def test_a_fifo_in_the_folder_does_not_block(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jpg")
    with pytest.raises(BadImage, match="not a regular file"):
        sources.from_file(tmp_path / "pipe.jpg", tmp_path)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\0\0\0\0WEBP", b""]),
    st.binary(max_size=600),
)
def test_any_bytes_give_an_image_or_a_clear_refusal(magic: bytes, rest: bytes) -> None:
    """Whatever arrives, decoding ends in an image or BadImage/ImageTooLarge, never another error."""
    with contextlib.suppress(BadImage, ImageTooLarge):
        images.prepare(magic + rest, (16, 16), (0, 0, 0))


FLIP = """
import os, sys
folder, outside = sys.argv[1:]
real, moved = os.path.join(folder, "in"), os.path.join(folder, "in.real")
while True:
    os.rename(real, moved)
    os.symlink(outside, real)
    os.unlink(real)
    os.rename(moved, real)
"""


def test_a_folder_swapped_for_a_link_while_checked_reads_nothing_outside(tmp_path: Path) -> None:
    """A writer in the image folder flips a sub-folder between a folder of its own and a link out
    of it, as fast as it can, while paths through it are read: the check and the read may see
    different trees, and the read must still never return the outside file's bytes."""
    folder, outside = tmp_path / "snaps", tmp_path / "outside"
    (folder / "in").mkdir(parents=True)
    outside.mkdir()
    (folder / "in" / "cam.png").write_bytes(b"\x89PNG\r\n\x1a\n inside")
    (outside / "cam.png").write_bytes(b"\x89PNG\r\n\x1a\n SECRET")
    flipper = subprocess.Popen(  # the writer: another process, as a camera's upload would be
        [sys.executable, "-c", FLIP, str(folder), str(outside)]
    )
    seen = set()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            with contextlib.suppress(BadImage):
                seen.add(sources.from_file("in/cam.png", folder))
    finally:
        flipper.kill()
        flipper.wait()
    assert b"\x89PNG\r\n\x1a\n SECRET" not in seen
    assert seen == {b"\x89PNG\r\n\x1a\n inside"}  # the race was run: reads through the link went in
