"""Word counting and segmentation shared by every part of selflengthen.

A *word* is either one CJK character (U+4E00–U+9FFF, U+3001–U+303F, U+FF00–U+FFEF) or a maximal
run of other characters that are not whitespace. English is therefore counted in words and
Chinese in characters, the units the Self-Lengthen paper reports, and a mixed text counts both.
Whitespace is never a word (U+3000, the ideographic space, included). Japanese kana are not in
those ranges: a run of kana counts as one word, each kanji as one.

Repetition is judged on *content words* only (`content_tokens`): words with at least one
character for which `str.isalnum()` is true, so table rules (`| --- |`), dot leaders and
separator lines (`＝＝＝`) never make a text repetitive.

`tokens` and `count_words` are the reference definitions (plain regular expressions);
`token_spans` gives the same segmentation as NumPy arrays of offsets for code that needs speed.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

CJK_RANGES: tuple[tuple[int, int], ...] = ((0x4E00, 0x9FFF), (0x3001, 0x303F), (0xFF00, 0xFFEF))

_CJK_CLASS = "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in CJK_RANGES)
_CJK_RE = re.compile(f"[{_CJK_CLASS}]")
_TOKEN_RE = re.compile(f"[{_CJK_CLASS}]|[^\\s{_CJK_CLASS}]+")


def tokens(text: str) -> list[str]:
    """The words of `text` in order: each CJK character, and each maximal run of other
    non-whitespace characters."""
    return _TOKEN_RE.findall(text)


def count_words(text: str) -> int:
    """Number of words in `text`: CJK characters count one each; the rest of the text, with those
    characters replaced by spaces, counts its whitespace-separated words."""
    n_cjk = len(_CJK_RE.findall(text))
    if n_cjk == 0:
        return len(text.split())
    return n_cjk + len(_CJK_RE.sub(" ", text).split())


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


# Character classes for the vectorised segmentation: 0 other, 1 whitespace, 2 CJK. Every
# character Python calls whitespace lies below U+3001 and every CJK range below U+FFFF (checked by
# the tests), so a table of 64 Ki entries (cache-resident) covers them and every higher code
# point is "other".
_OTHER, _SPACE, _CJK = 0, 1, 2
_TABLE_SIZE = 0x10000
_CLASS_TABLE = np.zeros(_TABLE_SIZE + 1, dtype=np.uint8)
_CLASS_TABLE[[c for c in range(0x3001) if chr(c).isspace()]] = _SPACE
for _lo, _hi in CJK_RANGES:
    _CLASS_TABLE[_lo : _hi + 1] = _CJK
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


def _classify(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mask of "other" characters and positions of CJK characters. Printable ASCII and the space
    are decided by comparisons; only the rest (controls, newlines, tabs, non-ASCII) goes through
    the class table, so English costs a few cheap passes."""
    kind = points.dtype.type
    other = points > kind(32)  # right for printable ASCII and the space; the rest is fixed below
    shifted = points - kind(32)  # wraps below 32, so one comparison finds both ends
    irregular = np.flatnonzero(shifted > kind(126 - 32))  # controls, tabs, newlines, non-ASCII
    if len(irregular) == 0:
        return other, irregular
    looked_up = points.take(irregular)
    if points.itemsize > 2:
        looked_up = np.minimum(looked_up, _TABLE_SIZE)
    classes = _CLASS_TABLE.take(looked_up)
    other[irregular] = classes == _OTHER
    return other, irregular[classes == _CJK]


def token_spans(text: str) -> TokenSpans:
    """The same segmentation as `tokens`, as arrays of character offsets (vectorised)."""
    points = codepoints(text)
    other, cjk_positions = _classify(points)
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
