"""The shared shape of selflengthen's filters: a datatrove `BaseFilter` that reads one text."""

from __future__ import annotations

from abc import abstractmethod

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

MISSING_TEXT = "missing_text"
#: The metadata field where a filter that dropped a document says what it found (the repeated
#: n-gram, the meta-comment), beside datatrove's own `filter_reason`. Reasons stay short, stable
#: keys, so that a datatrove pipeline counts one `dropped_<reason>` stat per kind of drop.
DROP_DETAIL = "filter_detail"


def drop(doc: Document, reason: str, detail: str) -> tuple[bool, str]:
    """Drop `doc` for `reason`, recording `detail` in its metadata under `DROP_DETAIL`."""
    doc.metadata[DROP_DETAIL] = detail
    return False, reason


class TextFilter(BaseFilter):
    """A datatrove filter that judges one text of a document.

    Args:
        text_key: where the text is. `None` (default) reads `doc.text`; a name reads
            `doc.metadata[text_key]`, so one document can carry several texts (an instruction, an
            initial and an extended response) and each filter checks the one it is told to.
        exclusion_writer: a datatrove writer that saves the dropped documents with their reason.
        batch_size: how many documents datatrove hands to `filter_batch` at once.

    A document whose text is missing, `None` or not a string is dropped with the reason
    `missing_text` rather than raising, so one bad row never stops a pipeline.
    """

    def __init__(
        self, text_key: str | None = None, exclusion_writer: DiskWriter | None = None, batch_size: int = 1
    ) -> None:
        super().__init__(exclusion_writer=exclusion_writer, batch_size=batch_size)
        self.text_key = text_key

    def text_of(self, doc: Document) -> str | None:
        """The text this filter judges, or `None` when it is missing or not a string (or when
        `doc.text` itself is not a string, which datatrove's statistics could not measure)."""
        text = doc.text if self.text_key is None else doc.metadata.get(self.text_key)
        return text if isinstance(text, str) and isinstance(doc.text, str) else None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = self.text_of(doc)
        if text is None:
            return False, MISSING_TEXT
        return self.filter_text(text, doc)

    @abstractmethod
    def filter_text(self, text: str, doc: Document) -> bool | tuple[bool, str]:
        """Judge `text` (taken from `doc` as `text_key` says): `True` keeps, `(False, reason)` drops."""
