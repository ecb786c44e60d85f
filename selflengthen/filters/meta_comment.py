"""Drop texts that talk about themselves ("Here is the revised version…") at the start or end."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from datatrove.data import Document
from datatrove.pipeline.writers.disk_base import DiskWriter

from selflengthen.filters.base import TextFilter, drop
from selflengthen.text import is_cjk

if TYPE_CHECKING:
    from selflengthen.filters.prefix import PrefixWatch

#: The paper's word list: any of these words near the start or end of an answer marked the model
#: commenting on its own text. As bare words they also match ordinary writing ("Version 3",
#: "modified versions", "Changed in version 3.11", "版本", "修改"), so the default rule is
#: `DEFAULT_META_PATTERNS`; pass `words=DEFAULT_META_WORDS` for the paper's rule.
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

_EDITED = r"(?:revised|rewritten|expanded|extended|longer|improved|polished|edited|continued)"
_NOUN = r"(?:version|versions|revision|rewrite|continuation|expansion|draft)"
_WRITING = (
    r"(?:text|version|response|answer|essay|article|story|paragraphs?|sentences?|content|message|draft"
    r"|writing|clarity|grammar|flow|tone|style|readability|coherence)"
)
_EDIT_VERB = (
    r"(?:made|added|revised|rewrote|rewritten|edited|expanded|extended|modified|changed|tweaked|polished"
    r"|adjusted|improved|incorporated|restructured|used|tried|kept|maintained|provided|included)"
)
_ZH_EDIT = "(?:修改|修订|改写|扩写|扩展|续写|润色|扩充)"

#: The default rule: phrases in which a model talks about its own answer — presents it ("Here
#: is the revised version"), describes its edits ("I made some changes to improve clarity"),
#: names it ("my response", "the provided prompt") — in English and Chinese. Measured in the
#: README ("Filters on other corpora"): far fewer false drops on human text than the word list,
#: and every meta-comment the word list caught in our models' answers.
DEFAULT_META_PATTERNS: tuple[str, ...] = (
    rf"\bhere(?:'s|’s|\s+is|\s+are)\s+(?:the|a|an|my|your)\s+(?:[\w-]+\s+){{0,2}}{_NOUN}\b",
    r"\bhere(?:'s|’s|\s+is|\s+are)\s+(?:my|the)\s+(?:response|answer|text)\b",
    r"\bhere(?:'s|’s|\s+is|\s+are)\s+(?:my|the|your)\s+(?:revised|rewritten|expanded|polished|edited)\s+\w+",
    rf"\b{_EDITED}\s+(?:version|text|response|answer|draft)\b",
    r"\bthis\s+(?:revised|rewritten|edited|polished|expanded)\s+(?:ending|beginning|opening|introduction"
    r"|conclusion|passage|section|paragraph|story|essay|article)\b",
    rf"\bI(?:'ve|’ve|\s+have)?\s+(?:\w+\s+)?{_EDIT_VERB}\b[^.!?\n]{{0,80}}?\b{_WRITING}\b",
    r"\b(?:my|this)\s+(?:(?:previous|original|earlier|last|revised)\s+)?(?:response|answer|revision|rewrite)\b",
    r"\bthe\s+(?:above|following|previous)\s+(?:response|answer|revision|rewrite)\b",
    r"\b(?:your|the)\s+(?:original|provided|given)\s+(?:text|prompt|request|paragraph|essay|article|story"
    r"|message|draft|instructions?)\b",
    rf"\bI\s+hope\s+(?:this|these|my)\s+(?:{_EDITED}\s+)?(?:version|revision|rewrite|response|answer"
    r"|changes|edits)\b",
    rf"(?:以下|下面|这)是[^。！？\n]{{0,10}}?{_ZH_EDIT}后?的",
    rf"{_ZH_EDIT}(?:后|过)的(?:版本|文章|内容|回答|文本|段落|故事)",
    rf"我(?!们)[^。！？\n]{{0,15}}?{_ZH_EDIT}了",
    "(?:我的|这个|这篇|以上|上述)(?:回答|回复)",
)


def _word_pattern(word: str) -> str:
    escaped = re.escape(word)
    return escaped if any(is_cjk(char) for char in word) else rf"\b{escaped}\b"


class MetaCommentFilter(TextFilter):
    """Drops a text whose first `head_lines` or last `tail_lines` non-empty lines comment on the
    text itself (case-insensitive; reason `meta_comment`, the match in the document's metadata
    under `filter_detail`).

    Args:
        words: `None` (default) for the built-in phrases (`DEFAULT_META_PATTERNS`: a model
            presenting, describing or naming its own answer); else a list of words, any of which
            marks a comment (English words match whole words only, "version" not in
            "conversion"; words with CJK characters match anywhere). `DEFAULT_META_WORDS` is the
            paper's list.
        patterns: regular expressions to use instead of the built-in phrases (with
            `words=None`); any match marks a comment.
        head_lines: how many non-empty lines at the start are checked.
        tail_lines: how many non-empty lines at the end are checked.
        text_key: `None` for `doc.text`, else the metadata field holding the text.
    """

    name = "🗨 Meta-comment"

    def __init__(
        self,
        words: Iterable[str] | None = None,
        head_lines: int = 2,
        tail_lines: int = 3,
        text_key: str | None = None,
        exclusion_writer: DiskWriter | None = None,
        patterns: Iterable[str] = DEFAULT_META_PATTERNS,
    ) -> None:
        if words is not None:
            word_list = [word.strip() for word in words]
            if not word_list or not all(word_list):
                raise ValueError("words must be a non-empty list of non-empty strings")
            self.words: tuple[str, ...] | None = tuple(word_list)
            alternatives = [_word_pattern(word) for word in sorted(word_list, key=len, reverse=True)]
        else:
            alternatives = list(patterns)
            if not alternatives or not all(alternatives):
                raise ValueError("patterns must be a non-empty list of non-empty regular expressions")
            self.words = None
        for param, value in (("head_lines", head_lines), ("tail_lines", tail_lines)):
            if value < 0:
                raise ValueError(f"{param} must be >= 0, got {value}")
        super().__init__(text_key=text_key, exclusion_writer=exclusion_writer)
        self.head_lines = head_lines
        self.tail_lines = tail_lines
        try:
            self._pattern = re.compile(
                "|".join(f"(?:{alternative})" for alternative in alternatives), re.IGNORECASE
            )
        except re.error as error:
            raise ValueError(f"patterns: not a regular expression ({error})") from None

    def prefix_watch(self) -> PrefixWatch:
        """`HeadMetaWatch`: this filter's rejection found while the text is still being written."""
        from selflengthen.filters.prefix import HeadMetaWatch  # that module imports this one

        return HeadMetaWatch.for_filter(self)

    def filter_text(self, text: str, doc: Document) -> bool | tuple[bool, str]:
        lines = [line for line in text.splitlines() if line.strip()]
        checked = lines[: self.head_lines]
        if self.tail_lines:
            checked += lines[max(self.head_lines, len(lines) - self.tail_lines) :]
        for line in checked:
            if (match := self.meta_word(line)) is not None:
                return drop(doc, "meta_comment", match)
        return True

    def meta_word(self, line: str) -> str | None:
        """What in `line` marks a comment on the text (lower-cased, spaces collapsed), or None."""
        match = self._pattern.search(line)
        return " ".join(match.group(0).lower().split()) if match else None
