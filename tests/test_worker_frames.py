"""The worker pipe's framing: whatever sizes the reads come in, the frames come out whole and in order."""

from __future__ import annotations

import os
import random
import threading

from rkllmd.runtime.pipe import K_LOG, K_REPLY, K_TOKENS, FrameReader, Outbox, _frame, tokens_text


def test_frames_split_across_reads_of_any_size_arrive_whole_and_in_order() -> None:
    """Empty, tiny and multi-read frames, written in pieces from 1 byte to 200 KB, are read back
    exactly; a frame longer than one read is gathered, not lost or doubled."""
    rnd = random.Random(13)
    kinds = (K_TOKENS, K_REPLY, K_LOG)
    sizes = (0, 1, 3, 4, 5, 100, 65_531, 70_000, 300_000)
    frames = [(rnd.choice(kinds), rnd.randbytes(rnd.choice(sizes))) for _ in range(150)]
    data = b"".join(_frame(kind, payload) for kind, payload in frames)
    r, w = os.pipe()

    def writer() -> None:
        i = 0
        while i < len(data):
            n = rnd.choice((1, 2, 4, 5, 7, 1000, 65_536, 200_000))
            os.write(w, data[i : i + n])
            i += n
        os.close(w)

    t = threading.Thread(target=writer)
    t.start()
    reader, got = FrameReader(r), []
    try:
        while batch := reader.read():
            got += batch
    finally:
        t.join(30)
        os.close(r)
    assert got == frames


def test_tokens_kept_while_the_pipe_is_full_follow_as_one_frame_in_order() -> None:
    """The token sink never waits for a parent that does not read: what the full pipe cannot take
    is kept and sent as one frame once it drains, every token in order, the reply after them."""
    r, w = os.pipe()
    out = Outbox(w)
    tokens = [f"{i:04d}-" + "x" * 1000 for i in range(300)]  # 300 KB: far more than a pipe holds
    sink = threading.Thread(target=lambda: [out.add(t) for t in tokens], daemon=True)
    sink.start()
    sink.join(10)
    assert not sink.is_alive()  # every add() returned while nobody had read: none waited for the pipe
    replier = threading.Thread(target=out.reply, args=(("done", None),))
    replier.start()  # waits until the tokens before it are written
    reader, frames = FrameReader(r), []
    try:
        while not any(kind == K_REPLY for kind, _ in frames):
            frames += reader.read()
    finally:
        replier.join(10)
        os.close(r)
    text = [tokens_text(payload) for kind, payload in frames if kind == K_TOKENS]
    assert "".join(text) == "".join(tokens)
    assert len(text) < len(tokens)  # the kept ones went together
    assert frames[-1][0] == K_REPLY
