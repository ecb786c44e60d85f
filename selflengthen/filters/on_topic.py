"""Keep answers whose later segments stay on their instruction (`selflengthen.relevance`)."""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from selflengthen.filters.base import drop
from selflengthen.relevance import OFF_TOPIC_RATIO

#: Where a scored document carries its segments' relevance ratios (first segment first).
RELEVANCE_KEY = "relevance"
MISSING_RELEVANCE = "missing_relevance"


class OnTopicFilter(BaseFilter):
    """Drops a document when a segment after the first has a relevance ratio above `max_ratio`
    (reason `off_topic`; `filter_detail` names the segment and its ratio): the answer has left its
    instruction. The first segment is not judged: it may restate or set up, and a text that is
    off topic from its start is better caught by comparing it with its instruction as a whole.

    The document must be scored beforehand: `doc.metadata[relevance_key]` holds the ratio of each
    segment (`selflengthen.relevance.RelevanceScorer.score`); a document without one is dropped
    with the reason `missing_relevance`.

    Args:
        max_ratio: the largest ratio a later segment may have (default `OFF_TOPIC_RATIO`, set from
            the validation in `benchmarks/relevance.py`).
        relevance_key: the metadata field holding the ratios.
    """

    name = "🧭 On topic"

    def __init__(
        self,
        max_ratio: float = OFF_TOPIC_RATIO,
        relevance_key: str = RELEVANCE_KEY,
        exclusion_writer: DiskWriter | None = None,
    ) -> None:
        if not max_ratio > 0:
            raise ValueError(f"max_ratio must be > 0, got {max_ratio}")
        super().__init__(exclusion_writer=exclusion_writer)
        self.max_ratio = max_ratio
        self.relevance_key = relevance_key

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        ratios = doc.metadata.get(self.relevance_key)
        if not isinstance(ratios, list) or not all(isinstance(ratio, int | float) for ratio in ratios):
            return False, MISSING_RELEVANCE
        for index, ratio in enumerate(ratios[1:], start=2):
            if ratio > self.max_ratio:
                return drop(
                    doc,
                    "off_topic",
                    f"segment {index} of {len(ratios)}: ratio {ratio:.3f} > {self.max_ratio}",
                )
        return True
