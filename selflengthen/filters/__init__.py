"""Reusable datatrove filters for long-form text (Self-Lengthen's quality checks).

Each filter is a datatrove `BaseFilter`: put it in any datatrove pipeline, or apply a list of
them to a polars frame or a `datasets.Dataset` with `apply_filters`.
"""

from selflengthen.filters.apply import FilterReport, apply_filters
from selflengthen.filters.base import DROP_DETAIL, MISSING_TEXT, TextFilter
from selflengthen.filters.character_loop import CharacterLoopFilter, find_character_loop
from selflengthen.filters.ending import DEFAULT_TERMINALS, EndingFilter
from selflengthen.filters.growth import GrowthFilter
from selflengthen.filters.length import LengthFilter
from selflengthen.filters.meta_comment import DEFAULT_META_PATTERNS, DEFAULT_META_WORDS, MetaCommentFilter
from selflengthen.filters.repetition import RepetitionFilter, find_repeated_ngram

__all__ = [
    "DEFAULT_META_PATTERNS",
    "DEFAULT_META_WORDS",
    "DEFAULT_TERMINALS",
    "DROP_DETAIL",
    "MISSING_TEXT",
    "CharacterLoopFilter",
    "EndingFilter",
    "FilterReport",
    "GrowthFilter",
    "LengthFilter",
    "MetaCommentFilter",
    "RepetitionFilter",
    "TextFilter",
    "apply_filters",
    "find_character_loop",
    "find_repeated_ngram",
]
