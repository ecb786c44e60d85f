"""Drop texts with a runaway loop of a few characters: `zzzz…`, `💐💐💐…`, `:D:D:D…`, `；；；…`.

A small model that loses its way often repeats one token (or two or three) until `max_tokens`.
Such a loop has no whitespace, or its units are punctuation or emoji, so `RepetitionFilter`
(n-grams of words with a letter or digit) never sees it, and a loop that ends with a clean
stop passes every other check: before this filter, a kept answer of the CPU experiment ended in
957 `w`s. Natural prose repeats a unit of a few characters over ~30 characters at most
(`'s son's son's son`, measured on 265 kept answers of the CPU runs); separator lines of 72-80
`=` or `-` are left alone by the default `max_chars`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.writers.disk_base import DiskWriter

from selflengthen.filters.base import TextFilter, drop
from selflengthen.text import codepoints

if TYPE_CHECKING:
    from selflengthen.filters.prefix import PrefixWatch

DEFAULT_MAX_CHARS = 80
DEFAULT_MAX_PERIOD = 8
_PREVIEW_CHARS = 24


def find_character_loop(
    text: str, max_chars: int = DEFAULT_MAX_CHARS, max_period: int = DEFAULT_MAX_PERIOD
) -> str | None:
    """The first stretch of `text` (by where it ends) longer than `max_chars` characters that
    repeats one unit of at most `max_period` characters, the unit not all whitespace; `None`
    when there is none. The stretch is returned cut to its first `max_chars + 1` characters.

    A stretch `text[i:j]` repeats a unit of `p` characters when `text[k] == text[k - p]` for
    every `k` in `[i + p, j)`; it is found with one vectorised comparison per period.
    """
    if len(text) <= max_chars:
        return None
    points = codepoints(text)
    first_end, found = len(text) + 1, None
    for period in range(1, max_period + 1):
        same = np.concatenate(([False], points[period:] == points[:-period], [False]))
        edges = np.flatnonzero(same[1:] != same[:-1])
        for start, end in zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True):
            begin, stop = start, end + period  # `same` is shifted by one: k = start + period
            reached = begin + max_chars + 1  # where the stretch first exceeds max_chars
            if stop - begin > max_chars and reached < first_end and not text[begin:reached].isspace():
                first_end, found = reached, text[begin:reached]
    return found


class CharacterLoopFilter(TextFilter):
    """Drops a text in which a unit of at most `max_period` characters repeats, back to back,
    over more than `max_chars` characters (reason `character_loop`; the loop's start is in the
    document's metadata under `filter_detail`). Runs of whitespace alone do not count.

    Args:
        max_chars: the longest such stretch that is kept (80: plain-text separator lines pass).
        max_period: the longest unit looked for (8 characters: loops of one to a few tokens).
        text_key: `None` for `doc.text`, else the metadata field holding the text.
    """

    name = "🌀 Character loop"

    def __init__(
        self,
        max_chars: int = DEFAULT_MAX_CHARS,
        max_period: int = DEFAULT_MAX_PERIOD,
        text_key: str | None = None,
        exclusion_writer: DiskWriter | None = None,
    ) -> None:
        if max_period < 1 or max_chars < max_period:
            raise ValueError(
                f"need 1 <= max_period <= max_chars, got max_period={max_period}, max_chars={max_chars}"
            )
        super().__init__(text_key=text_key, exclusion_writer=exclusion_writer)
        self.max_chars = max_chars
        self.max_period = max_period

    def prefix_watch(self) -> PrefixWatch:
        """`LoopWatch`: this filter's rejection found while the text is still being written."""
        from selflengthen.filters.prefix import LoopWatch  # that module imports this one

        return LoopWatch.for_filter(self)

    def find(self, text: str) -> str | None:
        """The first loop this filter drops `text` for (`find_character_loop`), or `None`."""
        return find_character_loop(text, self.max_chars, self.max_period)

    def filter_text(self, text: str, doc: Document) -> bool | tuple[bool, str]:
        loop = self.find(text)
        if loop is None:
            return True
        return drop(doc, "character_loop", loop[:_PREVIEW_CHARS] + "…")
