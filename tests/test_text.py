import re
import sys
import unicodedata

import pytest
from hypothesis import given

from selflengthen.text import (
    CJK_RANGES,
    EMOJI_RANGES,
    INVISIBLE_SEPARATORS,
    JOINERS,
    UNSPACED_LETTERS_PER_WORD,
    UNSPACED_RANGES,
    content_mask,
    content_tokens,
    count_words,
    is_cjk,
    is_content,
    token_spans,
    tokens,
)
from tests.strategies import texts


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("   \n\t ", 0),
        ("Hello, world!", 2),
        ("one  two\nthree\tfour", 4),
        ("今天天气很好。", 7),  # six ideographs and U+3002 IDEOGRAPHIC FULL STOP
        ("我爱Python编程", 5),  # 4 CJK characters + 1 run of Latin letters
        ("Hello,世界", 3),  # "Hello," then two CJK characters
        ("ＡＢＣ", 3),  # full-width forms count one each
        ("a\u3000b", 2),  # U+3000 (ideographic space) is whitespace, never a word
        ("\u3000\u3000", 0),
        ("これは日本語です", 5),  # a kana run is one word, each kanji one: これは 日 本 語 です
        ("naïve café — déjà vu", 5),
        ("😀 emoji", 2),
        # Thai, Lao, Khmer, Myanmar: a word per 3 letters of a run, each letter with its marks.
        ("ภาษาไทยง่าย", 3),  # ภาษา ไทย ง่าย: 10 letters (the tone mark ่ is a mark)
        ("ผม", 1),  # a run shorter than 3 letters is one word
        ("ខ្ញុំស្រលាញ់អ្នក", 3),  # Khmer "I love you", its subscript consonants are marks
        ("ສະບາຍດີ", 2),  # Lao "hello", ສະບາຍ ດີ: 6 letters (ະ and າ are letters, ີ a mark)
        ("ภาษาไทย and English", 4),
        # Invisible separators and joiners.
        ("hello\u200bworld", 2),  # zero-width space
        ("hello\u200dworld", 2),  # zero-width joiner between Latin letters
        ("hello\u200cworld", 2),  # zero-width non-joiner between Latin letters
        ("hello\u200fworld", 2),  # right-to-left mark
        ("hello\u2060world\ufeff", 2),  # word joiner, byte-order mark
        ("\u200b\u200e\u2066", 0),
        ("می\u200cخواهم", 1),  # Persian: the non-joiner is inside the word
        ("क्\u200dष", 1),  # Devanagari: the joiner shapes a half form inside the word
        # Emoji: one word each, with what shapes it.
        ("hello👋🏽world", 3),
        ("👨\u200d👩\u200d👧 family", 2),  # a family joined by U+200D is one emoji
        ("🇫🇷 🇩🇪", 2),  # two flags of two regional indicators each
        ("❤\ufe0f😀😀", 1),  # a run of emoji is one word
        ("Thanks!🌱💚 Bye", 3),
    ],
)
def test_count_words_examples(text: str, expected: int) -> None:
    assert count_words(text) == expected


def test_tokens_examples() -> None:
    assert tokens("Hello,世界！ How are you?") == ["Hello,", "世", "界", "！", "How", "are", "you?"]
    assert tokens("第1章：开始") == ["第", "1", "章", "：", "开", "始"]
    assert tokens(" \n ") == []


def _spec_count(text: str) -> int:
    """count_words of a text of letters, whitespace, invisible separators and CJK, as the
    docstring words it: CJK characters one each, then split the rest, separators as spaces."""
    cjk = sum(1 for char in text if is_cjk(char))
    rest = "".join(
        " " if is_cjk(char) or re.fullmatch(f"[{INVISIBLE_SEPARATORS}]", char) else char for char in text
    )
    return cjk + len(rest.split())


def _special(char: str) -> bool:
    """A character of the scripts, emoji or joiners that `_spec_count` does not describe."""
    code = ord(char)
    return char in JOINERS or any(lo <= code <= hi for lo, hi in (*UNSPACED_RANGES, *EMOJI_RANGES))


@given(texts)
def test_count_words_matches_definition_and_tokens(text: str) -> None:
    assert count_words(text) == len(tokens(text)) == len(token_spans(text).starts)
    plain = "".join(char for char in text if not _special(char))
    assert count_words(plain) == _spec_count(plain)


@given(texts)
def test_unspaced_runs_are_cut_every_three_letters(text: str) -> None:
    """Each word of Thai, Lao, Myanmar or Khmer holds 1–5 letters (3 but a run's last, which
    takes what is left), and the words of a run give it back whole."""
    for word in tokens(text):
        if any(lo <= ord(word[-1]) <= hi for lo, hi in UNSPACED_RANGES):
            letters = sum(
                1 for char in word if not unicodedata.category(char).startswith("M") and char not in JOINERS
            )
            assert letters <= 2 * UNSPACED_LETTERS_PER_WORD - 1


def test_unspaced_run_of_many_letters() -> None:
    run = "กขค" * 7 + "ง"  # 22 letters: six words of 3, the last of 4
    assert tokens(run) == ["กขค"] * 6 + ["กขคง"]


@given(texts)
def test_token_spans_match_tokens(text: str) -> None:
    spans = token_spans(text)
    words = [text[start:end] for start, end in zip(spans.starts.tolist(), spans.ends.tolist(), strict=True)]
    assert words == tokens(text)
    assert spans.is_cjk.tolist() == [len(word) == 1 and is_cjk(word) for word in words]


@pytest.mark.parametrize("char", ["a", "é", "中", "😀", "\ud800", "ไ", "\u200b"])
def test_token_spans_uses_one_element_per_character(char: str) -> None:
    text = f"x {char * 3} y"
    spans = token_spans(text)
    assert len(spans.codepoints) == len(text)
    assert [text[s:e] for s, e in zip(spans.starts, spans.ends, strict=True)] == tokens(text)


def test_class_table_assumptions() -> None:
    """token_spans relies on every whitespace character lying below U+3001 and every CJK range
    lying below U+FFFF; a new Unicode version must not break that silently."""
    whitespace = [code for code in range(sys.maxunicode + 1) if chr(code).isspace()]
    assert max(whitespace) <= 0x3000
    assert all(hi < 0xFFFF for _, hi in CJK_RANGES)
    assert all(re.fullmatch(r"\s", chr(code)) for code in whitespace)  # regex agrees with str.isspace


def test_megabyte_single_line() -> None:
    text = "word " * 200_000 + "中" * 50_000
    assert count_words(text) == 250_000
    spans = token_spans(text)
    assert len(spans.starts) == 250_000


def test_content_tokens_skip_punctuation_and_symbols_only() -> None:
    assert content_tokens("| a | --- | b. | 。 ＝＝＝ … x2 — 中") == ["a", "b.", "x2", "中"]
    assert [is_content(word) for word in ["|", "---", ".", "。", "＝＝＝", "〇", "ａ"]] == [
        False, False, False, False, False, True, True,
    ]  # fmt: skip


@given(texts)
def test_content_mask_matches_is_content(text: str) -> None:
    spans = token_spans(text)
    words = [text[start:end] for start, end in zip(spans.starts.tolist(), spans.ends.tolist(), strict=True)]
    assert content_mask(spans).tolist() == [is_content(word) for word in words]
