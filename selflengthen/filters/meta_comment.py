"""Drop texts that talk about themselves ("Here is the revised version…") at the start or end."""

from __future__ import annotations

import re
from collections.abc import Iterable

from datatrove.data import Document
from datatrove.pipeline.writers.disk_base import DiskWriter

from selflengthen.filters.base import TextFilter
from selflengthen.text import is_cjk

#: Words that, near the start or end of an answer, show the model commenting on its own text
#: instead of writing it. English entries match as whole words; Chinese ones as substrings
#: (Chinese has no spaces between words).
DEFAULT_META_WORDS: tuple[str, ...] = (
    "revised",
    "revision",
    "revisions",
    "response",
    "responses",
    "version",
    "versions",
    "paragraph",
    "paragraphs",
    "修改",
    "修订",
    "回答",
    "回复",
    "版本",
    "段落",
)


def _word_pattern(word: str) -> str:
    escaped = re.escape(word)
    return escaped if any(is_cjk(char) for char in word) else rf"\b{escaped}\b"


class MetaCommentFilter(TextFilter):
    """Drops a text whose first `head_lines` or last `tail_lines` non-empty lines contain one of
    `words` (case-insensitive; reason `meta_comment: <word>`).

    Args:
        words: the words that mark a comment about the text itself. English words match whole
            words only ("version" does not match "conversion"); words with CJK characters match
            anywhere.
        head_lines: how many non-empty lines at the start are checked.
        tail_lines: how many non-empty lines at the end are checked.
        text_key: `None` for `doc.text`, else the metadata field holding the text.
    """

    name = "🗨 Meta-comment"

    def __init__(
        self,
        words: Iterable[str] = DEFAULT_META_WORDS,
        head_lines: int = 2,
        tail_lines: int = 3,
        text_key: str | None = None,
        exclusion_writer: DiskWriter | None = None,
    ) -> None:
        word_list = [word.strip() for word in words]
        if not word_list or not all(word_list):
            raise ValueError("words must be a non-empty list of non-empty strings")
        for param, value in (("head_lines", head_lines), ("tail_lines", tail_lines)):
            if value < 0:
                raise ValueError(f"{param} must be >= 0, got {value}")
        super().__init__(text_key=text_key, exclusion_writer=exclusion_writer)
        self.words = tuple(word_list)
        self.head_lines = head_lines
        self.tail_lines = tail_lines
        alternatives = "|".join(_word_pattern(word) for word in sorted(word_list, key=len, reverse=True))
        self._pattern = re.compile(f"(?:{alternatives})", re.IGNORECASE)

    def filter_text(self, text: str, doc: Document) -> bool | tuple[bool, str]:
        lines = [line for line in text.splitlines() if line.strip()]
        checked = lines[: self.head_lines]
        if self.tail_lines:
            checked += lines[max(self.head_lines, len(lines) - self.tail_lines) :]
        for line in checked:
            if (word := self.meta_word(line)) is not None:
                return False, f"meta_comment: {word}"
        return True

    def meta_word(self, line: str) -> str | None:
        """The first of `words` that `line` contains (lower-cased), or None."""
        match = self._pattern.search(line)
        return match.group(0).lower() if match else None
