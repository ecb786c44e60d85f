"""Word counting and segmentation shared by every part of selflengthen.

A *word* is one of:

- one CJK character (U+4E00–U+9FFF, U+3001–U+303F, U+FF00–U+FFEF), so that Chinese is counted
  in characters, the unit the Self-Lengthen paper reports. Japanese kana are not in those
  ranges: a run of kana counts as one word, each kanji as one;
- in Thai, Lao, Myanmar and Khmer, which write no space between words, a piece of
  `UNSPACED_LETTERS_PER_WORD` (3) letters of a run of that script, each letter with the vowel
  signs and tone marks that follow it, the run's last piece taking the 1–2 letters left over.
  These scripts' words average about three letters (ภาษา|ไทย|ง่าย, "the Thai language is easy",
  counts 3); no word list is consulted (no maintained dictionary segmenter installs from PyPI
  as a wheel), so a count is an estimate of the dictionary words, good to tens of percent;
- a run of emoji, each with what shapes it (skin tones, variation selectors, a keycap, tags,
  U+200D joining a family or a profession, two regional indicators making a flag): pictographs
  of U+2600–U+27BF and U+1F000–U+1FAFF. `hello👋🏽world` counts 3, and so does `hello 🌱💚 world`:
  a string of emoji decorates about one word's worth of meaning, and a model that loops on
  emoji must not read as a longer writer;
- a maximal run of other characters that are not whitespace.

Whitespace is never a word (U+3000, the ideographic space, included), and neither are the
invisible characters that separate words without a space: U+200B (zero-width space), the
direction marks U+200E, U+200F and U+061C, the bidi embeddings and isolates U+202A–U+202E and
U+2066–U+2069, U+2060–U+2064 (word joiner, invisible operators) and U+FEFF. The zero-width
non-joiner and joiner (U+200C, U+200D) belong to a word after a letter of a script that shapes
with them (Arabic to Sinhala, U+0600–U+0DFF and Arabic presentation forms: Persian writes
می‌خواهم with one), and inside an emoji sequence; anywhere else they separate words like U+200B.
So a mixed text counts each script in its own unit.

Repetition is judged on *content words* only (`content_tokens`): words with at least one
character for which `str.isalnum()` is true, so table rules (`| --- |`), dot leaders and
separator lines (`＝＝＝`) never make a text repetitive.

`tokens` is the reference definition (one regular expression); `count_words` and `token_spans`
give the same segmentation faster: `token_spans` as NumPy arrays of offsets, vectorised for
texts whose characters are all ordinary letters, whitespace or CJK (nearly every text), through
the regular expression for the others.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

CJK_RANGES: tuple[tuple[int, int], ...] = ((0x4E00, 0x9FFF), (0x3001, 0x303F), (0xFF00, 0xFFEF))
#: Thai, Lao, Myanmar (and its extensions A and B), Khmer (and its symbols).
UNSPACED_RANGES: tuple[tuple[int, int], ...] = (
    (0x0E00, 0x0EFF),
    (0x1000, 0x109F),
    (0x1780, 0x17FF),
    (0x19E0, 0x19FF),
    (0xA9E0, 0xA9FF),
    (0xAA60, 0xAA7F),
)
UNSPACED_LETTERS_PER_WORD = 3
EMOJI_RANGES: tuple[tuple[int, int], ...] = ((0x2600, 0x27BF), (0x1F000, 0x1FAFF))
#: Invisible characters that separate words as a space does (see the module docstring).
INVISIBLE_SEPARATORS = "\u061c\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff"
#: Zero-width non-joiner and joiner: part of a word only after a letter of `JOINING_RANGES`.
JOINERS = "\u200c\u200d"
JOINING_RANGES: tuple[tuple[int, int], ...] = ((0x0600, 0x0DFF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFE))
_REGIONAL_INDICATORS = (0x1F1E6, 0x1F1FF)
#: What may follow an emoji inside it: variation selectors, a keycap, skin tones, tags.
_EMOJI_MODIFIERS = ((0xFE0E, 0xFE0F), (0x20E3, 0x20E3), (0x1F3FB, 0x1F3FF), (0xE0020, 0xE007F))


def _char_class(ranges: Iterable[tuple[int, int]]) -> str:
    """The body of a regular-expression character class for inclusive code point ranges."""
    return "".join(
        re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}" for lo, hi in ranges
    )


def _as_ranges(codes: list[int]) -> list[tuple[int, int]]:
    """Sorted code points as inclusive ranges of consecutive ones."""
    ranges: list[tuple[int, int]] = []
    for code in codes:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1] = (ranges[-1][0], code)
        else:
            ranges.append((code, code))
    return ranges


def _unspaced_codes(marks: bool) -> list[int]:
    """The code points of `UNSPACED_RANGES` that are combining marks (or those that are not)."""
    return [
        code
        for lo, hi in UNSPACED_RANGES
        for code in range(lo, hi + 1)
        if unicodedata.category(chr(code)).startswith("M") == marks
    ]


def _token_pattern() -> re.Pattern[str]:
    cjk, emoji, joining = _char_class(CJK_RANGES), _char_class(EMOJI_RANGES), _char_class(JOINING_RANGES)
    letters, marks = (
        _char_class(_as_ranges(_unspaced_codes(False))),
        _char_class(_as_ranges(_unspaced_codes(True))),
    )
    regional, modifiers = _char_class([_REGIONAL_INDICATORS]), _char_class(_EMOJI_MODIFIERS)
    one_emoji = f"(?:[{regional}][{regional}]|[{emoji}])[{modifiers}]*"
    letter = f"[{letters}][{marks}{JOINERS}]*"
    n = UNSPACED_LETTERS_PER_WORD
    unspaced = f"[{marks}]*(?:{letter}){{{n}}}(?=(?:{letter}){{{n}}})|[{marks}]*(?:{letter})+|[{marks}]+"
    other = f"[^\\s{INVISIBLE_SEPARATORS}{cjk}{_char_class(UNSPACED_RANGES)}{emoji}{JOINERS}]"
    run = f"(?:{other}|(?<=[{joining}])[{JOINERS}])+"
    return re.compile(f"{one_emoji}(?:\u200d?{one_emoji})*|{unspaced}|[{cjk}]|{run}")


_TOKEN_RE = _token_pattern()


def tokens(text: str) -> list[str]:
    """The words of `text` in order (see the module docstring for what a word is)."""
    return _TOKEN_RE.findall(text)


def word_bounds(text: str) -> list[tuple[int, int]]:
    """The (start, end) offsets of the words of `text` in order, by the reference expression:
    for short texts (a streamed chunk), where `token_spans`' arrays cost more than they save."""
    return [match.span() for match in _TOKEN_RE.finditer(text)]


def count_words(text: str) -> int:
    """Number of words in `text` (`len(tokens(text))`, computed faster)."""
    if text.isascii():
        return len(text.split())
    return len(token_spans(text).starts)


def is_content(word: str) -> bool:
    """True for a word with at least one letter or digit (`str.isalnum`); words of punctuation
    or symbols alone (`|`, `---`, `.`, `。`, `＝＝＝`) are not content."""
    return any(char.isalnum() for char in word)


def content_tokens(text: str) -> list[str]:
    """The content words of `text` in order (`tokens` without punctuation-only words)."""
    return [word for word in tokens(text) if is_content(word)]


def is_cjk(char: str) -> bool:
    """True for a character in one of the CJK ranges that count as one word each."""
    code = ord(char)
    return any(lo <= code <= hi for lo, hi in CJK_RANGES)


# Character classes for the vectorised segmentation: 0 other, 1 whitespace (and the invisible
# separators), 2 CJK, 3 a character whose word the regular expression must decide (unspaced
# scripts, emoji, the joiners). Every character Python calls whitespace lies below U+3001 and
# every CJK range below U+FFFF (checked by the tests), so a table of 64 Ki entries
# (cache-resident) covers them; a higher code point is "other", or an emoji (`_ASTRAL_SPECIAL`).
_OTHER, _SPACE, _CJK, _SPECIAL = 0, 1, 2, 3
_TABLE_SIZE = 0x10000
_CLASS_TABLE = np.zeros(_TABLE_SIZE + 1, dtype=np.uint8)
_CLASS_TABLE[[c for c in range(0x3001) if chr(c).isspace()]] = _SPACE
_CLASS_TABLE[[ord(c) for c in re.findall(f"[{INVISIBLE_SEPARATORS}]", "".join(map(chr, range(0x10000))))]] = (
    _SPACE
)
for _lo, _hi in CJK_RANGES:
    _CLASS_TABLE[_lo : _hi + 1] = _CJK
for _lo, _hi in (*UNSPACED_RANGES, *EMOJI_RANGES):
    _CLASS_TABLE[_lo : min(_hi, _TABLE_SIZE - 1) + 1] = _SPECIAL
_CLASS_TABLE[[ord(c) for c in JOINERS]] = _SPECIAL
_ASTRAL_SPECIAL = [(lo, hi) for lo, hi in EMOJI_RANGES if hi >= _TABLE_SIZE]
#: `str.isalnum()` of every code point below U+10000 (higher ones are looked up one by one).
_ALNUM_TABLE = np.array([chr(code).isalnum() for code in range(_TABLE_SIZE)], dtype=bool)


class TokenSpans(NamedTuple):
    """The words of a text as offsets into it: word i is `text[starts[i]:ends[i]]`."""

    codepoints: np.ndarray  # one unsigned integer per character of the text
    starts: np.ndarray  # int64
    ends: np.ndarray  # int64
    is_cjk: np.ndarray  # bool, whether word i is a CJK character


def codepoints(text: str) -> np.ndarray:
    """The text's characters as an array of code points, one element per character, in the
    narrowest type that holds them all (uint8, uint16 or uint32), like CPython's own strings.
    Lone surrogates are kept as their code points."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    narrow = text.encode("utf-16-le", "surrogatepass")
    if len(narrow) == 2 * len(text):  # no character needed a surrogate pair
        return np.frombuffer(narrow, dtype="<u2")
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def _classify(points: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Mask of "other" characters and positions of CJK characters, or None for a text with a
    character only the regular expression can place. Printable ASCII and the space are decided
    by comparisons; only the rest (controls, newlines, tabs, non-ASCII) goes through the class
    table, so English costs a few cheap passes."""
    kind = points.dtype.type
    other = points > kind(32)  # right for printable ASCII and the space; the rest is fixed below
    shifted = points - kind(32)  # wraps below 32, so one comparison finds both ends
    irregular = np.flatnonzero(shifted > kind(126 - 32))  # controls, tabs, newlines, non-ASCII
    if len(irregular) == 0:
        return other, irregular
    looked_up = points.take(irregular)
    if points.itemsize > 2:
        if any(((looked_up >= lo) & (looked_up <= hi)).any() for lo, hi in _ASTRAL_SPECIAL):
            return None
        looked_up = np.minimum(looked_up, _TABLE_SIZE)
    classes = _CLASS_TABLE.take(looked_up)
    if (classes == _SPECIAL).any():
        return None
    other[irregular] = classes == _OTHER
    return other, irregular[classes == _CJK]


def token_spans(text: str) -> TokenSpans:
    """The same segmentation as `tokens`, as arrays of character offsets (vectorised)."""
    points = codepoints(text)
    classified = _classify(points)
    if classified is None:
        return _spans_by_pattern(text, points)
    other, cjk_positions = classified
    boundaries = np.flatnonzero(other[1:] != other[:-1]) + 1  # where runs of "other" start or end
    if len(other) and other[0]:
        boundaries = np.concatenate(([0], boundaries))
    if len(other) and other[-1]:
        boundaries = np.append(boundaries, len(other))
    starts, ends = boundaries[0::2].copy(), boundaries[1::2].copy()  # now strictly alternating
    if len(cjk_positions) == 0:
        return TokenSpans(points, starts, ends, np.zeros(len(starts), dtype=bool))
    # Merge the runs with the CJK characters (one word each) in reading order, via masks.
    is_start = np.zeros(len(points) + 1, dtype=bool)
    is_end = np.zeros(len(points) + 1, dtype=bool)
    is_start[starts] = True
    is_start[cjk_positions] = True
    is_end[ends] = True
    is_end[cjk_positions + 1] = True
    starts, ends = np.flatnonzero(is_start), np.flatnonzero(is_end)
    cjk_mask = np.zeros(len(points), dtype=bool)
    cjk_mask[cjk_positions] = True
    return TokenSpans(points, starts, ends, cjk_mask[starts])


def _spans_by_pattern(text: str, points: np.ndarray) -> TokenSpans:
    """`token_spans` through the reference regular expression."""
    bounds = np.array(word_bounds(text), dtype=np.int64).reshape(-1, 2)
    starts, ends = bounds[:, 0].copy(), bounds[:, 1].copy()
    one_char = starts[ends - starts == 1]
    cjk = np.zeros(len(starts), dtype=bool)
    cjk[ends - starts == 1] = (
        _CLASS_TABLE.take(np.minimum(points.take(one_char).astype(np.uint32), _TABLE_SIZE)) == _CJK
    )
    return TokenSpans(points, starts, ends, cjk)


def _alnum(points: np.ndarray) -> np.ndarray:
    """`str.isalnum()` of each code point (a table below U+10000, one by one above)."""
    if points.itemsize <= 2:
        return _ALNUM_TABLE.take(points)
    astral = np.flatnonzero(points >= _TABLE_SIZE)
    found = _ALNUM_TABLE.take(np.minimum(points, _TABLE_SIZE - 1))
    for position in astral.tolist():
        found[position] = chr(int(points[position])).isalnum()
    return found


def content_mask(spans: TokenSpans) -> np.ndarray:
    """Whether each word of `spans` is a content word (`is_content`), vectorised. Most words
    start with a letter or digit, so only the others are looked at character by character."""
    points, starts, ends = spans.codepoints, spans.starts, spans.ends
    mask = _alnum(points.take(starts))
    suspects = np.flatnonzero(~mask)
    if len(suspects) == 0:
        return mask
    lengths = ends[suspects] - starts[suspects]
    offsets = np.repeat(starts[suspects] - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    found = _alnum(points.take(offsets)).astype(np.int64)
    first = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    mask[suspects] = np.add.reduceat(found, first) > 0
    return mask
