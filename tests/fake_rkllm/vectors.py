"""What the RKLLM test double returns in its vector modes, computed here the same way, so tests
can check rkllmd's embeddings and rerank scores to the last bit (fake_rkllm.c, do_vectors).

``hidden_rows(text)``: one row of ``embd`` floats per word of the rendered prompt (upper-cased,
directives removed); ``last_logits(text)``: the logits of the last position. Importing does nothing.
"""

from __future__ import annotations

import re
import struct

_DIRECTIVE = re.compile(r"\[\[.*?\]\]")


def _f32(x: float) -> float:
    """``x`` rounded to a C float, as the double stores it."""
    return float(struct.unpack("f", struct.pack("f", x))[0])


def fnv1a(h: int, s: str) -> int:
    for b in s.encode():
        h ^= b
        h = (h * 16777619) & 0xFFFFFFFF
    return h


def unit(h: int, j: int) -> float:
    x = (h ^ (((j + 1) * 0x9E3779B9) & 0xFFFFFFFF)) & 0xFFFFFFFF
    for _ in range(3):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
    return _f32((x % 2001 - 1000) / 1000.0)


def words(text: str) -> list[str]:
    """The words the double reads: directives blanked, split on whitespace, upper-cased."""
    # the double's strtok on " \t\r\n" and toupper, which changes ASCII letters only
    found = [_ascii_upper(w) for w in re.split(r"[ \t\r\n]+", _DIRECTIVE.sub(" ", text)) if w]
    return found or ["EMPTY"]


def _ascii_upper(w: str) -> str:
    return "".join(c.upper() if "a" <= c <= "z" else c for c in w)


def hidden_rows(text: str, embd: int = 16) -> list[list[float]]:
    return [[unit(fnv1a(2166136261, w), j) for j in range(embd)] for w in words(text)]


def last_logits(text: str, vocab: int = 64) -> list[float]:
    h = 2166136261
    for w in words(text):
        h = fnv1a(fnv1a(h, w), " ")
    return [_f32(4.0 * unit(h, k)) for k in range(vocab)]
