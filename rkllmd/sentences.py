# ruff: noqa: RUF001, RUF002  (this module is about the punctuation of many scripts)
"""Whole sentences out of a stream of text deltas, for text-to-speech.

A speech engine needs whole sentences before it can start speaking; a model writes a few
characters at a time. :class:`SentenceChunker` sits in between: feed it every delta as it comes,
and it hands back each sentence as soon as the text shows that the sentence is over.

Pure: no threads, no I/O, no clock. Its only state is the text it has not returned yet (at most
about ``max_chars`` plus the latest delta), so it is cheap to run one per request. rkllmd runs one
per request that asks for ``"sentences": true`` on its dispatcher thread (docs/PROTOCOL.md), and
the ``republish`` plugin one per request for its sentence routes; a plugin of your own imports it
as ``from rkllmd.sentences import SentenceChunker`` (also re-exported by ``rkllmd.plugins``).

**Exact text.** Joining every piece returned by ``feed`` and ``finish`` gives back exactly the
text fed, character for character. Whitespace between two sentences starts the next piece (so a
piece after the first usually begins with a space or a newline); whitespace at the very start
begins the first piece. ``finish`` may return a piece that is only whitespace; callers that speak
skip blank pieces (:class:`Utterances` does). The pieces do not depend on how the text was split
into deltas.

**Where a sentence ends.**

- ``.``, ``!``, ``?``, ``…`` and runs of them (``...``, ``?!``), with any closing quotes, brackets
  or markdown emphasis right after (``."``, ``!)``, ``.**``, ``。」``, French ``. »``), when
  whitespace follows. Not inside numbers, versions, URLs or file names (``3.5``, ``v1.2``,
  ``example.com``: no whitespace after the dot).
- After ``.`` or ``…`` not when the next word starts with a lower-case letter (``e.g. the``,
  ``approx. five``, ``Hmm... let me``), nor after a known abbreviation (``Dr.``, ``Mr.``, ``e.g.``,
  ``i.e.``, ``z.B.``, ``d.h.``, ``bzw.``, ``Sra.``, ``Mme.``; ``No.``/``Nr.``/``S.`` before a
  number), an initial (``J. R. R. Tolkien``), a list number at the start of a line (``1.``,
  ``a.``), or a German ordinal before a month (``am 3. Oktober``).
- CJK full stops ``。！？`` (and ``｡``) end a sentence with no whitespace after them; so do ``؟``,
  ``۔``, ``।``, ``॥``, ``։`` and ``።`` followed by whitespace.
- A newline ends whatever came before it on the line: list items, headings, table rows and code
  lines become pieces of their own.

**Lengths.** A piece shorter than ``min_chars`` (counted without surrounding whitespace) is not
returned on its own but joined with the sentence after it, so "Ok." or a bullet "- A" do not
become separate tiny utterances (each one costs a speech engine a start-up and a pause). Text with
no sentence end (code, a list on one line, a language written without punctuation) is cut once
it is longer than ``max_chars``: after the last clause mark (``,`` ``;`` ``:`` ``—`` ``，`` ``、``)
in the second half of the window, else at the last whitespace, else (a long URL, CJK without
punctuation) after ``max_chars`` characters; so speech never waits for the end of the answer.
A sentence longer than ``max_chars`` is cut the same way.

:class:`SpeechFilter` turns a piece into what to say: markdown markers, code blocks, table rules
and link targets are left out. :class:`Utterances` is the two together. :func:`first_sentence_at`
is the time to the first sentence of a recorded stream, by the same rules rkllmd publishes with.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

__all__ = ["MAX_CHARS", "MIN_CHARS", "SentenceChunker", "SpeechFilter", "Utterances", "first_sentence_at"]

MAX_CHARS = 200  # about 3 s of a 1.5B model's output on an RK3588; long sentences are cut at a comma
MIN_CHARS = 10  # "Ok." and "Sure!" are joined with the sentence after them

# Ends a sentence when whitespace follows.
_TERMINALS = frozenset(".!?…‼⁇⁈⁉؟۔।॥։።")
_WEAK = frozenset(".…")  # a period or an ellipsis: the next word's case and abbreviations matter
# Ends a sentence with nothing after it (CJK writes no space between sentences).
_CJK_TERMINALS = frozenset("。！？｡")
# Closing quotes, brackets and markdown emphasis that belong to the sentence before them.
_CLOSERS = frozenset("\"'”’»«›‹)]}）」』】〕〉》〗〙〛＂＇＞*_`~")
_SPACED_CLOSERS = frozenset("»›")  # French: « Bonjour. »
_CLAUSE = frozenset(",;:—–")  # a soft break when whitespace follows
_CJK_CLAUSE = frozenset("，、；：")  # a soft break with nothing after it

# Capitalised titles before a name: never a sentence end (compared as written).
_TITLES = frozenset(
    {
        "Mr",
        "Mrs",
        "Ms",
        "Mx",
        "Dr",
        "Prof",
        "St",
        "Sr",
        "Sra",
        "Srta",
        "Dra",
        "Hr",
        "Fr",
        "Frl",
        "Mme",
        "Mlle",
        "MM",
        "Me",
        "Mgr",
        "Gen",
        "Col",
        "Capt",
        "Lt",
        "Rev",
        "Hon",
    }
)
# Abbreviations that a sentence rarely ends with (compared in lower case, without the last dot):
# English and Latin, German, French, Spanish.
_ABBREVIATIONS = frozenset(
    {
        "e.g",
        "i.e",
        "cf",
        "vs",
        "viz",
        "approx",
        "ca",
        "resp",
        "z.b",
        "d.h",
        "u.a",
        "o.ä",
        "bzw",
        "vgl",
        "evtl",
        "ggf",
        "inkl",
        "zzgl",
        "p.ex",
        "c.-à-d",
        "env",
        "ej",
        "aprox",
        "pág",
        "núm",
    }
)
# Abbreviations before a number: No. 5, Nr. 3, S. 12, p. 4, Fig. 2.
_BEFORE_NUMBER = frozenset(
    {
        "no",
        "nr",
        "núm",
        "num",
        "nos",
        "p",
        "pp",
        "s",
        "vol",
        "fig",
        "art",
        "abs",
        "ch",
        "sec",
        "kap",
        "bd",
        "tel",
    }
)
_MONTHS_DE = frozenset(
    {
        "Januar",
        "Jänner",
        "Februar",
        "März",
        "April",
        "Mai",
        "Juni",
        "Juli",
        "August",
        "September",
        "Oktober",
        "November",
        "Dezember",
    }
)
_LIST_MARKER = re.compile(r"(?:\d{1,3}|[A-Za-z]|[ivxlIVXL]{1,5})")
_ZERO_WIDTH = frozenset("\u200d\u200c\ufe0e\ufe0f")  # joiners and variation selectors
_HSPACE = frozenset(" \t\u00a0\u202f")
_OPENERS = "\"'“‘«»„‚([{¿¡*_`"
_NONE = -1  # no sentence ends here
_WORD = re.compile(r"\w+")


class SentenceChunker:
    """Cuts a stream of text deltas into whole sentences (see the module docstring for the rules)."""

    def __init__(self, max_chars: int = MAX_CHARS, min_chars: int = MIN_CHARS) -> None:
        """``max_chars``: cut text without a sentence end once it is this long (at least 2).
        ``min_chars``: join a shorter sentence with the next one (0 returns every sentence)."""
        if max_chars < 2:
            raise ValueError("max_chars must be at least 2")
        if not 0 <= min_chars < max_chars:
            raise ValueError("min_chars must be at least 0 and below max_chars")
        self.max_chars, self.min_chars = max_chars, min_chars
        self._buf = ""
        self._fresh = True  # nothing returned yet: the buffer starts at the start of a line

    def feed(self, delta: str) -> list[str]:
        """Add a delta; return the pieces that are complete now, in order (often none)."""
        self._buf += delta
        out: list[str] = []
        while (cut := self._next_cut()) is not None:
            out.append(self._buf[:cut])
            self._buf, self._fresh = self._buf[cut:], False
        return out

    def finish(self) -> list[str]:
        """The end of the text: the rest, as a last piece (none when nothing is left); the chunker
        is then empty and may be fed a new text."""
        out = self.feed("")
        if self._buf:
            out.append(self._buf)
        self._buf, self._fresh = "", True
        return out

    # --- internals ---------------------------------------------------------------------------

    def _next_cut(self) -> int | None:
        """Where the first complete piece of the buffer ends, or None while that is not known yet."""
        buf = self._buf
        lead = len(buf) - len(buf.lstrip())
        i = lead
        while i < len(buf):
            cut = self._boundary(buf, i)
            if cut is None:  # undecided until more text comes
                break
            if cut == _NONE:
                i += 1
                continue
            size = _size(buf[:cut].strip())
            if size > self.max_chars:
                break  # too long: cut at a soft break below
            if size >= self.min_chars:
                return cut
            i = max(cut, i + 1)  # too short: joined with the next sentence
        limit = _fit(buf, lead, self.max_chars)
        if len(buf.rstrip()) > limit:
            return self._soft_cut(buf, lead, limit)
        return None

    def _boundary(self, buf: str, i: int) -> int | None:
        """A sentence ending at ``buf[i]``: where it is cut, ``_NONE`` when none ends there, None
        when the text so far cannot tell."""
        c = buf[i]
        if c == "\n":
            return i if buf[:i].strip() else _NONE  # the newline starts the next piece
        if c in _CJK_TERMINALS:
            end = _run(buf, i, _CJK_TERMINALS | _TERMINALS | _CLOSERS)
            return None if end == len(buf) else end
        if c not in _TERMINALS or (i > 0 and buf[i - 1] in _TERMINALS):
            return _NONE  # a run of terminals is decided at its first character
        end = _run(buf, i, _TERMINALS)
        run = buf[i:end]
        end = _run(buf, end, _CLOSERS)
        while True:  # French closers after a space: « Vraiment ? »
            j = _run(buf, end, _HSPACE)
            if j == end or j == len(buf) or buf[j] not in _SPACED_CLOSERS:
                break
            k = _run(buf, j, _CLOSERS)
            if k == len(buf):
                return None
            if not buf[k].isspace():
                break  # German »opens« a quote
            end = k
        if end == len(buf):
            return None
        if not buf[end].isspace():
            return _NONE  # 3.5, v1.2, example.com, "e.g.,"
        j = end
        while j < len(buf) and buf[j].isspace():
            if buf[j] == "\n":
                return end
            j += 1
        if j == len(buf):
            return None
        if not set(run) <= _WEAK:
            return end  # ! and ? end the sentence whatever follows
        goes_on = self._continues(buf, i, run, buf[j:])
        return None if goes_on is None else _NONE if goes_on else end

    def _continues(self, buf: str, i: int, run: str, after: str) -> bool | None:
        """Whether the sentence goes on after the period (or ellipsis) at ``buf[i]``; None when the
        next word has not come far enough to tell."""
        word_after = after.lstrip(_OPENERS)
        if not word_after:
            return None
        nxt = word_after[0]
        if nxt.islower():
            return True  # e.g. the, approx. five, Hmm... let me
        if run != ".":
            return False
        start = i
        while start > 0 and not buf[start - 1].isspace():
            start -= 1
        word = buf[start:i].lstrip(_OPENERS)
        if not word:
            return False
        if word in _TITLES or word.lower() in _ABBREVIATIONS:
            return True
        if nxt.isdigit() and word.lower() in _BEFORE_NUMBER:
            return True
        if len(word) == 1 and word.isupper() and nxt.isupper():
            return True  # an initial: J. R. R. Tolkien
        newline = buf.rfind("\n", 0, start)
        at_line_start = (newline >= 0 or self._fresh) and not buf[newline + 1 : start].strip()
        if at_line_start and _LIST_MARKER.fullmatch(word):
            return True  # 1. Open the door / a. First option
        if word.isdigit() and len(word) <= 2:  # am 3. Oktober
            m = _WORD.match(word_after)
            name = m.group() if m else ""
            if len(name) == len(word_after) and any(month.startswith(name) for month in _MONTHS_DE):
                return None  # the month's name may still be coming
            return name in _MONTHS_DE
        return False

    def _soft_cut(self, buf: str, lead: int, limit: int) -> int:
        """Where to cut text that is too long and has no sentence end (see the module docstring)."""
        for k in range(limit - 1, _fit(buf, lead, self.max_chars // 2) - 1, -1):
            if buf[k] in _CJK_CLAUSE or (buf[k] in _CLAUSE and buf[k + 1].isspace()):
                return k + 1
        for k in range(limit, lead, -1):
            if buf[k].isspace() and not buf[k - 1].isspace():
                return k
        k = limit  # no whitespace at all: between two characters, not inside one
        while k > lead + 1 and (
            unicodedata.combining(buf[k]) or buf[k] in _ZERO_WIDTH or buf[k - 1] in _ZERO_WIDTH
        ):
            k -= 1
        return k


def _size(text: str) -> int:
    """Length for ``min_chars`` and ``max_chars``: a wide (CJK) character, about a syllable, counts two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _fit(buf: str, start: int, size: int) -> int:
    """The end of the longest ``buf[start:end]`` whose :func:`_size` is at most ``size``."""
    i = start
    while i < len(buf):
        size -= _size(buf[i])
        if size < 0:
            break
        i += 1
    return i


def _run(buf: str, i: int, chars: frozenset[str]) -> int:
    """The index after the run of ``chars`` that starts at ``i``."""
    while i < len(buf) and buf[i] in chars:
        i += 1
    return i


# --- what to say -------------------------------------------------------------------------------

_FENCE = re.compile(r"^\s*(```|~~~)")
_RULE = re.compile(r"^\s*([-*_=])(\s*\1){2,}\s*$")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_LINE_PREFIX = re.compile(r"^\s*(#{1,6}\s+|>+\s?|[-*+•]\s+)")
_IMAGE_OR_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_EMPHASIS = re.compile(r"\*\*|__|~~|`|(?<!\w)[*_](?=\S)|(?<=\S)[*_](?!\w)")
_SPACES = re.compile(r"\s+")


class SpeechFilter:
    """What a speech engine should say for each piece of one answer, without markdown.

    Stateful only across code fences: lines between ```` ``` ```` fences are not spoken. Headings'
    ``#``, bullets, block quotes, emphasis, backticks, horizontal and table rules are dropped,
    ``[text](url)`` becomes ``text`` and table cells are read with commas; whitespace is folded to
    single spaces and trimmed. Returns "" when nothing is left to say.
    """

    def __init__(self) -> None:
        self._in_code = False

    def say(self, piece: str) -> str:
        """The words to say for ``piece`` (one of a chunker's pieces, in order)."""
        lines = []
        for line in piece.split("\n"):
            if _FENCE.match(line):
                self._in_code = not self._in_code
                continue
            if self._in_code or _RULE.match(line) or _TABLE_RULE.match(line):
                continue
            line = _LINE_PREFIX.sub("", line)
            line = _IMAGE_OR_LINK.sub(r"\1", line)
            line = _EMPHASIS.sub("", line)
            if "|" in line:
                line = ", ".join(c.strip() for c in line.strip().strip("|").split("|") if c.strip())
            line = _SPACES.sub(" ", line).strip()
            if line:
                lines.append(line)
        # Lines joined in one piece (a heading and its first line, short list items) keep a pause.
        return " ".join(
            t if k == len(lines) - 1 or unicodedata.category(t[-1]).startswith("P") else t + "."
            for k, t in enumerate(lines)
        )


class Utterances:
    """Sentences ready to speak: a :class:`SentenceChunker` and a :class:`SpeechFilter` together;
    blank pieces (whitespace, markup only, code) are left out."""

    def __init__(self, max_chars: int = MAX_CHARS, min_chars: int = MIN_CHARS) -> None:
        self._chunker = SentenceChunker(max_chars, min_chars)
        self._filter = SpeechFilter()

    def feed(self, delta: str) -> list[str]:
        return self._said(self._chunker.feed(delta))

    def finish(self) -> list[str]:
        return self._said(self._chunker.finish())

    def _said(self, pieces: list[str]) -> list[str]:
        return [s for s in (self._filter.say(p) for p in pieces) if s]


def first_sentence_at(
    deltas: Iterable[tuple[float, str]],
    end: float | None = None,
    *,
    max_chars: int = MAX_CHARS,
    min_chars: int = MIN_CHARS,
) -> tuple[float, str] | None:
    """When the first sentence to say was complete in a recorded stream of ``(time, delta)``.

    Returns the time of the delta that completed it and the sentence, as rkllmd would publish it
    on ``<base>/stream/<id>/sentences`` (:class:`Utterances`). An answer whose first sentence ends
    only with the answer is complete at ``end`` (the final reply's time); None when there is no
    such time or nothing is said. For benchmarks: the time to the first sentence of a turn.
    """
    speech = Utterances(max_chars, min_chars)
    for at, delta in deltas:
        said = speech.feed(delta)
        if said:
            return at, said[0]
    said = speech.finish()
    return (end, said[0]) if said and end is not None else None
