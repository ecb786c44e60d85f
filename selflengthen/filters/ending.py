"""Keep texts that end on a terminal mark, i.e. that were not cut off mid-sentence."""

from __future__ import annotations

from collections.abc import Iterable

from datatrove.data import Document
from datatrove.pipeline.writers.disk_base import DiskWriter

from selflengthen.filters.base import TextFilter

#: Marks that can end a finished English or Chinese text: sentence ends, closing quotes and
#: brackets, and the Markdown endings of code fences (`) and emphasis (*).
DEFAULT_TERMINALS = frozenset(".!?…\"')]}>`*。！？”’）】》」』")


class EndingFilter(TextFilter):
    """Drops a text whose last non-whitespace character is not a terminal mark (reason
    `bad_ending`), or that has no such character at all (reason `empty`).

    The default set serves English and Chinese alike; the reference implementation's Chinese
    set lacked `.`, `!` and `?` and so rejected every English answer.

    Args:
        terminals: the characters accepted as the last one (an iterable of single characters).
        text_key: `None` for `doc.text`, else the metadata field holding the text.
    """

    name = "🔚 Ending"

    def __init__(
        self,
        terminals: Iterable[str] = DEFAULT_TERMINALS,
        text_key: str | None = None,
        exclusion_writer: DiskWriter | None = None,
    ) -> None:
        marks = frozenset(terminals)
        if not marks:
            raise ValueError("terminals must contain at least one character")
        if any(len(mark) != 1 for mark in marks):
            bad = sorted(mark for mark in marks if len(mark) != 1)
            raise ValueError(f"terminals must be single characters, got {bad}")
        super().__init__(text_key=text_key, exclusion_writer=exclusion_writer)
        self.terminals = marks

    def filter_text(self, text: str, doc: Document) -> bool | tuple[bool, str]:
        stripped = text.rstrip()
        if not stripped:
            return False, "empty"
        if stripped[-1] not in self.terminals:
            return False, "bad_ending"
        return True
