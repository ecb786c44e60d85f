"""Keep texts whose word count lies within bounds."""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.writers.disk_base import DiskWriter

from selflengthen.filters.base import TextFilter
from selflengthen.text import count_words


class LengthFilter(TextFilter):
    """Drops texts shorter than `min_words` (reason `too_short`) or longer than `max_words`
    (reason `too_long`), counting words with `selflengthen.text.count_words`.

    Args:
        min_words: smallest word count kept (inclusive); `None` for no lower bound.
        max_words: largest word count kept (inclusive); `None` for no upper bound.
        text_key: `None` for `doc.text`, else the metadata field holding the text.
    """

    name = "📏 Length"

    def __init__(
        self,
        min_words: int | None = None,
        max_words: int | None = None,
        text_key: str | None = None,
        exclusion_writer: DiskWriter | None = None,
    ) -> None:
        for param, value in (("min_words", min_words), ("max_words", max_words)):
            if value is not None and value < 0:
                raise ValueError(f"{param} must be >= 0, got {value}")
        if min_words is not None and max_words is not None and min_words > max_words:
            raise ValueError(f"min_words ({min_words}) must not exceed max_words ({max_words})")
        super().__init__(text_key=text_key, exclusion_writer=exclusion_writer)
        self.min_words = min_words
        self.max_words = max_words

    def filter_text(self, text: str, doc: Document) -> bool | tuple[bool, str]:
        words = count_words(text)
        if self.min_words is not None and words < self.min_words:
            return False, "too_short"
        if self.max_words is not None and words > self.max_words:
            return False, "too_long"
        return True
