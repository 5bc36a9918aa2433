# ruff: noqa: RUF001  (texts in several scripts)
"""The sentence chunker: where sentences end, the length limits, and the exact text it gives back."""

from __future__ import annotations

import random

import pytest

from rkllmd.sentences import SentenceChunker, SpeechFilter, Utterances, first_sentence_at


def pieces(text: str, **kw: int) -> list[str]:
    """The pieces of ``text`` fed in one delta, with surrounding whitespace stripped."""
    c = SentenceChunker(**kw)
    out = c.feed(text) + c.finish()
    assert "".join(out) == text
    return [p.strip() for p in out]


def fed_in_splits(text: str, seed: int, **kw: int) -> list[str]:
    """The pieces of ``text`` fed in random deltas of 1 to 8 characters, as returned."""
    rnd, c, out, i = random.Random(seed), SentenceChunker(**kw), [], 0
    while i < len(text):
        n = rnd.randint(1, 8)
        out += c.feed(text[i : i + n])
        i += n
    return out + c.finish()


def test_plain_sentences() -> None:
    """Full stops, question and exclamation marks end sentences; the last comes with finish."""
    c = SentenceChunker(min_chars=0)
    assert c.feed("Hello there. How are") == ["Hello there."]
    assert c.feed(" you? I'm") == [" How are you?"]
    assert c.feed(" fine!") == []
    assert c.finish() == [" I'm fine!"]
    assert c.finish() == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Dr. Smith met Mr. Jones. They talked.",
            ["Dr. Smith met Mr. Jones.", "They talked."],
        ),
        (
            "Use a tool, e.g. a hammer. Or i.e. Something else. Fine.",
            ["Use a tool, e.g. a hammer.", "Or i.e. Something else.", "Fine."],
        ),
        ("It costs approx. five euros. Cheap.", ["It costs approx. five euros.", "Cheap."]),
        ("J. R. R. Tolkien wrote it. See No. 5 there.", ["J. R. R. Tolkien wrote it.", "See No. 5 there."]),
        (
            "Das ist z.B. gut, d.h. sehr gut. Siehe S. 12 dazu.",
            ["Das ist z.B. gut, d.h. sehr gut.", "Siehe S. 12 dazu."],
        ),
        ("La Sra. García vive aquí. Mme. Dupont aussi.", ["La Sra. García vive aquí.", "Mme. Dupont aussi."]),
    ],
)
def test_abbreviations_do_not_end_sentences(text: str, expected: list[str]) -> None:
    """Titles, e.g./z.B., initials and No. before a number are not sentence ends."""
    assert pieces(text, min_chars=0) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Pi is 3.14 roughly. Yes it is.", ["Pi is 3.14 roughly.", "Yes it is."]),
        ("Install v1.2.3 now. Then restart.", ["Install v1.2.3 now.", "Then restart."]),
        ("Open example.com/a.html today. Done here.", ["Open example.com/a.html today.", "Done here."]),
        (
            "It has 1.000 rows. See https://x.org/?q=1. Bye now.",
            ["It has 1.000 rows.", "See https://x.org/?q=1.", "Bye now."],
        ),
        ("I counted to 10. Then I stopped.", ["I counted to 10.", "Then I stopped."]),
    ],
)
def test_decimals_versions_and_urls_stay_whole(text: str, expected: list[str]) -> None:
    """A dot without whitespace after it (numbers, versions, URLs) is not a sentence end."""
    assert pieces(text, min_chars=0) == expected


def test_lists_and_markdown_lines_are_pieces() -> None:
    """Each line is a piece; a list number at the start of a line is not a sentence end."""
    text = "Steps:\n1. Open the door.\n2. Walk in\n- milk\n* eggs\n\n## Done\nThat is all."
    assert pieces(text, min_chars=0) == [
        "Steps:",
        "1. Open the door.",
        "2. Walk in",
        "- milk",
        "* eggs",
        "## Done",
        "That is all.",
    ]


def test_closers_and_ellipses_stay_with_their_sentence() -> None:
    """Quotes, brackets and emphasis after a full stop belong to it; "... let" does not end a sentence."""
    text = 'He said "Stop." Then (he left.) **Bold.** Really?! Well... I see. Hmm... let me think… Done.'
    assert pieces(text, min_chars=0) == [
        'He said "Stop."',
        "Then (he left.)",
        "**Bold.**",
        "Really?!",
        "Well...",
        "I see.",
        "Hmm... let me think…",
        "Done.",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "今日は晴れです。明日は雨でしょう！本当？「はい。」",
            ["今日は晴れです。", "明日は雨でしょう！", "本当？", "「はい。」"],
        ),
        ("我们走吧。你好吗？很好！", ["我们走吧。", "你好吗？", "很好！"]),
        ("¡Hola! ¿Qué tal? Muy bien.", ["¡Hola!", "¿Qué tal?", "Muy bien."]),
        (
            "Il a dit « Bonjour. » Puis il est parti. Vraiment ? Oui !",
            ["Il a dit « Bonjour. »", "Puis il est parti.", "Vraiment ?", "Oui !"],
        ),
        (
            "Der 3. Oktober ist frei. Am 1. Mai auch. Gut so.",
            ["Der 3. Oktober ist frei.", "Am 1. Mai auch.", "Gut so."],
        ),
        ("Er sagte: »Komm.« Dann ging er.", ["Er sagte: »Komm.«", "Dann ging er."]),
        ("Привет. Как дела? Хорошо.", ["Привет.", "Как дела?", "Хорошо."]),
        ("मैं ठीक हूँ। आप कैसे हैं?", ["मैं ठीक हूँ।", "आप कैसे हैं?"]),
    ],
)
def test_several_languages(text: str, expected: list[str]) -> None:
    """Japanese, Chinese, Spanish, French, German, Russian and Hindi sentence ends."""
    assert pieces(text, min_chars=0) == expected


def test_short_sentences_join_the_next() -> None:
    """A sentence under min_chars is joined with the one after it, not returned alone."""
    assert pieces("Ok. Sure. The light is now on. Yes.") == ["Ok. Sure. The light is now on.", "Yes."]
    assert pieces("Ok. Sure. The light is now on.", min_chars=0) == ["Ok.", "Sure.", "The light is now on."]


def test_text_without_punctuation_is_cut_at_the_length_limit() -> None:
    """Code or a list on one line is cut at whitespace within max_chars, so speech never waits for the end."""
    text = " ".join(f"word{i}" for i in range(100))
    c = SentenceChunker(max_chars=50)
    early = c.feed(text[:120])
    assert early and all(len(p.strip()) <= 50 for p in early)
    out = early + c.feed(text[120:]) + c.finish()
    assert "".join(out) == text
    assert all(len(p.strip()) <= 50 for p in out)
    assert all(not p.strip().startswith("ord") for p in out)  # never inside a word


def test_a_long_sentence_is_cut_after_a_clause() -> None:
    """A sentence longer than max_chars is cut after its last comma in the second half of the window."""
    text = "one two three four five six, seven eight nine ten eleven twelve. End."
    assert pieces(text, max_chars=40, min_chars=0) == [
        "one two three four five six,",
        "seven eight nine ten eleven twelve.",
        "End.",
    ]


def test_text_without_spaces_is_cut_hard() -> None:
    """CJK without punctuation or a long URL is cut after max_chars (a wide character counting two)."""
    assert pieces("字" * 30, max_chars=20) == ["字" * 10, "字" * 10, "字" * 10]
    assert pieces("x" * 45, max_chars=20) == ["x" * 20, "x" * 20, "x" * 5]


SAMPLE = (
    "Sure! Dr. Smith said the 3.5 kg box (v1.2) is at example.com, e.g. in room 4. "
    "Here is the list:\n1. Milk\n2. Eggs\n\n今日は晴れです。明日は？¡Hola! ¿Qué tal? "
    'Il dit « Oui. » Er sagte: »Nein.« Hmm... well. "Quoted." ' + "no punctuation here " * 15 + "end"
)


@pytest.mark.parametrize("kw", [{}, {"min_chars": 0}, {"max_chars": 30, "min_chars": 5}])
def test_every_split_gives_back_the_exact_text_in_the_same_pieces(kw: dict[str, int]) -> None:
    """However the text is split into deltas, the pieces join to it exactly and are the same pieces."""
    c = SentenceChunker(**kw)
    whole = c.feed(SAMPLE) + c.finish()
    assert "".join(whole) == SAMPLE and len(whole) > 3
    for seed in range(200):
        assert fed_in_splits(SAMPLE, seed, **kw) == whole


def test_whitespace_between_sentences_starts_the_next_piece() -> None:
    """Leading whitespace stays in the first piece, whitespace between sentences starts the next."""
    c = SentenceChunker(min_chars=0)
    assert c.feed("\n Hi there.  Next one.\n\nLast") == ["\n Hi there.", "  Next one."]
    assert c.finish() == ["\n\nLast"]
    c.feed("Trailing.")
    assert c.finish() == ["Trailing."]
    assert SentenceChunker().feed("   ") == [] and SentenceChunker().finish() == []


def test_bad_limits_are_refused() -> None:
    """min_chars must be below max_chars, and both sensible."""
    for kw in ({"max_chars": 1}, {"min_chars": -1}, {"max_chars": 20, "min_chars": 20}):
        with pytest.raises(ValueError):
            SentenceChunker(**kw)


def test_speech_filter_leaves_out_markdown_and_code() -> None:
    """What is said: no markdown markers, no code blocks or rules, link text without its URL."""
    f = SpeechFilter()
    assert f.say("## **Kitchen**") == "Kitchen"
    assert f.say("\n- Turn on the *lamp* and `fan`") == "Turn on the lamp and fan"
    assert f.say("\nSee [the docs](https://x.org) now.") == "See the docs now."
    assert f.say("\n```python") == ""
    assert f.say("\nx = 1") == ""
    assert f.say("\n```") == ""
    assert f.say("\n| a | b |\n|---|---|\n| 1 | 2 |") == "a, b. 1, 2"
    assert f.say("\n---") == ""
    assert f.say(" snake_case and 2 * 3") == "snake_case and 2 * 3"


def test_utterances_are_sentences_ready_to_speak() -> None:
    """Utterances chunk, filter and drop blank pieces; a heading joined to a line keeps a pause."""
    u = Utterances()
    said = u.feed("# Weather\nIt is **sunny** today.\n```\ncode here\n```\nBye for now!")
    assert said + u.finish() == ["Weather. It is sunny today.", "Bye for now!"]


def test_first_sentence_at_times_a_recorded_stream() -> None:
    """The time to the first sentence is the delta that completed it, or the end for a one-sentence answer."""
    stream = [(0.1, "The light"), (0.2, " is on."), (0.3, " Anything"), (0.4, " else?")]
    assert first_sentence_at(stream) == (0.3, "The light is on.")
    assert first_sentence_at(stream[:2], end=0.25) == (0.25, "The light is on.")
    assert first_sentence_at(stream[:2]) is None
    assert first_sentence_at([(0.1, "```"), (0.2, "\ncode\n")], end=1.0) is None
