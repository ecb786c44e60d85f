"""Keep an extended text only if it really grew from the text it extends."""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.writers.disk_base import DiskWriter

from selflengthen.filters.base import TextFilter
from selflengthen.text import count_words


class GrowthFilter(TextFilter):
    """Keeps a document only if its word count is more than `min_ratio` times the word count of
    the text it extends (reason `too_little_growth` otherwise).

    The source length is read from the document's metadata: `metadata[source_words_key]` when
    present (a word count already computed), else the words of `metadata[source_key]`. A document
    with neither is dropped with the reason `missing_source`.

    Args:
        min_ratio: the factor the text must exceed (strictly); the paper keeps extensions > 1.2×.
        source_key: metadata field with the text that was extended.
        source_words_key: metadata field with that text's word count (preferred when present);
            `None` to always count the words of `source_key`.
        text_key: `None` for `doc.text`, else the metadata field holding the extended text.
    """

    name = "📈 Growth"

    def __init__(
        self,
        min_ratio: float = 1.2,
        source_key: str = "initial_response",
        source_words_key: str | None = "initial_words",
        text_key: str | None = None,
        exclusion_writer: DiskWriter | None = None,
    ) -> None:
        if not min_ratio > 0:
            raise ValueError(f"min_ratio must be > 0, got {min_ratio}")
        super().__init__(text_key=text_key, exclusion_writer=exclusion_writer)
        self.min_ratio = min_ratio
        self.source_key = source_key
        self.source_words_key = source_words_key

    def _source_words(self, doc: Document) -> int | None:
        words = doc.metadata.get(self.source_words_key) if self.source_words_key else None
        if isinstance(words, int | float) and not isinstance(words, bool) and words >= 0:
            return int(words)
        source = doc.metadata.get(self.source_key)
        return count_words(source) if isinstance(source, str) else None

    def filter_text(self, text: str, doc: Document) -> bool | tuple[bool, str]:
        source_words = self._source_words(doc)
        if source_words is None:
            return False, "missing_source"
        if not self.grew_enough(count_words(text), source_words):
            return False, "too_little_growth"
        return True

    def grew_enough(self, words: int, source_words: int) -> bool:
        """The rule itself, on word counts: more than `min_ratio` × the source's words."""
        return words > self.min_ratio * source_words
